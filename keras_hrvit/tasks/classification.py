"""ImageNet-style pretraining of HRViT classifiers with `model.fit` on `tf.data`.

The recipe is the paper's (DeiT / timm): AdamW with learning rate `base_lr * batch_size / 1024`
and weight decay 0.05 (none on norms and biases), linear warm-up then cosine decay counted in
steps, gradient clipping at global norm 1.0, stochastic depth 0.1 and head dropout 0.1, the
augmentations of `classification_train_pipeline` (label smoothing, Mixup and CutMix included,
so the loss is a plain `CategoricalCrossentropy(from_logits=True)`). Checkpoints, resume after a
crash and training curves come from `standard_callbacks`.

Command line (see `python -m keras_hrvit.train classification --help`):

```
python -m keras_hrvit.train classification --data tfds:imagenet2012 --model hrvit_b1 \
    --batch-size 1024 --epochs 300 --output-dir runs/hrvit_b1_in1k --mixed-precision mixed_bfloat16
python -m keras_hrvit.train classification --data embedded --model hrvit_tiny --image-size 64 \
    --num-train-images 2048 --batch-size 32 --epochs 5 --lr 0.064 --warmup-epochs 1 \
    --light-augment --output-dir runs/toy
```
"""

import argparse
import json
import os
import shutil

import keras

from keras_hrvit.distribution import (
    check_gradient_clipping,
    distribution_scope,
    shardable_batches,
    training_scope,
)
from keras_hrvit.files import atomic_write
from keras_hrvit.models.classifier import HRViTClassifier
from keras_hrvit.presets import BACKBONE_PRESETS, CLASSIFICATION_RECIPE
from keras_hrvit.tasks.cli import (
    add_compile_arguments,
    add_distribution_argument,
    check_distribution_argument,
    compile_kwargs,
)
from keras_hrvit.training import standard_callbacks
from keras_hrvit.validation import check_number

# Moved to keras_hrvit.weights.pretrained; imported here so that existing imports keep working.
from keras_hrvit.weights.pretrained import (  # noqa: F401
    _backbone_layers,
    _find_backbone,
    check_backbone_source,
    transfer_backbone_weights,
)

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
    static_batch = _static_batch_size(train_ds)
    if static_batch is not None and static_batch != batch_size:
        raise ValueError(
            f"`batch_size={batch_size}` but `train_ds` yields batches of {static_batch}; the "
            "learning rate is scaled by the real batch size."
        )

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
        monitor = "val_top1_accuracy" if val_ds is not None else "loss"
        all_callbacks = standard_callbacks(
            output_dir,
            monitor=monitor,
            mode="max" if val_ds is not None else "min",
            tensorboard=tensorboard,
        ) + list(callbacks or [])
        return model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=all_callbacks,
            verbose=verbose,
            # The pipelines shuffle; Keras cannot shuffle a tf.data.Dataset and would warn.
            shuffle=False,
        )


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_parser(subparsers):
    """Adds the `classification` subcommand to an argparse `subparsers` object.

    The parser's defaults hold `run=run_train_command` and `command_parser=parser`, the contract
    of `keras_hrvit.train`.

    Example:
    >>> parser = argparse.ArgumentParser()
    >>> sub = add_parser(parser.add_subparsers(dest="task"))
    >>> args = parser.parse_args(["classification", "--model", "hrvit_tiny", "--epochs", "2"])
    """
    parser = subparsers.add_parser(
        "classification",
        help="ImageNet-style pretraining of an HRViT classifier (the paper's DeiT recipe)",
        description=(
            "Pretrains an HRViT classifier with AdamW (lr = --lr x batch / 1024, weight decay on "
            "all but norms and biases), linear warm-up + cosine decay, RandAugment, random "
            "erasing, Mixup/CutMix and label smoothing. Checkpoints, history.json, "
            "training_curves.png and TensorBoard logs go to --output-dir; rerunning the same "
            "command resumes an interrupted run."
        ),
    )
    parser.add_argument(
        "--data",
        default="embedded",
        help="'embedded' (built-in 8-class toy set), 'tfds:NAME' (e.g. tfds:imagenet2012) or a "
        "folder DIR/<split>/<class>/*. Default: embedded.",
    )
    parser.add_argument("--model", default="hrvit_b1", choices=model_names())
    parser.add_argument("--image-size", type=_positive_int, default=224)
    parser.add_argument("--batch-size", type=_positive_int, default=128)
    parser.add_argument("--epochs", type=_positive_int, default=300)
    parser.add_argument(
        "--steps-per-epoch", type=_positive_int, default=None, help="default: one pass"
    )
    parser.add_argument(
        "--lr", type=float, default=1e-3, help="base learning rate for a batch of 1024"
    )
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument(
        "--warmup-epochs",
        type=float,
        default=None,
        help="default: the paper's 20 of 300 epochs, as a fraction of --epochs",
    )
    parser.add_argument("--clipnorm", type=float, default=1.0, help="global norm; 0 disables")
    parser.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate")
    parser.add_argument("--dropout", type=float, default=0.1, help="head dropout")
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--no-mixup", action="store_true", help="turn Mixup and CutMix off")
    parser.add_argument(
        "--light-augment",
        action="store_true",
        help="for short runs and toy data: crop scale (0.35, 1), no RandAugment, no random "
        "erasing, no Mixup/CutMix",
    )
    parser.add_argument("--crop-pct", type=float, default=0.9, help="evaluation center crop")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--val-split", default="validation", help="'none' skips validation")
    parser.add_argument(
        "--num-train-images", type=_positive_int, default=None, help="embedded set only"
    )
    parser.add_argument(
        "--num-val-images", type=_positive_int, default=None, help="embedded set only"
    )
    parser.add_argument("--data-dir", default=None, help="tfds data folder")
    parser.add_argument("--manual-dir", default=None, help="tfds manual download folder")
    parser.add_argument(
        "--backbone-weights",
        default=None,
        metavar="PATH",
        help="pretrained backbone to start from: an original checkpoint (.pth, .pt, .npz, "
        ".safetensors), a classifier .keras, a .weights.h5, or a preset folder / hf:// / "
        "kaggle:// handle; loaded before training, not when resuming",
    )
    parser.add_argument(
        "--output-dir",
        default="runs/classification",
        help="checkpoints, history and curves; the final model is OUTPUT_DIR/model.keras",
    )
    parser.add_argument("--mixed-precision", default=None, choices=MIXED_PRECISION_POLICIES)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue an interrupted run in --output-dir (--no-resume starts over)",
    )
    parser.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TensorBoard logs in OUTPUT_DIR/logs",
    )
    add_compile_arguments(parser)
    add_distribution_argument(parser)
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2))
    parser.set_defaults(run=run_train_command, command_parser=parser)
    return parser


# The name `keras_hrvit.tasks` looks up in each task module.
register_train_command = add_parser


def _check_args(args):
    if args.data != "embedded" and (args.num_train_images or args.num_val_images):
        raise ValueError("--num-train-images and --num-val-images apply to --data embedded only.")
    if args.image_size < 32:
        raise ValueError(f"--image-size must be at least 32; got {args.image_size}.")
    if args.lr <= 0 or args.weight_decay < 0:
        raise ValueError(
            f"--lr must be > 0 and --weight-decay >= 0; got {args.lr}, {args.weight_decay}."
        )
    if args.warmup_epochs is not None and not 0 <= args.warmup_epochs <= args.epochs:
        raise ValueError(
            f"--warmup-epochs must be in [0, --epochs={args.epochs}]; got {args.warmup_epochs}."
        )
    if args.clipnorm < 0:
        raise ValueError(f"--clipnorm must be >= 0 (0 disables it); got {args.clipnorm}.")
    for name in ("drop_path", "dropout", "label_smoothing"):
        if not 0 <= getattr(args, name) < 1:
            raise ValueError(
                f"--{name.replace('_', '-')} must be in [0, 1); got {getattr(args, name)}."
            )
    if not 0 < args.crop_pct <= 1:
        raise ValueError(f"--crop-pct must be in (0, 1]; got {args.crop_pct}.")
    if args.seed is not None and args.seed < 0:
        raise ValueError(f"--seed must be >= 0; got {args.seed}.")


def run_train_command(args, parser):
    """`keras_hrvit.train` entry point: reports bad arguments with `parser.error`, returns 0."""
    try:
        _check_args(args)
    except ValueError as error:
        parser.error(str(error))
    if args.backbone_weights is not None:
        try:
            check_backbone_source(args.backbone_weights)
        except (ValueError, OSError) as error:
            parser.error(f"--backbone-weights: {error}")
    check_distribution_argument(args, parser)
    run(args, parser)
    return 0


def _count_folder_images(root, split):
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


def _load(args, split, num_images):
    from keras_hrvit.data.classification import load_classification_data

    kwargs = {}
    if args.data == "embedded":
        kwargs.update(image_size=args.image_size, num_images=num_images, seed=args.seed)
    elif args.data.startswith("tfds:"):
        kwargs.update(data_dir=args.data_dir, manual_dir=args.manual_dir, shuffle=True)
    else:
        kwargs.update(shuffle=True, seed=args.seed)
    ds, class_names = load_classification_data(args.data, split, **kwargs)
    count = _cardinality(ds)
    if count is None or count < 0:
        count = _count_folder_images(args.data, split) if os.path.isdir(args.data) else None
    return ds, class_names, count


def run(args, parser=None):
    """Runs the `classification` subcommand; returns the `History`.

    The trained model is saved as `OUTPUT_DIR/model.keras`. With `parser`, a
    `--backbone-weights` that cannot be loaded is reported with `parser.error`; without, it
    raises.

    Example:
    >>> run(parser.parse_args(["classification", "--model", "hrvit_tiny", "--epochs", "1"]))
    """
    from keras_hrvit.data.classification import (
        classification_eval_pipeline,
        classification_train_pipeline,
    )
    from keras_hrvit.tasks.segmentation import apply_backbone_weights

    _check_args(args)
    warmup = args.warmup_epochs
    if warmup is None:
        warmup = args.epochs * CLASSIFICATION_RECIPE["warmup_fraction"]
    previous_policy = keras.config.dtype_policy()
    if args.mixed_precision:
        # The policy must be global while the model is built so that every layer picks it up.
        keras.config.set_dtype_policy(args.mixed_precision)
    try:
        train, class_names, num_train = _load(args, args.train_split, args.num_train_images)
        steps = args.steps_per_epoch
        if steps is None:
            if not num_train:
                raise ValueError(
                    f"Cannot tell how many images {args.data!r} has; pass --steps-per-epoch."
                )
            steps = num_train // args.batch_size
            if steps < 1:
                raise ValueError(
                    f"The training split has {num_train} images, fewer than one batch of "
                    f"{args.batch_size}; lower --batch-size."
                )
        augment = {}
        if args.light_augment:
            augment = dict(
                scale=(0.35, 1.0),
                randaugment=False,
                random_erasing=0.0,
                mixup_alpha=0.0,
                cutmix_alpha=0.0,
            )
        elif args.no_mixup:
            augment = dict(mixup_alpha=0.0, cutmix_alpha=0.0)
        train = classification_train_pipeline(
            train,
            len(class_names),
            image_size=args.image_size,
            batch_size=args.batch_size,
            label_smoothing=args.label_smoothing,
            seed=args.seed,
            **augment,
        )
        val = None
        if args.val_split.lower() != "none":
            val, _, _ = _load(args, args.val_split, args.num_val_images)
            val = classification_eval_pipeline(
                val,
                len(class_names),
                image_size=args.image_size,
                crop_pct=args.crop_pct,
                batch_size=args.batch_size,
            )
        if args.seed is not None:
            keras.utils.set_random_seed(args.seed)
        # With --distribution data_parallel the variables are created replicated on every
        # device (see keras_hrvit.distribution); train_classifier then trains the model there.
        with distribution_scope(args.distribution):
            model = build_classifier(
                args.model,
                len(class_names),
                drop_path_rate=args.drop_path,
                dropout=args.dropout,
            )
        os.makedirs(args.output_dir, exist_ok=True)
        backup = os.path.join(args.output_dir, "backup")
        if os.path.exists(backup):
            if args.resume:
                print(f"Resuming the interrupted run in {args.output_dir}.")
            else:
                print(f"--no-resume: removing {backup} and starting from scratch.")
                shutil.rmtree(backup)
        resuming = os.path.exists(backup)
        apply_backbone_weights(model, getattr(args, "backbone_weights", None), resuming, parser)
        settings = {k: v for k, v in vars(args).items() if k not in ("run", "command_parser")}
        settings.update(backend=keras.backend.backend(), class_names=list(class_names))
        with open(os.path.join(args.output_dir, "train_args.json"), "w", encoding="utf-8") as f:
            json.dump(settings, f, indent=1)
        print(
            f"{args.model}: {model.count_params():,} parameters, {len(class_names)} classes, "
            f"{steps} steps per epoch."
        )
        history = train_classifier(
            model,
            train,
            val,
            output_dir=args.output_dir,
            epochs=args.epochs,
            steps_per_epoch=steps,
            batch_size=args.batch_size,
            base_lr=args.lr,
            weight_decay=args.weight_decay,
            warmup_epochs=warmup,
            global_clipnorm=args.clipnorm or None,
            mixed_precision=args.mixed_precision,
            tensorboard=args.tensorboard,
            **compile_kwargs(args),
            verbose=args.verbose,
            distribution=args.distribution,
        )
        path = os.path.join(args.output_dir, MODEL_FILE)
        atomic_write(path, model.save, ".keras")
        print(f"Saved {path}")
    finally:
        keras.config.set_dtype_policy(previous_policy)
    logs = history.history
    if "val_top1_accuracy" in logs and logs["val_top1_accuracy"]:
        print(
            f"Final validation top-1 {logs['val_top1_accuracy'][-1]:.4f}, "
            f"top-5 {logs['val_top5_accuracy'][-1]:.4f}. Checkpoints in "
            f"{os.path.join(args.output_dir, 'checkpoints')}."
        )
    return history
