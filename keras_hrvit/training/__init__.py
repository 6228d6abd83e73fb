"""Backend-agnostic training utilities: LR schedules, parameter-group AdamW and callbacks."""

from keras_hrvit.training.backup import AtomicBackupAndRestore
from keras_hrvit.training.callbacks import (
    AtomicCSVLogger,
    AtomicModelCheckpoint,
    TrainingCurves,
    TrainingDiverged,
    raise_if_diverged,
    save_model,
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
    "AtomicBackupAndRestore",
    "AtomicCSVLogger",
    "AtomicModelCheckpoint",
    "ParamGroupAdamW",
    "TrainingCurves",
    "TrainingDiverged",
    "WarmupCosineDecay",
    "WarmupPolyDecay",
    "build_adamw",
    "decay_exempt_variables",
    "decay_variables",
    "raise_if_diverged",
    "save_model",
    "standard_callbacks",
]
