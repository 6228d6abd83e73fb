"""The original HRViT backbone (facebookresearch/HRViT) re-implemented in plain PyTorch.

This is a re-implementation written in the original code's layout and style (2021 PyTorch), not
the original file: the same module names and nesting (so the original's state_dict loads with
`strict=True`), and the same way of computing. Inside a stage the blocks work on tokens
`(B, N, C)` with `H, W` passed along; `nn.Linear` on tokens; every convolution transposes the
tokens to an NCHW map and back; cross-shaped windows are cut with view/permute, attention is an
explicit `(q * scale) @ k^T`, softmax, `@ v`, horizontal then vertical stripes; sizes that are not
multiples of the window are zero-padded, scores involving a padded token get -100, and the padding
is cropped off. Fusion layers are NCHW `nn.Sequential`s of Conv2d/BatchNorm2d/Upsample.

It is used only by `benchmarks/bench.py`, to time the original implementation's eager forward in
the same run as the Keras port. `tests/test_original_reference.py` checks it against the tensors
the original code produced (`tests/fixtures/hrvit_tiny_reference.npz`).

    model = build_original("b1").eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, 512, 512))  # 4 NCHW maps, strides 4, 8, 16, 32
"""

import json
import math

import torch
import torch.nn.functional as F
from torch import nn


def _variant(branch_channels, block_list, dim_head, mlp_ratio_list):
    """The original constructor's arguments: module m's channel list is the first
    `len(block_list[m])` branch widths."""
    return {
        "channels": 64,
        "channel_list": [list(branch_channels[: len(blocks)]) for blocks in block_list],
        "block_list": block_list,
        "dim_head": dim_head,
        "ws_list": [1, 2, 7, 7],
        "mlp_ratio_list": mlp_ratio_list,
    }


# The released variants (HRVIT_SPEC.md, "Variants"), written out here rather than read from
# keras_hrvit, so that this reference does not depend on the code it is compared with.
VARIANTS = {
    "b1": _variant(
        [32, 64, 128, 256],
        [[1], [1, 1], [1, 1, 6], [1, 1, 6], [1, 1, 6, 2], [1, 1, 2, 2]],
        32,
        [4, 4, 4, 4],
    ),
    "b2": _variant(
        [48, 96, 240, 384],
        [[1], [1, 1], [1, 1, 6], [1, 1, 6], [1, 1, 6, 2], [1, 1, 6, 2]],
        24,
        [2, 3, 3, 3],
    ),
    "b3": _variant(
        [64, 128, 256, 512],
        [[1], [1, 1], [1, 1, 6], [1, 1, 6], [1, 1, 6, 3], [1, 1, 6, 3]],
        32,
        [2, 2, 2, 2],
    ),
}

# Constructor arguments of the original that only concern its classifier head.
_HEAD_ONLY_ARGS = ("num_classes", "head_channels")


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode or at rate 0)."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep


class ConvStem(nn.Module):
    """Two 3x3 stride-2 convolutions, each with BatchNorm and ReLU (NCHW)."""

    def __init__(self, in_channels=3, out_channels=64):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, mid, kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, out_channels, kernel_size=3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        return x


def img2windows(img, h_sp, w_sp):
    """(B, H, W, C) -> (B * windows, h_sp * w_sp, C), windows in row-major order."""
    B, H, W, C = img.shape
    x = img.view(B, H // h_sp, h_sp, W // w_sp, w_sp, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h_sp * w_sp, C)


def windows2img(windows, h_sp, w_sp, H, W):
    """Inverse of `img2windows`: (B * windows, h_sp * w_sp, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // h_sp, W // w_sp, h_sp, w_sp, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


class HRViTAttention(nn.Module):
    """Augmented cross-shaped window attention on tokens (B, N, C) of an H x W map."""

    def __init__(self, in_dim=64, dim=64, heads=2, ws=1, proj_drop=0.0):
        super().__init__()
        assert dim % 2 == 0, "dim must split into horizontal and vertical halves"
        self.dim = dim
        self.ws = ws
        self.heads = heads
        self.dim_head = (dim // 2) // heads
        self.scale = self.dim_head**-0.5
        self.to_qkv = nn.Linear(in_dim, 2 * dim)
        self.parallel_conv = nn.Sequential(
            nn.Hardswish(inplace=False),
            nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim),
        )
        self.attn_act = nn.Hardswish(inplace=True)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(proj_drop))
        self.attn_bn = nn.BatchNorm1d(dim)
        nn.init.constant_(self.attn_bn.weight, 0)
        nn.init.constant_(self.attn_bn.bias, 0)

    def _stripe_attention(self, q, v, H, W, horizontal):
        """Attention of one channel half (B, H, W, C/2) within stripes; keys are the values."""
        B, _, _, C = q.shape
        ws = self.ws
        if horizontal:
            Hp, Wp = math.ceil(H / ws) * ws, W
            h_sp, w_sp = ws, Wp
        else:
            Hp, Wp = H, math.ceil(W / ws) * ws
            h_sp, w_sp = Hp, ws
        pad_h, pad_w = Hp - H, Wp - W
        if pad_h or pad_w:
            q = F.pad(q, (0, 0, 0, pad_w, 0, pad_h))
            v = F.pad(v, (0, 0, 0, pad_w, 0, pad_h))
        n_tokens = h_sp * w_sp
        # (B * windows, heads, tokens, dim_head)
        q = img2windows(q, h_sp, w_sp).reshape(-1, n_tokens, self.heads, self.dim_head)
        q = q.permute(0, 2, 1, 3)
        v = img2windows(v, h_sp, w_sp).reshape(-1, n_tokens, self.heads, self.dim_head)
        v = v.permute(0, 2, 1, 3)
        k = v

        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        if pad_h or pad_w:
            padded = torch.zeros((1, Hp, Wp, 1), device=q.device, dtype=q.dtype)
            padded[:, H:, :, :] = 1
            padded[:, :, W:, :] = 1
            padded = img2windows(padded, h_sp, w_sp).squeeze(-1)  # (windows, tokens)
            mask = (padded.unsqueeze(2) + padded.unsqueeze(1)) > 0
            mask = torch.zeros_like(mask, dtype=q.dtype).masked_fill_(mask, -100.0)
            n_win = mask.shape[0]
            attn = attn.view(B, n_win, self.heads, n_tokens, n_tokens)
            attn = attn + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n_tokens, n_tokens)
        attn = attn.softmax(dim=-1)
        x = attn @ v  # (B * windows, heads, tokens, dim_head)

        x = x.transpose(1, 2).reshape(-1, n_tokens, C)
        x = windows2img(x, h_sp, w_sp, Hp, Wp)
        if pad_h or pad_w:
            x = x[:, :H, :W, :].contiguous()
        return x

    def forward(self, x, H, W):
        B, N, _ = x.shape
        C = self.dim
        qv = self.to_qkv(x)
        q, v = qv.chunk(2, dim=-1)
        v_conv = self.parallel_conv(v.transpose(1, 2).reshape(B, C, H, W))
        v_conv = v_conv.flatten(2).transpose(1, 2)

        q = q.reshape(B, H, W, C)
        v = v.reshape(B, H, W, C)
        half = C // 2
        x_h = self._stripe_attention(q[..., :half], v[..., :half], H, W, horizontal=True)
        x_v = self._stripe_attention(q[..., half:], v[..., half:], H, W, horizontal=False)
        res = torch.cat([x_h, x_v], dim=-1).reshape(B, N, C)

        res = self.attn_act(res + v_conv)
        res = self.to_out(res)
        res = self.attn_bn(res.flatten(0, 1)).view(B, N, C)
        return res


class DES(nn.Module):
    """Diversity-enhanced shortcut: channels viewed as (k, p), mixed along p, then along k."""

    def __init__(self, in_features, out_features, bias=True, act_func=nn.GELU):
        super().__init__()
        _, self.p = self._decompose(min(in_features, out_features))
        self.k_out = out_features // self.p
        self.k_in = in_features // self.p
        self.proj_right = nn.Linear(self.p, self.p, bias=bias)
        self.act = act_func()
        self.proj_left = nn.Linear(self.k_in, self.k_out, bias=bias)

    @staticmethod
    def _decompose(n):
        e = int(math.log2(n))
        e1 = e // 2
        e2 = e - e // 2
        return 2**e1, 2**e2

    def forward(self, x):
        lead = x.shape[:-1]
        x = x.view(*lead, self.k_in, self.p)
        x = self.proj_right(x).transpose(-1, -2)
        x = self.act(x)
        x = self.proj_left(x).transpose(-1, -2).flatten(-2, -1)
        return x


class MixConv2d(nn.Module):
    """Depthwise 3x3 on the first half of the channels, depthwise 5x5 on the rest (NCHW)."""

    def __init__(self, channels):
        super().__init__()
        c3 = channels // 2
        c5 = channels - c3
        self.c3 = c3
        self.conv_3 = nn.Conv2d(c3, c3, kernel_size=3, padding=1, groups=c3)
        self.conv_5 = nn.Conv2d(c5, c5, kernel_size=5, padding=2, groups=c5)

    def forward(self, x):
        x1, x2 = x[:, : self.c3], x[:, self.c3 :]
        return torch.cat([self.conv_3(x1), self.conv_5(x2)], dim=1)


class MixCFN(nn.Module):
    """fc1 -> mixed-kernel depthwise convs on the map -> GELU -> fc2, on tokens."""

    def __init__(self, in_features, hidden_features, out_features=None):
        super().__init__()
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.conv = MixConv2d(hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x, H, W):
        x = self.fc1(x)
        B, N, C = x.shape
        x = self.conv(x.transpose(1, 2).reshape(B, C, H, W))
        x = self.act(x)
        x = self.fc2(x.flatten(2).transpose(1, 2))
        return x


class HRViTBlock(nn.Module):
    def __init__(self, dim, heads, ws, mlp_ratio, drop_path=0.0):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = HRViTAttention(in_dim=dim, dim=dim, heads=heads, ws=ws)
        self.des = DES(dim, dim, act_func=nn.GELU)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = MixCFN(dim, int(dim * mlp_ratio), dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x, H, W):
        res = x
        x = self.attn(self.attn_norm(x), H, W)
        x_des = self.des(res)
        x = res + self.drop_path(x + x_des)

        res = x
        x = self.ffn(self.ffn_norm(x), H, W)
        x = res + self.drop_path(x)
        return x


class PatchEmbed(nn.Module):
    """1x1 conv -> depthwise 3x3 conv (NCHW) -> tokens -> LayerNorm; returns (tokens, H, W)."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, groups=out_channels),
        )
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x):
        x = self.proj(x)
        H, W = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        x = self.norm(x)
        return x, H, W


class HRViTStage(nn.Module):
    """Patch embedding, the transformer blocks and a LayerNorm on every branch."""

    def __init__(
        self, in_channels, out_channels, block_list, dim_head, ws_list, mlp_ratio_list, drop_path
    ):
        super().__init__()
        self.patch_embed = nn.ModuleList(
            PatchEmbed(c_in, c_out) for c_in, c_out in zip(in_channels, out_channels)
        )
        self.branches = nn.ModuleList()
        for i, n_blocks in enumerate(block_list):
            dim = out_channels[i]
            heads = max(1, (dim // 2) // dim_head)
            self.branches.append(
                nn.ModuleList(
                    HRViTBlock(dim, heads, ws_list[i], mlp_ratio_list[i], drop_path[j])
                    for j in range(n_blocks)
                )
            )
        self.norm = nn.ModuleList(nn.LayerNorm(c) for c in out_channels)

    def forward(self, x):
        out = []
        for x_i, embed, blocks, norm in zip(x, self.patch_embed, self.branches, self.norm):
            B = x_i.shape[0]
            y, H, W = embed(x_i)
            for block in blocks:
                y = block(y, H, W)
            y = norm(y)
            out.append(y.transpose(1, 2).reshape(B, -1, H, W))
        return out


class HRViTFusionBlock(nn.Module):
    """Dense cross-resolution fusion on NCHW maps; may add one (lower-resolution) branch."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.blocks = nn.ModuleList()
        for i, c_out in enumerate(out_channels):
            row = nn.ModuleList()
            for j, c_in in enumerate(in_channels):
                if j == i:
                    row.append(nn.Identity())
                elif j < i:
                    f = 2 ** (i - j)
                    row.append(
                        nn.Sequential(
                            nn.Conv2d(
                                c_in,
                                c_in,
                                kernel_size=f + 1,
                                stride=f,
                                padding=f // 2,
                                groups=c_in,
                                bias=False,
                            ),
                            nn.BatchNorm2d(c_in),
                            nn.Conv2d(c_in, c_out, kernel_size=1),
                            nn.BatchNorm2d(c_out),
                        )
                    )
                else:
                    f = 2 ** (j - i)
                    row.append(
                        nn.Sequential(
                            nn.Conv2d(c_in, c_out, kernel_size=1),
                            nn.BatchNorm2d(c_out),
                            nn.Upsample(scale_factor=f, mode="nearest"),
                        )
                    )
            self.blocks.append(row)
        self.act = nn.GELU()

    def forward(self, x):
        out = []
        for row in self.blocks:
            y = row[0](x[0])
            for j in range(1, len(x)):
                y = y + row[j](x[j])
            out.append(self.act(y))
        return out


class HRViTOriginal(nn.Module):
    """The HRViT backbone: stem, then per module a fusion layer and a stage (`features`).

    `forward(x)` takes an NCHW batch (height and width multiples of 32, as the original needs) and
    returns the four branches' NCHW maps.
    """

    def __init__(
        self,
        in_channels=3,
        channels=64,
        channel_list=None,
        block_list=None,
        dim_head=32,
        ws_list=(1, 2, 7, 7),
        mlp_ratio_list=(4, 4, 4, 4),
        drop_path_rate=0.0,
    ):
        super().__init__()
        self.stem = ConvStem(in_channels, channels)
        depths = [max(blocks) for blocks in block_list]
        rates = [r.item() for r in torch.linspace(0, drop_path_rate, sum(depths))]
        self.features = nn.ModuleList()
        prev = [channels]
        start = 0
        for m, (c_list, b_list) in enumerate(zip(channel_list, block_list)):
            fused = list(prev) + list(c_list[len(prev) :])
            self.features.append(HRViTFusionBlock(prev, fused))
            self.features.append(
                HRViTStage(
                    fused,
                    c_list,
                    b_list,
                    dim_head,
                    ws_list,
                    mlp_ratio_list,
                    rates[start : start + depths[m]],
                )
            )
            start += depths[m]
            prev = list(c_list)

    def forward(self, x):
        x = [self.stem(x)]
        for module in self.features:
            x = module(x)
        return x


class SegFormerHead(nn.Module):
    """The all-MLP decode head HRViT's segmentation models put on the backbone (MMSegmentation's
    SegFormer head, NCHW): a 1x1 projection of each branch to `channels`, bilinear upsampling to
    the finest branch, a 1x1 fusion with BatchNorm and ReLU, channel dropout and a 1x1 classifier.
    Used by `benchmarks/bench.py` to time the original's segmentation train step; this file's
    reference tests cover the backbone only."""

    def __init__(self, in_channels, num_classes, channels=256, dropout=0.1):
        super().__init__()
        self.projections = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(channels * len(in_channels), channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features):
        size = features[0].shape[2:]
        x = [
            F.interpolate(proj(f), size=size, mode="bilinear", align_corners=False)
            for proj, f in zip(self.projections, features)
        ]
        return self.classifier(self.dropout(self.fuse(torch.cat(x, dim=1))))


class OriginalSegmenter(nn.Module):
    """The original backbone with `SegFormerHead`; logits upsampled to the image's size."""

    def __init__(self, backbone, num_classes, channels=256):
        super().__init__()
        self.backbone = backbone
        widths = [norm.normalized_shape[0] for norm in backbone.features[-1].norm]
        self.decode_head = SegFormerHead(widths, num_classes, channels)

    def forward(self, x):
        logits = self.decode_head(self.backbone(x))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)


def build_original(variant, drop_path_rate=0.0):
    """The original backbone of HRViT-b1, -b2 or -b3 (randomly initialized)."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}; expected one of {sorted(VARIANTS)}.")
    return HRViTOriginal(**VARIANTS[variant], drop_path_rate=drop_path_rate)


def build_from_config(config, drop_path_rate=0.0):
    """The backbone from the original constructor's arguments (a dict, or its JSON).

    Accepts the fixture's `config/tiny`; classifier-only arguments (`num_classes`,
    `head_channels`) and the fixed stem `stride` are ignored.
    """
    if isinstance(config, str):
        config = json.loads(config)
    config = {k: v for k, v in config.items() if k not in _HEAD_ONLY_ARGS}
    stride = config.pop("stride", 4)
    if stride != 4:
        raise ValueError(f"The stem always has stride 4, got {stride}.")
    config.setdefault("drop_path_rate", drop_path_rate)
    return HRViTOriginal(**config)


def backbone_state_dict(state_dict):
    """The backbone's entries of an original checkpoint's state_dict (drops `module.`/`backbone.`
    prefixes and the classifier's `head.*`)."""
    out = {}
    for name, value in state_dict.items():
        for prefix in ("module.", "backbone."):
            if name.startswith(prefix):
                name = name[len(prefix) :]
        if name.startswith(("stem.", "features.")):
            out[name] = value
    return out
