"""`python -m keras_hrvit.train classification`: the options of an ImageNet-style
pretraining run, over `keras_hrvit.tasks.classification` (which documents the recipe).

```
python -m keras_hrvit.train classification --data tfds:imagenet2012 --model hrvit_b1 \
    --batch-size 1024 --epochs 300 --output-dir runs/hrvit_b1_in1k --mixed-precision mixed_bfloat16
python -m keras_hrvit.train classification --data embedded --model hrvit_tiny --image-size 64 \
    --num-train-images 2048 --batch-size 32 --epochs 5 --lr 0.064 --warmup-epochs 1 \
    --light-augment --output-dir runs/toy
```
"""

import argparse
import os

import keras

from keras_hrvit.cli.common import (
    add_compile_arguments,
    add_distribution_argument,
    add_run_folder_arguments,
    apply_backbone_weights,
    check_backbone_weights_argument,
    check_distribution_argument,
    compile_kwargs,
    examples_epilog,
    finite_float,
    positive_int,
    report_failure,
    run_folder,
    wrap_description,
    write_train_args,
)
from keras_hrvit.distribution import distribution_scope
from keras_hrvit.presets import CLASSIFICATION_RECIPE
from keras_hrvit.tasks.classification import (
    MIXED_PRECISION_POLICIES,
    MODEL_FILE,
    build_classifier,
    load_classification_split,
    model_names,
    train_classifier,
)
from keras_hrvit.training import TrainingDiverged, save_model


def register_train_command(subparsers):
    """Adds the `classification` subcommand to an argparse `subparsers` object.

    The parser's defaults hold `run=run_train_command` and `command_parser=parser`, the contract
    of `keras_hrvit.cli.train`.

    Example:
    >>> parser = argparse.ArgumentParser()
    >>> sub = register_train_command(parser.add_subparsers(dest="task"))
    >>> args = parser.parse_args(["classification", "--model", "hrvit_tiny", "--epochs", "2"])
    """
    parser = subparsers.add_parser(
        "classification",
        help="ImageNet-style pretraining of an HRViT classifier (the paper's DeiT recipe)",
        description=wrap_description(
            "Pretrains an HRViT classifier with AdamW (lr = --lr x batch / 1024, weight decay on "
            "all but norms and biases), linear warm-up + cosine decay, RandAugment, random "
            "erasing, Mixup/CutMix and label smoothing. Checkpoints, history.json, history.csv, "
            "training_curves.png and TensorBoard logs go to --output-dir; rerunning the same "
            "command resumes an interrupted run."
        ),
        epilog=examples_epilog(
            "python -m keras_hrvit.train classification --data embedded --model hrvit_tiny \\\n"
            "    --image-size 64 --num-train-images 2048 --batch-size 32 --epochs 5 --lr 0.064 \\\n"
            "    --warmup-epochs 1 --light-augment --output-dir runs/toy",
            "python -m keras_hrvit.train classification --data tfds:imagenet2012 \\\n"
            "    --model hrvit_b1 --batch-size 1024 --epochs 300 \\\n"
            "    --mixed-precision mixed_bfloat16 --output-dir runs/hrvit_b1_in1k",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_recipe_arguments(parser)
    _add_data_arguments(parser)
    _add_run_arguments(parser)
    parser.set_defaults(run=run_train_command, command_parser=parser)
    return parser


def _add_recipe_arguments(parser):
    """Data source, model, batch, schedule and regularization."""
    parser.add_argument(
        "--data",
        default="embedded",
        help="'embedded' (built-in 8-class toy set), 'tfds:NAME' (e.g. tfds:imagenet2012) or a "
        "folder DIR/<split>/<class>/*. Default: embedded.",
    )
    parser.add_argument("--model", default="hrvit_b1", choices=model_names())
    parser.add_argument("--image-size", type=positive_int, default=224)
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--epochs", type=positive_int, default=300)
    parser.add_argument(
        "--steps-per-epoch", type=positive_int, default=None, help="default: one pass"
    )
    parser.add_argument(
        "--lr", type=finite_float, default=1e-3, help="base learning rate for a batch of 1024"
    )
    parser.add_argument("--weight-decay", type=finite_float, default=0.05)
    parser.add_argument(
        "--warmup-epochs",
        type=finite_float,
        default=None,
        help="default: the paper's 20 of 300 epochs, as a fraction of --epochs",
    )
    parser.add_argument(
        "--clipnorm", type=finite_float, default=1.0, help="global norm; 0 disables"
    )
    parser.add_argument("--drop-path", type=finite_float, default=0.1, help="stochastic depth rate")
    parser.add_argument("--dropout", type=finite_float, default=0.1, help="head dropout")


def _add_data_arguments(parser):
    """Augmentation, splits and data folders."""
    parser.add_argument("--label-smoothing", type=finite_float, default=0.1)
    parser.add_argument("--no-mixup", action="store_true", help="turn Mixup and CutMix off")
    parser.add_argument(
        "--light-augment",
        action="store_true",
        help="for short runs and toy data: crop scale (0.35, 1), no RandAugment, no random "
        "erasing, no Mixup/CutMix",
    )
    parser.add_argument("--crop-pct", type=finite_float, default=0.9, help="evaluation center crop")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--val-split", default="validation", help="'none' skips validation")
    parser.add_argument(
        "--num-train-images", type=positive_int, default=None, help="embedded set only"
    )
    parser.add_argument(
        "--num-val-images", type=positive_int, default=None, help="embedded set only"
    )
    parser.add_argument("--data-dir", default=None, help="tfds data folder")
    parser.add_argument("--manual-dir", default=None, help="tfds manual download folder")


def _add_run_arguments(parser):
    """Pretrained backbone, output folder, precision, seed, resuming, compilation."""
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
    add_run_folder_arguments(parser)
    parser.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TensorBoard logs in OUTPUT_DIR/logs",
    )
    add_compile_arguments(parser)
    add_distribution_argument(parser)
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2))


def _check_args(args):
    """Raises a `ValueError` naming the first option out of range."""
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
    check_backbone_weights_argument(args, parser)
    check_distribution_argument(args, parser)
    try:
        run(args, parser)
    except TrainingDiverged as error:
        return report_failure(parser, str(error))
    return 0


def run(args, parser=None):
    """Runs the `classification` subcommand; returns the `History`.

    The trained model is saved as `OUTPUT_DIR/model.keras`. With `parser`, a
    `--backbone-weights` that cannot be loaded is reported with `parser.error`; without, it
    raises.

    Example:
    >>> run(parser.parse_args(["classification", "--model", "hrvit_tiny", "--epochs", "1"]))
    """
    _check_args(args)
    warmup = args.warmup_epochs
    if warmup is None:
        warmup = args.epochs * CLASSIFICATION_RECIPE["warmup_fraction"]
    previous_policy = keras.config.dtype_policy()
    if args.mixed_precision:
        # The policy must be global while the model is built so that every layer picks it up.
        keras.config.set_dtype_policy(args.mixed_precision)
    try:
        history = _train(args, parser, warmup)
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


def _train(args, parser, warmup_epochs):
    """Builds the data and the model, trains, saves `OUTPUT_DIR/model.keras`; the `History`."""
    train, val, class_names, steps = _datasets(args)
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
    with run_folder(args, parser) as resuming:
        apply_backbone_weights(model, getattr(args, "backbone_weights", None), resuming, parser)
        write_train_args(args, indent=1, class_names=list(class_names))
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
            warmup_epochs=warmup_epochs,
            global_clipnorm=args.clipnorm or None,
            mixed_precision=args.mixed_precision,
            tensorboard=args.tensorboard,
            **compile_kwargs(args),
            verbose=args.verbose,
            distribution=args.distribution,
        )
        path = save_model(model, os.path.join(args.output_dir, MODEL_FILE))
    print(f"Saved {path}")
    return history


def _datasets(args):
    """The training and validation (None: `--val-split none`) pipelines, the class names and
    the steps per epoch."""
    from keras_hrvit.data.classification import (
        classification_eval_pipeline,
        classification_train_pipeline,
    )

    train, class_names, num_train = _load(args, args.train_split, args.num_train_images)
    steps = _steps_per_epoch(args, num_train)
    train = classification_train_pipeline(
        train,
        len(class_names),
        image_size=args.image_size,
        batch_size=args.batch_size,
        label_smoothing=args.label_smoothing,
        seed=args.seed,
        **_augmentation(args),
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
    return train, val, class_names, steps


def _load(args, split, num_images):
    return load_classification_split(
        args.data,
        split,
        image_size=args.image_size,
        num_images=num_images,
        seed=args.seed,
        data_dir=args.data_dir,
        manual_dir=args.manual_dir,
    )


def _steps_per_epoch(args, num_train):
    """`--steps-per-epoch`, else one pass over the `num_train` training images."""
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
    return steps


def _augmentation(args):
    """`classification_train_pipeline` options of `--light-augment` and `--no-mixup`."""
    if args.light_augment:
        return dict(
            scale=(0.35, 1.0),
            randaugment=False,
            random_erasing=0.0,
            mixup_alpha=0.0,
            cutmix_alpha=0.0,
        )
    if args.no_mixup:
        return dict(mixup_alpha=0.0, cutmix_alpha=0.0)
    return {}
