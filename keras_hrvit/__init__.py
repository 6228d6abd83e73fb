"""HRViT, the multi-scale high-resolution vision transformer, for Keras 3."""

# Importing registers every serializable class (layers, heads, models, losses, metrics,
# optimizer, schedules), so any `.keras` file the package writes loads after `import keras_hrvit`.
from keras_hrvit import heads, layers, losses, metrics, presets, training, weights
from keras_hrvit.models import (
    HRViTB1,
    HRViTB2,
    HRViTB3,
    HRViTBackbone,
    HRViTClassifier,
    HRViTSegmenter,
)

__version__ = "0.1.0"

__all__ = [
    "HRViTB1",
    "HRViTB2",
    "HRViTB3",
    "HRViTBackbone",
    "HRViTClassifier",
    "HRViTSegmenter",
    "heads",
    "layers",
    "losses",
    "metrics",
    "presets",
    "training",
    "weights",
]
