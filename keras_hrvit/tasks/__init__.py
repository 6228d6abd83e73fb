"""Task modules behind `python -m keras_hrvit.train <task>`.

Each entry of `TRAIN_TASKS` names a module defining `register_train_command(subparsers)`, which
adds its subcommand and sets `parser.set_defaults(run=fn, command_parser=parser)`; the CLI then
calls `fn(args, parser)`, which returns the exit code and reports bad arguments with
`parser.error`. A new task is one module plus one line here.

Example:

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="train")
>>> register_train_commands(parser.add_subparsers(dest="task", required=True))
"""

import importlib

TRAIN_TASKS = {
    "segmentation": "keras_hrvit.tasks.segmentation",
    "classification": "keras_hrvit.tasks.classification",
}


def register_train_commands(subparsers):
    """Calls `register_train_command(subparsers)` of every module in `TRAIN_TASKS`."""
    for module_name in TRAIN_TASKS.values():
        importlib.import_module(module_name).register_train_command(subparsers)
    return subparsers


__all__ = ["TRAIN_TASKS", "register_train_commands"]
