"""tf.data pipelines: embedded datasets, dataset loaders, segmentation and classification.

Modules: `shapes` (embedded segmentation set), `loaders` (ADE20K, Cityscapes, image/mask
folders, tfds segmentation builders), `segmentation` (the MMSegmentation train/eval
pipelines), `classification_sources` (embedded classification set, image folders, tfds),
`classification` (the DeiT/timm train/eval pipelines) and `randaugment` (timm's RandAugment).
"""

from keras_hrvit.data.classification import (
    classification_eval_pipeline,
    classification_train_pipeline,
)
from keras_hrvit.data.classification_sources import (
    EMBEDDED_CLASSES,
    generate_embedded_classification,
    load_classification_data,
    load_embedded_classification,
    load_image_folder,
    load_tfds_classification,
)
from keras_hrvit.data.loaders import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    load_ade20k,
    load_cityscapes,
    load_folder,
    load_tfds_segmentation,
)
from keras_hrvit.data.segmentation import (
    segmentation_eval_pipeline,
    segmentation_train_pipeline,
)
from keras_hrvit.data.shapes import SHAPES_CLASSES, generate_shapes, load_shapes
from keras_hrvit.presets import IGNORE_LABEL, IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "ADE20K_CLASSES",
    "EMBEDDED_CLASSES",
    "classification_eval_pipeline",
    "classification_train_pipeline",
    "generate_embedded_classification",
    "load_classification_data",
    "load_embedded_classification",
    "load_image_folder",
    "load_tfds_classification",
    "CITYSCAPES_CLASSES",
    "IGNORE_LABEL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SHAPES_CLASSES",
    "generate_shapes",
    "load_ade20k",
    "load_cityscapes",
    "load_folder",
    "load_shapes",
    "load_tfds_segmentation",
    "segmentation_eval_pipeline",
    "segmentation_train_pipeline",
]
