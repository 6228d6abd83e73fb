"""Export to a TensorFlow SavedModel or an ONNX file that serves raw `uint8` images.

The serving function takes a batch of `uint8` images of any height and width (the models
normalize them inside their graph) and returns class probabilities (classifier) or
per-pixel class ids at the input resolution (segmenter). An HRViT model needs images of at
least 32x32 pixels: the SavedModel refuses smaller ones with an `InvalidArgumentError` naming
the size (ONNX has no assertion operator: see `_serving_function`). An empty batch gives an
empty result. Loading it needs only TensorFlow:

    served = tf.saved_model.load("exported")
    class_map = served.serve(tf.constant(image[None]))   # (1, H, W) int32

`export_onnx` converts the same function with `tf2onnx` (the `onnx` extra); onnxruntime runs it:

    session = onnxruntime.InferenceSession("model.onnx")
    class_map = session.run(None, {"images": image[None]})[0]

Keras builds the graph with the TensorFlow backend; a model trained on JAX or PyTorch is saved
as a `.keras` file and re-opened under TensorFlow in a subprocess.

Command line (options in `keras_hrvit/cli/export.py`):

    python -m keras_hrvit.export MODEL.keras OUTPUT [--format saved_model|onnx] [--task TASK]
"""

import os
import subprocess
import sys
import tempfile

import keras

from keras_hrvit.files import atomic_write
from keras_hrvit.validation import check_choice

TASKS = ("classification", "segmentation")


def model_task(model):
    """The task a model of this package fits: `"segmentation"`, `"classification"` or `None`.

    `None` for any other Keras model.

    Example:
    >>> model_task(HRViTSegmenter("hrvit_b1", num_classes=3))
    'segmentation'
    """
    from keras_hrvit.models.classifier import HRViTClassifier
    from keras_hrvit.models.segmenter import HRViTSegmenter

    if isinstance(model, HRViTSegmenter):
        return "segmentation"
    if isinstance(model, HRViTClassifier):
        return "classification"
    return None


def infer_task(model):
    """`model_task(model)`, else `"classification"` (serve the model's outputs as they are)."""
    return model_task(model) or "classification"


def check_task(model, task):
    """Raises a `ValueError` when `task` does not fit `model` (see `model_task`).

    A model of another kind may be exported for `"classification"` (its outputs are served as
    they are) and for `"segmentation"` when its output is (batch, height, width, classes).
    """
    check_choice("task", task, TASKS)
    fits = model_task(model)
    if fits is not None and fits != task:
        raise ValueError(
            f"`task={task!r}` does not fit {type(model).__name__} {model.name!r}, a "
            f"{fits} model: export it with task {fits!r}."
        )
    outputs = getattr(model, "outputs", None) or []
    if fits is None and task == "segmentation" and outputs and len(outputs[0].shape) != 4:
        raise ValueError(
            f"`task='segmentation'` needs a model whose output is (batch, height, width, "
            f"classes); {type(model).__name__} {model.name!r} outputs shape "
            f"{tuple(outputs[0].shape)}: export it with task 'classification'."
        )
    return task


def export_saved_model(model, path, task=None, verbose=True):
    """Writes `model` as a SavedModel at `path` with a `serve` endpoint for `uint8` images.

    Args:
        model: a segmenter or classifier of this package (or any Keras model on NHWC images).
        path: output directory; it must not exist yet (nothing is overwritten).
        task: `"segmentation"` (class ids at input size) or `"classification"` (the model's
            outputs, e.g. probabilities); inferred from the model when `None`. A task that
            does not fit the model (a classifier exported for segmentation) is refused.
        verbose: print the serving signature once written.

    Example:
    >>> export_saved_model(segmenter, "exported/")
    """
    return _export(model, path, task, "saved_model", verbose)


def export_onnx(model, path, task=None, opset=18, verbose=True):
    """Writes `model` as an ONNX file at `path` whose input `images` is a `uint8` batch.

    Inputs and outputs are those of `export_saved_model`'s `serve` endpoint; batch, height and
    width are dynamic. Unlike the SavedModel it cannot refuse images under the model's minimum
    size (32x32 for HRViT; ONNX has no assertion): check the size before running it. Needs
    `tf2onnx` (`pip install keras_hrvit[onnx]`).

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
    task = check_task(model, task or infer_task(model))
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


def min_image_size(model):
    """The least height and width `model` takes: `MIN_INPUT_SIZE` (32) when it runs an HRViT
    stem (Keras refuses smaller images of a known size), else 0.

    Example:
    >>> min_image_size(HRViTSegmenter("hrvit_b1", num_classes=3))
    32
    """
    from keras_hrvit.layers.stem import MIN_INPUT_SIZE, ConvStem

    layers = model._flatten_layers(include_self=True) if isinstance(model, keras.Layer) else []
    return MIN_INPUT_SIZE if any(isinstance(layer, ConvStem) for layer in layers) else 0


def _serving_function(model, task, check_size=True):
    """The `serve(images)` function and its input signature.

    With `check_size`, images smaller than the model's minimum are refused by an assertion:
    Keras checks the size when the shape is known, but the serving graph has a dynamic height
    and width, and a too small image would otherwise give a map of one constant class. ONNX
    has no operator that fails with a message, so the ONNX export is written without the
    check (`check_size=False`): it answers a too small image with that constant map, and its
    caller has to check the size.
    """
    import tensorflow as tf

    min_size = min_image_size(model) if check_size else 0

    def serve(images):
        if min_size:
            height, width = tf.shape(images)[1], tf.shape(images)[2]
            large_enough = tf.logical_and(height >= min_size, width >= min_size)
            message = tf.strings.format(
                "images: got {}x{} pixels (height x width); this model needs at least "
                f"{min_size}x{min_size}.",
                (height, width),
            )
            with tf.control_dependencies([tf.debugging.Assert(large_enough, [message])]):
                images = tf.identity(images)
        outputs = model(tf.cast(images, tf.float32), training=False)
        if isinstance(outputs, (list, tuple)):
            outputs = outputs[0]  # the auxiliary head's output serves no one
        if task == "classification":
            return outputs
        return tf.argmax(outputs, axis=-1, output_type=tf.int32)

    # A wrong channel count or dtype is refused by this signature ("Can not cast
    # TensorSpec(shape=(1, 64, 64, 4), ...) to TensorSpec(shape=(None, None, None, 3), ...)").
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
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    serve, signature = _serving_function(model, task, check_size=False)
    function = tf.function(serve, input_signature=signature).get_concrete_function()
    # Keras holds constants such as the input normalization's statistics as tensors captured
    # by the function; `tf2onnx.convert.from_function` would make each an extra graph input
    # that onnxruntime then asks for. Freezing turns them (and the variables) into constants.
    frozen = convert_variables_to_constants_v2(function)
    (images,) = frozen.inputs
    tf2onnx.convert.from_graph_def(
        frozen.graph.as_graph_def(),
        name="serve",
        input_names=[images.name],
        output_names=[output.name for output in frozen.outputs],
        tensors_to_rename={images.name: "images"},
        opset=opset,
        output_path=path,
    )


if __name__ == "__main__":
    from keras_hrvit.cli.export import main

    raise SystemExit(main())
