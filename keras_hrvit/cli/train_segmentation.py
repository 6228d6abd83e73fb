"""`python -m keras_hrvit.train segmentation`: the options of a segmentation run, over
`keras_hrvit.tasks.segmentation`.

The dataset options (`add_dataset_arguments`, `check_dataset_arguments`, `load_dataset_split`)
are shared with `python -m keras_hrvit.evaluate`.
"""

import argparse
import json
import os
import time
import warnings

import keras

from keras_hrvit.cli.common import (
    HelpFormatter,
    add_compile_arguments,
    add_distribution_argument,
    add_run_folder_arguments,
    apply_backbone_weights,
    check_backbone_weights_argument,
    check_distribution_argument,
    compile_kwargs,
    examples_epilog,
    finite_float,
    pair,
    report_failure,
    run_folder,
    wrap_description,
    write_train_args,
)
from keras_hrvit.data import segmentation_eval_pipeline, segmentation_train_pipeline
from keras_hrvit.data.segmentation import bad_example_message
from keras_hrvit.distribution import distribution_scope
from keras_hrvit.models.segmenter import HEADS
from keras_hrvit.presets import BACKBONE_PRESETS, SEGMENTATION_RECIPES, SEGMENTER_PRESETS
from keras_hrvit.tasks.segmentation import (
    DATASETS,
    MODEL_FILE,
    TFDS_PREFIX,
    build_segmenter,
    check_dataset_name,
    dataset_defaults,
    fixed_size_validation_pipeline,
    load_segmentation_split,
    mean_iou_key,
    train_segmenter,
)
from keras_hrvit.training import TrainingDiverged, save_model

# --- the dataset options, shared with `keras_hrvit.evaluate` ------------------------------------


def _dataset_name(text):
    """An argparse `type`: one of `DATASETS` or `tfds:NAME`."""
    try:
        return check_dataset_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_dataset_arguments(parser):
    """The dataset options shared by `train segmentation` and `keras_hrvit.evaluate`."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        required=True,
        type=_dataset_name,
        metavar="{" + ",".join(DATASETS) + f",{TFDS_PREFIX}NAME}}",
        help="dataset to use; tfds:NAME is any TensorFlow Datasets segmentation builder, e.g. "
        "tfds:oxford_iiit_pet",
    )
    group.add_argument(
        "--data-dir",
        help="ADE20K: the ADEChallengeData2016 folder or one holding it (default: Keras's "
        "cache, where the first run downloads it); tfds: TFDS data directory; Cityscapes: folder "
        "with leftImg8bit/gtFine",
    )
    group.add_argument("--images-dir", help="folder dataset: training (or evaluated) images")
    group.add_argument(
        "--masks-dir",
        help="folder dataset: PNG masks of --images-dir (class indices; palette PNGs such as "
        "Pascal VOC's are read as indices)",
    )
    group.add_argument(
        "--reduce-zero-label",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="folder and tfds datasets: label 0 becomes 255 (ignored) and the others move down "
        "by one (ADE20K's ADEChallengeData2016 folder; Oxford-IIIT Pets' trimaps 1-3)",
    )
    group.add_argument("--image-key", default="image", help="tfds: the image feature")
    group.add_argument(
        "--mask-key",
        default=None,
        help="tfds: the mask feature; None picks the first of segmentation_mask, annotation, "
        "label and mask that the builder has, else its only other image feature",
    )
    group.add_argument(
        "--val-split",
        default="validation",
        help="tfds: the split to validate (train) or evaluate on, e.g. test or train[90%%:]",
    )
    group.add_argument("--image-size", type=int, default=128, help="shapes: image side (128)")
    group.add_argument(
        "--data-seed", type=int, default=0, help="shapes: seed that draws the dataset (0)"
    )
    return group


# The tfds-only options and their defaults: any other value needs a tfds:NAME dataset.
_TFDS_OPTIONS = {
    "image_key": "image",
    "mask_key": None,
    "train_split": "train",
    "val_split": "validation",
}


def check_dataset_arguments(args, parser):
    """Reports with `parser.error` dataset options that cannot work."""
    is_tfds = args.dataset.startswith(TFDS_PREFIX)
    if args.dataset == "cityscapes" and not args.data_dir:
        parser.error("--dataset cityscapes needs --data-dir, the folder with leftImg8bit/gtFine.")
    if args.dataset == "folder" and not (args.images_dir and args.masks_dir):
        parser.error("--dataset folder needs --images-dir and --masks-dir.")
    for name, default in _TFDS_OPTIONS.items():
        value = getattr(args, name, default)
        if not is_tfds and value != default:
            parser.error(
                f"--{name.replace('_', '-')} applies to --dataset tfds:NAME, not {args.dataset}."
            )
        if is_tfds and value is not None and not value.strip():
            parser.error(f"--{name.replace('_', '-')} must not be empty.")
    if args.reduce_zero_label and not (is_tfds or args.dataset == "folder"):
        parser.error(
            f"--reduce-zero-label applies to --dataset folder and tfds:NAME, not {args.dataset}"
            + (" (its loader always reduces it)." if args.dataset == "ade20k" else ".")
        )
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


# Loader arguments as the dataset options name them, for their error messages.
_LOADER_ARGUMENTS = {
    "`image_key`": "--image-key",
    "`mask_key`": "--mask-key",
    "`data_dir`": "--data-dir",
}


def load_dataset_split(args, parser, split, images_dir, masks_dir, num_images=None):
    """`load_segmentation_split` of the dataset options; a dataset that cannot be read (no
    such builder, feature, split or folder) is a `parser.error` naming the option.

    Example:
    >>> pairs = load_dataset_split(args, parser, "validation", args.images_dir, args.masks_dir)
    """
    tfds_split = None
    option = None
    if args.dataset.startswith(TFDS_PREFIX):
        option = "--train-split" if split == "train" else "--val-split"
        tfds_split = args.train_split if split == "train" else args.val_split
    try:
        return load_segmentation_split(
            args.dataset,
            split,
            data_dir=args.data_dir,
            images_dir=images_dir,
            masks_dir=masks_dir,
            image_size=args.image_size,
            num_images=num_images,
            seed=args.data_seed,
            tfds_split=tfds_split,
            image_key=args.image_key if option else "image",
            mask_key=args.mask_key if option else None,
            reduce_zero_label=args.reduce_zero_label,
        )
    except (ValueError, FileNotFoundError) as error:
        message = str(error)
        for argument, flag in dict(_LOADER_ARGUMENTS, **{"`split`": option}).items():
            if flag is not None:
                message = message.replace(argument, flag)
        parser.error(f"--dataset {args.dataset}: {message}")


# --- the `segmentation` subcommand --------------------------------------------------------------


def register_train_command(subparsers):
    """Adds the `segmentation` subcommand to `python -m keras_hrvit.train`."""
    parser = subparsers.add_parser(
        "segmentation",
        help="train a semantic segmentation model",
        description=wrap_description(
            "Train an HRViT segmenter with a recipe of HRViTSegmenter.compile(): --recipe "
            "scratch (default; random weights: AdamW at a constant 2e-3) or paper (fine-tuning "
            "a pretrained backbone: AdamW at 6e-5, 10x head learning rate, poly decay with "
            "warm-up); --lr and the others change one value of it. Checkpoints, history.json, "
            "history.csv, training_curves.png and TensorBoard logs go to --output-dir, and "
            "rerunning the same "
            "command resumes an interrupted run. The final model is saved as "
            "OUTPUT_DIR/model.keras."
        ),
        epilog=examples_epilog(
            "python -m keras_hrvit.train segmentation --dataset shapes --image-size 64 \\\n"
            "    --model hrvit_tiny_shapes --crop-size 64 --batch-size 16 --epochs 10 \\\n"
            "    --lr 2e-3 --warmup-steps 100 --output-dir runs/shapes",
            "python -m keras_hrvit.train segmentation --dataset tfds:oxford_iiit_pet \\\n"
            "    --reduce-zero-label --val-split test --num-classes 3 --model hrvit_b1 \\\n"
            "    --head segformer --crop-size 256 --steps-per-epoch 200 --output-dir runs/pets",
        ),
        formatter_class=HelpFormatter,
    )
    add_dataset_arguments(parser)
    _add_training_data_arguments(parser.add_argument_group("training data"))
    _add_model_arguments(parser.add_argument_group("model"))
    _add_optimization_arguments(parser.add_argument_group("optimization"))
    _add_run_arguments(parser.add_argument_group("run"))
    parser.set_defaults(run=run_train_command, command_parser=parser)
    return parser


def _add_training_data_arguments(group):
    """Validation folders, the tfds training split, image counts and augmentation."""
    group.add_argument("--train-split", default="train", help="tfds: the split to train on")
    group.add_argument("--val-images-dir", help="folder dataset: validation images")
    group.add_argument("--val-masks-dir", help="folder dataset: validation masks")
    group.add_argument(
        "--train-images", type=int, default=None, help="shapes: training images (1000)"
    )
    group.add_argument(
        "--val-images", type=int, default=None, help="shapes: validation images (200)"
    )
    group.add_argument(
        "--crop-size",
        type=int,
        nargs="+",
        default=None,
        help="training crop, H [W] (default: image size for shapes, 512 for ADE20K, folders and "
        "tfds, 1024 for Cityscapes)",
    )
    group.add_argument(
        "--ratio-range",
        type=finite_float,
        nargs=2,
        default=(0.5, 2.0),
        metavar=("LOW", "HIGH"),
        help="random rescale ratio range",
    )
    group.add_argument(
        "--photometric",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="photometric distortion",
    )


def _add_model_arguments(group):
    """The segmenter: preset, head, classes, pretrained backbone."""
    group.add_argument(
        "--model",
        required=True,
        help="segmenter preset (e.g. hrvit_b1_ade20k) or backbone preset (e.g. hrvit_b1)",
    )
    group.add_argument("--head", choices=HEADS, default=None, help="decode head (segformer)")
    group.add_argument("--head-channels", type=int, default=None, help="head width")
    group.add_argument(
        "--auxiliary-head",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="UperNet's auxiliary FCN head (default: on for UperNet)",
    )
    group.add_argument("--drop-path-rate", type=finite_float, default=None, help="stochastic depth")
    group.add_argument(
        "--num-classes", type=int, default=None, help="classes (default: the dataset's)"
    )
    group.add_argument(
        "--backbone-weights",
        default=None,
        metavar="PATH",
        help="pretrained backbone to fine-tune from: an original checkpoint (.pth, .pt, .npz, "
        ".safetensors), a classifier .keras (e.g. OUTPUT_DIR/model.keras of `train "
        "classification`), a .weights.h5, or a preset folder / hf:// / kaggle:// handle; "
        "loaded before training, not when resuming",
    )


def _add_optimization_arguments(group):
    """Batch, schedule, the recipe's hyperparameters, compilation."""
    group.add_argument("--batch-size", type=int, default=8, help="images per step")
    group.add_argument("--epochs", type=int, default=10, help="epochs")
    group.add_argument(
        "--steps-per-epoch",
        type=int,
        default=None,
        help="steps per epoch (default: one pass over the training set)",
    )
    group.add_argument(
        "--val-steps", type=int, default=None, help="validation batches per epoch (all)"
    )
    group.add_argument(
        "--recipe",
        choices=tuple(SEGMENTATION_RECIPES),
        default="scratch",
        help="scratch: for random weights; paper: the paper's, to fine-tune a pretrained backbone",
    )
    recipe_values = {
        "--lr": ("learning_rate", "peak learning rate"),
        "--weight-decay": ("weight_decay", "AdamW weight decay"),
        "--head-lr-mult": ("head_lr_mult", "learning-rate multiplier of the heads"),
        "--warmup-steps": ("warmup_steps", "linear warm-up steps"),
    }
    for option, (key, text) in recipe_values.items():
        values = ", ".join(f"{r[key]:g} {name}" for name, r in SEGMENTATION_RECIPES.items())
        group.add_argument(
            option,
            type=int if key == "warmup_steps" else finite_float,
            help=f"{text} (default: the recipe's: {values})",
        )
    group.add_argument("--clipnorm", type=finite_float, default=None, help="gradient norm clipping")
    add_compile_arguments(group)
    add_distribution_argument(group)


def _add_run_arguments(group):
    """Output folder, seed, resuming, validation and logging."""
    group.add_argument("--output-dir", required=True, help="run directory")
    group.add_argument("--seed", type=int, default=0, help="seed of weights and augmentation")
    add_run_folder_arguments(group)
    group.add_argument(
        "--validation",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="validate after every epoch (best.keras then tracks the validation mIoU)",
    )
    group.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TensorBoard logs in OUTPUT_DIR/logs",
    )
    group.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1, help="fit verbosity")


def _validate_train_arguments(args, parser):
    check_dataset_arguments(args, parser)
    if args.model not in SEGMENTER_PRESETS and args.model not in BACKBONE_PRESETS:
        parser.error(
            f"unknown --model {args.model!r}. Segmenter presets: "
            f"{', '.join(sorted(SEGMENTER_PRESETS))}. Backbone presets (with --head): "
            f"{', '.join(sorted(BACKBONE_PRESETS))}."
        )
    _check_numeric_arguments(args, parser)
    if (args.val_images_dir is None) != (args.val_masks_dir is None):
        parser.error("--val-images-dir and --val-masks-dir go together.")
    if args.auxiliary_head and (args.head or "") != "upernet" and args.model in BACKBONE_PRESETS:
        parser.error("--auxiliary-head needs --head upernet.")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0; got {args.seed}.")
    check_backbone_weights_argument(args, parser)
    check_distribution_argument(args, parser)


def _check_numeric_arguments(args, parser):
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
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0; got {getattr(args, name)}.")
    if (args.weight_decay or 0) < 0 or (args.warmup_steps or 0) < 0:
        parser.error("--weight-decay and --warmup-steps must be >= 0.")
    if args.clipnorm is not None and args.clipnorm <= 0:
        parser.error(f"--clipnorm must be > 0; got {args.clipnorm}.")
    if args.drop_path_rate is not None and not 0 <= args.drop_path_rate < 1:
        parser.error(f"--drop-path-rate must be in [0, 1); got {args.drop_path_rate}.")
    low, high = args.ratio_range
    if not 0 < low <= high:
        parser.error(f"--ratio-range needs 0 < LOW <= HIGH; got {low} {high}.")


def run_train_command(args, parser):
    """Runs `python -m keras_hrvit.train segmentation ...` from parsed arguments; returns 0."""
    _validate_train_arguments(args, parser)
    defaults = dataset_defaults(args.dataset)
    num_classes = _num_classes(args, parser, defaults["class_names"])
    crop_size = pair(args.crop_size, "--crop-size", parser)
    if crop_size is None:
        crop_size = defaults["crop_size"] or (args.image_size, args.image_size)
    if min(crop_size) < 32:
        parser.error(f"--crop-size must be at least 32 pixels; got {crop_size}.")

    with run_folder(args, parser) as resuming:
        write_train_args(args)
        keras.utils.set_random_seed(args.seed)
        model = _build_model(args, parser, num_classes)
        apply_backbone_weights(model, args.backbone_weights, resuming, parser)
        train_ds, val_ds = _datasets(
            args, parser, defaults["base_scale"], crop_size, model.num_classes
        )
        steps = args.steps_per_epoch
        if steps is None:
            steps = int(train_ds.cardinality())
            if steps <= 0:
                parser.error(
                    f"--dataset {args.dataset} needs --steps-per-epoch (its size is unknown)."
                )
        start = time.time()
        try:
            _train(args, model, train_ds, val_ds, steps)
            path = save_model(model, os.path.join(args.output_dir, MODEL_FILE))
        except TrainingDiverged as error:
            return report_failure(parser, str(error))
        except Exception as error:  # a bad example, as the pipelines report it
            message = bad_example_message(error)
            if message is None:
                raise
            return report_failure(parser, message)
    print(f"Trained for {time.time() - start:.0f} s; saved {path}")
    if val_ds is not None:
        _print_summary(args.output_dir, mean_iou_key(model))
    return 0


def _num_classes(args, parser, class_names):
    """`--num-classes`, else the dataset's number of classes (None: the preset's)."""
    num_classes = args.num_classes
    if num_classes is None:
        if class_names is None and args.model not in SEGMENTER_PRESETS:
            parser.error(f"--dataset {args.dataset} needs --num-classes.")
        num_classes = None if class_names is None else len(class_names)
    if class_names is not None and num_classes is not None and num_classes < len(class_names):
        parser.error(
            f"--num-classes {num_classes} is fewer than the {len(class_names)} classes of "
            f"--dataset {args.dataset}: its masks hold labels up to {len(class_names) - 1}."
        )
    if class_names is not None and num_classes is not None and num_classes != len(class_names):
        warnings.warn(
            f"--num-classes {num_classes} differs from the {len(class_names)} classes of "
            f"{args.dataset}.",
            stacklevel=3,
        )
    return num_classes


def _build_model(args, parser, num_classes):
    """The segmenter; a preset that cannot take these options is a `parser.error`."""
    try:
        # With --distribution data_parallel the variables are created replicated on every
        # device (see keras_hrvit.distribution); train_segmenter then trains the model there.
        with distribution_scope(args.distribution):
            return build_segmenter(
                args.model,
                num_classes=num_classes,
                head=args.head,
                head_channels=args.head_channels,
                auxiliary_head=args.auxiliary_head,
                drop_path_rate=args.drop_path_rate,
            )
    except ValueError as error:
        parser.error(str(error))


def _datasets(args, parser, base_scale, crop_size, num_classes):
    """The training pipeline and the validation pipeline (None without validation); both stop
    at a mask label that is neither below `num_classes` nor ignored."""
    train_pairs = load_dataset_split(
        args, parser, "train", args.images_dir, args.masks_dir, args.train_images
    )
    train_ds = segmentation_train_pipeline(
        train_pairs,
        crop_size=crop_size,
        base_scale=base_scale,
        ratio_range=tuple(args.ratio_range),
        batch_size=args.batch_size,
        photometric=args.photometric,
        seed=args.seed,
        num_classes=num_classes,
    )
    if not args.validation or (args.dataset == "folder" and not args.val_images_dir):
        return train_ds, None
    val_pairs = load_dataset_split(
        args, parser, "validation", args.val_images_dir, args.val_masks_dir, args.val_images
    )
    if args.dataset == "shapes":
        return train_ds, segmentation_eval_pipeline(
            val_pairs, batch_size=args.batch_size, num_classes=num_classes
        )
    return train_ds, fixed_size_validation_pipeline(
        val_pairs, crop_size, args.batch_size, num_classes=num_classes
    )


def _recipe_arguments(args):
    """The recipe named by --recipe, with the values given on the command line."""
    given = {
        "learning_rate": args.lr,
        "weight_decay": args.weight_decay,
        "head_lr_mult": args.head_lr_mult,
        "warmup_steps": args.warmup_steps,
    }
    return {"recipe": args.recipe, **{k: v for k, v in given.items() if v is not None}}


def _train(args, model, train_ds, val_ds, steps):
    return train_segmenter(
        model,
        train_ds,
        val_ds,
        output_dir=args.output_dir,
        epochs=args.epochs,
        steps_per_epoch=steps,
        clipnorm=args.clipnorm,
        **_recipe_arguments(args),
        validation_steps=args.val_steps,
        **compile_kwargs(args),
        tensorboard=args.tensorboard,
        verbose=args.verbose,
        distribution=args.distribution,
    )


def _print_summary(output_dir, key):
    """Prints the last and best validation mIoU of `history.json`; returns the last."""
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
