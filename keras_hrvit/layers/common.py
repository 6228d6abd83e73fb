"""Normalization factories and activations shared by the HRViT layers.

The original code uses PyTorch defaults (epsilon 1e-5, momentum 0.1); Keras defaults differ
(epsilon 1e-3), so every norm in the package is made here.
"""

import contextlib
import contextvars

import keras
from keras import ops

NORM_EPSILON = 1e-5
# PyTorch's momentum 0.1 updates the running statistics as Keras's momentum 0.9 does.
BN_MOMENTUM = 0.9

_SYNCHRONIZED_BATCH_NORM = contextvars.ContextVar("synchronized_batch_norm", default=False)


@contextlib.contextmanager
def synchronized_batch_norm(enabled=True):
    """Builds the BatchNormalization layers of HRViT layers created inside with cross-replica
    statistics (`keras.layers.BatchNormalization(synchronized=True)`) on TensorFlow.

    Under a `tf.distribute` strategy, plain BatchNormalization normalizes each replica's share of
    the batch with that share's statistics; synchronized layers all-reduce them, so a step on N
    replicas computes what a step on one device with the whole batch does. Only TensorFlow needs
    (and Keras only accepts) the flag: under `keras.distribution` on JAX the statistics are taken
    over the global batch already, so elsewhere the scope changes nothing.

    The flag is not part of any HRViT layer's config: a model saved after data-parallel training
    loads anywhere with plain BatchNormalization (the weights are the same). Build or load the
    model inside the scope to get synchronized layers. `keras_hrvit.distribution.
    distribution_scope("data_parallel")` enters this scope for you.

    Example:
    >>> with synchronized_batch_norm():
    ...     stem = ConvStem(64)
    >>> stem.bn1.synchronized  # on TensorFlow
    True
    """
    token = _SYNCHRONIZED_BATCH_NORM.set(bool(enabled))
    try:
        yield
    finally:
        _SYNCHRONIZED_BATCH_NORM.reset(token)


def batch_norm(name=None, zero_init=False, dtype=None):
    """A BatchNorm with PyTorch's epsilon, momentum and moving-variance update.

    `TorchBatchNormalization` (a `keras.layers.BatchNormalization` with the same variables)
    tracks the unbiased batch variance, as `nn.BatchNorm2d`'s `running_var` does; it is
    synchronized across replicas inside `synchronized_batch_norm()` on TensorFlow.
    """
    # Imported here: batch_norm.py imports `register` from this module.
    from keras_hrvit.layers.batch_norm import TorchBatchNormalization

    kwargs = {"gamma_initializer": "zeros", "beta_initializer": "zeros"} if zero_init else {}
    if _SYNCHRONIZED_BATCH_NORM.get() and keras.backend.backend() == "tensorflow":
        kwargs["synchronized"] = True
    return TorchBatchNormalization(
        epsilon=NORM_EPSILON, momentum=BN_MOMENTUM, name=name, dtype=dtype, **kwargs
    )


def layer_norm(name=None, dtype=None):
    return keras.layers.LayerNormalization(epsilon=NORM_EPSILON, name=name, dtype=dtype)


def gelu(x):
    """The exact (erf) GELU, PyTorch's `nn.GELU` default."""
    if keras.backend.backend() == "torch":
        return ops.gelu(x, approximate=False)  # one fused kernel
    # TensorFlow's and JAX's own exact GELU use erfc: ONNX has no erfc (tf2onnx), and XLA
    # evaluates erfc as two rational approximations, an exp and two divisions per element (the
    # GELUs took ~13% of the b1 backbone's time on JAX). PyTorch uses this formula.
    return 0.5 * x * (1.0 + ops.erf(x * ops.cast(0.7071067811865476, x.dtype)))


def hard_swish(x):
    """x * relu6(x + 3) / 6, PyTorch's nn.Hardswish."""
    if keras.backend.backend() == "torch":
        from keras_hrvit.layers import torch_ops  # imports torch

        return torch_ops.hard_swish(x)
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
