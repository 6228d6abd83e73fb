"""Convolutions with the same weights and results as Keras's, computed in the way each backend runs
fastest (benchmarks/bench.py measures the difference).

- XLA's CPU compiler lowers grouped (depthwise) convolutions to a slow generic loop: a 5x5
  depthwise convolution of a 128x128x64 map takes ~100 ms under `jax.jit`, while the same
  convolution written as a sum of `k*k` shifted, per-channel-scaled slices of the input, which XLA
  fuses into one pass, takes ~6 ms. So whenever XLA compiles for a CPU, every depthwise
  convolution is computed that way: always on JAX on a CPU, and on TensorFlow on a CPU-only
  machine under `jit_compile=True` (the b1 backbone's forward at 512x512 then takes 0.83x the
  time of TensorFlow's graph, instead of 3.6x with XLA's loop; Keras compiles TensorFlow with
  XLA by default only where there is a GPU). Other platforms keep their convolution kernels.
- Keras's PyTorch convolutions copy a channels-last input to channels-first and back to
  channels-last memory before calling PyTorch (two copies of the activation per convolution).
  PyTorch convolves a channels-last tensor natively when it is handed the channels-first *view* of
  it, so on PyTorch both layers pass that view and get a channels-last view back, with no copy.
  Under `torch.compile` (`jit_compile=True`) they leave layouts to the compiler: Inductor plans its
  own, and it cannot order the strides of that view once Dynamo makes the shapes symbolic (it
  raises "cannot determine truth value of Relational").
"""

import keras
from keras import ops

from keras_hrvit.layers.common import register


def _xla_for_cpu():
    """Whether this call is being compiled by XLA for a CPU (module docstring)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() == "cpu"
    if backend != "tensorflow":
        return False
    import tensorflow as tf

    try:
        # No public API tells whether a graph is being compiled by XLA; tf.function sets this
        # context around the Python function it traces with `jit_compile=True`.
        from tensorflow.python.ops.control_flow_util import GraphOrParentsInXlaContext
    except ImportError:
        return False
    return GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()) and all(
        device.device_type == "CPU" for device in tf.config.list_logical_devices()
    )


def _torch_eager():
    import torch  # Only reached on the PyTorch backend.

    return not torch.compiler.is_compiling()


def _channels_first_view(conv_fn, x, kernel, strides, padding, dilation_rate):
    y = conv_fn(
        ops.transpose(x, (0, 3, 1, 2)),
        kernel,
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        data_format="channels_first",
    )
    return ops.transpose(y, (0, 2, 3, 1))


def _bias_and_activation(layer, outputs):
    if layer.use_bias:
        outputs = outputs + layer.bias
    if layer.activation is not None:
        outputs = layer.activation(outputs)
    return outputs


def _shifted_sum_depthwise(x, kernel, strides, padding):
    """Depthwise convolution (multiplier 1) as a sum of strided slices times per-channel weights."""
    kh, kw = kernel.shape[0], kernel.shape[1]
    sh, sw = strides
    if padding == "same":
        height, width = ops.shape(x)[1], ops.shape(x)[2]
        out_h, out_w = -(-height // sh), -(-width // sw)
        pad_h = max((out_h - 1) * sh + kh - height, 0)
        pad_w = max((out_w - 1) * sw + kw - width, 0)
        top, left = pad_h // 2, pad_w // 2
        x = ops.pad(x, ((0, 0), (top, pad_h - top), (left, pad_w - left), (0, 0)))
    height, width = ops.shape(x)[1], ops.shape(x)[2]
    out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
    dtype = keras.backend.standardize_dtype(x.dtype)
    kernel = ops.cast(kernel, dtype)
    if dtype in ("float16", "bfloat16"):
        # Sum in float32 and round once, as convolution kernels do: partial sums rounded to
        # bfloat16 make a 3x3 (5x5) convolution 2.5x (3.7x) less accurate than Keras's.
        x, kernel = ops.cast(x, "float32"), ops.cast(kernel, "float32")
    out = None
    for i in range(kh):
        for j in range(kw):
            term = x[:, i : i + (out_h - 1) * sh + 1 : sh, j : j + (out_w - 1) * sw + 1 : sw, :]
            term = term * kernel[i, j, :, 0]
            out = term if out is None else out + term
    return ops.cast(out, dtype)


@register
class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` (channels-last), computed the fastest way on each backend.

    Same arguments, weights and outputs as the Keras layer; see the module docstring for why.

    Example:
    >>> DepthwiseConv2D(3, padding="same")(keras.ops.ones((1, 8, 8, 4))).shape
    (1, 8, 8, 4)
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.data_format != "channels_last":
            raise ValueError("keras_hrvit's DepthwiseConv2D is channels-last only.")

    def call(self, inputs):
        backend = keras.backend.backend()
        plain = self.depth_multiplier == 1 and self.dilation_rate == (1, 1)
        static = all(isinstance(n, int) for n in inputs.shape[1:3])
        if plain and static and _xla_for_cpu():
            outputs = _shifted_sum_depthwise(inputs, self.kernel, self.strides, self.padding)
            return _bias_and_activation(self, outputs)
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        kernel = self.kernel
        if dtype in ("float16", "bfloat16"):
            # TensorFlow 2.21's CPU depthwise kernel rounds its partial sums to bfloat16: a 3x3
            # convolution came out 2.1x (5x5: 3.3x) less accurate than one rounding of the
            # exact result (tests/test_precision_remat.py). Summing in float32 and rounding
            # once costs little: depthwise convolutions are a small share of HRViT's work.
            inputs, kernel = ops.cast(inputs, "float32"), ops.cast(kernel, "float32")
        if backend == "torch" and _torch_eager():
            outputs = _channels_first_view(
                ops.depthwise_conv,
                inputs,
                kernel,
                self.strides,
                self.padding,
                self.dilation_rate,
            )
        else:
            # Not Keras's call, which adds the bias through a Reshape and a Squeeze: on the
            # attention's parallel path (then added to the attention output) that graph makes
            # TensorFlow 2.21's Grappler remapper emit a node without an op and fail, and the
            # whole model then runs without any of its fusions (conv or MatMul with bias, ...).
            # tests/test_layers.py checks the optimizer's log.
            outputs = ops.depthwise_conv(
                inputs,
                kernel,
                strides=self.strides,
                padding=self.padding,
                dilation_rate=self.dilation_rate,
                data_format="channels_last",
            )
        return _bias_and_activation(self, ops.cast(outputs, dtype))


@register
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` (channels-last) without PyTorch's layout copies.

    Same arguments, weights and outputs as the Keras layer; see the module docstring for why.

    Example:
    >>> Conv2D(8, 3, strides=2)(keras.ops.ones((1, 9, 9, 4))).shape
    (1, 4, 4, 8)
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.data_format != "channels_last":
            raise ValueError("keras_hrvit's Conv2D is channels-last only.")

    def call(self, inputs):
        if keras.backend.backend() != "torch" or self.groups != 1 or not _torch_eager():
            return super().call(inputs)
        outputs = _channels_first_view(
            ops.conv, inputs, self.kernel, self.strides, self.padding, self.dilation_rate
        )
        return _bias_and_activation(self, outputs)
