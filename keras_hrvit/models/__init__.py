from keras_hrvit.models.backbone import HRViTBackbone
from keras_hrvit.models.classifier import HRViTB1, HRViTB2, HRViTB3, HRViTClassifier
from keras_hrvit.models.segmenter import HRViTSegmenter

__all__ = ["HRViTB1", "HRViTB2", "HRViTB3", "HRViTBackbone", "HRViTClassifier", "HRViTSegmenter"]
