"""Backend-agnostic training utilities: LR schedules, parameter-group AdamW and callbacks."""

from keras_hrvit.training.callbacks import (
    AtomicModelCheckpoint,
    TrainingCurves,
    standard_callbacks,
)
from keras_hrvit.training.optimizers import (
    ParamGroupAdamW,
    build_adamw,
    decay_exempt_variables,
    decay_variables,
)
from keras_hrvit.training.schedules import WarmupCosineDecay, WarmupPolyDecay

__all__ = [
    "AtomicModelCheckpoint",
    "ParamGroupAdamW",
    "TrainingCurves",
    "WarmupCosineDecay",
    "WarmupPolyDecay",
    "build_adamw",
    "decay_exempt_variables",
    "decay_variables",
    "standard_callbacks",
]
