"""The command lines: argument parsing over the library, one module per command.

`python -m keras_hrvit.<command>` runs `keras_hrvit.cli.<command>.main`: `train` (with the
subcommands registered in `keras_hrvit.cli.train.TRAIN_TASKS`: `train_segmentation`,
`train_classification`), `evaluate`, `predict`, `export` and `convert`. Each module has
`main(argv=None)`, which parses `argv` (default: `sys.argv[1:]`), runs the command and returns
its exit code (`convert.main` returns the written path); bad arguments are reported with
`parser.error` (exit code 2). `common` holds the helpers several commands share.

Example:

>>> from keras_hrvit.cli import evaluate
>>> evaluate.main(["runs/shapes/model.keras", "--dataset", "shapes", "--output-dir", "eval"])
0
"""
