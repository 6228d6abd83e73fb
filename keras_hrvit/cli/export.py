"""`python -m keras_hrvit.export MODEL.keras OUTPUT`: the options, over `keras_hrvit.export`
(`export_saved_model`, `export_onnx`)."""

import argparse
import os

from keras_hrvit.export import TASKS, export_onnx, export_saved_model
from keras_hrvit.weights.files import load_model_file


def build_parser():
    """The `keras_hrvit.export` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_hrvit.export",
        description="Export a .keras model to a SavedModel or ONNX file serving uint8 images.",
    )
    parser.add_argument("model", help="a .keras file")
    parser.add_argument("output", help="SavedModel directory or .onnx file to create")
    parser.add_argument("--task", choices=TASKS, default=None)
    parser.add_argument("--format", choices=("saved_model", "onnx"), default="saved_model")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    parser.add_argument(
        "--quiet", action="store_true", help="do not print the serving signature and messages"
    )
    return parser


def main(argv=None):
    """Exports the model; returns 0.

    Example:
    >>> main(["runs/shapes/model.keras", "exported/"])
    Exported runs/shapes/model.keras to exported/
    0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.model.endswith(".keras") or not os.path.isfile(args.model):
        parser.error(f"{args.model!r} is not a .keras file.")
    try:
        model = load_model_file(args.model)
    except (ValueError, OSError) as error:
        parser.exit(2, f"error: {error}\n")
    try:
        if args.format == "onnx":
            export_onnx(
                model, args.output, task=args.task, opset=args.opset, verbose=not args.quiet
            )
        else:
            export_saved_model(model, args.output, task=args.task, verbose=not args.quiet)
    except (ValueError, FileExistsError, ImportError) as error:
        # a task that does not fit the model, an existing output, no tf2onnx for --format onnx
        parser.exit(2, f"error: {error}\n")
    if not args.quiet:
        print(f"Exported {args.model} to {args.output}")
    return 0
