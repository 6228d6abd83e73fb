"""Heads that turn the four HRViT feature maps into predictions."""

from keras_hrvit.heads.classification import Bottleneck, HRNetClassifierHead
from keras_hrvit.heads.segformer import SegFormerHead
from keras_hrvit.heads.upernet import ConvBNReLU, FCNHead, UPerNetHead

__all__ = [
    "Bottleneck",
    "ConvBNReLU",
    "FCNHead",
    "HRNetClassifierHead",
    "SegFormerHead",
    "UPerNetHead",
]
