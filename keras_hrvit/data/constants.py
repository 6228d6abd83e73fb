"""Normalization shared by training, evaluation, prediction and export (no TensorFlow needed)."""

# ImageNet statistics on 0-255 pixels, as in the original training code.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
# Pixels with this label take no part in the loss or the metrics.
IGNORE_LABEL = 255
