"""Diversity-enhanced shortcut: a Kronecker-factored C x C channel projection."""

import math

import keras
from keras import ops

from keras_hrvit.layers.common import check_positive_int, gelu, register
from keras_hrvit.layers.dense import Dense


def des_factors(dim):
    """Splits `dim` into `(k, p)` as the original: `p = 2 ** (e - e // 2)`, `e = floor(log2 C)`."""
    exponent = int(math.floor(math.log2(dim)))
    p = 2 ** (exponent - exponent // 2)
    if dim % p:
        raise ValueError(f"DES needs `dim` divisible by {p} (its right factor), got {dim}.")
    return dim // p, p


@register
class DES(keras.layers.Layer):
    """Channel mixing with `O(C * sqrt(C))` weights instead of `O(C^2)`.

    The channels are viewed as a `(k, p)` matrix; a dense layer mixes along `p`, another (after a
    GELU) along `k`.

    Example:
    >>> DES(dim=48)(keras.ops.ones((1, 4, 4, 48))).shape
    (1, 4, 4, 48)
    """

    def __init__(self, dim, **kwargs):
        super().__init__(**kwargs)
        self.dim = check_positive_int(dim, "dim")
        self.k, self.p = des_factors(dim)
        self.proj_right = Dense(self.p, name="proj_right", dtype=self.dtype_policy)
        self.proj_left = Dense(self.k, name="proj_left", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.proj_right.build((None, self.p))
        self.proj_left.build((None, self.k))

    def call(self, x):
        lead = ops.shape(x)[:-1]
        y = self.proj_right(ops.reshape(x, (-1, self.k, self.p)))
        y = self.proj_left(gelu(ops.swapaxes(y, 1, 2)))
        return ops.reshape(ops.swapaxes(y, 1, 2), tuple(lead) + (self.dim,))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(dim=self.dim)
        return config
