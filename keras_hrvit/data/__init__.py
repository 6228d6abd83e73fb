"""Segmentation data: the embedded shapes dataset, dataset loaders and tf.data pipelines."""

from keras_hrvit.data.loaders import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    load_ade20k,
    load_cityscapes,
    load_folder,
)
from keras_hrvit.data.segmentation import (
    IGNORE_LABEL,
    IMAGENET_MEAN,
    IMAGENET_STD,
    denormalize,
    segmentation_eval_pipeline,
    segmentation_train_pipeline,
)
from keras_hrvit.data.shapes import SHAPES_CLASSES, generate_shapes, load_shapes

__all__ = [
    "ADE20K_CLASSES",
    "CITYSCAPES_CLASSES",
    "IGNORE_LABEL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SHAPES_CLASSES",
    "denormalize",
    "generate_shapes",
    "load_ade20k",
    "load_cityscapes",
    "load_folder",
    "load_shapes",
    "segmentation_eval_pipeline",
    "segmentation_train_pipeline",
]
