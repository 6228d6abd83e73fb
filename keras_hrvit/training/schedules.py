"""Learning-rate schedules matching the HRViT reference training recipes.

Both schedules are pure `keras.ops` functions of the step, so they trace under `tf.function`,
`jax.jit` and torch alike, and both serialize through `get_config`.
"""

import math
import numbers

import keras
from keras import ops

from keras_hrvit.validation import check_number, check_positive_int


def _check_number(name, value, minimum, strict=False, maximum=None):
    # A value of the wrong type is a TypeError, as in Keras; a number out of range (NaN and
    # infinities included) a ValueError of `check_number`.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number. Received: {name}={value!r}")
    return check_number(name, value, minimum, maximum, strict=strict)


def _check_steps(total_steps, warmup_steps):
    for name, value in (("total_steps", total_steps), ("warmup_steps", warmup_steps)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"`{name}` must be an int. Received: {name}={value!r}")
    check_positive_int("total_steps", total_steps)
    check_number("warmup_steps", warmup_steps, 0, total_steps, integer=True)


@keras.saving.register_keras_serializable(package="keras_hrvit")
class WarmupPolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    """MMSeg's iteration-based poly decay with MMCV's linear warm-up.

    For step `t` (0-based, i.e. `optimizer.iterations` before the update), exactly as MMCV's
    `PolyLrUpdaterHook(warmup="linear")`:

        regular = (base_lr - min_lr) * (1 - t / total_steps) ** power + min_lr
        lr = regular                                   if t >= warmup_steps
        lr = regular * (1 - (1 - t / warmup_steps) * (1 - warmup_ratio))   otherwise

    Steps past `total_steps` stay at `min_lr`. With `power=0` the rate stays at `base_lr` after
    the warm-up (a constant rate, the from-scratch segmentation recipe's).

    Args:
        base_lr: Peak learning rate (> 0).
        total_steps: Number of optimizer steps of the whole run (`max_iters`).
        warmup_steps: Linear warm-up length in steps (0 disables warm-up).
        warmup_ratio: Warm-up starts at `warmup_ratio * regular_lr`, in [0, 1].
        power: Exponent of the poly decay (>= 0; 0 for no decay).
        min_lr: Floor of the decay, in [0, base_lr].

    Example:

    >>> schedule = WarmupPolyDecay(6e-5, total_steps=160000, warmup_steps=1500)
    >>> optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=0.01)
    """

    def __init__(
        self,
        base_lr,
        total_steps,
        warmup_steps=1500,
        warmup_ratio=1e-6,
        power=1.0,
        min_lr=0.0,
        name="WarmupPolyDecay",
    ):
        super().__init__()
        _check_number("base_lr", base_lr, 0, strict=True)
        _check_steps(total_steps, warmup_steps)
        _check_number("warmup_ratio", warmup_ratio, 0, maximum=1)
        _check_number("power", power, 0)
        _check_number("min_lr", min_lr, 0)
        if min_lr > base_lr:
            raise ValueError(
                f"`min_lr` must be <= `base_lr`. Received: min_lr={min_lr}, base_lr={base_lr}"
            )
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_ratio = float(warmup_ratio)
        self.power = float(power)
        self.min_lr = float(min_lr)
        self.name = name

    def __call__(self, step):
        t = ops.minimum(ops.cast(step, "float32"), float(self.total_steps))
        # Clamping above keeps the base of the power >= 0, so fractional powers never give NaN.
        # Power 0 gives 1 everywhere, 0 ** 0 included, on every backend.
        coeff = ops.power(1.0 - t / float(self.total_steps), self.power)
        regular = (self.base_lr - self.min_lr) * coeff + self.min_lr
        if self.warmup_steps == 0:
            return regular
        k = (1.0 - t / float(self.warmup_steps)) * (1.0 - self.warmup_ratio)
        return ops.where(t < float(self.warmup_steps), regular * (1.0 - k), regular)

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "warmup_ratio": self.warmup_ratio,
            "power": self.power,
            "min_lr": self.min_lr,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="keras_hrvit")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """timm's `CosineLRScheduler` (one cycle) with linear warm-up, counted in steps.

    timm counts warm-up and decay in epochs; pass `epochs * steps_per_epoch` to get the same
    curve updated every step (timm's `t_in_epochs=False`). For step `t`:

        lr = warmup_start_lr + t * (base_lr - warmup_start_lr) / warmup_steps   if t < warmup_steps
        lr = min_lr + 0.5 * (base_lr - min_lr) * (1 + cos(pi * c / n))          otherwise

    where `c = t, n = total_steps` (timm's default `warmup_prefix=False`, the cosine runs over
    the whole schedule, warm-up included) or `c = t - warmup_steps, n = total_steps -
    warmup_steps` with `warmup_prefix=True`. Steps past `total_steps` stay at `min_lr`.

    Args:
        base_lr: Peak learning rate (> 0).
        total_steps: Schedule length in steps (timm's `t_initial`).
        warmup_steps: Linear warm-up length in steps (0 disables warm-up).
        warmup_start_lr: Learning rate at step 0 of the warm-up (timm's `warmup_lr_init`).
        min_lr: Final learning rate (timm's `lr_min`), in [0, base_lr].
        warmup_prefix: Whether the cosine starts after the warm-up instead of at step 0.

    Example:

    >>> schedule = WarmupCosineDecay(1e-3, total_steps=300 * 1251, warmup_steps=5 * 1251,
    ...                              warmup_start_lr=1e-6, min_lr=1e-5)
    """

    def __init__(
        self,
        base_lr,
        total_steps,
        warmup_steps=0,
        warmup_start_lr=0.0,
        min_lr=0.0,
        warmup_prefix=False,
        name="WarmupCosineDecay",
    ):
        super().__init__()
        _check_number("base_lr", base_lr, 0, strict=True)
        _check_steps(total_steps, warmup_steps)
        _check_number("warmup_start_lr", warmup_start_lr, 0)
        _check_number("min_lr", min_lr, 0)
        if min_lr > base_lr:
            raise ValueError(
                f"`min_lr` must be <= `base_lr`. Received: min_lr={min_lr}, base_lr={base_lr}"
            )
        if warmup_prefix and warmup_steps == total_steps:
            raise ValueError(
                "With `warmup_prefix=True`, `warmup_steps` must be < `total_steps` so that some "
                f"steps are left to decay. Received: warmup_steps={warmup_steps}, "
                f"total_steps={total_steps}"
            )
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start_lr = float(warmup_start_lr)
        self.min_lr = float(min_lr)
        self.warmup_prefix = bool(warmup_prefix)
        self.name = name

    def __call__(self, step):
        t = ops.minimum(ops.cast(step, "float32"), float(self.total_steps))
        if self.warmup_prefix:
            c = ops.maximum(t - float(self.warmup_steps), 0.0)
            n = float(self.total_steps - self.warmup_steps)
        else:
            c, n = t, float(self.total_steps)
        cosine = self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + ops.cos(math.pi * c / n))
        if self.warmup_steps == 0:
            return cosine
        slope = (self.base_lr - self.warmup_start_lr) / float(self.warmup_steps)
        warm = self.warmup_start_lr + t * slope
        return ops.where(t < float(self.warmup_steps), warm, cosine)

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "warmup_start_lr": self.warmup_start_lr,
            "min_lr": self.min_lr,
            "warmup_prefix": self.warmup_prefix,
            "name": self.name,
        }
