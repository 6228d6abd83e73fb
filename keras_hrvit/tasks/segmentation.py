"""Semantic segmentation: training and evaluation workflows.

Library use:

>>> from keras_hrvit.data import load_shapes, segmentation_train_pipeline
>>> from keras_hrvit.data import segmentation_eval_pipeline
>>> model = HRViTSegmenter.from_preset("hrvit_tiny_shapes", input_shape=(64, 64, 3))
>>> train = segmentation_train_pipeline(load_shapes("train", 512, 64), crop_size=64)
>>> val = segmentation_eval_pipeline(load_shapes("validation", 64, 64), batch_size=16)
>>> train_segmenter(model, train, val, output_dir="runs/shapes", epochs=10,
...                 steps_per_epoch=64, learning_rate=2e-3, warmup_steps=100)
>>> report = evaluate_segmenter(model, val, class_names=SHAPES_CLASSES, output_dir="runs/eval")
>>> report["mIoU"]

Command line: `python -m keras_hrvit.train segmentation --help` and `python -m
keras_hrvit.evaluate --help` (`keras_hrvit/cli/`).
"""

import os
import time

import keras
import numpy as np
import tensorflow as tf

from keras_hrvit.data import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    IGNORE_LABEL,
    SHAPES_CLASSES,
    load_ade20k,
    load_cityscapes,
    load_folder,
    load_shapes,
    load_tfds_segmentation,
    segmentation_eval_pipeline,
)
from keras_hrvit.data.graph_map import graph_map
from keras_hrvit.data.segmentation import pad_with_mean
from keras_hrvit.distribution import check_gradient_clipping, shardable_batches, training_scope
from keras_hrvit.files import write_json
from keras_hrvit.inference import predict_logits, resize_logits
from keras_hrvit.metrics import ConfusionMatrix
from keras_hrvit.models.segmenter import HRViTSegmenter
from keras_hrvit.training import raise_if_diverged, standard_callbacks
from keras_hrvit.validation import check_positive_int
from keras_hrvit.visualize import save_segmentation_panel

DATASETS = ("shapes", "ade20k", "cityscapes", "folder")
# Besides `DATASETS`, "tfds:NAME" names any TensorFlow Datasets segmentation builder.
TFDS_PREFIX = "tfds:"
MODEL_FILE = "model.keras"
REPORT_FILE = "report.json"

_GENERIC_DEFAULTS = {
    "class_names": None,
    "base_scale": None,
    "crop_size": (512, 512),
    "test_scale": None,
    "mode": "whole",
    "eval_batch_size": 1,
}
# Per dataset: classes, the paper's (MMSeg) training scale and crop, and its test protocol.
# A scale of None rescales relative to each image's own size.
DATASET_DEFAULTS = {
    "shapes": {
        "class_names": SHAPES_CLASSES,
        "base_scale": None,
        "crop_size": None,  # the image size
        "test_scale": None,
        "mode": "whole",
        "eval_batch_size": 16,
    },
    "ade20k": {
        "class_names": ADE20K_CLASSES,
        "base_scale": (2048, 512),
        "crop_size": (512, 512),
        "test_scale": (2048, 512),
        "mode": "whole",
        "eval_batch_size": 1,
    },
    "cityscapes": {
        "class_names": CITYSCAPES_CLASSES,
        "base_scale": (2048, 1024),
        "crop_size": (1024, 1024),
        "test_scale": (2048, 1024),
        "mode": "slide",
        "slide_stride": (768, 768),
        "eval_batch_size": 1,
    },
    # Datasets the package knows nothing of: image folders and every "tfds:NAME".
    "folder": _GENERIC_DEFAULTS,
    "tfds": _GENERIC_DEFAULTS,
}


# --- models -----------------------------------------------------------------------------------


def build_segmenter(preset, **overrides):
    """`HRViTSegmenter.from_preset` with the CLI's `None` meaning "the preset's own value"."""
    return HRViTSegmenter.from_preset(
        preset, **{key: value for key, value in overrides.items() if value is not None}
    )


# --- data -------------------------------------------------------------------------------------


def check_dataset_name(dataset):
    """`dataset` if it is one of `DATASETS` or `"tfds:NAME"`; otherwise a `ValueError`.

    Example:
    >>> check_dataset_name("tfds:oxford_iiit_pet")
    'tfds:oxford_iiit_pet'
    """
    if isinstance(dataset, str) and (
        dataset in DATASETS or (dataset.startswith(TFDS_PREFIX) and dataset[len(TFDS_PREFIX) :])
    ):
        return dataset
    raise ValueError(
        f"Unknown dataset {dataset!r}: expected one of {', '.join(DATASETS)}, or "
        f"{TFDS_PREFIX}NAME for a TensorFlow Datasets builder (e.g. tfds:oxford_iiit_pet)."
    )


def dataset_defaults(dataset):
    """The `DATASET_DEFAULTS` entry of a dataset name (the `"tfds"` one for `"tfds:NAME"`).

    Example:
    >>> dataset_defaults("tfds:oxford_iiit_pet")["crop_size"]
    (512, 512)
    """
    check_dataset_name(dataset)
    return DATASET_DEFAULTS["tfds" if dataset.startswith(TFDS_PREFIX) else dataset]


def load_segmentation_split(
    dataset,
    split,
    data_dir=None,
    images_dir=None,
    masks_dir=None,
    image_size=128,
    num_images=None,
    seed=0,
    *,
    tfds_split=None,
    image_key="image",
    mask_key=None,
    reduce_zero_label=False,
):
    """`(image, mask)` pairs of one split of a supported dataset.

    Args:
        dataset: one of `DATASETS`, or `"tfds:NAME"` for a TensorFlow Datasets builder
            (`load_tfds_segmentation`).
        split: `"train"` or `"validation"`.
        data_dir: ADE20K: the `ADEChallengeData2016` folder or one holding it (default:
            Keras's cache, downloaded there on first use, see `load_ade20k`); tfds: the TFDS
            data directory; Cityscapes: its root.
        images_dir, masks_dir: folders for `dataset="folder"`.
        image_size, num_images: the shapes dataset's arguments.
        seed: the shapes dataset's seed, and the seed of the file order that ADE20K and folder
            training splits shuffle.
        tfds_split: tfds: the builder's split to read (default: `split`).
        image_key, mask_key: tfds: the image and mask features (`load_tfds_segmentation`).
        reduce_zero_label: folder and tfds: label 0 becomes 255 (ignored), the others move
            down by one.

    Example:

    >>> ds = load_segmentation_split("shapes", "validation", image_size=64, num_images=32)
    >>> pets = load_segmentation_split("tfds:oxford_iiit_pet", "validation", tfds_split="test",
    ...                                reduce_zero_label=True)
    """
    check_dataset_name(dataset)
    if split not in ("train", "validation"):
        raise ValueError(f"`split` must be 'train' or 'validation'; got {split!r}.")
    tfds_name = dataset[len(TFDS_PREFIX) :] if dataset.startswith(TFDS_PREFIX) else None
    if tfds_name is None and (tfds_split is not None or image_key != "image" or mask_key):
        raise ValueError(
            "`tfds_split`, `image_key` and `mask_key` apply to tfds:NAME datasets, not "
            f"{dataset!r}."
        )
    if reduce_zero_label and dataset in ("shapes", "ade20k", "cityscapes"):
        raise ValueError(
            f"`reduce_zero_label` applies to folder and tfds:NAME datasets, not {dataset!r} (the "
            "ADE20K loader always reduces it)."
        )
    shuffle = split == "train"
    if tfds_name is not None:
        return load_tfds_segmentation(
            tfds_name,
            tfds_split or split,
            image_key=image_key,
            mask_key=mask_key,
            reduce_zero_label=reduce_zero_label,
            data_dir=data_dir,
            shuffle_files=shuffle,
        )
    if dataset == "shapes":
        return load_shapes(split, num_images=num_images, image_size=image_size, seed=seed)
    if dataset == "ade20k":
        return load_ade20k(split, data_dir=data_dir, shuffle_files=shuffle, seed=seed)
    if dataset == "cityscapes":
        if not data_dir:
            raise ValueError("Cityscapes needs `data_dir`, the folder holding leftImg8bit/gtFine.")
        return load_cityscapes(data_dir, "train" if split == "train" else "val")
    if not images_dir or not masks_dir:
        raise ValueError("`dataset='folder'` needs `images_dir` and `masks_dir`.")
    return load_folder(
        images_dir,
        masks_dir,
        reduce_zero_label=reduce_zero_label,
        shuffle_files=shuffle,
        seed=seed,
    )


def fixed_size_validation_pipeline(
    ds, crop_size, batch_size=1, ignore_label=IGNORE_LABEL, num_classes=None
):
    """Validation batches of exactly `crop_size`, for monitoring inside `fit`.

    Each image and its mask are resized (aspect ratio kept) to fit in the crop and padded at the
    bottom and right (images with the mean pixel, masks with the ignore label), so every batch
    has one shape and the compiled test step is traced once. With `num_classes`, a mask label
    that is neither below it nor ignored stops the pipeline (see `segmentation_eval_pipeline`).
    Use `evaluate_segmenter` for the paper's full-resolution protocol.

    Example:

    >>> val = fixed_size_validation_pipeline(load_ade20k("validation"), (512, 512), 4)
    """
    height, width = crop_size
    ds = segmentation_eval_pipeline(
        ds,
        scale=(max(crop_size), min(crop_size)),
        batch_size=1,
        resize_mask=True,
        ignore_label=ignore_label,
        num_classes=num_classes,
    ).unbatch()

    def to_crop(image, mask):
        image, mask = image[:height, :width], mask[:height, :width]
        pad_h, pad_w = height - tf.shape(image)[0], width - tf.shape(image)[1]
        image = pad_with_mean(image, [[0, pad_h], [0, pad_w]])
        mask = tf.pad(mask, [[0, pad_h], [0, pad_w]], constant_values=ignore_label)
        return tf.ensure_shape(image, (height, width, 3)), tf.ensure_shape(mask, (height, width))

    return graph_map(ds, to_crop).batch(batch_size).prefetch(tf.data.AUTOTUNE)


# --- training ---------------------------------------------------------------------------------


def _check_dataset(ds, name):
    if not isinstance(ds, tf.data.Dataset):
        raise TypeError(f"`{name}` must be a batched tf.data.Dataset; got {type(ds).__name__}.")
    spec = ds.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2 or spec[0].shape.rank != 4:
        raise ValueError(
            f"`{name}` must yield (images (B, H, W, 3), masks (B, H, W)) batches, e.g. from "
            f"`segmentation_train_pipeline`; got element_spec {spec}."
        )


def mean_iou_key(model, validation=True):
    """The `fit` log key of the main head's mean IoU, e.g. `"val_mean_iou"`.

    Keras prefixes metrics with the output name when a model has several outputs (the
    auxiliary head), giving e.g. `"val_decode_head_mean_iou"`.
    """
    prefix = "val_" if validation else ""
    if len(model.outputs) > 1:
        return f"{prefix}{model.output_names[0]}_mean_iou"
    return f"{prefix}mean_iou"


def train_segmenter(
    model,
    train_ds,
    val_ds=None,
    *,
    output_dir,
    epochs,
    steps_per_epoch=None,
    validation_steps=None,
    jit_compile="auto",
    run_eagerly=False,
    tensorboard=True,
    callbacks=None,
    verbose="auto",
    distribution=None,
    **recipe,
):
    """`model.compile(...)` with a recipe of `HRViTSegmenter`, then a resumable `model.fit`.

    The recipe is `HRViTSegmenter.compile()`'s: `recipe="scratch"` (the default, for random
    weights) or `"paper"` (to fine-tune a pretrained backbone), its schedule spanning
    `epochs * steps_per_epoch` steps, `SegmentationCrossEntropy`, mean IoU. The other `recipe`
    keywords (`learning_rate`, `weight_decay`, `decay_exempt`, `head_lr_mult`, `warmup_steps`,
    `warmup_ratio`, `power`, `beta_1`, `beta_2`, `clipnorm`) change one value of it. This
    adds what a run needs around `fit`: everything goes to `output_dir`:
    `checkpoints/last.keras` and `checkpoints/best.keras` (by validation mean IoU, else training
    loss) written atomically each epoch, `history.json`, `history.csv` and `training_curves.png`,
    TensorBoard logs in `logs/` (with TensorFlow installed), and `backup/`, from which rerunning
    the same call after a crash resumes at the last finished epoch.

    Args:
        model: an `HRViTSegmenter`.
        train_ds: batched `(images, masks)` tf.data pipeline (`segmentation_train_pipeline`),
            images 0-255; it is repeated, so an epoch is `steps_per_epoch` batches.
        val_ds: batched validation pipeline, or None.
        output_dir: run directory.
        epochs: number of epochs.
        steps_per_epoch: optimizer steps per epoch; None for one pass over `train_ds` (its
            cardinality must be known).
        validation_steps: validation batches per epoch; None for all of `val_ds`.
        jit_compile, run_eagerly: `model.compile`'s (TensorFlow spends a minute or more tracing
            HRViT's train step; eager steps are slower but start at once).
        tensorboard: whether to write TensorBoard logs.
        callbacks: extra Keras callbacks, run after the standard ones.
        verbose: `fit` verbosity.
        distribution: `None` / `"none"` for one device, or `"data_parallel"` to split each
            batch of `train_ds` (the global batch) across the devices; the model must have been
            built inside `keras_hrvit.distribution.distribution_scope("data_parallel")`. JAX and
            TensorFlow only (see `keras_hrvit.distribution`).

    Returns:
        The `keras.callbacks.History` of this call (on a resumed run, the remaining epochs;
        `output_dir/history.json` holds the whole run).

    Example:

    >>> history = train_segmenter(model, train, val, output_dir="runs/a", epochs=20,
    ...                           steps_per_epoch=100, learning_rate=2e-3, warmup_steps=200)
    """
    steps_per_epoch = _check_training_arguments(
        model, train_ds, val_ds, output_dir, epochs, steps_per_epoch, validation_steps, recipe
    )
    with training_scope(model, distribution) as replicas:
        train_ds = shardable_batches(train_ds, replicas, "train_ds")
        if val_ds is not None:
            val_ds = shardable_batches(val_ds, replicas, "val_ds")
        model.compile(
            epochs=int(epochs),
            steps_per_epoch=int(steps_per_epoch),
            jit_compile=jit_compile,
            run_eagerly=run_eagerly,
            **recipe,
        )
        check_gradient_clipping(model.optimizer, replicas)
        run_callbacks = _run_callbacks(model, output_dir, val_ds is not None, tensorboard)
        history = model.fit(
            train_ds.repeat(),
            validation_data=val_ds,
            validation_steps=validation_steps,
            epochs=int(epochs),
            steps_per_epoch=int(steps_per_epoch),
            callbacks=run_callbacks + list(callbacks or []),
            verbose=verbose,
            # The pipelines shuffle; Keras cannot shuffle a tf.data.Dataset and would warn.
            shuffle=False,
        )
    return raise_if_diverged(history, output_dir)


def _check_training_arguments(
    model, train_ds, val_ds, output_dir, epochs, steps_per_epoch, validation_steps, recipe
):
    """Checks `train_segmenter`'s arguments; returns `steps_per_epoch` (default: one pass)."""
    if not isinstance(model, HRViTSegmenter):
        raise TypeError(f"`model` must be an HRViTSegmenter; got {type(model).__name__}.")
    _check_dataset(train_ds, "train_ds")
    if val_ds is not None:
        _check_dataset(val_ds, "val_ds")
    if not output_dir:
        raise ValueError("`output_dir` must be a non-empty path.")
    check_positive_int("epochs", epochs)
    if steps_per_epoch is None:
        cardinality = int(train_ds.cardinality())
        if cardinality <= 0:
            raise ValueError(
                "`steps_per_epoch` is needed: the size of `train_ds` is unknown or infinite "
                f"(cardinality {cardinality})."
            )
        steps_per_epoch = cardinality
    check_positive_int("steps_per_epoch", steps_per_epoch)
    if validation_steps is not None:
        check_positive_int("validation_steps", validation_steps)
    accepted = {"recipe", *model.recipes[model.default_recipe]}
    unknown = sorted(set(recipe) - accepted)
    if unknown:
        raise TypeError(f"Unknown recipe arguments {unknown}; the recipe takes {sorted(accepted)}.")
    return steps_per_epoch


def _run_callbacks(model, output_dir, validation, tensorboard):
    """`standard_callbacks` keeping the best epoch by validation mean IoU, else training loss."""
    return standard_callbacks(
        output_dir,
        monitor=mean_iou_key(model) if validation else "loss",
        mode="max" if validation else "min",
        tensorboard=tensorboard,
    )


# --- evaluation -------------------------------------------------------------------------------


def num_model_classes(model):
    """The number of classes of a segmenter (its `num_classes`, else its output width), or None."""
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None and getattr(model, "outputs", None):
        num_classes = model.outputs[0].shape[-1]
    return None if num_classes is None else int(num_classes)


def _to_numpy(value):
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def _resize_for_display(image, size):
    if image.shape[:2] == tuple(size):
        return image
    from PIL import Image

    resized = Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(resized)


def evaluate_segmenter(
    model,
    dataset,
    num_classes=None,
    class_names=None,
    *,
    mode="whole",
    crop_size=None,
    stride=None,
    flip=False,
    scales=(1.0,),
    ignore_label=IGNORE_LABEL,
    output_dir=None,
    num_overlays=8,
    max_batches=None,
    progress=True,
):
    """Streams `dataset` through `predict_logits` and scores it like MMSegmentation.

    Predictions are resized to each mask's resolution before scoring, so a dataset from
    `segmentation_eval_pipeline(..., scale=...)` (resized images, original masks) is scored at
    full resolution. Writes `output_dir/report.json` (aAcc, mIoU, mAcc, per-class IoU and
    accuracy, and the settings) and `output_dir/overlays/NNNN.png` panels (image | ground truth
    | prediction) for the first `num_overlays` images.

    Args:
        model: a segmenter returning NHWC logits (an auxiliary output is ignored).
        dataset: batched `(images, masks)`, images 0-255.
        num_classes: number of classes; default: the model's.
        class_names: optional names for the report and the overlay legends.
        mode, crop_size, stride, flip, scales: `predict_logits` arguments ("whole" or "slide").
        ignore_label: mask value to skip.
        output_dir: where to write the report and overlays; None writes nothing.
        num_overlays: how many overlay PNGs to write.
        max_batches: stop after this many batches (None: the whole dataset).
        progress: show a tqdm progress bar.

    Returns:
        The report dict (`ConfusionMatrix.result()` plus the settings and timing).

    Example:

    >>> val = segmentation_eval_pipeline(load_shapes("validation", 200, 64), batch_size=16)
    >>> report = evaluate_segmenter(model, val, class_names=SHAPES_CLASSES, output_dir="eval")
    >>> round(report["mIoU"], 3)
    """
    from tqdm.auto import tqdm

    num_classes = _check_evaluation_arguments(model, num_classes, class_names, num_overlays)
    if max_batches is not None:
        check_positive_int("max_batches", max_batches)
        dataset = dataset.take(max_batches)
    matrix = ConfusionMatrix(num_classes, ignore_label=ignore_label, class_names=class_names)
    total = int(dataset.cardinality()) if hasattr(dataset, "cardinality") else -1
    start = time.time()
    num_images = written = 0
    bar = tqdm(
        dataset,
        total=total if total > 0 else None,
        desc="evaluate",
        unit="batch",
        disable=not progress,
    )
    for images, masks in bar:
        images, masks = _to_numpy(images), _to_numpy(masks)
        if masks.ndim == 4:
            masks = masks[..., 0]
        predictions = _predict_classes(
            model, images, masks.shape[1:3], num_classes, mode, crop_size, stride, flip, scales
        )
        matrix.update(masks, predictions)
        if output_dir is not None and written < num_overlays:
            shown = images[: num_overlays - written]
            written = _save_overlays(output_dir, written, shown, masks, predictions, class_names)
        num_images += len(images)
        if progress:
            bar.set_postfix(mIoU=f"{matrix.mean_iou():.4f}")
    bar.close()
    if num_images == 0:
        raise ValueError("`dataset` yielded no batches.")
    report = matrix.result()
    report.update(
        mode=mode,
        crop_size=None if crop_size is None else list(np.broadcast_to(crop_size, 2).tolist()),
        stride=None if stride is None else list(np.broadcast_to(stride, 2).tolist()),
        flip=bool(flip),
        scales=[float(s) for s in scales],
        num_images=num_images,
        seconds=round(time.time() - start, 2),
    )
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        write_json(os.path.join(output_dir, REPORT_FILE), report)
    return report


def _check_evaluation_arguments(model, num_classes, class_names, num_overlays):
    """Checks `evaluate_segmenter`'s arguments; returns `num_classes` (default: the model's)."""
    if num_classes is None:
        num_classes = num_model_classes(model)
        if num_classes is None:
            raise ValueError("Pass `num_classes`: it cannot be read from the model.")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(
            f"`class_names` has {len(class_names)} names but the model has {num_classes} classes."
        )
    if isinstance(num_overlays, bool) or not isinstance(num_overlays, int) or num_overlays < 0:
        raise ValueError(f"`num_overlays` must be an int >= 0; got {num_overlays!r}.")
    return num_classes


def _predict_classes(model, images, size, num_classes, mode, crop_size, stride, flip, scales):
    """Class maps of a batch of images at `size`, the masks' resolution, as a numpy array."""
    logits = predict_logits(
        model,
        images,
        mode=mode,
        crop_size=crop_size,
        stride=stride,
        num_classes=num_classes,
        flip=flip,
        scales=scales,
        return_numpy=False,
    )
    logits = resize_logits(logits, size)
    return keras.ops.convert_to_numpy(keras.ops.argmax(logits, axis=-1))


def _save_overlays(output_dir, written, images, masks, predictions, class_names):
    """Writes `overlays/NNNN.png` panels from number `written` on; returns the new count."""
    shown = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    for image, mask, prediction in zip(shown, masks, predictions):
        save_segmentation_panel(
            os.path.join(output_dir, "overlays", f"{written:04d}.png"),
            _resize_for_display(image, mask.shape),
            mask,
            prediction,
            class_names=class_names,
        )
        written += 1
    return written


__all__ = [
    "DATASETS",
    "DATASET_DEFAULTS",
    "MODEL_FILE",
    "REPORT_FILE",
    "TFDS_PREFIX",
    "build_segmenter",
    "check_dataset_name",
    "dataset_defaults",
    "evaluate_segmenter",
    "fixed_size_validation_pipeline",
    "load_segmentation_split",
    "mean_iou_key",
    "num_model_classes",
    "train_segmenter",
]
