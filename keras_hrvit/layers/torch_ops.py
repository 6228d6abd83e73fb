"""PyTorch's own fused kernels for operations that Keras's PyTorch backend composes from several.

Used only on the PyTorch backend (eager or compiled), each by the layer that names it, in place of
the Keras composition it computes; the parity tests check the PyTorch model, with these kernels,
against the original's tensors as they check the other backends.
`benchmarks/torch_ops.py` measures each against Keras's composition, interleaved in one process;
the figures are in benchmarks/README.md ("PyTorch's fused kernels").
"""

import torch
import torch.nn.functional as F
from keras import ops


def linear(inputs, kernel, bias):
    """`inputs @ kernel + bias` with the bias added inside the matrix product: Keras multiplies,
    then adds the bias in a second pass over the output."""
    return F.linear(inputs, ops.convert_to_tensor(kernel).T, _tensor(bias))


def batch_norm_inference(inputs, axis, mean, variance, gamma, beta, epsilon):
    """Normalization with moving statistics in one pass: Keras subtracts, scales and shifts in
    three. A channels-last map is handed over as its channels-first view, which PyTorch
    normalizes where it lies in memory."""
    outputs = F.batch_norm(
        ops.moveaxis(inputs, axis, 1), _tensor(mean), _tensor(variance), _tensor(gamma),
        _tensor(beta), training=False, eps=epsilon,
    )  # fmt: skip
    return ops.moveaxis(outputs, 1, axis)


def hard_swish(x):
    """`x * relu6(x + 3) / 6` in one kernel instead of four."""
    return F.hardswish(x)


def attention(query, key, value, mask, scale):
    """Scaled dot-product attention over (batch, tokens, heads, size) inputs: Keras's makes
    contiguous copies of all three after moving the heads forward; PyTorch's kernel reads the
    strided views as they are."""
    query, key, value = (torch.transpose(t, 1, 2) for t in (query, key, value))
    outputs = F.scaled_dot_product_attention(
        query, key, value, attn_mask=_tensor(mask), scale=scale
    )
    return torch.transpose(outputs, 1, 2)


def _tensor(value):
    return ops.convert_to_tensor(value) if value is not None else None
