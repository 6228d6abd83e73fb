"""Mixed-scale convolutional feed-forward network."""

import keras
from keras import ops

from keras_hrvit.layers.common import check_positive_int, gelu, register
from keras_hrvit.layers.conv import DepthwiseConv2D
from keras_hrvit.layers.dense import Dense


@register
class MixCFN(keras.layers.Layer):
    """Dense expansion, depthwise 3x3 and 5x5 on the two halves of the hidden channels, GELU, dense.

    Args:
        dim: input and output channels.
        mlp_ratio: hidden channels are `int(dim * mlp_ratio)`.

    Example:
    >>> MixCFN(dim=32, mlp_ratio=4)(keras.ops.ones((1, 8, 8, 32))).shape
    (1, 8, 8, 32)
    """

    def __init__(self, dim, mlp_ratio=4.0, **kwargs):
        super().__init__(**kwargs)
        self.dim = check_positive_int(dim, "dim")
        if mlp_ratio <= 0:
            raise ValueError(f"`mlp_ratio` must be positive, got {mlp_ratio}.")
        self.mlp_ratio = mlp_ratio
        self.hidden = int(dim * mlp_ratio)
        if self.hidden < 2:
            raise ValueError(f"`dim * mlp_ratio` must be at least 2, got {self.hidden}.")
        policy = self.dtype_policy
        self.fc1 = Dense(self.hidden, name="fc1", dtype=policy)
        self.conv_3 = DepthwiseConv2D(3, padding="same", name="conv_3", dtype=policy)
        self.conv_5 = DepthwiseConv2D(5, padding="same", name="conv_5", dtype=policy)
        self.fc2 = Dense(dim, name="fc2", dtype=policy)
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: dim})

    def build(self, input_shape):
        lead = tuple(input_shape[:-1])
        split = self.hidden // 2
        self.fc1.build(input_shape)
        self.conv_3.build(lead + (split,))
        self.conv_5.build(lead + (self.hidden - split,))
        self.fc2.build(lead + (self.hidden,))

    def call(self, x):
        x = self.fc1(x)
        split = self.hidden // 2
        x = ops.concatenate([self.conv_3(x[..., :split]), self.conv_5(x[..., split:])], axis=-1)
        return self.fc2(gelu(x))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(dim=self.dim, mlp_ratio=self.mlp_ratio)
        return config
