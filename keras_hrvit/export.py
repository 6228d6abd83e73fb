"""Export to a TensorFlow SavedModel or an ONNX file that serves raw `uint8` images.

The serving function takes a batch of `uint8` images of any height and width (the models
normalize them inside their graph) and returns class probabilities (classifier) or
per-pixel class ids at the input resolution (segmenter). Loading it needs only TensorFlow:

    served = tf.saved_model.load("exported")
    class_map = served.serve(tf.constant(image[None]))   # (1, H, W) int32

`export_onnx` converts the same function with `tf2onnx` (the `onnx` extra); onnxruntime runs it:

    session = onnxruntime.InferenceSession("model.onnx")
    class_map = session.run(None, {"images": image[None]})[0]

Keras builds the graph with the TensorFlow backend; a model trained on JAX or PyTorch is saved
as a `.keras` file and re-opened under TensorFlow in a subprocess.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import keras

from keras_hrvit.files import atomic_write
from keras_hrvit.validation import check_choice

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
    return _export(model, path, task, "saved_model", verbose)


def export_onnx(model, path, task=None, opset=18, verbose=True):
    """Writes `model` as an ONNX file at `path` whose input `images` is a `uint8` batch.

    Inputs and outputs are those of `export_saved_model`'s `serve` endpoint; batch, height and
    width are dynamic. Needs `tf2onnx` (`pip install keras_hrvit[onnx]`).

    Args:
        model: a segmenter or classifier of this package (or any Keras model on NHWC images).
        path: the `.onnx` file to create; it must not exist yet.
        task: as in `export_saved_model`.
        opset: ONNX opset version.
        verbose: print a line once written.

    Example:
    >>> export_onnx(segmenter, "segmenter.onnx")
    """
    if not os.fspath(path).endswith(".onnx"):
        raise ValueError(f"An ONNX export path must end in .onnx, got {os.fspath(path)!r}.")
    try:
        import tf2onnx  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "ONNX export needs tf2onnx: pip install 'keras_hrvit[onnx]' (tf2onnx, onnx, "
            "onnxruntime)."
        ) from error
    return _export(model, path, task, "onnx", verbose, opset=opset)


def _export(model, path, task, format, verbose, opset=18):
    task = task or infer_task(model)
    check_choice("task", task, TASKS)
    path = os.fspath(path)
    if os.path.exists(path):
        raise FileExistsError(f"{path!r} exists; export writes a new file or directory.")
    if keras.backend.backend() != "tensorflow":
        with tempfile.TemporaryDirectory() as tmp:
            saved = os.path.join(tmp, "model.keras")
            model.save(saved)
            env = dict(os.environ, KERAS_BACKEND="tensorflow")
            command = [sys.executable, "-m", "keras_hrvit.export", saved, path, "--task", task]
            command += ["--format", format, "--opset", str(opset)]
            if not verbose:
                command.append("--quiet")
            subprocess.run(command, check=True, env=env)
        return path
    if format == "onnx":
        atomic_write(path, lambda tmp: _write_onnx(model, tmp, task, opset), ".onnx")
        if verbose:
            print(f"Wrote ONNX (opset {opset}) with input 'images': uint8 (batch, H, W, 3).")
        return path
    # A SavedModel is a folder: write it next to the target and rename it whole, so an
    # interrupted export leaves nothing half-written.
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        staging = os.path.join(tmp, os.path.basename(path))
        _write_saved_model(model, staging, task, verbose)
        os.replace(staging, path)
    return path


def _serving_function(model, task):
    import tensorflow as tf

    def serve(images):
        outputs = model(tf.cast(images, tf.float32), training=False)
        if isinstance(outputs, (list, tuple)):
            outputs = outputs[0]  # the auxiliary head's output serves no one
        if task == "classification":
            return outputs
        return tf.argmax(outputs, axis=-1, output_type=tf.int32)

    signature = [tf.TensorSpec(shape=(None, None, None, 3), dtype=tf.uint8, name="images")]
    return serve, signature


def _write_saved_model(model, path, task, verbose):
    serve, signature = _serving_function(model, task)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serve", fn=serve, input_signature=signature)
    archive.write_out(path, verbose=verbose)


def _write_onnx(model, path, task, opset):
    import tensorflow as tf
    import tf2onnx

    serve, signature = _serving_function(model, task)
    function = tf.function(serve, input_signature=signature)
    tf2onnx.convert.from_function(
        function, input_signature=signature, opset=opset, output_path=path
    )


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_hrvit.export",
        description="Export a .keras model to a SavedModel or ONNX file serving uint8 images.",
    )
    parser.add_argument("model", help="a .keras file")
    parser.add_argument("output", help="SavedModel directory or .onnx file to create")
    parser.add_argument("--task", choices=TASKS, default=None)
    parser.add_argument("--format", choices=("saved_model", "onnx"), default="saved_model")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    parser.add_argument(
        "--quiet", action="store_true", help="do not print the serving signature and messages"
    )
    args = parser.parse_args(argv)
    if not args.model.endswith(".keras") or not os.path.isfile(args.model):
        parser.error(f"{args.model!r} is not a .keras file.")
    model = keras.saving.load_model(args.model, compile=False)
    if args.format == "onnx":
        export_onnx(model, args.output, task=args.task, opset=args.opset, verbose=not args.quiet)
    else:
        export_saved_model(model, args.output, task=args.task, verbose=not args.quiet)
    if not args.quiet:
        print(f"Exported {args.model} to {args.output}")


if __name__ == "__main__":
    main()
