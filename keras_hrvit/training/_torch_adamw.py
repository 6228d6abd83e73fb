"""The PyTorch backend's fused update of `ParamGroupAdamW` (imported only on that backend)."""

import torch
from keras import ops


@torch.no_grad()
def grouped_adamw_update(optimizer, members, learning_rate, multiplier, decay):
    """One AdamW step for `members`, `(gradient, variable, slot index)` with equal settings.

    The same arithmetic as `ParamGroupAdamW.update_step`, batched with `torch._foreach_*`.
    """
    variables = [variable.value for _, variable, _ in members]
    grads = [ops.cast(grad, value.dtype) for (grad, _, _), value in zip(members, variables)]
    moments = [optimizer._momentums[index].value for _, _, index in members]
    velocities = [optimizer._velocities[index].value for _, _, index in members]
    dtype = variables[0].dtype

    lr = ops.cast(learning_rate, dtype) * multiplier
    if decay and optimizer.weight_decay:
        # `_use_weight_decay` applies the optimizer's own exclusion lists, as `update_step` does.
        decayed = [
            value
            for (_, variable, _), value in zip(members, variables)
            if optimizer._use_weight_decay(variable)
        ]
        if decayed:
            torch._foreach_mul_(decayed, 1.0 - lr * optimizer.weight_decay)
    step = ops.cast(optimizer.iterations + 1, dtype)
    beta_1_power = ops.power(ops.cast(optimizer.beta_1, dtype), step)
    beta_2_power = ops.power(ops.cast(optimizer.beta_2, dtype), step)
    alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)

    torch._foreach_lerp_(moments, grads, 1 - optimizer.beta_1)
    torch._foreach_lerp_(velocities, torch._foreach_mul(grads, grads), 1 - optimizer.beta_2)
    denominators = torch._foreach_add(torch._foreach_sqrt(velocities), optimizer.epsilon)
    steps = torch._foreach_div(torch._foreach_mul(moments, alpha), denominators)
    torch._foreach_sub_(variables, steps)
