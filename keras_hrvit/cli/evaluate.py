"""`python -m keras_hrvit.evaluate MODEL.keras`: the options of an evaluation, over
`keras_hrvit.tasks.segmentation.evaluate_segmenter` (usage in `keras_hrvit/evaluate.py`)."""

import argparse
import json
import os
import sys

import keras_hrvit  # noqa: F401  (registers the saved model's classes)
from keras_hrvit.cli.common import (
    TRAIN_ARGS_FILE,
    HelpFormatter,
    examples_epilog,
    finite_float,
    pair,
    report_failure,
    wrap_description,
)
from keras_hrvit.cli.train_segmentation import (
    add_dataset_arguments,
    check_dataset_arguments,
    load_dataset_split,
)
from keras_hrvit.data import segmentation_eval_pipeline
from keras_hrvit.data.segmentation import bad_example_message
from keras_hrvit.tasks.segmentation import (
    REPORT_FILE,
    dataset_defaults,
    evaluate_segmenter,
    num_model_classes,
)
from keras_hrvit.weights.files import check_model_task, load_model_file

# Options that default to the value of the run that saved the model (on the same --dataset),
# else to these; with their types, to ignore a hand-edited train_args.json.
_RUN_SETTINGS = {
    "image_size": (128, int),
    "data_seed": (0, int),
    "reduce_zero_label": (False, bool),
    "image_key": ("image", str),
    "mask_key": (None, str),
    "val_split": ("validation", str),
}


def build_parser():
    """The `keras_hrvit.evaluate` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_hrvit.evaluate",
        description=wrap_description(
            "Evaluate a saved HRViT segmenter: report.json, overlays and the mIoU. Options of "
            "the data that are not given (--image-size, --data-seed, --reduce-zero-label, "
            "--image-key, --mask-key, --val-split) take the values of the training run that "
            "saved the model, when it used the same --dataset."
        ),
        epilog=examples_epilog(
            "python -m keras_hrvit.evaluate runs/shapes/model.keras --dataset shapes \\\n"
            "    --output-dir runs/shapes/eval",
            "python -m keras_hrvit.evaluate runs/pets/model.keras \\\n"
            "    --dataset tfds:oxford_iiit_pet --val-split test --output-dir runs/pets/eval",
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("model", help="a .keras file saved by keras_hrvit.train")
    add_dataset_arguments(parser)
    # None: the value recorded in the run's train_args.json, else the default of _RUN_SETTINGS.
    parser.set_defaults(**{name: None for name in _RUN_SETTINGS})
    parser.add_argument(
        "--num-images", type=int, default=None, help="shapes: validation images (200)"
    )
    parser.add_argument(
        "--mode",
        choices=("whole", "slide"),
        default=None,
        help="inference mode (default: the dataset's protocol, slide for Cityscapes)",
    )
    parser.add_argument("--crop-size", type=int, nargs="+", default=None, help="slide window H [W]")
    parser.add_argument("--stride", type=int, nargs="+", default=None, help="slide stride H [W]")
    parser.add_argument("--flip", action="store_true", help="add horizontally flipped views")
    parser.add_argument(
        "--scales", type=finite_float, nargs="+", default=(1.0,), help="test-time scale factors"
    )
    parser.add_argument(
        "--test-scale",
        type=int,
        nargs=2,
        default=None,
        metavar=("LONG", "SHORT"),
        help="resize images to fit this scale (default: the dataset's, e.g. 2048 512 for ADE20K)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="images per batch (16 shapes, else 1)"
    )
    parser.add_argument("--max-batches", type=int, default=None, help="stop after N batches")
    parser.add_argument("--num-overlays", type=int, default=8, help="overlay PNGs to write")
    parser.add_argument("--output-dir", required=True, help="where report.json and overlays go")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar"
    )
    return parser


def _apply_training_settings(args):
    """Options not given default to those of the run that saved the model (same dataset)."""
    settings = _training_settings(args.model)
    same_dataset = settings.get("dataset") == args.dataset
    for name, (default, kind) in _RUN_SETTINGS.items():
        if getattr(args, name) is not None:
            continue
        recorded = settings.get(name) if same_dataset else None
        # bool is an int: an int setting must not take True.
        if isinstance(recorded, kind) and (kind is bool or not isinstance(recorded, bool)):
            setattr(args, name, recorded)
        else:
            setattr(args, name, default)


def _training_settings(model_path):
    """The train_args.json of the run that saved `model_path`, or `{}`."""
    folder = os.path.dirname(os.path.abspath(model_path))
    # The final model sits in the run directory, checkpoints one level below it.
    for candidate in (folder, os.path.dirname(folder)):
        path = os.path.join(candidate, TRAIN_ARGS_FILE)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    settings = json.load(f)
            except (OSError, ValueError):
                return {}
            return settings if isinstance(settings, dict) else {}
    return {}


def main(argv=None):
    """Evaluates and prints the mIoU; returns 0. `argv` defaults to `sys.argv[1:]`.

    Example:

    >>> main(["runs/shapes/model.keras", "--dataset", "shapes", "--output-dir", "eval"])
    mIoU 0.8712 ...
    0
    """
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    _apply_training_settings(args)
    _check_arguments(args, parser)
    defaults = dataset_defaults(args.dataset)
    mode, crop_size, stride = _inference_window(args, parser, defaults)

    try:
        model = check_model_task(
            load_model_file(args.model), args.model, "segmentation", "evaluate"
        )
    except (ValueError, OSError) as error:
        parser.exit(2, f"error: {error}\n")
    num_classes = num_model_classes(model)
    class_names = defaults["class_names"]
    if class_names is not None and len(class_names) != num_classes:
        print(
            f"Note: the model has {num_classes} classes, {args.dataset} has {len(class_names)}; "
            "reporting class indices."
        )
        class_names = None
    pairs = load_dataset_split(
        args, parser, "validation", args.images_dir, args.masks_dir, args.num_images
    )
    try:
        report = _evaluate(
            args, model, pairs, defaults, num_classes, class_names, mode, crop_size, stride
        )
    except Exception as error:  # a bad example, as the pipelines report it
        message = bad_example_message(error)
        if message is None:
            raise
        return report_failure(parser, message)
    report_path = os.path.join(args.output_dir, REPORT_FILE)
    print(
        f"mIoU {report['mIoU']:.4f}  mAcc {report['mAcc']:.4f}  aAcc {report['aAcc']:.4f}  "
        f"({report['num_images']} images, {mode}{', flip' if args.flip else ''}) -> {report_path}"
    )
    return 0


def _evaluate(args, model, pairs, defaults, num_classes, class_names, mode, crop_size, stride):
    return evaluate_segmenter(
        model,
        _dataset(args, pairs, defaults, num_classes),
        num_classes=num_classes,
        class_names=class_names,
        mode=mode,
        crop_size=crop_size,
        stride=stride,
        flip=args.flip,
        scales=tuple(args.scales),
        output_dir=args.output_dir,
        num_overlays=args.num_overlays,
        max_batches=args.max_batches,
        progress=args.progress,
    )


def _check_arguments(args, parser):
    check_dataset_arguments(args, parser)
    if not os.path.isfile(args.model):
        parser.error(f"model file {args.model} not found.")
    if not args.model.endswith(".keras"):
        parser.error(f"the model must be a .keras file; got {args.model}.")
    for name in ("num_images", "batch_size", "max_batches"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer; got {value}.")
    if args.num_overlays < 0:
        parser.error(f"--num-overlays must be >= 0; got {args.num_overlays}.")
    if min(args.scales) <= 0:
        parser.error(f"--scales must be positive; got {args.scales}.")


def _inference_window(args, parser, defaults):
    """`(mode, crop_size, stride)`: the options, else the dataset's protocol."""
    mode = args.mode or defaults["mode"]
    crop_size = pair(args.crop_size, "--crop-size", parser)
    stride = pair(args.stride, "--stride", parser)
    if mode == "slide":
        crop_size = crop_size or defaults.get("crop_size")
        if crop_size is None:
            parser.error("--mode slide needs --crop-size.")
        stride = stride or defaults.get("slide_stride") or crop_size
        if stride[0] > crop_size[0] or stride[1] > crop_size[1]:
            parser.error(f"--stride {stride} must not exceed --crop-size {crop_size}.")
    elif args.crop_size or args.stride:
        parser.error("--crop-size and --stride apply to --mode slide only.")
    return mode, crop_size, stride


def _dataset(args, pairs, defaults, num_classes):
    """The batched validation `pairs`, resized to the test scale; a mask label that is neither
    below `num_classes` nor ignored stops it (such pixels would count nowhere)."""
    return segmentation_eval_pipeline(
        pairs,
        scale=tuple(args.test_scale) if args.test_scale else defaults["test_scale"],
        batch_size=args.batch_size or defaults["eval_batch_size"],
        num_classes=num_classes,
    )
