"""BatchNormalization whose moving statistics follow PyTorch's `nn.BatchNorm2d`."""

import keras
from keras import ops

from keras_hrvit.layers.common import register


@register
class TorchBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that updates the moving variance as PyTorch does.

    Both normalize a training batch with its biased variance (the mean squared deviation over
    the `n` values of a channel). PyTorch then moves `running_var` towards the unbiased variance,
    `n / (n - 1)` times the biased one, while Keras moves it towards the biased one, so after
    training Keras's moving variance is smaller, by up to `1 / n` for small feature maps. This
    layer makes the PyTorch update; everything else (inference, the normalization in training,
    masks, float32 statistics under float16/bfloat16, `synchronized` on TensorFlow, variable
    names) is `keras.layers.BatchNormalization`'s. The defaults are PyTorch's: Keras's `momentum`
    is the weight of the old value, so PyTorch's momentum 0.1 is `momentum=0.9` here.

    Args:
        axis: the channel axis.
        momentum: weight of the moving statistics in each update, in `[0, 1]`.
        epsilon: positive constant added to the variance.
        **kwargs: the other arguments of `keras.layers.BatchNormalization`, except `renorm`
            (batch renormalization has no PyTorch counterpart).

    Example:
    >>> bn = TorchBatchNormalization(moving_variance_initializer="zeros")
    >>> x = keras.ops.convert_to_tensor([[0.0], [2.0]])  # biased variance 1, unbiased 2
    >>> _ = bn(x, training=True)
    >>> round(float(keras.ops.convert_to_numpy(bn.moving_variance)[0]), 6)  # 0.9 * 0 + 0.1 * 2
    0.2
    """

    def __init__(self, axis=-1, momentum=0.9, epsilon=1e-5, **kwargs):
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
            raise ValueError(f"`momentum` must be a number in [0, 1], got {momentum!r}.")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"`momentum` must be in [0, 1], got {momentum}.")
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or epsilon <= 0:
            raise ValueError(f"`epsilon` must be a positive number, got {epsilon!r}.")
        if kwargs.get("renorm"):
            raise ValueError(
                "TorchBatchNormalization does not support `renorm=True` (PyTorch has no batch "
                "renormalization); use `keras.layers.BatchNormalization`."
            )
        super().__init__(axis=axis, momentum=momentum, epsilon=epsilon, **kwargs)

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable):
            if _fused_torch_inference(self, inputs, mask):
                from keras_hrvit.layers import torch_ops  # imports torch

                return torch_ops.batch_norm_inference(
                    inputs, self.axis, self.moving_mean, self.moving_variance, self.gamma,
                    self.beta, self.epsilon,
                )  # fmt: skip
            return super().call(inputs, training=training, mask=mask)
        # The training branch of the parent's `call`, but with two variances: the biased one
        # normalizes the batch, the unbiased one updates `moving_variance`.
        if mask is not None and len(mask.shape) != len(inputs.shape) - 1:
            raise ValueError(
                "The mask provided should be one dimension less than the inputs. Received: "
                f"mask.shape={mask.shape}, inputs.shape={inputs.shape}"
            )
        # Statistics in float32 (at least) under float16/bfloat16 compute dtypes, as the parent.
        inputs = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        mean, variance = self._moments(inputs, mask)
        count = ops.cast(self._count(inputs, mask), variance.dtype)
        # Bessel's correction; a single value per channel has biased variance 0, and stays 0.
        unbiased = variance * (count / ops.maximum(count - 1.0, 1.0))
        momentum = self.momentum
        self.moving_mean.assign(
            ops.cast(self.moving_mean, inputs.dtype) * momentum + mean * (1.0 - momentum)
        )
        self.moving_variance.assign(
            ops.cast(self.moving_variance, inputs.dtype) * momentum + unbiased * (1.0 - momentum)
        )
        outputs = ops.batch_normalization(
            x=inputs,
            mean=mean,
            variance=variance,
            axis=self.axis,
            offset=ops.cast(self.beta, inputs.dtype) if self.center else None,
            scale=ops.cast(self.gamma, inputs.dtype) if self.scale else None,
            epsilon=self.epsilon,
        )
        return ops.cast(outputs, self.compute_dtype)

    def _count(self, inputs, mask):
        """The number of values `_moments` averaged per channel (a scalar, or one per channel)."""
        if mask is not None:
            # The parent's masked moments weight each value by the mask, broadcast over channels
            # (and are not synchronized across replicas).
            weights = ops.broadcast_to(
                ops.expand_dims(ops.cast(mask, inputs.dtype), axis=-1), ops.shape(inputs)
            )
            return ops.sum(weights, axis=self._reduction_axes)
        shape = ops.shape(inputs)
        count = 1
        for axis in self._reduction_axes:
            count = count * shape[axis]
        if self.synchronized:
            # `ops.moments(synchronized=True)` (TensorFlow only) sums over the batches of all
            # replicas when called in a replica context, as `strategy.run` and `fit` call it.
            import tensorflow as tf

            replica_context = tf.distribute.get_replica_context()
            if replica_context is not None:
                count = replica_context.all_reduce(
                    tf.distribute.ReduceOp.SUM, tf.cast(count, inputs.dtype)
                )
        return count


def _fused_torch_inference(layer, inputs, mask):
    """Whether `layer` normalizes with `torch_ops.batch_norm_inference`: on the PyTorch backend,
    in float32 (Keras's path upcasts float16/bfloat16 itself) and without a mask. Not in
    training: PyTorch's fused backward rounds differently, and the gradients of the small maps
    then left the bounds of the original's own float32 error (tests/test_train_reference.py)."""
    if keras.backend.backend() != "torch" or mask is not None:
        return False
    if keras.backend.standardize_dtype(inputs.dtype) != "float32":
        return False
    return all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in layer.weights)
