"""Normalization factories and activations shared by the HRViT layers.

The original code uses PyTorch defaults (epsilon 1e-5, momentum 0.1); Keras defaults differ
(epsilon 1e-3), so every norm in the package is made here.
"""

import keras
from keras import ops

NORM_EPSILON = 1e-5
# PyTorch's momentum 0.1 updates the running statistics as Keras's momentum 0.9 does.
BN_MOMENTUM = 0.9


def batch_norm(name=None, zero_init=False, dtype=None):
    kwargs = {"gamma_initializer": "zeros", "beta_initializer": "zeros"} if zero_init else {}
    return keras.layers.BatchNormalization(
        epsilon=NORM_EPSILON, momentum=BN_MOMENTUM, name=name, dtype=dtype, **kwargs
    )


def layer_norm(name=None, dtype=None):
    return keras.layers.LayerNormalization(epsilon=NORM_EPSILON, name=name, dtype=dtype)


def gelu(x):
    # PyTorch's nn.GELU default is the exact (erf) form.
    return ops.gelu(x, approximate=False)


def hard_swish(x):
    # x * relu6(x + 3) / 6, PyTorch's nn.Hardswish.
    return x * ops.relu6(x + 3.0) / 6.0


def register(cls):
    return keras.saving.register_keras_serializable(package="keras_hrvit")(cls)


def check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return value


def resize_bilinear(x, size):
    """Bilinear resize of a NHWC batch with half-pixel centers (PyTorch's `align_corners=False`).

    `keras.ops.image.resize` needs sizes known when the graph is traced; TensorFlow graphs with
    dynamic height and width get the same interpolation from gathers.
    """
    size = tuple(size)
    current = tuple(ops.shape(x)[1:3])
    static = all(isinstance(n, int) for n in size + current)
    if static and current == size:
        return x
    if static:
        return ops.image.resize(x, size, interpolation="bilinear", antialias=False)
    for axis, (n_in, n_out) in enumerate(zip(current, size), start=1):
        x = _linear_along(x, axis, n_in, n_out)
    return x


def resize_to(x, reference):
    """Bilinear resize of `x` to `reference`'s height and width."""
    return resize_bilinear(x, ops.shape(reference)[1:3])


def _linear_along(x, axis, n_in, n_out):
    dtype = x.dtype
    scale = ops.cast(n_in, "float32") / ops.cast(n_out, "float32")
    src = (ops.cast(ops.arange(n_out), "float32") + 0.5) * scale - 0.5
    src = ops.maximum(src, 0.0)
    low = ops.minimum(ops.cast(ops.floor(src), "int32"), n_in - 1)
    high = ops.minimum(low + 1, n_in - 1)
    frac = ops.cast(src - ops.cast(low, "float32"), dtype)
    shape = [1, 1, 1, 1]
    shape[axis] = -1
    frac = ops.reshape(frac, shape)
    return ops.take(x, low, axis=axis) * (1 - frac) + ops.take(x, high, axis=axis) * frac
