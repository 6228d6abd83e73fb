"""Command-line training: `python -m keras_hrvit.train <task> [options]`.

Tasks are registered in `keras_hrvit.tasks.TRAIN_TASKS`; run `python -m keras_hrvit.train
<task> --help` for a task's options.

Example:

    python -m keras_hrvit.train segmentation --dataset shapes --image-size 64 \
        --model hrvit_tiny_shapes --crop-size 64 --batch-size 16 --epochs 10 \
        --lr 2e-3 --warmup-steps 100 --output-dir runs/shapes
"""

import argparse
import sys

from keras_hrvit.tasks import register_train_commands


def build_parser():
    """The `keras_hrvit.train` parser with one subcommand per registered task."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_hrvit.train",
        description="Train HRViT models. Rerunning an interrupted command resumes it.",
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


if __name__ == "__main__":
    sys.exit(main())
