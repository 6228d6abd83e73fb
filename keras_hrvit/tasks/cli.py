"""Command-line arguments shared by the training subcommands."""

import keras

from keras_hrvit.distribution import DISTRIBUTIONS, check_distribution, data_parallel_devices

JIT_CHOICES = {"auto": "auto", "true": True, "false": False}


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
