"""Augmented cross-shaped window attention (HRViT's HRViTAttention)."""

import keras
from keras import ops

from keras_hrvit.layers.common import batch_norm, check_positive_int, hard_swish, register
from keras_hrvit.layers.conv import DepthwiseConv2D
from keras_hrvit.layers.dense import Dense

# Added to the scores of padded keys. Large enough that exp() underflows to 0 in float32, small
# enough not to overflow when added to a float32 score.
_MASK_VALUE = -1e9


@register
class CrossShapedAttention(keras.layers.Layer):
    """Cross-shaped window self-attention with a parallel convolution path.

    Half of the channels attend within horizontal stripes of `window_size` rows by the full width,
    the other half within vertical stripes of the full height by `window_size` columns. Keys are
    the values (one shared projection). A depthwise 3x3 convolution of the values runs in parallel.
    Any height and width are accepted: the stripes are zero-padded and the padding is masked out.

    Args:
        dim: channels of the input and output; must be even.
        window_size: stripe width `s`.
        head_dim: size of an attention head; halves narrower than it use a single head.

    Example:
    >>> layer = CrossShapedAttention(dim=32, window_size=7, head_dim=16)
    >>> layer(keras.ops.ones((2, 14, 9, 32))).shape
    (2, 14, 9, 32)
    """

    def __init__(self, dim, window_size, head_dim=32, **kwargs):
        super().__init__(**kwargs)
        check_positive_int(dim, "dim")
        check_positive_int(window_size, "window_size")
        check_positive_int(head_dim, "head_dim")
        if dim % 2:
            raise ValueError(f"`dim` must be even (split into two stripe directions), got {dim}.")
        half = dim // 2
        self.head_size = min(head_dim, half)
        if half % self.head_size:
            raise ValueError(
                f"Half the channels ({half}) must be a multiple of `head_dim` ({head_dim})."
            )
        self.dim = dim
        self.window_size = window_size
        self.head_dim = head_dim
        self.num_heads = half // self.head_size
        self.scale = self.head_size**-0.5
        self.qv = Dense(2 * dim, name="qv", dtype=self.dtype_policy)
        self.parallel_conv = DepthwiseConv2D(
            3, padding="same", name="parallel_conv", dtype=self.dtype_policy
        )
        self.proj = Dense(dim, name="proj", dtype=self.dtype_policy)
        # Zero-initialized, as in the original: each block's attention path starts at zero.
        self.norm = batch_norm("norm", zero_init=True, dtype=self.dtype_policy)
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: dim})

    def build(self, input_shape):
        self.qv.build(input_shape)
        self.parallel_conv.build(tuple(input_shape[:-1]) + (self.dim,))
        self.proj.build(tuple(input_shape[:-1]) + (self.dim,))
        self.norm.build(tuple(input_shape[:-1]) + (self.dim,))

    def call(self, x, training=None):
        qv = self.qv(x)
        q, v = qv[..., : self.dim], qv[..., self.dim :]
        parallel = self.parallel_conv(hard_swish(v))
        half = self.dim // 2
        rows = self._stripe_attention(q[..., :half], v[..., :half])
        # Vertical stripes are horizontal stripes of the transposed map.
        cols = self._stripe_attention(
            ops.transpose(q[..., half:], (0, 2, 1, 3)), ops.transpose(v[..., half:], (0, 2, 1, 3))
        )
        cols = ops.transpose(cols, (0, 2, 1, 3))
        y = hard_swish(ops.concatenate([rows, cols], axis=-1) + parallel)
        return self.norm(self.proj(y), training=training)

    def _stripe_attention(self, q, v):
        """Attention within stripes of `window_size` rows spanning the full width."""
        s = self.window_size
        _, height, width, channels = ops.shape(q)
        static = isinstance(height, int)
        pad = (s - height % s) % s  # not (-height) % s: ONNX has no floor modulo of negatives
        padded = not (static and pad == 0)
        if padded:
            q = ops.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
            v = ops.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
        stripes = (height + pad) // s
        tokens = s * width
        shape = (-1, stripes, tokens, self.num_heads, self.head_size)
        q, v = ops.reshape(q, shape), ops.reshape(v, shape)
        valid = None
        if padded:
            # Keys in padded rows are masked out: one (stripes, tokens) pattern for every image.
            # The row of token t of stripe i is i * s + t // width.
            rows = ops.arange(stripes)[:, None] * s + ops.arange(tokens)[None, :] // width
            valid = rows < height
        out = self._attend(q, v, valid)
        out = ops.reshape(out, (-1, height + pad, width, channels))
        return out[:, :height] if padded else out

    def _attend(self, q, v, valid):
        """Multi-head attention over (batch, stripe, token, head, size) with keys = values."""
        _, stripes, tokens, heads, size = ops.shape(q)
        if keras.backend.backend() == "torch":
            # PyTorch's fused scaled_dot_product_attention is ~1.5x faster than matmul + softmax
            # here (without Keras's copies of its inputs: torch_ops.attention); XLA compiles the
            # explicit form below better than Keras's einsum-based one.
            mask = None
            if valid is not None:
                mask = ops.reshape(valid, (1, stripes, 1, 1, tokens))
                mask = ops.reshape(
                    ops.tile(mask, (ops.shape(q)[0], 1, 1, 1, 1)), (-1, 1, 1, tokens)
                )
            from keras_hrvit.layers import torch_ops  # imports torch

            flat = (-1, tokens, heads, size)
            q, v = ops.reshape(q, flat), ops.reshape(v, flat)
            out = torch_ops.attention(q, v, v, mask=mask, scale=self.scale)
            return ops.reshape(out, ops.shape(q))
        q = _swap_tokens_and_heads(q * ops.cast(self.scale, q.dtype))
        v = _swap_tokens_and_heads(v)  # batch, stripe, head, token, size
        # Scores and softmax in float32 under mixed precision.
        scores = ops.cast(ops.matmul(q, ops.transpose(v, (0, 1, 2, 4, 3))), "float32")
        if valid is not None:
            bias = ops.where(ops.reshape(valid, (1, stripes, 1, 1, tokens)), 0.0, _MASK_VALUE)
            scores = scores + ops.cast(bias, "float32")
        weights = ops.cast(ops.softmax(scores, axis=-1), v.dtype)
        return _swap_tokens_and_heads(ops.matmul(weights, v))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(dim=self.dim, window_size=self.window_size, head_dim=self.head_dim)
        return config


def _swap_tokens_and_heads(x):
    """(batch, stripe, a, b, size) -> (batch, stripe, b, a, size)."""
    _, stripes, a, b, size = ops.shape(x)
    if any(isinstance(n, int) and n == 1 for n in (a, b)):
        # Moving a unit axis is a reshape. Written as one, because tf2onnx rewrites such a
        # transpose into a reshape with copy-this-axis zeros, then merges it into the reshape
        # before it, where the zeros copy the wrong axes.
        return ops.reshape(x, (-1, stripes, b, a, size))
    return ops.transpose(x, (0, 1, 3, 2, 4))
