"""Command-line training: `python -m keras_hrvit.train <task> [options]`.

The parser and its subcommands are in `keras_hrvit/cli/train.py` (`keras_hrvit.cli.train.main`
runs it from Python); run `python -m keras_hrvit.train <task> --help` for a task's options.

Example:

    python -m keras_hrvit.train segmentation --dataset shapes --image-size 64 \
        --model hrvit_tiny_shapes --crop-size 64 --batch-size 16 --epochs 10 \
        --lr 2e-3 --warmup-steps 100 --output-dir runs/shapes
"""

if __name__ == "__main__":
    from keras_hrvit.cli.train import main

    raise SystemExit(main())
