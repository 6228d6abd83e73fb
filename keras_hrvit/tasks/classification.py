"""ImageNet-style pretraining of HRViT classifiers with `model.fit` on `tf.data`.

The recipe is the paper's (DeiT / timm): AdamW with learning rate `base_lr * batch_size / 1024`
and weight decay 0.05 (none on norms and biases), linear warm-up then cosine decay counted in
steps, gradient clipping at global norm 1.0, stochastic depth 0.1 and head dropout 0.1, the
augmentations of `classification_train_pipeline` (label smoothing, Mixup and CutMix included,
so the loss is a plain `CategoricalCrossentropy(from_logits=True)`). Checkpoints, resume after a
crash and training curves come from `standard_callbacks`.

Command line (see `python -m keras_hrvit.train classification --help`, in
`keras_hrvit/cli/train_classification.py`):

```
python -m keras_hrvit.train classification --data tfds:imagenet2012 --model hrvit_b1 \
    --batch-size 1024 --epochs 300 --output-dir runs/hrvit_b1_in1k --mixed-precision mixed_bfloat16
python -m keras_hrvit.train classification --data embedded --model hrvit_tiny --image-size 64 \
    --num-train-images 2048 --batch-size 32 --epochs 5 --lr 0.064 --warmup-epochs 1 \
    --light-augment --output-dir runs/toy
```
"""

import os

from keras_hrvit.distribution import check_gradient_clipping, shardable_batches, training_scope
from keras_hrvit.models.classifier import HRViTClassifier
from keras_hrvit.presets import BACKBONE_PRESETS, CLASSIFICATION_RECIPE
from keras_hrvit.training import raise_if_diverged, standard_callbacks
from keras_hrvit.validation import check_number

MIXED_PRECISION_POLICIES = ("mixed_float16", "mixed_bfloat16")
MODEL_FILE = "model.keras"
LR_REFERENCE_BATCH = CLASSIFICATION_RECIPE["reference_batch_size"]


def model_names():
    """Names accepted by `build_classifier`: the backbone presets."""
    return tuple(sorted(BACKBONE_PRESETS))


def build_classifier(
    name, num_classes, *, drop_path_rate=0.1, dropout=0.1, head_channels=None, image_size=None
):
    """`HRViTClassifier.from_preset(name)` that outputs logits, as the training CLI builds it.

    Args:
        name: a backbone preset (`hrvit_b1`, ..., `hrvit_tiny`).
        num_classes: width of the top layer.
        drop_path_rate: stochastic depth, rising linearly over the modules up to this value.
        dropout: dropout before the top layer.
        head_channels: widths of the HRNetV2 head; default the preset's.
        image_size: fix the input to `image_size x image_size`; `None` accepts any size.

    Example:
    >>> model = build_classifier("hrvit_tiny", 8)
    >>> model(keras.ops.ones((2, 64, 64, 3))).shape
    (2, 8)
    """
    overrides = {"head_channels": head_channels} if head_channels is not None else {}
    if image_size is not None:
        overrides["input_shape"] = (image_size, image_size, 3)
    return HRViTClassifier.from_preset(
        name,
        classes=num_classes,
        classifier_activation=None,
        drop_path_rate=drop_path_rate,
        dropout=dropout,
        name=f"{name}_classifier",
        **overrides,
    )


def scaled_learning_rate(base_lr, batch_size):
    """The paper's linear scaling rule: `base_lr * batch_size / 1024`.

    Example:
    >>> scaled_learning_rate(1e-3, 256)
    0.00025
    """
    return base_lr * batch_size / LR_REFERENCE_BATCH


def _cardinality(ds):
    """Number of batches of a finite `tf.data.Dataset`, -1 if infinite, None if unknown."""
    import tensorflow as tf

    if not isinstance(ds, tf.data.Dataset):
        return None
    n = int(ds.cardinality())
    if n == int(tf.data.INFINITE_CARDINALITY):
        return -1
    return None if n == int(tf.data.UNKNOWN_CARDINALITY) else n


def _static_batch_size(ds):
    spec = getattr(ds, "element_spec", None)
    if isinstance(spec, (tuple, list)) and spec and hasattr(spec[0], "shape"):
        shape = spec[0].shape
        if shape.rank:
            return shape[0]
    return None


def train_classifier(
    model,
    train_ds,
    val_ds=None,
    *,
    output_dir,
    epochs,
    batch_size,
    steps_per_epoch=None,
    base_lr=1e-3,
    weight_decay=0.05,
    warmup_epochs=20,
    warmup_start_lr=CLASSIFICATION_RECIPE["warmup_start_lr"],
    min_lr=CLASSIFICATION_RECIPE["min_lr"],
    global_clipnorm=1.0,
    mixed_precision=None,
    callbacks=None,
    tensorboard=True,
    jit_compile="auto",
    run_eagerly=False,
    verbose="auto",
    distribution=None,
):
    """Trains a logits classifier with the paper's ImageNet recipe and returns the `History`.

    The learning rate is `base_lr * batch_size / 1024` (printed), warmed up linearly from
    `warmup_start_lr` over `warmup_epochs` and then decayed along a cosine to `min_lr`, all
    counted in optimizer steps. AdamW decays every weight but those of normalization layers and
    biases. Metrics are `top1_accuracy` and `top5_accuracy`. `standard_callbacks(output_dir)`
    writes `checkpoints/last.keras`, `checkpoints/best.keras` (by validation top-1, or training
    loss without `val_ds`), `history.json` and `training_curves.png`, and resumes an interrupted
    run: call again with the same `output_dir` and the run continues at the epoch, step and
    learning rate where it stopped.

    Args:
        model: a classifier whose outputs are logits (`classifier_activation=None`), e.g. from
            `build_classifier`; under mixed precision, built after setting the dtype policy.
        train_ds: batches of `(images, soft labels)`, e.g. `classification_train_pipeline`.
        val_ds: optional batches of `(images, one-hot labels)`, e.g.
            `classification_eval_pipeline`.
        output_dir: folder for checkpoints, backups and curves.
        epochs: number of epochs.
        batch_size: images per batch of `train_ds`, for the learning-rate scaling.
        steps_per_epoch: batches per epoch; `None` uses the length of a finite `train_ds`. A
            finite `train_ds` shorter than `epochs * steps_per_epoch` is repeated.
        base_lr: learning rate for a batch of 1024.
        weight_decay: AdamW's decoupled weight decay.
        warmup_epochs: linear warm-up length in epochs (may be fractional), at most `epochs`.
        warmup_start_lr, min_lr: start of the warm-up and floor of the cosine, capped at the
            scaled learning rate so that small batches still work.
        global_clipnorm: clip the gradients' global norm to this (`None` for no clipping).
        mixed_precision: `None`, `"mixed_float16"` or `"mixed_bfloat16"`; the model must have
            been built under that policy (`keras.config.set_dtype_policy`).
        callbacks: extra callbacks, run after the standard ones.
        tensorboard: also write TensorBoard logs under `output_dir/logs`.
        jit_compile, run_eagerly: passed to `model.compile`.
        verbose: `model.fit` verbosity.
        distribution: `None` / `"none"` for one device, or `"data_parallel"` to split each
            batch of `train_ds` (`batch_size` is then the global batch) across the devices; the
            model must have been built inside
            `keras_hrvit.distribution.distribution_scope("data_parallel")`. JAX and TensorFlow
            only (see `keras_hrvit.distribution`).

    Example:
    >>> model = build_classifier("hrvit_tiny", len(class_names))
    >>> history = train_classifier(model, train, val, output_dir="runs/toy", epochs=5,
    ...                            batch_size=32, base_lr=0.064, warmup_epochs=1)
    >>> history.history["val_top1_accuracy"][-1]

    On several devices:

    >>> with distribution_scope("data_parallel"):
    ...     model = build_classifier("hrvit_tiny", len(class_names))
    ...     train_classifier(model, train, val, output_dir="runs/dp", epochs=5, batch_size=64,
    ...                      distribution="data_parallel")
    """
    steps_per_epoch, train_ds = _check_training_arguments(
        model,
        train_ds,
        output_dir,
        epochs,
        batch_size,
        steps_per_epoch,
        warmup_epochs,
        mixed_precision,
    )
    with training_scope(model, distribution) as replicas:
        train_ds = shardable_batches(train_ds, replicas, "train_ds")
        if val_ds is not None:
            val_ds = shardable_batches(val_ds, replicas, "val_ds")
        print(
            f"Learning rate: base_lr {base_lr:g} x batch_size {batch_size} / "
            f"{LR_REFERENCE_BATCH} = {scaled_learning_rate(base_lr, batch_size):.4g}"
        )
        model.compile(
            epochs=int(epochs),
            steps_per_epoch=int(steps_per_epoch),
            learning_rate=base_lr,
            batch_size=batch_size,
            weight_decay=weight_decay,
            warmup_fraction=warmup_epochs / epochs,
            warmup_start_lr=warmup_start_lr,
            min_lr=min_lr,
            global_clipnorm=global_clipnorm,
            jit_compile=jit_compile,
            run_eagerly=run_eagerly,
        )
        check_gradient_clipping(model.optimizer, replicas)
        all_callbacks = _run_callbacks(output_dir, val_ds is not None, tensorboard)
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=all_callbacks + list(callbacks or []),
            verbose=verbose,
            # The pipelines shuffle; Keras cannot shuffle a tf.data.Dataset and would warn.
            shuffle=False,
        )
    return raise_if_diverged(history, output_dir)


def _check_training_arguments(
    model, train_ds, output_dir, epochs, batch_size, steps_per_epoch, warmup_epochs, mixed_precision
):
    """Checks `train_classifier`'s arguments; returns `steps_per_epoch` and `train_ds`.

    `steps_per_epoch` defaults to the length of a finite `train_ds`; given, a finite `train_ds`
    is repeated.
    """
    if not isinstance(model, HRViTClassifier) or model.classes is None:
        raise ValueError(
            "`model` must be an HRViTClassifier with a top layer (e.g. from `build_classifier`); "
            f"received {type(model).__name__}."
        )
    if not output_dir:
        raise ValueError("`output_dir` must be a non-empty path.")
    check_number("epochs", epochs, 1, integer=True)
    check_number("batch_size", batch_size, 1, integer=True)
    if steps_per_epoch is not None:
        check_number("steps_per_epoch", steps_per_epoch, 1, integer=True)
    check_number("warmup_epochs", warmup_epochs, 0)
    if warmup_epochs > epochs:
        raise ValueError(
            f"`warmup_epochs` ({warmup_epochs}) must be at most `epochs` ({epochs}); pass a "
            "shorter warm-up for a short run (the paper warms up for 20 of 300 epochs)."
        )
    _check_mixed_precision(model, mixed_precision)
    static_batch = _static_batch_size(train_ds)
    if static_batch is not None and static_batch != batch_size:
        raise ValueError(
            f"`batch_size={batch_size}` but `train_ds` yields batches of {static_batch}; the "
            "learning rate is scaled by the real batch size."
        )
    return _steps_per_epoch(train_ds, steps_per_epoch)


def _check_mixed_precision(model, mixed_precision):
    if mixed_precision not in (None,) + MIXED_PRECISION_POLICIES:
        raise ValueError(
            f"`mixed_precision` must be None or one of {MIXED_PRECISION_POLICIES}; received "
            f"{mixed_precision!r}."
        )
    policy = model.dtype_policy.name
    if mixed_precision is not None and policy != mixed_precision:
        raise ValueError(
            f"`mixed_precision={mixed_precision!r}` but the model was built with the {policy!r} "
            f"policy. Call `keras.config.set_dtype_policy({mixed_precision!r})` before building "
            "the model."
        )


def _steps_per_epoch(train_ds, steps_per_epoch):
    """`steps_per_epoch` (default: the length of `train_ds`) and `train_ds`, repeated if needed."""
    num_batches = _cardinality(train_ds)
    if steps_per_epoch is None:
        if num_batches is None or num_batches < 1:
            kind = "infinite" if num_batches == -1 else "of unknown length"
            raise ValueError(
                f"`train_ds` is {kind}; pass `steps_per_epoch` so that the learning-rate "
                "schedule knows the length of the run."
            )
        steps_per_epoch = num_batches
    elif num_batches is not None and num_batches > 0:
        # Keras stops an epoch early when a finite dataset runs dry, which would desynchronize
        # the schedule from the epochs.
        train_ds = train_ds.repeat()
    return steps_per_epoch, train_ds


def _run_callbacks(output_dir, validation, tensorboard):
    """`standard_callbacks` keeping the best epoch by validation top-1, else training loss."""
    return standard_callbacks(
        output_dir,
        monitor="val_top1_accuracy" if validation else "loss",
        mode="max" if validation else "min",
        tensorboard=tensorboard,
    )


# --- data ---------------------------------------------------------------------------------------


def load_classification_split(
    data, split, *, image_size=None, num_images=None, seed=None, data_dir=None, manual_dir=None
):
    """`(image, label)` pairs of one split, its class names and its number of images.

    Args:
        data: `"embedded"` (the built-in toy set), `"tfds:NAME"` or a folder
            `DIR/<split>/<class>/*` (see `keras_hrvit.data.load_classification_data`).
        split: the split's name.
        image_size, num_images: the embedded set's; `seed` also shuffles a folder's files.
        data_dir, manual_dir: TFDS folders.

    Returns:
        `(dataset, class_names, count)`, `count` None when the number of images is unknown.

    Example:
    >>> ds, class_names, count = load_classification_split("embedded", "train", image_size=64)
    """
    from keras_hrvit.data.classification import load_classification_data

    kwargs = {}
    if data == "embedded":
        kwargs.update(image_size=image_size, num_images=num_images, seed=seed)
    elif data.startswith("tfds:"):
        kwargs.update(data_dir=data_dir, manual_dir=manual_dir, shuffle=True)
    else:
        kwargs.update(shuffle=True, seed=seed)
    ds, class_names = load_classification_data(data, split, **kwargs)
    count = _cardinality(ds)
    if count is None or count < 0:
        count = count_folder_images(data, split) if os.path.isdir(data) else None
    return ds, class_names, count


def count_folder_images(root, split=None):
    """The number of image files under `root/<split>` (`root/val` for `"validation"`), or `root`.

    Example:
    >>> count_folder_images("data/flowers", "train")
    2936
    """
    from keras_hrvit.data.classification import IMAGE_EXTENSIONS

    root = os.path.expanduser(root)
    if split is not None:
        for name in [split] + (["val"] if split == "validation" else []):
            if os.path.isdir(os.path.join(root, name)):
                root = os.path.join(root, name)
                break
    return sum(
        name.lower().endswith(IMAGE_EXTENSIONS) for _, _, files in os.walk(root) for name in files
    )


__all__ = [
    "LR_REFERENCE_BATCH",
    "MIXED_PRECISION_POLICIES",
    "MODEL_FILE",
    "build_classifier",
    "count_folder_images",
    "load_classification_split",
    "model_names",
    "scaled_learning_rate",
    "train_classifier",
]
