"""The HRViT multi-scale backbone."""

import keras
import numpy as np

from keras_hrvit.layers import ConvStem, EffPatchEmbed, FusionBlock, HRViTBlock
from keras_hrvit.layers.common import layer_norm
from keras_hrvit.layers.preprocessing import ImageNormalization
from keras_hrvit.layers.stem import check_image_shape
from keras_hrvit.presets import BACKBONE_PRESETS, get_preset

PYRAMID_LEVELS = ("P2", "P3", "P4", "P5")


def drop_path_rates(blocks, drop_path_rate):
    """Per-module rates: block `j` of every branch of module `m` gets `rates[start_m + j]`."""
    depths = [max(module) for module in blocks]
    rates = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()
    starts = np.cumsum([0] + depths[:-1])
    return [[float(rates[s + j]) for j in range(d)] for s, d in zip(starts, depths)]


@keras.saving.register_keras_serializable(package="keras_hrvit")
class HRViTBackbone(keras.Model):
    """HRViT: a stem at 1/4 resolution, then six modules of (fusion, transformer stage) that grow
    to four parallel branches at 1/4, 1/8, 1/16 and 1/32 resolution.

    Takes RGB images as people have them, `uint8` or float with values 0-255, and normalizes them
    with ImageNet's mean and standard deviation inside the graph (`include_preprocessing=True`);
    with `include_preprocessing=False` it takes images normalized already.

    Returns a list of four NHWC feature maps (`pyramid_outputs` names them P2..P5). Any height and
    width of at least 32 pixels works; branch sizes are successive ceil-halvings of the stem's.

    Args:
        stem_channels: width of the stem (64 in every published variant).
        channels: width of each of the four branches.
        blocks: one tuple per module, the number of blocks on each of its branches; module `m`
            has `len(blocks[m])` branches.
        head_dim: attention head size.
        window_sizes: stripe width of each branch.
        mlp_ratios: MixCFN expansion of each branch.
        drop_path_rate: largest stochastic depth rate (linearly increasing over the modules).
        remat: recompute each transformer block's activations in the backward pass instead of
            keeping them (the original's `with_cp`): less memory, more compute in training.
        input_shape: image shape, channels last; height and width may be `None`.
        include_preprocessing: normalize 0-255 images inside the model (a float32
            `ImageNormalization` named `preprocessing`, so mixed precision starts from exact
            values).
        dtype: dtype policy of every layer (default: the global policy), e.g.
            `"mixed_bfloat16"`, or a `keras.dtype_policies.DTypePolicyMap` giving quantized
            layers their policy by path, as KerasHub backbones take it.

    Example:
    >>> backbone = HRViTBackbone.from_preset("hrvit_b1")
    >>> [f.shape for f in backbone(keras.ops.ones((1, 224, 224, 3)))]
    [(1, 56, 56, 32), (1, 28, 28, 64), (1, 14, 14, 128), (1, 7, 7, 256)]
    """

    def __init__(
        self,
        stem_channels,
        channels,
        blocks,
        head_dim,
        window_sizes,
        mlp_ratios,
        drop_path_rate=0.0,
        remat=False,
        input_shape=(None, None, 3),
        include_preprocessing=True,
        dtype=None,
        **kwargs,
    ):
        channels = [int(c) for c in channels]
        blocks = [[int(b) for b in module] for module in blocks]
        window_sizes = [int(s) for s in window_sizes]
        mlp_ratios = list(mlp_ratios)
        _validate(channels, blocks, window_sizes, mlp_ratios, drop_path_rate)
        input_shape = tuple(input_shape)
        check_image_shape((None,) + input_shape, 3 if input_shape[-1] is None else input_shape[-1])
        if input_shape[-1] != 3:
            raise ValueError(
                f"HRViT expects RGB images with 3 channels; `input_shape` has {input_shape[-1]}."
            )

        if not isinstance(include_preprocessing, bool):
            raise ValueError(
                f"`include_preprocessing` must be True or False, got {include_preprocessing!r}."
            )
        inputs = keras.Input(shape=input_shape, name="images")
        x = inputs
        if include_preprocessing:
            x = ImageNormalization(name="preprocessing")(x)
        # A functional model's constructor ignores `dtype`: every layer is given it.
        features = [ConvStem(stem_channels, name="stem", dtype=dtype)(x)]
        widths = [stem_channels]
        rates = drop_path_rates(blocks, drop_path_rate)
        for m, module in enumerate(blocks):
            out_widths = widths + channels[len(widths) : len(module)]
            features = FusionBlock(widths, out_widths, name=f"m{m}_fusion", dtype=dtype)(features)
            next_features = []
            for i, x in enumerate(features):
                x = EffPatchEmbed(channels[i], name=f"m{m}_embed{i}", dtype=dtype)(x)
                for b in range(module[i]):
                    x = HRViTBlock(
                        channels[i],
                        window_size=window_sizes[i],
                        head_dim=head_dim,
                        mlp_ratio=mlp_ratios[i],
                        drop_path_rate=rates[m][b],
                        remat=remat,
                        name=f"m{m}_branch{i}_block{b}",
                        dtype=dtype,
                    )(x)
                next_features.append(layer_norm(f"m{m}_norm{i}", dtype=dtype)(x))
            features = next_features
            widths = channels[: len(module)]

        kwargs.setdefault("name", "hrvit_backbone")
        super().__init__(inputs=inputs, outputs=features, **kwargs)
        if dtype is not None:
            self.dtype_policy = dtype
        self._given_dtype = dtype
        self.stem_channels = stem_channels
        self.channels = channels
        self.blocks = blocks
        self.head_dim = head_dim
        self.window_sizes = window_sizes
        self.mlp_ratios = mlp_ratios
        self.drop_path_rate = drop_path_rate
        self.remat = remat
        self.include_preprocessing = include_preprocessing
        self.image_shape = input_shape
        self.pyramid_outputs = dict(zip(PYRAMID_LEVELS, features))

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "stem_channels": self.stem_channels,
            "channels": self.channels,
            "blocks": self.blocks,
            "head_dim": self.head_dim,
            "window_sizes": self.window_sizes,
            "mlp_ratios": self.mlp_ratios,
            "drop_path_rate": self.drop_path_rate,
            "remat": self.remat,
            "input_shape": self.image_shape,
            "include_preprocessing": self.include_preprocessing,
            **_dtype_config(self),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    @classmethod
    def from_preset(cls, preset, **overrides):
        """Builds a preset architecture (`hrvit_b1`, `hrvit_b2`, `hrvit_b3`), randomly initialized.

        Any constructor argument can be overridden, e.g. `drop_path_rate=0.1`.
        """
        config = get_preset(BACKBONE_PRESETS, preset, "backbone")
        config.update(overrides)
        config.setdefault("name", preset)
        return cls(**config)


def _dtype_config(model):
    """`{"dtype": ...}` when it must travel with the config, as KerasHub's backbones do: the
    policy given to the constructor, or once layers are quantized a `DTypePolicyMap` of their
    policies by path, so that `from_config` builds them quantized, ready for the int8 weights.
    Otherwise nothing, and a revived model follows the global policy."""
    given = model._given_dtype
    if isinstance(given, keras.dtype_policies.DTypePolicyMap):
        return {"dtype": keras.dtype_policies.serialize(given)}  # quantize() updates the map
    policies = keras.dtype_policies.DTypePolicyMap(default_policy=given)
    for layer in model._flatten_layers(include_self=False):
        if layer.quantization_mode is not None:
            policies[layer.path] = layer.dtype_policy
    if len(policies):
        return {"dtype": keras.dtype_policies.serialize(policies)}
    if given is None:
        return {}
    return {"dtype": keras.dtype_policies.serialize(keras.dtype_policies.get(given))}


def _validate(channels, blocks, window_sizes, mlp_ratios, drop_path_rate):
    branches = len(channels)
    if not blocks:
        raise ValueError("`blocks` needs at least one module.")
    for name, values in (("window_sizes", window_sizes), ("mlp_ratios", mlp_ratios)):
        if len(values) != branches:
            raise ValueError(
                f"`{name}` needs one entry per branch ({branches}), got {len(values)}: {values}."
            )
    previous = 1
    for m, module in enumerate(blocks):
        if not previous <= len(module) <= min(previous + 1, branches) or min(module) < 0:
            raise ValueError(
                f"`blocks[{m}]` = {module}: each module keeps or adds one branch (here "
                f"{previous} or {previous + 1}, at most {branches}) with non-negative counts."
            )
        previous = len(module)
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"`drop_path_rate` must be in [0, 1), got {drop_path_rate}.")
