"""Command-line arguments and steps shared by several commands.

The options of both training subcommands (`--jit-compile`, `--run-eagerly`, `--distribution`,
`--backbone-weights`), their run folder (lock, resuming, `--overwrite`, `train_args.json`),
small argparse types, and the `--help` layout (`HelpFormatter`, `examples_epilog`).
"""

import argparse
import contextlib
import math
import os
import shutil
import sys
import textwrap

import keras

from keras_hrvit.distribution import DISTRIBUTIONS, check_distribution, data_parallel_devices
from keras_hrvit.files import FolderLock, FolderLockedError, write_json
from keras_hrvit.validation import check_positive_int
from keras_hrvit.weights.pretrained import check_backbone_source, load_backbone_weights

JIT_CHOICES = {"auto": "auto", "true": True, "false": False}
TRAIN_ARGS_FILE = "train_args.json"


# --- --help -------------------------------------------------------------------------------------


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default and keeps the line breaks of the description and epilog
    (wrap the description with `wrap_description`, end with `examples_epilog`).

    Example:
    >>> argparse.ArgumentParser(formatter_class=HelpFormatter, epilog=examples_epilog("..."))
    """

    def _get_help_string(self, action):
        # An option without a default value says in its help what happens when it is left out.
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def wrap_description(text, width=79):
    """`text` filled to `width` columns, for a parser whose formatter keeps line breaks.

    Example:
    >>> wrap_description("Evaluate a saved HRViT segmenter.")
    'Evaluate a saved HRViT segmenter.'
    """
    return textwrap.fill(" ".join(text.split()), width)


def examples_epilog(*commands):
    """A `--help` epilog: `Example:` (or `Examples:`), then each command, indented. A command
    may span lines, continued with ` \\`.

    Example:
    >>> print(examples_epilog("python -m keras_hrvit.predict model.keras a.jpg --out out"))
    Example:
      python -m keras_hrvit.predict model.keras a.jpg --out out
    """
    title = "Example:" if len(commands) == 1 else "Examples:"
    return "\n".join([title] + [textwrap.indent(command, "  ") for command in commands])


# --- argparse types -----------------------------------------------------------------------------


def positive_int(text):
    """An argparse `type`: an integer >= 1.

    Example:
    >>> parser.add_argument("--epochs", type=positive_int)
    """
    try:
        return check_positive_int("value", int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None


def finite_float(text):
    """An argparse `type`: a finite float (`float("nan")` would pass every range check).

    Example:
    >>> parser.add_argument("--lr", type=finite_float)
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def pair(values, name, parser):
    """`(height, width)` from the one or two positive integers of a `nargs="+"` option.

    Returns None for None; anything else is reported with `parser.error`.

    Example:
    >>> pair([512], "--crop-size", parser)
    (512, 512)
    """
    if values is None:
        return None
    if len(values) not in (1, 2) or min(values) < 1:
        parser.error(f"{name} takes one or two positive integers (height width); got {values}.")
    return (values[0], values[0]) if len(values) == 1 else tuple(values)


# --- compilation and distribution ---------------------------------------------------------------


def add_compile_arguments(parser):
    """Adds `--jit-compile` and `--run-eagerly` to an argparse parser or argument group."""
    parser.add_argument(
        "--jit-compile",
        choices=tuple(JIT_CHOICES),
        default="auto",
        help="XLA compilation of the train step",
    )
    parser.add_argument(
        "--run-eagerly",
        action="store_true",
        help="no graph tracing or compilation (starts at once; slower steps)",
    )


def compile_kwargs(args):
    """`jit_compile` and `run_eagerly` for `model.compile` from parsed arguments."""
    return {"jit_compile": JIT_CHOICES[args.jit_compile], "run_eagerly": args.run_eagerly}


def add_distribution_argument(parser):
    """Adds `--distribution {none,data_parallel}` to an argparse parser or argument group."""
    parser.add_argument(
        "--distribution",
        choices=DISTRIBUTIONS,
        default="none",
        help="data_parallel: replicate the model on every local GPU (CPU devices if there is "
        "none) and split each --batch-size batch across them; JAX (keras.distribution."
        "DataParallel) and TensorFlow (tf.distribute.MirroredStrategy, synchronized "
        "BatchNormalization) only",
    )


def check_distribution_argument(args, parser):
    """Reports with `parser.error` a `--distribution` this backend or machine cannot run.

    Data-parallel training needs the JAX or TensorFlow backend and two or more devices, and on
    JAX a `--batch-size` that is a multiple of the number of devices.
    """
    try:
        distribution = check_distribution(args.distribution)
    except ValueError as error:
        parser.error(f"--distribution {args.distribution}: {error}")
    if distribution == "data_parallel" and keras.backend.backend() == "jax":
        active = keras.distribution.distribution()
        devices = active.num_model_replicas if active else len(data_parallel_devices())
        if args.batch_size % devices:
            parser.error(
                f"--distribution data_parallel on JAX splits each batch evenly over the "
                f"{devices} devices: --batch-size must be a multiple of {devices}; got "
                f"{args.batch_size}."
            )
    return distribution


# --- pretrained backbones -----------------------------------------------------------------------


def check_backbone_weights_argument(args, parser):
    """Reports with `parser.error` a `--backbone-weights` source that cannot exist."""
    if args.backbone_weights is not None:
        try:
            check_backbone_source(args.backbone_weights)
        except (ValueError, OSError) as error:
            parser.error(f"--backbone-weights: {error}")


def apply_backbone_weights(model, source, resuming, parser=None):
    """`--backbone-weights` of the training CLIs: loads `source` into the model's backbone
    (printing what was loaded) unless the run resumes from its backup, which restores every
    weight. A source that cannot be loaded is a `parser.error` (raised without `parser`).

    Returns the description of what was loaded, or None."""
    if source is None:
        return None
    if resuming:
        print(f"--backbone-weights {source} not loaded: the resumed run restores its own weights.")
        return None
    try:
        description = load_backbone_weights(model, source)
    except (ValueError, OSError, ImportError) as error:
        if parser is None:
            raise
        parser.error(f"--backbone-weights: {error}")
    print(f"Loaded pretrained weights: {description}")
    return description


# --- the run folder -----------------------------------------------------------------------------


# What a training run writes in its folder; `--overwrite` removes them before a new run.
RUN_FILES = (
    "model.keras",
    "history.json",
    "history.csv",
    "training_curves.png",
    TRAIN_ARGS_FILE,
    "checkpoints",
    "backup",
    "logs",
)


@contextlib.contextmanager
def run_folder(args, parser):
    """Holds `args.output_dir` for this run; yields whether the run resumes from its backup.

    The folder is locked against a second concurrent run. A folder holding a finished run
    (`model.keras` and no backup) is refused unless `args.overwrite`, which removes the earlier
    run's files; an interrupted run resumes, unless `args.resume` is False (`--no-resume`),
    which removes its backup. Bad
    folders are a `parser.error` (a `ValueError` when `parser` is None).

    Example:
    >>> with run_folder(args, parser) as resuming:
    ...     train(...)
    """
    output_dir = args.output_dir
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as error:
        _error(parser, f"--output-dir {output_dir!r} cannot be created: {error.strerror or error}.")
    try:
        with FolderLock(output_dir):
            yield _prepare(output_dir, args, parser)
    except FolderLockedError as error:
        _error(parser, f"--output-dir: {error}")


def _error(parser, message):
    if parser is None:
        raise ValueError(message)
    parser.error(message)


def _prepare(output_dir, args, parser):
    backup = os.path.join(output_dir, "backup")
    finished = os.path.exists(os.path.join(output_dir, "model.keras")) and not os.path.exists(
        backup
    )
    if finished and not args.overwrite:
        _error(
            parser,
            f"--output-dir {output_dir!r} holds a finished run (model.keras); pass --overwrite "
            "to replace it, or choose another folder.",
        )
    if finished:
        print(f"--overwrite: removing the finished run in {output_dir}.")
        for name in RUN_FILES:
            path = os.path.join(output_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    if not args.resume and os.path.exists(backup):
        print(f"--no-resume: removing {backup} and starting from scratch.")
        shutil.rmtree(backup)
    resuming = os.path.exists(os.path.join(backup, "training_metadata.json"))
    if resuming:
        print(f"Resuming the interrupted run in {output_dir}.")
    return resuming


def add_run_folder_arguments(parser):
    """Adds `--resume/--no-resume` and `--overwrite` to a training parser or argument group."""
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue an interrupted run from OUTPUT_DIR/backup (--no-resume starts over)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a finished run in --output-dir (without it, such a folder is refused; an "
        "interrupted run resumes either way)",
    )


def report_failure(parser, message):
    """Prints `prog: error: message` to stderr, as `parser.error` does; returns exit code 1.

    For failures of the run itself (divergence, bad data), not of its arguments (exit code 2).
    """
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return 1


def write_train_args(args, indent=2, **extra):
    """Writes the parsed arguments, the backend and `extra` to `OUTPUT_DIR/train_args.json`."""
    settings = {k: v for k, v in vars(args).items() if k not in ("run", "command_parser")}
    settings.update(backend=keras.backend.backend(), **extra)
    return write_json(os.path.join(args.output_dir, TRAIN_ARGS_FILE), settings, indent=indent)
