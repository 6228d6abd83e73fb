"""Stochastic depth."""

import keras

from keras_hrvit.layers.common import register


@register
class DropPath(keras.layers.Dropout):
    """Drops the whole residual branch per sample (Keras `Dropout` with a per-sample noise shape).

    Example:
    >>> DropPath(0.1)(keras.ops.ones((2, 4, 4, 8)), training=True).shape
    (2, 4, 4, 8)
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        kwargs.pop("noise_shape", None)
        super().__init__(rate=rate, seed=seed, **kwargs)

    def build(self, input_shape):
        self.noise_shape = (None,) + (1,) * (len(input_shape) - 1)
        super().build(input_shape)
