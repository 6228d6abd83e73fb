"""Names of the original PyTorch code's parameters for every variable of our models.

`torch_variable_map(model)` walks a backbone, classifier or segmenter and returns
`{torch_name: (keras_variable, to_keras)}`, where `to_keras` turns the PyTorch array into the
Keras layout. Layer names of the Keras models encode where a layer sits in the original
(`m3_branch1_block0` is `features.7.branches.1.0`), so the walk needs no other state.
"""

import re

import keras
import numpy as np

from keras_hrvit.heads.classification import Bottleneck, HRNetClassifierHead
from keras_hrvit.heads.segformer import SegFormerHead
from keras_hrvit.heads.upernet import ConvBNReLU, FCNHead, UPerNetHead
from keras_hrvit.layers import ConvStem, EffPatchEmbed, FusionBlock, HRViTBlock


def _conv_kernel(w):
    return np.transpose(w, (2, 3, 1, 0))


def _depthwise_kernel(w):
    return np.transpose(w, (2, 3, 0, 1))


def _dense_kernel(w):
    # A 1x1 convolution stored as a Dense layer drops its two unit axes.
    return np.transpose(w.reshape(w.shape[0], w.shape[1]))


def _same(w):
    return w


def _leaf_params(layer):
    """`(torch_suffix, variable, to_keras)` of a single Keras layer, or None if not a leaf."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        params = [("weight", layer.kernel, _depthwise_kernel)]
    elif isinstance(layer, keras.layers.Conv2D):
        params = [("weight", layer.kernel, _conv_kernel)]
    elif isinstance(layer, keras.layers.Dense):
        params = [("weight", layer.kernel, _dense_kernel)]
    elif isinstance(layer, keras.layers.BatchNormalization):
        return [
            ("weight", layer.gamma, _same),
            ("bias", layer.beta, _same),
            ("running_mean", layer.moving_mean, _same),
            ("running_var", layer.moving_variance, _same),
        ]
    elif isinstance(layer, keras.layers.LayerNormalization):
        return [("weight", layer.gamma, _same), ("bias", layer.beta, _same)]
    else:
        return None
    if layer.use_bias:
        params.append(("bias", layer.bias, _same))
    return params


def _children(layer):
    """`(torch_name, sublayer)` pairs of a composite layer."""
    if isinstance(layer, ConvStem):
        return [(n, getattr(layer, n)) for n in ("conv1", "bn1", "conv2", "bn2")]
    if isinstance(layer, FusionBlock):
        pairs = []
        for i, row in enumerate(layer.paths):
            for j, path in enumerate(row):
                ops = [op for op in path if not isinstance(op, keras.layers.ZeroPadding2D)]
                pairs += [(f"{i}.{j}.{k}", op) for k, op in enumerate(ops)]
        return pairs
    if isinstance(layer, EffPatchEmbed):
        return [("proj.0", layer.proj), ("proj.1", layer.dwconv), ("norm", layer.norm)]
    if isinstance(layer, HRViTBlock):
        attn, des, ffn = layer.attn, layer.des, layer.ffn
        return [
            ("attn_norm", layer.attn_norm),
            ("attn.to_qkv", attn.qv),
            ("attn.parallel_conv.1", attn.parallel_conv),
            ("attn.to_out.0", attn.proj),
            ("attn.attn_bn", attn.norm),
            ("des.proj_right", des.proj_right),
            ("des.proj_left", des.proj_left),
            ("ffn_norm", layer.ffn_norm),
            ("ffn.fc1", ffn.fc1),
            ("ffn.conv.conv_3", ffn.conv_3),
            ("ffn.conv.conv_5", ffn.conv_5),
            ("ffn.fc2", ffn.fc2),
        ]
    if isinstance(layer, Bottleneck):
        pairs = [(n, getattr(layer, n)) for n in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")]
        if layer.has_shortcut:
            pairs += [("downsample.0", layer.shortcut_conv), ("downsample.1", layer.shortcut_bn)]
        return pairs
    if isinstance(layer, HRNetClassifierHead):
        pairs = [(f"incre_modules.{i}.0", block) for i, block in enumerate(layer.incre)]
        for i, (conv, bn) in enumerate(zip(layer.down_convs, layer.down_bns)):
            pairs += [(f"downsamp_modules.{i}.0", conv), (f"downsamp_modules.{i}.1", bn)]
        return pairs + [("final_layer.0", layer.final_conv), ("final_layer.1", layer.final_bn)]
    if isinstance(layer, SegFormerHead):
        pairs = [(f"convs.{i}.conv", p) for i, p in enumerate(layer.projections)]
        return pairs + [
            ("fusion_conv.conv", layer.fusion_conv),
            ("fusion_conv.bn", layer.fusion_bn),
            ("conv_seg", layer.classifier),
        ]
    # --- UperNet / FCN heads (MMSegmentation's UPerHead / FCNHead) ---
    if isinstance(layer, ConvBNReLU):
        return [("conv", layer.conv), ("bn", layer.bn)]
    if isinstance(layer, UPerNetHead):
        pairs = [(f"psp_modules.{i}.1", m) for i, m in enumerate(layer.psp_modules)]
        pairs.append(("bottleneck", layer.bottleneck))
        pairs += [(f"lateral_convs.{i}", m) for i, m in enumerate(layer.lateral_convs)]
        pairs += [(f"fpn_convs.{i}", m) for i, m in enumerate(layer.fpn_convs)]
        return pairs + [("fpn_bottleneck", layer.fpn_bottleneck), ("conv_seg", layer.conv_seg)]
    if isinstance(layer, FCNHead):
        pairs = [(f"convs.{i}", m) for i, m in enumerate(layer.convs)]
        return pairs + [("conv_seg", layer.conv_seg)]
    # --- end UperNet / FCN heads ---
    return None


# Top-level Keras layer name -> prefix of the original's parameter names.
_TOP_LEVEL = [
    (re.compile(r"stem$"), lambda m: "stem"),
    (re.compile(r"m(\d+)_fusion$"), lambda m: f"features.{2 * int(m[1])}.blocks"),
    (
        re.compile(r"m(\d+)_embed(\d+)$"),
        lambda m: f"features.{2 * int(m[1]) + 1}.patch_embed.{m[2]}",
    ),
    (
        re.compile(r"m(\d+)_branch(\d+)_block(\d+)$"),
        lambda m: f"features.{2 * int(m[1]) + 1}.branches.{m[2]}.{m[3]}",
    ),
    (re.compile(r"m(\d+)_norm(\d+)$"), lambda m: f"features.{2 * int(m[1]) + 1}.norm.{m[2]}"),
    (re.compile(r"head$"), lambda m: "head"),
    (re.compile(r"predictions$"), lambda m: "head.classifier"),
    (re.compile(r"decode_head$"), lambda m: "decode_head"),
    (re.compile(r"auxiliary_head$"), lambda m: "auxiliary_head"),
]


def _top_level_prefix(name):
    for pattern, prefix in _TOP_LEVEL:
        match = pattern.match(name)
        if match:
            return prefix(match)
    return None


def _walk(layer, prefix, out):
    leaf = _leaf_params(layer)
    if leaf is not None:
        for suffix, variable, to_keras in leaf:
            out[f"{prefix}.{suffix}"] = (variable, to_keras)
        return
    children = _children(layer)
    if children is None:
        raise TypeError(f"No PyTorch name mapping for layer {layer.name!r} ({type(layer)}).")
    for name, child in children:
        _walk(child, f"{prefix}.{name}", out)


def _top_level_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model) and _top_level_prefix(layer.name) is None:
            yield from _top_level_layers(layer)
        else:
            yield layer


def torch_variable_map(model):
    """`{original_parameter_name: (keras_variable, to_keras)}` for every parameter of `model`."""
    out = {}
    for layer in _top_level_layers(model):
        prefix = _top_level_prefix(layer.name)
        if prefix is not None and layer.weights:
            _walk(layer, prefix, out)
    if not out:
        raise ValueError(f"Model {model.name!r} has no layers that map to HRViT checkpoint names.")
    return out
