"""Export to a TensorFlow SavedModel or an ONNX file that serves raw `uint8` images.

The serving function takes a batch of `uint8` images of any height and width (the models
normalize them inside their graph) and returns class probabilities (classifier) or
per-pixel class ids at the input resolution (segmenter). An HRViT model needs images of at
least 32x32 pixels: the SavedModel refuses smaller ones with an `InvalidArgumentError` naming
the size (ONNX has no assertion operator: see `_serving_function`). An empty batch gives an
empty result. Loading it needs only TensorFlow:

    served = tf.saved_model.load("exported")
    class_map = served.serve(tf.constant(image[None]))   # (1, H, W) int32

The SavedModel has a second signature, `serving_bytes`, that takes encoded images (JPEG, PNG,
GIF or BMP files' bytes), as TF Serving's REST clients send them (base64 in JSON):

    class_maps = served.serving_bytes(tf.constant([open("cat.jpg", "rb").read()]))

`export_saved_model(model, "models/hrvit_pets", version=1)` writes `models/hrvit_pets/1/`, the
layout TF Serving loads (`--model_base_path=models/hrvit_pets`, newest version served).

`export_onnx` converts the `uint8` function with `tf2onnx` (the `onnx` extra); onnxruntime runs
it:

    session = onnxruntime.InferenceSession("model.onnx")
    class_map = session.run(None, {"images": image[None]})[0]

Keras builds the graph with the TensorFlow backend; a model trained on JAX or PyTorch is saved
as a `.keras` file and re-opened under TensorFlow in a subprocess. Each export shows a `tqdm`
progress bar of its stages on stderr (`progress=False` hides it).

Command line (options in `keras_hrvit/cli/export.py`):

    python -m keras_hrvit.export MODEL.keras OUTPUT [--format saved_model|onnx] [--task TASK]
        [--version N] [--overwrite]
"""

import contextlib
import os
import subprocess
import sys
import tempfile

import keras

from keras_hrvit.files import atomic_write
from keras_hrvit.validation import check_choice, check_positive_int

TASKS = ("classification", "segmentation")
# The signature of encoded images. Its input is named `image_bytes`: TF Serving's REST API
# decodes a `{"b64": ...}` JSON object into any string input whatever its name (the `_bytes`
# suffix is its rule for base64-encoding *outputs*), while Google Cloud's prediction service
# (Vertex AI) decodes base64 only into inputs whose name ends in `_bytes`; the name suits both.
BYTES_SIGNATURE = "serving_bytes"
BYTES_INPUT = "image_bytes"
# The value of the pixels past an image's own size, when `serving_bytes` answers a batch of
# images of different sizes with one tensor: no class has a negative id.
PADDING_CLASS = -1
# First bytes of the formats `tf.io.decode_image` reads.
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


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


def export_saved_model(
    model, path, task=None, verbose=True, *, version=None, overwrite=False, progress=True
):
    """Writes `model` as a SavedModel with two serving signatures; returns the folder written.

    - `serving_default` (also `serve`): `images`, a `uint8` batch (batch, height, width, 3).
    - `serving_bytes`: `image_bytes`, a `string` batch (batch,) of encoded images (JPEG, PNG,
      GIF (first frame) or BMP; grey and RGBA images are served as RGB). Each image is decoded
      and run through the model on its own, at its own size, so a batch may mix sizes: a
      segmenter's answer is one int32 tensor (batch, largest height, largest width) whose
      pixels past an image's own size are -1 (`PADDING_CLASS`); crop `[:height, :width]` or
      keep the pixels `>= 0`. An image that cannot be decoded, or is under the model's
      minimum size, fails the whole request with an `InvalidArgumentError` naming its index.

    Both answer what the task serves: class ids at the input size (`"segmentation"`) or the
    model's outputs, e.g. probabilities (`"classification"`).

    Args:
        model: a segmenter or classifier of this package (or any Keras model on NHWC images).
        path: output folder. Without `version`, the SavedModel itself; with it, the model's
            folder in TF Serving's layout, and the SavedModel goes to `path/<version>/`.
        task: `"segmentation"` or `"classification"`; inferred from the model when `None`. A
            task that does not fit the model (a classifier exported for segmentation) is
            refused.
        verbose: print the serving signatures once written.
        version: a positive integer: write `path/<version>/`, which TF Serving serves from
            `--model_base_path=path` (the highest version by default).
        overwrite: replace the folder to write if it exists (else `FileExistsError`). The new
            folder is written under a temporary name and moved into place whole, so a server
            watching `path` never loads a half-written version.
        progress: show a progress bar of the export's stages on stderr.

    Example:
    >>> export_saved_model(segmenter, "models/hrvit_pets", version=1)
    'models/hrvit_pets/1'
    """
    if version is not None:
        check_positive_int("version", version)
    return _export(
        model,
        path,
        task,
        "saved_model",
        verbose,
        version=version,
        overwrite=overwrite,
        progress=progress,
    )


def export_onnx(model, path, task=None, opset=18, verbose=True, *, overwrite=False, progress=True):
    """Writes `model` as an ONNX file at `path` whose input `images` is a `uint8` batch.

    Inputs and outputs are those of `export_saved_model`'s `serve` endpoint; batch, height and
    width are dynamic. Unlike the SavedModel it cannot refuse images under the model's minimum
    size (32x32 for HRViT; ONNX has no assertion): check the size before running it. It has no
    encoded-image input (ONNX cannot decode JPEG or PNG): decode on the client. Needs `tf2onnx`
    (`pip install keras_hrvit[onnx]`).

    Args:
        model: a segmenter or classifier of this package (or any Keras model on NHWC images).
        path: the `.onnx` file to create.
        task: as in `export_saved_model`.
        opset: ONNX opset version.
        verbose: print a line once written.
        overwrite: replace `path` if it exists (else `FileExistsError`).
        progress: show a progress bar of the export's stages on stderr.

    Example:
    >>> export_onnx(segmenter, "segmenter.onnx")
    'segmenter.onnx'
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
    return _export(
        model, path, task, "onnx", verbose, opset=opset, overwrite=overwrite, progress=progress
    )


def _export(
    model, path, task, format, verbose, opset=18, version=None, overwrite=False, progress=True
):
    task = check_task(model, task or infer_task(model))
    path = os.fspath(path)
    target = path if version is None else os.path.join(path, str(version))
    if version is not None and os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(
            f"{path!r} is a file; with `version`, the export path is a folder of versions."
        )
    if os.path.exists(target) and not overwrite:
        what = f"version {version} of {path!r}" if version is not None else repr(path)
        raise FileExistsError(
            f"{what} exists; export to a new path or version, or pass overwrite=True "
            "(--overwrite) to replace it."
        )
    if keras.backend.backend() != "tensorflow":
        _export_in_tensorflow(
            model, path, task, format, verbose, opset, version, overwrite, progress
        )
        return target
    if format == "onnx":
        stages = ("trace", "freeze", "convert with tf2onnx")
        with _Stages(stages, progress) as stage:
            atomic_write(target, lambda tmp: _write_onnx(model, tmp, task, opset, stage), ".onnx")
        if verbose:
            print(f"Wrote {target} (ONNX opset {opset}): input 'images', uint8 (batch, H, W, 3).")
        return target
    stages = ("trace serve (uint8 images)", f"trace {BYTES_SIGNATURE} (encoded images)", "write")
    with _Stages(stages, progress) as stage:
        signatures = _write_folder(target, lambda tmp: _write_saved_model(model, tmp, task, stage))
    if verbose:
        print(_describe(target, signatures, task))
    return target


def _export_in_tensorflow(model, path, task, format, verbose, opset, version, overwrite, progress):
    """Saves `model` as `.keras` and runs `python -m keras_hrvit.export` under TensorFlow."""
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, "model.keras")
        with _Stages(("save .keras for the TensorFlow process",), progress) as stage:
            with stage("save .keras for the TensorFlow process"):
                model.save(saved)
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        command = [sys.executable, "-m", "keras_hrvit.export", saved, path, "--task", task]
        command += ["--format", format, "--opset", str(opset)]
        if version is not None:
            command += ["--version", str(version)]
        if overwrite:
            command.append("--overwrite")
        if not verbose:
            command.append("--quiet")
        command.append("--progress" if progress else "--no-progress")
        subprocess.run(command, check=True, env=env)


def _write_folder(target, write_fn):
    """Calls `write_fn(tmp)` on a folder next to `target`, then moves it onto `target` whole.

    An interrupted export leaves nothing half-written. The temporary folder's name starts with
    a dot and is not a number, so TF Serving, which loads only the numbered folders of a model
    path, never sees it. An existing `target` is moved aside first and deleted afterwards.
    """
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".export-") as tmp:
        staging = os.path.join(tmp, "new")
        result = write_fn(staging)
        if os.path.exists(target):
            os.replace(target, os.path.join(tmp, "old"))  # removed with `tmp`
        os.replace(staging, target)
    return result


class _Stages:
    """A `tqdm` bar on stderr counting an export's stages, the running one named after it.

    `with _Stages(names, enabled) as stage:` then `with stage(name): ...` for each stage.
    """

    def __init__(self, names, enabled):
        self.names = names
        self.enabled = enabled
        self.bar = None

    def __enter__(self):
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=len(self.names),
            desc="export",
            unit="stage",
            file=sys.stderr,
            disable=not self.enabled,
            bar_format="{desc}: {n_fmt}/{total_fmt} stages |{bar:20}| {elapsed}{postfix}",
        )
        return self.stage

    @contextlib.contextmanager
    def stage(self, name):
        if name not in self.names:
            raise ValueError(f"unknown export stage {name!r}; stages: {self.names}")
        self.bar.set_postfix_str(name)
        yield
        self.bar.update(1)

    def __exit__(self, *exc_info):
        self.bar.close()
        return False


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


def _assert_min_size(images, min_size, template, *names):
    """`images` (batch, H, W, C), after an assertion that H and W are at least `min_size`.

    `template` is the error message, formatted with `names` then the height and width.
    """
    import tensorflow as tf

    height, width = tf.shape(images)[1], tf.shape(images)[2]
    large_enough = tf.logical_and(height >= min_size, width >= min_size)
    message = tf.strings.format(template, (*names, height, width))
    with tf.control_dependencies([tf.debugging.Assert(large_enough, [message])]):
        return tf.identity(images)


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
            images = _assert_min_size(
                images,
                min_size,
                "images: got {}x{} pixels (height x width); this model needs at least "
                f"{min_size}x{min_size}.",
            )
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


def _bytes_serving_function(serve, min_size, task):
    """The `serving_bytes(image_bytes)` function over the traced `serve` and its signature.

    Each image is decoded and served on its own (`tf.map_fn`), at its own size: padding images
    to one size would change what the model sees near their borders, and resizing them would
    change the answer's size. A segmenter's class maps, of different sizes, are returned as one
    tensor padded with `PADDING_CLASS`.
    """
    import tensorflow as tf

    concrete = serve.get_concrete_function()
    output = concrete.structured_outputs

    def decode(index, data):
        known = tf.reduce_any(
            [tf.equal(tf.strings.substr(data, 0, len(magic)), magic) for magic in _IMAGE_MAGIC]
        )
        message = tf.strings.format(
            BYTES_INPUT + "[{}]: {} bytes that are not a JPEG, PNG, GIF or BMP file; send the "
            "bytes of an image file (base64-encoded in a JSON request).",
            (index, tf.strings.length(data)),
        )
        with tf.control_dependencies([tf.debugging.Assert(known, [message])]):
            data = tf.identity(data)
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
        image = image[None]
        if min_size:
            image = _assert_min_size(
                image,
                min_size,
                BYTES_INPUT + "[{}]: got {}x{} pixels (height x width); this model needs at "
                f"least {min_size}x{min_size}.",
                index,
            )
        return image

    def serve_one(item):
        index, data = item
        answer = serve(decode(index, data))[0]
        if task == "segmentation":
            return tf.RaggedTensor.from_tensor(answer)
        return answer

    if task == "segmentation":
        element = tf.RaggedTensorSpec(shape=(None, None), dtype=tf.int32, ragged_rank=1)
    else:
        # Outputs of one shape per image (class probabilities); a model whose outputs follow
        # the image size cannot stack images of different sizes, and fails saying so.
        element = tf.TensorSpec(shape=output.shape[1:], dtype=output.dtype)

    def serving_bytes(image_bytes):
        indices = tf.range(tf.shape(image_bytes, out_type=tf.int64)[0])
        answers = tf.map_fn(serve_one, (indices, image_bytes), fn_output_signature=element)
        if task == "segmentation":
            return answers.to_tensor(default_value=PADDING_CLASS)
        return answers

    signature = [tf.TensorSpec(shape=(None,), dtype=tf.string, name=BYTES_INPUT)]
    return serving_bytes, signature


def _write_saved_model(model, path, task, stage):
    """Writes the SavedModel; returns {signature name: its concrete function}."""
    serve, signature = _serving_function(model, task)
    archive = keras.export.ExportArchive()
    archive.track(model)
    # The first endpoint is also written as `serving_default`, the signature TF Serving answers
    # when a request names none.
    with stage("trace serve (uint8 images)"):
        serve = archive.add_endpoint(name="serve", fn=serve, input_signature=signature)
        concrete = {"serve": serve.get_concrete_function()}
    with stage(f"trace {BYTES_SIGNATURE} (encoded images)"):
        # It calls the traced `serve`, so the model is traced once for both signatures.
        serve_bytes, signature = _bytes_serving_function(serve, min_image_size(model), task)
        serve_bytes = archive.add_endpoint(
            name=BYTES_SIGNATURE, fn=serve_bytes, input_signature=signature
        )
        concrete[BYTES_SIGNATURE] = serve_bytes.get_concrete_function()
    with stage("write"):
        archive.write_out(path, verbose=False)
    return concrete


def _describe(path, concrete, task):
    """The lines `export_saved_model(verbose=True)` prints: the folder and its signatures."""

    def spec(tensor, name):
        return f"{name}: {tensor.dtype.name} {tuple(tensor.shape.as_list())}"

    served = "class ids" if task == "segmentation" else "the model's outputs"
    lines = [f"Saved a SavedModel at {path!r} serving {served}; signatures:"]
    for name, function in concrete.items():
        (inputs,), _ = function.structured_input_signature
        label = "serving_default, serve" if name == "serve" else name
        output = spec(function.structured_outputs, "output_0")
        lines.append(f"  {label}: {spec(inputs, inputs.name)} -> {output}")
    if task == "segmentation":
        lines.append(
            f"  ({BYTES_SIGNATURE} fills each class map past its image with {PADDING_CLASS}.)"
        )
    return "\n".join(lines)


def _write_onnx(model, path, task, opset, stage):
    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    with stage("trace"):
        serve, signature = _serving_function(model, task, check_size=False)
        function = tf.function(serve, input_signature=signature).get_concrete_function()
    with stage("freeze"):
        # Keras holds constants such as the input normalization's statistics as tensors
        # captured by the function; `tf2onnx.convert.from_function` would make each an extra
        # graph input that onnxruntime then asks for. Freezing turns them (and the variables)
        # into constants.
        frozen = convert_variables_to_constants_v2(function)
    (images,) = frozen.inputs
    with stage("convert with tf2onnx"):
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
