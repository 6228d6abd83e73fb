"""Command-line arguments shared by the training subcommands."""

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
