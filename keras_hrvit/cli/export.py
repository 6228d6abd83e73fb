"""`python -m keras_hrvit.export MODEL.keras OUTPUT`: the options, over `keras_hrvit.export`
(`export_saved_model`, `export_onnx`)."""

import argparse
import os

from keras_hrvit.cli.common import examples_epilog
from keras_hrvit.export import TASKS, export_onnx, export_saved_model
from keras_hrvit.weights.files import load_model_file

# After the examples: what the SavedModel serves, and where to read more.
SERVING_NOTE = """\
The SavedModel serves `serving_default` (uint8 images) and `serving_bytes` (JPEG or PNG
files' bytes, base64 in a REST request); see examples/serving.py."""


def build_parser():
    """The `keras_hrvit.export` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_hrvit.export",
        description="Export a .keras model to a SavedModel or ONNX file serving uint8 images.",
        epilog=examples_epilog(
            "python -m keras_hrvit.export runs/shapes/model.keras models/hrvit_shapes --version 1",
            "saved_model_cli show --dir models/hrvit_shapes/1 --all",
            'docker run -p 8501:8501 -v "$PWD/models/hrvit_shapes:/models/hrvit_shapes" \\\n'
            "    -e MODEL_NAME=hrvit_shapes tensorflow/serving",
        )
        + "\n\n"
        + SERVING_NOTE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="a .keras file")
    parser.add_argument(
        "output",
        help="SavedModel folder (with --version: the folder of versions) or .onnx file to create",
    )
    parser.add_argument("--task", choices=TASKS, default=None)
    parser.add_argument("--format", choices=("saved_model", "onnx"), default="saved_model")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    parser.add_argument(
        "--version",
        type=int,
        default=None,
        help="write OUTPUT/VERSION/, the layout TF Serving loads (SavedModel only)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the folder or file if it exists"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="print neither the signatures nor progress bars"
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars of the export's stages on stderr (default: unless --quiet)",
    )
    return parser


def main(argv=None):
    """Exports the model; returns 0.

    Example:
    >>> main(["runs/shapes/model.keras", "models/shapes", "--version", "1", "--quiet"])
    0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version is not None and args.format != "saved_model":
        parser.error("--version: only a SavedModel has versions (TF Serving's layout).")
    if args.version is not None and args.version < 1:
        parser.error(f"--version must be a positive integer; got {args.version}.")
    if not args.model.endswith(".keras") or not os.path.isfile(args.model):
        parser.error(f"{args.model!r} is not a .keras file.")
    try:
        model = load_model_file(args.model)
    except (ValueError, OSError) as error:
        parser.exit(2, f"error: {error}\n")
    options = {
        "task": args.task,
        "verbose": not args.quiet,
        "overwrite": args.overwrite,
        "progress": not args.quiet if args.progress is None else args.progress,
    }
    try:
        if args.format == "onnx":
            export_onnx(model, args.output, opset=args.opset, **options)
        else:
            export_saved_model(model, args.output, version=args.version, **options)
    except (ValueError, FileExistsError, NotADirectoryError, ImportError) as error:
        # a task that does not fit the model, an existing output, no tf2onnx for --format onnx
        parser.exit(2, f"error: {error}\n")
    # The export itself printed where it wrote, unless --quiet.
    return 0
