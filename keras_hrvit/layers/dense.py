"""A dense layer with the same weights and results as Keras's, computed the way TensorFlow runs
fastest (benchmarks/bench.py measures the difference).

Keras's TensorFlow `Dense` multiplies a (batch, height, width, channels) input with `tensordot`,
which reshapes around its MatMul, then adds the bias to the 4-D result: Grappler's remapper only
fuses a MatMul with the BiasAdd that directly follows it, so the bias costs a separate pass over
the activation. HRViT applies a dense layer to every feature map of every block; flattening the
input to 2-D first lets TensorFlow fuse them (~5% of the b1 backbone's time). On PyTorch the
layer runs `torch_ops.linear`, which adds the bias inside the matrix product. JAX computes
exactly what Keras does (XLA fuses the addition).
"""

import keras
from keras import ops

from keras_hrvit.layers.common import register


@register
class Dense(keras.layers.Dense):
    """`keras.layers.Dense` over the last axis, with MatMul and bias fused on TensorFlow.

    Example:
    >>> Dense(8)(keras.ops.ones((1, 4, 4, 3))).shape
    (1, 4, 4, 8)
    """

    def call(self, inputs, training=None):
        if keras.backend.backend() == "torch":
            return self._torch_linear(inputs)
        return self._over_last_axis(super().call, inputs, training)

    def _torch_linear(self, inputs):
        from keras_hrvit.layers import torch_ops  # imports torch

        # `self.kernel` includes a LoRA update when one is enabled, as in Keras's call.
        outputs = torch_ops.linear(inputs, self.kernel, self.bias if self.use_bias else None)
        return self.activation(outputs) if self.activation is not None else outputs

    def quantized_call(self, inputs, training=None):
        # `Layer.__call__` runs this instead of `call` once the layer is quantized.
        return self._over_last_axis(super().quantized_call, inputs, training)

    def quantize(self, mode=None, type_check=True, config=None):
        """`keras.layers.Dense.quantize`, which refuses every subclass unless told otherwise.

        This class keeps Keras's variables and call, so quantizing it is Keras's quantization:
        without this, `model.quantize("int8")` skipped every dense layer of HRViT with a warning.
        A further subclass is still refused, as Keras refuses them.
        """
        if type_check and type(self) is not Dense:
            raise self._not_implemented_error(self.quantize)
        super().quantize(mode, type_check=False, config=config)

    def _over_last_axis(self, fn, inputs, training):
        if keras.backend.backend() != "tensorflow" or len(inputs.shape) <= 2:
            return fn(inputs, training=training)
        lead = tuple(ops.shape(inputs)[:-1])
        outputs = fn(ops.reshape(inputs, (-1, inputs.shape[-1])), training=training)
        return ops.reshape(outputs, lead + (self.units,))
