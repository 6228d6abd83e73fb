"""Semantic segmentation: training and evaluation loops, and the `segmentation` CLI subcommand.

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

Command line: `python -m keras_hrvit.train segmentation --help`.
"""

import argparse
import json
import os
import shutil
import time
import warnings

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
    segmentation_eval_pipeline,
    segmentation_train_pipeline,
)
from keras_hrvit.distribution import (
    check_gradient_clipping,
    distribution_scope,
    shardable_batches,
    training_scope,
)
from keras_hrvit.inference import predict_logits, resize_logits
from keras_hrvit.metrics import ConfusionMatrix
from keras_hrvit.models.segmenter import HEADS, HRViTSegmenter
from keras_hrvit.presets import BACKBONE_PRESETS, SEGMENTER_PRESETS
from keras_hrvit.tasks.cli import (
    add_compile_arguments,
    add_distribution_argument,
    check_distribution_argument,
    compile_kwargs,
)
from keras_hrvit.training import standard_callbacks
from keras_hrvit.training.callbacks import _atomic_write, _write_json
from keras_hrvit.validation import check_positive_int
from keras_hrvit.visualize import save_segmentation_panel
from keras_hrvit.weights.pretrained import check_backbone_source, load_backbone_weights

DATASETS = ("shapes", "ade20k", "cityscapes", "folder")
MODEL_FILE = "model.keras"
REPORT_FILE = "report.json"

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
    "folder": {
        "class_names": None,
        "base_scale": None,
        "crop_size": (512, 512),
        "test_scale": None,
        "mode": "whole",
        "eval_batch_size": 1,
    },
}


# --- models -----------------------------------------------------------------------------------


def build_segmenter(preset, **overrides):
    """`HRViTSegmenter.from_preset` with the CLI's `None` meaning "the preset's own value"."""
    return HRViTSegmenter.from_preset(
        preset, **{key: value for key, value in overrides.items() if value is not None}
    )


def save_model(model, path):
    """Saves `model` as a `.keras` file atomically (a crash never leaves a truncated file)."""
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"The model path must end in '.keras'; got {path!r}.")
    _atomic_write(path, lambda tmp: model.save(tmp), ".keras")
    return path


# --- data -------------------------------------------------------------------------------------


def load_segmentation_split(
    dataset,
    split,
    data_dir=None,
    images_dir=None,
    masks_dir=None,
    image_size=128,
    num_images=None,
    seed=0,
):
    """`(image, mask)` pairs of one split of a supported dataset.

    Args:
        dataset: one of `DATASETS`.
        split: `"train"` or `"validation"`.
        data_dir: TFDS data directory (ADE20K) or the Cityscapes root.
        images_dir, masks_dir: folders for `dataset="folder"`.
        image_size, num_images, seed: the shapes dataset's arguments.

    Example:

    >>> ds = load_segmentation_split("shapes", "validation", image_size=64, num_images=32)
    """
    if dataset not in DATASETS:
        raise ValueError(f"Unknown dataset {dataset!r}. Known datasets: {', '.join(DATASETS)}.")
    if split not in ("train", "validation"):
        raise ValueError(f"`split` must be 'train' or 'validation'; got {split!r}.")
    if dataset == "shapes":
        return load_shapes(split, num_images=num_images, image_size=image_size, seed=seed)
    if dataset == "ade20k":
        return load_ade20k(split, data_dir=data_dir, shuffle_files=split == "train")
    if dataset == "cityscapes":
        if not data_dir:
            raise ValueError("Cityscapes needs `data_dir`, the folder holding leftImg8bit/gtFine.")
        return load_cityscapes(data_dir, "train" if split == "train" else "val")
    if not images_dir or not masks_dir:
        raise ValueError("`dataset='folder'` needs `images_dir` and `masks_dir`.")
    return load_folder(images_dir, masks_dir, shuffle_files=split == "train", seed=seed)


def fixed_size_validation_pipeline(ds, crop_size, batch_size=1, ignore_label=IGNORE_LABEL):
    """Validation batches of exactly `crop_size`, for monitoring inside `fit`.

    Each image and its mask are resized (aspect ratio kept) to fit in the crop and padded at the
    bottom and right (mask padding is ignored), so every batch has one shape and the compiled
    test step is traced once. Use `evaluate_segmenter` for the paper's full-resolution protocol.

    Example:

    >>> val = fixed_size_validation_pipeline(load_ade20k("validation"), (512, 512), 4)
    """
    height, width = crop_size
    ds = segmentation_eval_pipeline(
        ds, scale=(max(crop_size), min(crop_size)), batch_size=1, resize_mask=True
    ).unbatch()

    def to_crop(image, mask):
        image, mask = image[:height, :width], mask[:height, :width]
        pad_h, pad_w = height - tf.shape(image)[0], width - tf.shape(image)[1]
        image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])
        mask = tf.pad(mask, [[0, pad_h], [0, pad_w]], constant_values=ignore_label)
        return tf.ensure_shape(image, (height, width, 3)), tf.ensure_shape(mask, (height, width))

    return ds.map(to_crop).batch(batch_size).prefetch(tf.data.AUTOTUNE)


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
    """`model.compile(...)` with the paper's recipe, then a resumable `model.fit`.

    The recipe is `HRViTSegmenter.compile()`'s (AdamW groups, heads at 10x, warm-up then poly
    decay over `epochs * steps_per_epoch` steps, `SegmentationCrossEntropy`, mean IoU);
    `recipe` keywords (`learning_rate`, `weight_decay`, `head_lr_mult`, `warmup_steps`,
    `warmup_ratio`, `power`, `beta_1`, `beta_2`, `clipnorm`) change it. This adds what a run
    needs around `fit`: everything goes to `output_dir`: `checkpoints/last.keras` and
    `checkpoints/best.keras` (by validation mean IoU, else training loss) written atomically each
    epoch, `history.json` and `training_curves.png`, TensorBoard logs in `logs/`, and `backup/`,
    from which rerunning the same call after a crash resumes at the last finished epoch.

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
    unknown = sorted(set(recipe) - set(model.recipe))
    if unknown:
        raise TypeError(
            f"Unknown recipe arguments {unknown}; the recipe takes {sorted(model.recipe)}."
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
        monitor = mean_iou_key(model) if val_ds is not None else "loss"
        run_callbacks = standard_callbacks(
            output_dir,
            monitor=monitor,
            mode="max" if val_ds is not None else "min",
            tensorboard=tensorboard,
        )
        run_callbacks += list(callbacks or [])
        return model.fit(
            train_ds.repeat(),
            validation_data=val_ds,
            validation_steps=validation_steps,
            epochs=int(epochs),
            steps_per_epoch=int(steps_per_epoch),
            callbacks=run_callbacks,
            verbose=verbose,
            # The pipelines shuffle; Keras cannot shuffle a tf.data.Dataset and would warn.
            shuffle=False,
        )


# --- evaluation -------------------------------------------------------------------------------


def _num_model_classes(model):
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

    if num_classes is None:
        num_classes = _num_model_classes(model)
        if num_classes is None:
            raise ValueError("Pass `num_classes`: it cannot be read from the model.")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(
            f"`class_names` has {len(class_names)} names but the model has {num_classes} classes."
        )
    if isinstance(num_overlays, bool) or not isinstance(num_overlays, int) or num_overlays < 0:
        raise ValueError(f"`num_overlays` must be an int >= 0; got {num_overlays!r}.")
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
        logits = resize_logits(logits, masks.shape[1:3])
        predictions = keras.ops.convert_to_numpy(keras.ops.argmax(logits, axis=-1))
        matrix.update(masks, predictions)
        if output_dir is not None and written < num_overlays:
            shown = np.clip(np.rint(images[: num_overlays - written]), 0, 255).astype(np.uint8)
            for image, mask, prediction in zip(shown, masks, predictions):
                save_segmentation_panel(
                    os.path.join(output_dir, "overlays", f"{written:04d}.png"),
                    _resize_for_display(image, mask.shape),
                    mask,
                    prediction,
                    class_names=class_names,
                )
                written += 1
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
        _write_json(os.path.join(output_dir, REPORT_FILE), report)
    return report


# --- command line -----------------------------------------------------------------------------


def _pair(values, name, parser):
    if values is None:
        return None
    if len(values) not in (1, 2) or min(values) < 1:
        parser.error(f"{name} takes one or two positive integers (height width); got {values}.")
    return (values[0], values[0]) if len(values) == 1 else tuple(values)


def add_dataset_arguments(parser):
    """The dataset options shared by `train segmentation` and `keras_hrvit.evaluate`."""
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", required=True, choices=DATASETS, help="dataset to use")
    group.add_argument(
        "--data-dir", help="ADE20K: TFDS data directory; Cityscapes: folder with leftImg8bit/gtFine"
    )
    group.add_argument("--images-dir", help="folder dataset: training (or evaluated) images")
    group.add_argument("--masks-dir", help="folder dataset: PNG masks of --images-dir")
    group.add_argument("--image-size", type=int, default=128, help="shapes: image side (128)")
    group.add_argument(
        "--data-seed", type=int, default=0, help="shapes: seed that draws the dataset (0)"
    )
    return group


def _check_dataset_arguments(args, parser):
    if args.dataset == "cityscapes" and not args.data_dir:
        parser.error("--dataset cityscapes needs --data-dir, the folder with leftImg8bit/gtFine.")
    if args.dataset == "folder" and not (args.images_dir and args.masks_dir):
        parser.error("--dataset folder needs --images-dir and --masks-dir.")
    for name in ("images_dir", "masks_dir", "val_images_dir", "val_masks_dir"):
        path = getattr(args, name, None)
        if path and not os.path.isdir(path):
            parser.error(f"--{name.replace('_', '-')} {path}: no such folder.")
    if args.dataset == "cityscapes" and not os.path.isdir(args.data_dir):
        parser.error(f"--data-dir {args.data_dir}: no such folder.")
    if args.image_size < 32:
        parser.error(f"--image-size must be at least 32; got {args.image_size}.")
    if args.data_seed < 0:
        parser.error(f"--data-seed must be >= 0; got {args.data_seed}.")


def register_train_command(subparsers):
    """Adds the `segmentation` subcommand to `python -m keras_hrvit.train`."""
    parser = subparsers.add_parser(
        "segmentation",
        help="train a semantic segmentation model",
        description=(
            "Train an HRViT segmenter with the paper's recipe (AdamW, 10x head learning rate, "
            "poly decay with warm-up). Checkpoints, history.json, training_curves.png and "
            "TensorBoard logs go to --output-dir, and rerunning the same command resumes an "
            "interrupted run. The final model is saved as OUTPUT_DIR/model.keras."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_dataset_arguments(parser)
    data = parser.add_argument_group("training data")
    data.add_argument("--val-images-dir", help="folder dataset: validation images")
    data.add_argument("--val-masks-dir", help="folder dataset: validation masks")
    data.add_argument(
        "--train-images", type=int, default=None, help="shapes: training images (1000)"
    )
    data.add_argument(
        "--val-images", type=int, default=None, help="shapes: validation images (200)"
    )
    data.add_argument(
        "--crop-size",
        type=int,
        nargs="+",
        default=None,
        help="training crop, H [W] (default: image size for shapes, 512 for ADE20K and folders, "
        "1024 for Cityscapes)",
    )
    data.add_argument(
        "--ratio-range",
        type=float,
        nargs=2,
        default=(0.5, 2.0),
        metavar=("LOW", "HIGH"),
        help="random rescale ratio range",
    )
    data.add_argument(
        "--photometric",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="photometric distortion",
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        required=True,
        help="segmenter preset (e.g. hrvit_b1_ade20k) or backbone preset (e.g. hrvit_b1)",
    )
    model.add_argument("--head", choices=HEADS, default=None, help="decode head (segformer)")
    model.add_argument("--head-channels", type=int, default=None, help="head width")
    model.add_argument(
        "--auxiliary-head",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="UperNet's auxiliary FCN head (default: on for UperNet)",
    )
    model.add_argument("--drop-path-rate", type=float, default=None, help="stochastic depth")
    model.add_argument(
        "--num-classes", type=int, default=None, help="classes (default: the dataset's)"
    )
    model.add_argument(
        "--backbone-weights",
        default=None,
        metavar="PATH",
        help="pretrained backbone to fine-tune from: an original checkpoint (.pth, .pt, .npz, "
        ".safetensors), a classifier .keras (e.g. OUTPUT_DIR/model.keras of `train "
        "classification`), a .weights.h5, or a preset folder / hf:// / kaggle:// handle; "
        "loaded before training, not when resuming",
    )
    opt = parser.add_argument_group("optimization")
    opt.add_argument("--batch-size", type=int, default=8, help="images per step")
    opt.add_argument("--epochs", type=int, default=10, help="epochs")
    opt.add_argument(
        "--steps-per-epoch",
        type=int,
        default=None,
        help="steps per epoch (default: one pass over the training set)",
    )
    opt.add_argument(
        "--val-steps", type=int, default=None, help="validation batches per epoch (all)"
    )
    opt.add_argument("--lr", type=float, default=6e-5, help="peak learning rate")
    opt.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    opt.add_argument("--head-lr-mult", type=float, default=10.0, help="head lr multiplier")
    opt.add_argument("--warmup-steps", type=int, default=1500, help="linear warm-up steps")
    opt.add_argument("--clipnorm", type=float, default=None, help="gradient norm clipping")
    add_compile_arguments(opt)
    add_distribution_argument(opt)
    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", required=True, help="run directory")
    run.add_argument("--seed", type=int, default=0, help="seed of weights and augmentation")
    run.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue an interrupted run from OUTPUT_DIR/backup",
    )
    run.add_argument(
        "--validation",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="validate after every epoch (best.keras then tracks the validation mIoU)",
    )
    run.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TensorBoard logs in OUTPUT_DIR/logs",
    )
    run.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1, help="fit verbosity")
    parser.set_defaults(run=run_train_command, command_parser=parser)
    return parser


def _validate_train_arguments(args, parser):
    _check_dataset_arguments(args, parser)
    if args.model not in SEGMENTER_PRESETS and args.model not in BACKBONE_PRESETS:
        parser.error(
            f"unknown --model {args.model!r}. Segmenter presets: "
            f"{', '.join(sorted(SEGMENTER_PRESETS))}. Backbone presets (with --head): "
            f"{', '.join(sorted(BACKBONE_PRESETS))}."
        )
    for name in (
        "batch_size",
        "epochs",
        "steps_per_epoch",
        "val_steps",
        "num_classes",
        "head_channels",
        "train_images",
        "val_images",
    ):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer; got {value}.")
    for name in ("lr", "head_lr_mult"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0; got {getattr(args, name)}.")
    if args.weight_decay < 0 or args.warmup_steps < 0:
        parser.error("--weight-decay and --warmup-steps must be >= 0.")
    if args.clipnorm is not None and args.clipnorm <= 0:
        parser.error(f"--clipnorm must be > 0; got {args.clipnorm}.")
    if args.drop_path_rate is not None and not 0 <= args.drop_path_rate < 1:
        parser.error(f"--drop-path-rate must be in [0, 1); got {args.drop_path_rate}.")
    low, high = args.ratio_range
    if not 0 < low <= high:
        parser.error(f"--ratio-range needs 0 < LOW <= HIGH; got {low} {high}.")
    if (args.val_images_dir is None) != (args.val_masks_dir is None):
        parser.error("--val-images-dir and --val-masks-dir go together.")
    if args.auxiliary_head and (args.head or "") != "upernet" and args.model in BACKBONE_PRESETS:
        parser.error("--auxiliary-head needs --head upernet.")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0; got {args.seed}.")
    if args.backbone_weights is not None:
        try:
            check_backbone_source(args.backbone_weights)
        except (ValueError, OSError) as error:
            parser.error(f"--backbone-weights: {error}")
    check_distribution_argument(args, parser)


def apply_backbone_weights(model, source, resuming, parser=None):
    """`--backbone-weights` of the training CLIs: loads `source` into the model's backbone
    (printing what was loaded) unless the run resumes from its backup, which restores every
    weight. A source that cannot be loaded is a `parser.error` (raised without `parser`).

    Returns the description of what was loaded, or None."""
    if source is None:
        return None
    if resuming:
        print(f"--backbone-weights {source} not loaded: the resumed run restores its own weights.")
        return None
    try:
        description = load_backbone_weights(model, source)
    except (ValueError, OSError, ImportError) as error:
        if parser is None:
            raise
        parser.error(f"--backbone-weights: {error}")
    print(f"Loaded pretrained weights: {description}")
    return description


def _print_summary(output_dir, key):
    path = os.path.join(output_dir, "history.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        records = json.load(f)
    values = [(r["epoch"], r[key]) for r in records if key in r]
    if not values:
        return None
    best_epoch, best = max(values, key=lambda item: item[1])
    print(
        f"Validation mIoU: {values[-1][1]:.4f} (last epoch), {best:.4f} (best, epoch {best_epoch})"
    )
    return values[-1][1]


def run_train_command(args, parser):
    """Runs `python -m keras_hrvit.train segmentation ...` from parsed arguments."""
    _validate_train_arguments(args, parser)
    defaults = DATASET_DEFAULTS[args.dataset]
    class_names = defaults["class_names"]
    num_classes = args.num_classes
    if num_classes is None:
        if class_names is None and args.model not in SEGMENTER_PRESETS:
            parser.error(f"--dataset {args.dataset} needs --num-classes.")
        num_classes = None if class_names is None else len(class_names)
    if class_names is not None and num_classes is not None and num_classes != len(class_names):
        warnings.warn(
            f"--num-classes {num_classes} differs from the {len(class_names)} classes of "
            f"{args.dataset}.",
            stacklevel=2,
        )
    crop_size = _pair(args.crop_size, "--crop-size", parser)
    if crop_size is None:
        crop_size = defaults["crop_size"] or (args.image_size, args.image_size)
    if min(crop_size) < 32:
        parser.error(f"--crop-size must be at least 32 pixels; got {crop_size}.")

    output_dir = args.output_dir
    os.makedirs(output_dir, exist_ok=True)
    backup = os.path.join(output_dir, "backup")
    if not args.resume and os.path.exists(backup):
        print(f"--no-resume: removing {backup} and starting from scratch.")
        shutil.rmtree(backup)
    resuming = os.path.exists(backup)
    if resuming:
        print(f"Resuming the interrupted run in {output_dir}.")
    settings = {k: v for k, v in vars(args).items() if k not in ("run", "command_parser")}
    settings["backend"] = keras.backend.backend()
    _write_json(os.path.join(output_dir, "train_args.json"), settings)

    keras.utils.set_random_seed(args.seed)
    try:
        # With --distribution data_parallel the variables are created replicated on every
        # device (see keras_hrvit.distribution); train_segmenter then trains the model there.
        with distribution_scope(args.distribution):
            model = build_segmenter(
                args.model,
                num_classes=num_classes,
                head=args.head,
                head_channels=args.head_channels,
                auxiliary_head=args.auxiliary_head,
                drop_path_rate=args.drop_path_rate,
            )
    except ValueError as error:
        parser.error(str(error))
    apply_backbone_weights(model, args.backbone_weights, resuming, parser)
    num_classes = _num_model_classes(model)

    shapes_args = {"image_size": args.image_size, "seed": args.data_seed}
    train_pairs = load_segmentation_split(
        args.dataset,
        "train",
        data_dir=args.data_dir,
        images_dir=args.images_dir,
        masks_dir=args.masks_dir,
        num_images=args.train_images,
        **shapes_args,
    )
    train_ds = segmentation_train_pipeline(
        train_pairs,
        crop_size=crop_size,
        base_scale=defaults["base_scale"],
        ratio_range=tuple(args.ratio_range),
        batch_size=args.batch_size,
        photometric=args.photometric,
        seed=args.seed,
    )
    val_ds = None
    if args.validation and (args.dataset != "folder" or args.val_images_dir):
        val_pairs = load_segmentation_split(
            args.dataset,
            "validation",
            data_dir=args.data_dir,
            images_dir=args.val_images_dir,
            masks_dir=args.val_masks_dir,
            num_images=args.val_images,
            **shapes_args,
        )
        if args.dataset == "shapes":
            val_ds = segmentation_eval_pipeline(val_pairs, batch_size=args.batch_size)
        else:
            val_ds = fixed_size_validation_pipeline(val_pairs, crop_size, args.batch_size)
    steps = args.steps_per_epoch
    if steps is None:
        steps = int(train_ds.cardinality())
        if steps <= 0:
            parser.error(f"--dataset {args.dataset} needs --steps-per-epoch (its size is unknown).")

    start = time.time()
    train_segmenter(
        model,
        train_ds,
        val_ds,
        output_dir=output_dir,
        epochs=args.epochs,
        steps_per_epoch=steps,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        head_lr_mult=args.head_lr_mult,
        warmup_steps=args.warmup_steps,
        clipnorm=args.clipnorm,
        validation_steps=args.val_steps,
        **compile_kwargs(args),
        tensorboard=args.tensorboard,
        verbose=args.verbose,
        distribution=args.distribution,
    )
    path = save_model(model, os.path.join(output_dir, MODEL_FILE))
    print(f"Trained for {time.time() - start:.0f} s; saved {path}")
    if val_ds is not None:
        _print_summary(output_dir, mean_iou_key(model))
    return 0


__all__ = [
    "DATASETS",
    "DATASET_DEFAULTS",
    "add_dataset_arguments",
    "apply_backbone_weights",
    "build_segmenter",
    "evaluate_segmenter",
    "fixed_size_validation_pipeline",
    "load_segmentation_split",
    "mean_iou_key",
    "register_train_command",
    "run_train_command",
    "save_model",
    "train_segmenter",
]
