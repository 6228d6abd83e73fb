"""`python -m keras_hrvit.train <task> [options]`: the parser and its registry of subcommands.

Each entry of `TRAIN_TASKS` names a module defining `register_train_command(subparsers)`, which
adds its subcommand and sets `parser.set_defaults(run=fn, command_parser=parser)`; `main` then
calls `fn(args, parser)`, which returns the exit code and reports bad arguments with
`parser.error`. A new task is one module plus one line here. Run `python -m keras_hrvit.train
<task> --help` for a task's options.

Example:

    python -m keras_hrvit.train segmentation --dataset shapes --image-size 64 \
        --model hrvit_tiny_shapes --crop-size 64 --batch-size 16 --epochs 10 \
        --lr 2e-3 --warmup-steps 100 --output-dir runs/shapes
"""

import argparse
import importlib
import sys

from keras_hrvit.cli.common import examples_epilog

TRAIN_TASKS = {
    "segmentation": "keras_hrvit.cli.train_segmentation",
    "classification": "keras_hrvit.cli.train_classification",
}


def register_train_commands(subparsers):
    """Calls `register_train_command(subparsers)` of every module in `TRAIN_TASKS`.

    Example:
    >>> parser = argparse.ArgumentParser(prog="train")
    >>> register_train_commands(parser.add_subparsers(dest="task", required=True))
    """
    for module_name in TRAIN_TASKS.values():
        importlib.import_module(module_name).register_train_command(subparsers)
    return subparsers


def build_parser():
    """The `keras_hrvit.train` parser with one subcommand per registered task."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_hrvit.train",
        description="Train HRViT models. Rerunning an interrupted command resumes it.",
        epilog=examples_epilog(
            "python -m keras_hrvit.train segmentation --dataset shapes --image-size 64 \\\n"
            "    --model hrvit_tiny_shapes --crop-size 64 --batch-size 16 --epochs 10 \\\n"
            "    --lr 2e-3 --warmup-steps 100 --output-dir runs/shapes",
            "python -m keras_hrvit.train segmentation --help",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="task", required=True)
    register_train_commands(subparsers)
    return parser


def main(argv=None):
    """Parses `argv` (default: `sys.argv[1:]`) and runs the chosen task; returns its exit code.

    Example:

    >>> main(["segmentation", "--dataset", "shapes", "--model", "hrvit_tiny_shapes",
    ...       "--epochs", "1", "--output-dir", "runs/smoke"])
    0
    """
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    return args.run(args, args.command_parser)
