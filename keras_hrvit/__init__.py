"""HRViT, the multi-scale high-resolution vision transformer, for Keras 3."""

from keras_hrvit import heads, layers, weights
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
    "weights",
]
