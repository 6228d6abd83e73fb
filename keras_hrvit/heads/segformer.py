"""The SegFormer all-MLP decode head, as configured for HRViT."""

import keras
from keras import ops

from keras_hrvit.layers.common import batch_norm, check_positive_int, register, resize_to
from keras_hrvit.layers.conv import Conv2D


@register
class SegFormerHead(keras.layers.Layer):
    """Projects each branch to `channels`, upsamples to the finest branch, fuses and classifies.

    Returns logits at the finest branch's resolution (1/4 of the image for HRViT).

    Args:
        num_classes: output classes.
        channels: width of the projections and of the fusion (256 for b1/b2, 768 for b3).
        dropout: channel-wise dropout rate before the classifier (`nn.Dropout2d`).

    Example:
    >>> head = SegFormerHead(num_classes=7, channels=24)
    >>> shapes = [(1, 16, 16, 16), (1, 8, 8, 32), (1, 4, 4, 48), (1, 2, 2, 64)]
    >>> head([keras.ops.ones(s) for s in shapes]).shape
    (1, 16, 16, 7)
    """

    def __init__(self, num_classes, channels=256, dropout=0.1, num_inputs=4, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.channels = check_positive_int(channels, "channels")
        self.num_inputs = check_positive_int(num_inputs, "num_inputs")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout}.")
        self.dropout = dropout
        policy = self.dtype_policy
        self.projections = [
            Conv2D(channels, 1, name=f"proj_{i}", dtype=policy) for i in range(num_inputs)
        ]
        self.fusion_conv = Conv2D(channels, 1, use_bias=False, name="fusion_conv", dtype=policy)
        self.fusion_bn = batch_norm("fusion_bn", dtype=policy)
        # MMSegmentation's `nn.Dropout2d`: drops whole channels.
        self.dropout_layer = keras.layers.SpatialDropout2D(
            dropout, data_format="channels_last", dtype=policy
        )
        self.classifier = Conv2D(num_classes, 1, name="classifier", dtype=policy)

    def build(self, input_shape):
        if len(input_shape) != self.num_inputs:
            raise ValueError(
                f"SegFormerHead expects {self.num_inputs} feature maps, got {len(input_shape)}."
            )
        for layer, shape in zip(self.projections, input_shape):
            layer.build(tuple(shape))
        self.fusion_conv.build((None, None, None, self.channels * self.num_inputs))
        self.fusion_bn.build((None, None, None, self.channels))
        self.classifier.build((None, None, None, self.channels))

    def call(self, features, training=None):
        x = [resize_to(proj(f), features[0]) for proj, f in zip(self.projections, features)]
        x = ops.relu(
            self.fusion_bn(self.fusion_conv(ops.concatenate(x, axis=-1)), training=training)
        )
        return self.classifier(self.dropout_layer(x, training=training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (self.num_classes,)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            channels=self.channels,
            dropout=self.dropout,
            num_inputs=self.num_inputs,
        )
        return config
