"""Export to a TensorFlow SavedModel that serves raw `uint8` images.

The serving function takes a batch of `uint8` images of any height and width, normalizes them
inside (ImageNet mean and std, as in training), and returns class probabilities (classifier) or
per-pixel class ids at the input resolution (segmenter). Loading it needs only TensorFlow:

    served = tf.saved_model.load("exported")
    class_map = served.serve(tf.constant(image[None]))   # (1, H, W) int32

Keras builds the graph with the TensorFlow backend; a model trained on JAX or PyTorch is saved
as a `.keras` file and re-opened under TensorFlow in a subprocess.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import keras

from keras_hrvit.data.constants import IMAGENET_MEAN, IMAGENET_STD

TASKS = ("classification", "segmentation")


def infer_task(model):
    from keras_hrvit.models.segmenter import HRViTSegmenter

    return "segmentation" if isinstance(model, HRViTSegmenter) else "classification"


def export_saved_model(model, path, task=None, verbose=True):
    """Writes `model` as a SavedModel at `path` with a `serve` endpoint for `uint8` images.

    Args:
        model: a segmenter or classifier of this package (or any Keras model on NHWC images).
        path: output directory; it must not exist yet (nothing is overwritten).
        task: `"segmentation"` (class ids at input size) or `"classification"` (the model's
            outputs, e.g. probabilities); inferred from the model when `None`.
        verbose: print the serving signature once written.

    Example:
    >>> export_saved_model(segmenter, "exported/")
    """
    task = task or infer_task(model)
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; known tasks: {', '.join(TASKS)}.")
    path = os.fspath(path)
    if os.path.exists(path):
        raise FileExistsError(f"{path!r} exists; export writes a new directory.")
    if keras.backend.backend() != "tensorflow":
        with tempfile.TemporaryDirectory() as tmp:
            saved = os.path.join(tmp, "model.keras")
            model.save(saved)
            env = dict(os.environ, KERAS_BACKEND="tensorflow")
            command = [sys.executable, "-m", "keras_hrvit.export", saved, path, "--task", task]
            if not verbose:
                command.append("--quiet")
            subprocess.run(command, check=True, env=env)
        return path
    _export_with_tensorflow(model, path, task, verbose)
    return path


def _export_with_tensorflow(model, path, task, verbose):
    import tensorflow as tf

    from keras_hrvit.layers.common import resize_bilinear

    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)

    def serve(images):
        x = (tf.cast(images, tf.float32) - mean) / std
        outputs = model(x, training=False)
        if isinstance(outputs, (list, tuple)):
            outputs = outputs[0]
        if task == "classification":
            return outputs
        shape = tf.shape(images)
        logits = resize_bilinear(outputs, (shape[1], shape[2]))
        return tf.argmax(logits, axis=-1, output_type=tf.int32)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serve",
        fn=serve,
        input_signature=[tf.TensorSpec(shape=(None, None, None, 3), dtype=tf.uint8)],
    )
    # Write next to the target and rename, so an interrupted export leaves no half directory.
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        staging = os.path.join(tmp, "saved_model")
        archive.write_out(staging, verbose=verbose)
        os.replace(staging, path)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_hrvit.export",
        description="Export a .keras model to a TensorFlow SavedModel serving uint8 images.",
    )
    parser.add_argument("model", help="a .keras file")
    parser.add_argument("output", help="SavedModel directory to create")
    parser.add_argument("--task", choices=TASKS, default=None)
    parser.add_argument(
        "--quiet", action="store_true", help="do not print the serving signature and messages"
    )
    args = parser.parse_args(argv)
    if not args.model.endswith(".keras") or not os.path.isfile(args.model):
        parser.error(f"{args.model!r} is not a .keras file.")
    model = keras.saving.load_model(args.model, compile=False)
    export_saved_model(model, args.output, task=args.task, verbose=not args.quiet)
    if not args.quiet:
        print(f"Exported {args.model} to {args.output}")


if __name__ == "__main__":
    main()
