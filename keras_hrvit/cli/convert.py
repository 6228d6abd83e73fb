"""`python -m keras_hrvit.convert SRC [DST] --model PRESET ...`: the options, over
`keras_hrvit.convert.convert_checkpoint` (usage in `keras_hrvit/convert.py`)."""

import argparse
import json
import logging
import os

from keras_hrvit.cli.common import examples_epilog, positive_int
from keras_hrvit.convert import TASKS, convert_checkpoint


def _parse_config(text):
    if os.path.isfile(text):
        with open(text) as f:
            text = f.read()
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"`--config` is neither a JSON file nor JSON text: {error}") from None
    if not isinstance(config, dict):
        raise ValueError("`--config` must be a JSON object of HRViTBackbone arguments.")
    return config


def _parse_widths(text):
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an int or comma-separated ints, got {text!r}"
        ) from None
    if any(w < 1 for w in widths):
        raise argparse.ArgumentTypeError(f"head channels must be positive, got {text!r}")
    return widths


def build_parser():
    """The `keras_hrvit.convert` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_hrvit.convert",
        description="Convert a checkpoint of the original HRViT code to Keras weights or a "
        "preset folder.",
        epilog=examples_epilog(
            "python -m keras_hrvit.convert ade.pth b1_ade.keras --model hrvit_b1_ade20k",
            "python -m keras_hrvit.convert hrvit_b1_imagenet.pth --model hrvit_b1 \\\n"
            "    --preset-dir presets/hrvit_b1_imagenet",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", help="checkpoint: .pth/.pt (needs torch), .npz or .safetensors")
    parser.add_argument(
        "dst",
        nargs="?",
        help="output .keras (the model) or .weights.h5 (its weights); omit with --preset-dir",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="preset: hrvit_b1..b3 or a segmenter preset")
    which.add_argument("--config", help="HRViTBackbone arguments as JSON text or a JSON file")
    parser.add_argument("--task", choices=TASKS, help="default: read from the checkpoint")
    parser.add_argument("--num-classes", type=positive_int, help="default: from the checkpoint")
    parser.add_argument(
        "--head-channels",
        type=_parse_widths,
        help="head width (segmentation) or 4 comma-separated widths (classification)",
    )
    parser.add_argument("--ema", action="store_true", help="use a timm checkpoint's EMA weights")
    parser.add_argument(
        "--preset-dir",
        metavar="DIR",
        help="write the model as a preset folder (config.json, model.weights.h5, metadata.json) "
        "for from_preset(DIR), instead of DST",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing DST or preset folder"
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="let torch unpickle arbitrary objects (trusted files only)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bar on stderr, one step per stage (read, build, load, check, write)",
    )
    return parser


def main(argv=None):
    """Converts and prints the written path; returns it.

    Unlike the other commands, `main` returns the path (`python -m keras_hrvit.convert` exits
    with 0). Errors exit with 1 and a one-line message on the command line; with `argv` given
    (from Python), they are raised.

    Example:
    >>> main(["ade.pth", "b1_ade.keras", "--model", "hrvit_b1_ade20k"])
    Wrote b1_ade.keras
    'b1_ade.keras'
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = convert_checkpoint(
            args.src,
            args.dst,
            model=args.model,
            config=_parse_config(args.config) if args.config else None,
            task=args.task,
            num_classes=args.num_classes,
            head_channels=args.head_channels,
            ema=args.ema,
            trust_pickle=args.trust_pickle,
            preset_dir=args.preset_dir,
            overwrite=args.overwrite,
            progress=args.progress,
        )
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
        if argv is not None:
            raise
        parser.exit(1, f"error: {error}\n")
    print(f"Wrote {path}")
    return path
