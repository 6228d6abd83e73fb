from keras_hrvit.models.backbone import HRViTBackbone
from keras_hrvit.models.classifier import HRViTB1, HRViTB2, HRViTB3, HRViTClassifier

__all__ = ["HRViTB1", "HRViTB2", "HRViTB3", "HRViTBackbone", "HRViTClassifier"]
