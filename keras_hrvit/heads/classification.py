"""HRNetV2-style classification head used to pretrain HRViT on ImageNet."""

import keras
from keras import ops

from keras_hrvit.layers.common import batch_norm, register
from keras_hrvit.layers.conv import Conv2D

FINAL_CHANNELS = 2048


@register
class Bottleneck(keras.layers.Layer):
    """ResNet bottleneck (1x1, 3x3, 1x1 to `4 * channels`), with a projection shortcut when the
    width changes. Convolutions have no bias. The shortcut's layers exist once `build` has seen
    that the width changes.

    Example:
    >>> Bottleneck(8)(keras.ops.ones((1, 7, 7, 16))).shape
    (1, 7, 7, 32)
    """

    expansion = 4

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        policy = self.dtype_policy
        out = self.expansion * self.channels
        self.conv1 = self._conv(self.channels, 1, "conv1")
        self.bn1 = batch_norm("bn1", dtype=policy)
        self.conv2 = self._conv(self.channels, 3, "conv2")
        self.bn2 = batch_norm("bn2", dtype=policy)
        self.conv3 = self._conv(out, 1, "conv3")
        self.bn3 = batch_norm("bn3", dtype=policy)
        self.has_shortcut = None  # known in `build`
        self.shortcut_conv = self.shortcut_bn = None

    def _conv(self, filters, size, name):
        padding = "same" if size == 3 else "valid"
        return Conv2D(
            filters, size, padding=padding, use_bias=False, name=name, dtype=self.dtype_policy
        )

    def build(self, input_shape):
        self.has_shortcut = input_shape[-1] != self.expansion * self.channels
        if self.has_shortcut:
            # Made here, not in `__init__`: a layer that never gets built (no shortcut) is one
            # `Model.quantize` refuses, and the width is only known now.
            self.shortcut_conv = self._conv(self.expansion * self.channels, 1, "shortcut_conv")
            self.shortcut_bn = batch_norm("shortcut_bn", dtype=self.dtype_policy)
        lead = tuple(input_shape[:-1])
        shapes = [input_shape] + [lead + (self.channels,)] * 2
        for conv, bn, shape in zip(
            (self.conv1, self.conv2, self.conv3), (self.bn1, self.bn2, self.bn3), shapes
        ):
            conv.build(shape)
            bn.build(conv.compute_output_shape(shape))
        if self.has_shortcut:
            self.shortcut_conv.build(input_shape)
            self.shortcut_bn.build(lead + (self.expansion * self.channels,))

    def call(self, x, training=None):
        y = ops.relu(self.bn1(self.conv1(x), training=training))
        y = ops.relu(self.bn2(self.conv2(y), training=training))
        y = self.bn3(self.conv3(y), training=training)
        if self.has_shortcut:
            x = self.shortcut_bn(self.shortcut_conv(x), training=training)
        return ops.relu(x + y)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.expansion * self.channels,)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels)
        return config


@register
class HRNetClassifierHead(keras.layers.Layer):
    """Merges the four branches into one 2048-d pooled vector (HRNetV2's classification head).

    Each branch goes through a bottleneck to `4 * head_channels[i]`; the maps are merged from fine
    to coarse with stride-2 3x3 convolutions; a 1x1 conv to 2048, BatchNorm, ReLU and global
    average pooling follow. A `Dropout` and `Dense(classes)` on top make the classifier.

    Example:
    >>> head = HRNetClassifierHead((8, 16, 32, 64))
    >>> shapes = [(1, 16, 16, 8), (1, 8, 8, 16), (1, 4, 4, 32), (1, 2, 2, 64)]
    >>> head([keras.ops.ones(s) for s in shapes]).shape
    (1, 2048)
    """

    def __init__(self, head_channels=(32, 64, 128, 256), **kwargs):
        super().__init__(**kwargs)
        self.head_channels = [int(c) for c in head_channels]
        policy = self.dtype_policy
        widths = [Bottleneck.expansion * c for c in self.head_channels]
        self.incre = [
            Bottleneck(c, name=f"incre_{i}", dtype=policy) for i, c in enumerate(self.head_channels)
        ]
        self.down_pad = keras.layers.ZeroPadding2D(1, dtype=policy)
        self.down_convs = [
            Conv2D(w, 3, strides=2, name=f"down_{i}_conv", dtype=policy)
            for i, w in enumerate(widths[1:])
        ]
        self.down_bns = [batch_norm(f"down_{i}_bn", dtype=policy) for i in range(len(widths) - 1)]
        self.final_conv = Conv2D(FINAL_CHANNELS, 1, name="final_conv", dtype=policy)
        self.final_bn = batch_norm("final_bn", dtype=policy)

    def build(self, input_shape):
        if len(input_shape) != len(self.head_channels):
            raise ValueError(
                f"HRNetClassifierHead has {len(self.head_channels)} branches, got "
                f"{len(input_shape)} inputs."
            )
        widths = [Bottleneck.expansion * c for c in self.head_channels]
        for layer, shape in zip(self.incre, input_shape):
            layer.build(tuple(shape))
        self.down_pad.build((None, None, None, widths[0]))  # `Model.quantize` needs it built
        for conv, bn, cin, cout in zip(self.down_convs, self.down_bns, widths, widths[1:]):
            conv.build((None, None, None, cin))
            bn.build((None, None, None, cout))
        self.final_conv.build((None, None, None, widths[-1]))
        self.final_bn.build((None, None, None, FINAL_CHANNELS))

    def call(self, features, training=None):
        y = self.incre[0](features[0], training=training)
        for i in range(1, len(self.incre)):
            down = self.down_convs[i - 1](self.down_pad(y))
            y = self.incre[i](features[i], training=training) + ops.relu(
                self.down_bns[i - 1](down, training=training)
            )
        y = ops.relu(self.final_bn(self.final_conv(y), training=training))
        return ops.mean(y, axis=(1, 2))

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], FINAL_CHANNELS)

    def get_config(self):
        config = super().get_config()
        config.update(head_channels=self.head_channels)
        return config
