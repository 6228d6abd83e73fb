"""Convolutional stem and efficient patch embedding."""

import keras
from keras import ops

from keras_hrvit.layers.common import batch_norm, check_positive_int, layer_norm, register
from keras_hrvit.layers.conv import Conv2D, DepthwiseConv2D

MIN_INPUT_SIZE = 32


@register
class ConvStem(keras.layers.Layer):
    """Two 3x3 stride-2 convolutions (with BatchNorm and ReLU): 1/4 resolution.

    Padding is one pixel on each side, as in PyTorch (`padding="same"` with stride 2 pads
    only the bottom and right).

    Args:
        channels: output channels (the original always uses 64); the first conv has half.
        in_channels: image channels expected.

    Example:
    >>> ConvStem(64)(keras.ops.ones((1, 224, 224, 3))).shape
    (1, 56, 56, 64)
    """

    def __init__(self, channels=64, in_channels=3, **kwargs):
        super().__init__(**kwargs)
        self.channels = check_positive_int(channels, "channels")
        self.in_channels = check_positive_int(in_channels, "in_channels")
        policy = self.dtype_policy
        self.pad = keras.layers.ZeroPadding2D(1, dtype=policy)
        self.conv1 = Conv2D(channels // 2, 3, strides=2, name="conv1", dtype=policy)
        self.bn1 = batch_norm("bn1", dtype=policy)
        self.conv2 = Conv2D(channels, 3, strides=2, name="conv2", dtype=policy)
        self.bn2 = batch_norm("bn2", dtype=policy)

    def build(self, input_shape):
        check_image_shape(input_shape, self.in_channels)
        half = self.channels // 2
        # Every sublayer is built here, the padding too: `Model.quantize` refuses unbuilt layers,
        # and a model built from symbolic inputs never runs this layer's `call`.
        self.pad.build(input_shape)
        self.conv1.build((None, None, None, self.in_channels))
        self.bn1.build((None, None, None, half))
        self.conv2.build((None, None, None, half))
        self.bn2.build((None, None, None, self.channels))

    def call(self, x, training=None):
        check_image_shape(ops.shape(x), self.in_channels)
        x = ops.relu(self.bn1(self.conv1(self.pad(x)), training=training))
        return ops.relu(self.bn2(self.conv2(self.pad(x)), training=training))

    def compute_output_shape(self, input_shape):
        def quarter(n):
            return None if n is None else -(-n // 4)

        return (input_shape[0], quarter(input_shape[1]), quarter(input_shape[2]), self.channels)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, in_channels=self.in_channels)
        return config


def check_image_shape(shape, channels):
    """Raises a clear error for a batch of images of the wrong rank, channels or size."""
    if len(shape) != 4:
        raise ValueError(
            f"HRViT expects a batch of images (batch, height, width, {channels}); "
            f"got a tensor of shape {tuple(shape)}."
        )
    if isinstance(shape[-1], int) and shape[-1] != channels:
        raise ValueError(
            f"HRViT expects images with {channels} channels (channels last), got {shape[-1]} "
            f"channels in shape {tuple(shape)}."
        )
    for axis, size in zip(("height", "width"), shape[1:3]):
        if isinstance(size, int) and size < MIN_INPUT_SIZE:
            raise ValueError(
                f"HRViT needs an image {axis} of at least {MIN_INPUT_SIZE} pixels, got {size} "
                f"(shape {tuple(shape)})."
            )


@register
class EffPatchEmbed(keras.layers.Layer):
    """Efficient patch embedding: 1x1 conv, depthwise 3x3 conv, LayerNorm. Keeps the resolution.

    Example:
    >>> EffPatchEmbed(32)(keras.ops.ones((1, 56, 56, 64))).shape
    (1, 56, 56, 32)
    """

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = check_positive_int(channels, "channels")
        policy = self.dtype_policy
        self.proj = Conv2D(channels, 1, name="proj", dtype=policy)
        self.dwconv = DepthwiseConv2D(3, padding="same", name="dwconv", dtype=policy)
        self.norm = layer_norm("norm", dtype=policy)

    def build(self, input_shape):
        out_shape = tuple(input_shape[:-1]) + (self.channels,)
        self.proj.build(input_shape)
        self.dwconv.build(out_shape)
        self.norm.build(out_shape)

    def call(self, x):
        return self.norm(self.dwconv(self.proj(x)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.channels,)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels)
        return config
