"""The serving tutorial (examples/serving.py) in its smoke form; its SavedModel answering, in a
process that imports TensorFlow and not keras_hrvit, a base64 JSON body built as TF Serving's
REST API expects; and the export options it relies on: versions, the `serving_bytes`
signature, progress bars and the command line's example.

The tutorial's run (a PyTorch process, its exports in TensorFlow subprocesses) writes the one
SavedModel all the serving tests share."""

import io
import json
import os
import re
import shlex
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image
from tutorials import run_tutorial

from keras_hrvit.cli import export as export_cli
from keras_hrvit.data import SHAPES_CLASSES, load_shapes
from keras_hrvit.export import PADDING_CLASS, export_saved_model

tf = pytest.importorskip("tensorflow")
pytest.importorskip("onnxruntime")  # the tutorial imports it

# Run by a bare `python -c` with KERAS_BACKEND=tensorflow: the request is built and mapped to
# the signature's inputs by TF Serving's rules for a REST `predict` body in row format
# (tensorflow_serving/util/json_tensor.cc): the signature named by `signature_name`
# (`serving_default` when absent); `instances` lists one item per example, either the value
# of the signature's only input or an object keyed by input names; a `{"b64": ...}` object is
# base64-decoded into the bytes of a string input; the items of an input are stacked along a
# new first axis; the response holds the only output, unnamed, under `predictions`.
SERVE_REST = r"""
import base64, json, sys
import numpy as np
import tensorflow as tf

folder, image_path = sys.argv[1], sys.argv[2]
image = np.load(image_path)
png = tf.io.encode_png(image).numpy()
b64 = base64.b64encode(png).decode("ascii")
bodies = {
    "named": {"signature_name": "serving_bytes", "instances": [{"image_bytes": {"b64": b64}}]},
    "plain": {"signature_name": "serving_bytes", "instances": [{"b64": b64}]},
    "pixels": {"instances": [image.tolist()]},
}
loaded = tf.saved_model.load(folder)  # keep it alive while serving: its variables die with it


def is_b64(value):
    return isinstance(value, dict) and list(value) == ["b64"]


def answer(text):
    request = json.loads(text)
    signature = loaded.signatures[request.get("signature_name", "serving_default")]
    specs = signature.structured_input_signature[1]
    rows = request["instances"]
    if isinstance(rows[0], dict) and not is_b64(rows[0]):
        assert all(set(row) == set(specs) for row in rows), (list(specs), rows[0].keys())
        columns = {name: [row[name] for row in rows] for name in specs}
    else:
        assert len(specs) == 1, list(specs)
        columns = {next(iter(specs)): rows}
    inputs = {}
    for name, values in columns.items():
        if specs[name].dtype == tf.string:
            values = [base64.b64decode(v["b64"]) if is_b64(v) else v for v in values]
        inputs[name] = tf.constant(values, dtype=specs[name].dtype)
    (output,) = signature(**inputs).values()
    return json.dumps({"predictions": output.numpy().tolist()})


answers = {name: json.loads(answer(json.dumps(body))) for name, body in bodies.items()}
answers["imported_keras_hrvit"] = any(name.startswith("keras_hrvit") for name in sys.modules)
print(json.dumps(answers))
"""


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    """The folder the tutorial ran in, and its standard output."""
    root = tmp_path_factory.mktemp("serving_tutorial")
    result = run_tutorial("serving.py", root)
    return root, result.stdout


@pytest.fixture(scope="module")
def version_folder(tutorial):
    return str(tutorial[0] / "models" / "hrvit_shapes" / "1")


@pytest.fixture(scope="module")
def served(version_folder):
    # Keep the loaded object alive while serving: its variables die with it.
    return tf.saved_model.load(version_folder)


def _shapes_image(size=64):
    image, _ = next(iter(load_shapes("test", 1, size)))
    return image.numpy()


def _encode(image, format, **options):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=format, **options)
    return buffer.getvalue()


def _serve(served, image):
    return served.serve(tf.constant(image[None])).numpy()[0]


def test_tutorial_writes_the_tf_serving_layout(tutorial):
    root, stdout = tutorial
    # Only the version folder: the export's temporary folder is gone.
    assert os.listdir(root / "models" / "hrvit_shapes") == ["1"]
    assert (root / "models" / "hrvit_shapes" / "1" / "saved_model.pb").is_file()
    assert "signature_def['serving_bytes']" in stdout and "inputs['image_bytes']" in stdout
    assert "The two signatures agree: True" in stdout
    body = json.loads((root / "request_png.json").read_text())
    assert body["signature_name"] == "serving_bytes"
    assert [list(item) for item in body["instances"]] == [["image_bytes"], ["image_bytes"]]
    assert (root / "served_class_maps.png").is_file()
    # The smoke run leaves the ONNX conversion (half a minute) to test_tutorial_onnx_section.
    assert "Skipped the ONNX Runtime section" in stdout


@pytest.mark.slow
def test_tutorial_onnx_section(tmp_path):
    stdout = run_tutorial("serving.py", tmp_path, env={"HRVIT_TUTORIAL_ONNX": "1"}).stdout
    agreements = [float(a) for a in re.findall(r"Keras agree on ([\d.]+)% of pixels", stdout)]
    assert len(agreements) == 2 and min(agreements) >= 99.9, stdout
    assert (tmp_path / "models" / "hrvit_shapes.onnx").is_file()
    assert (tmp_path / "onnx_runtime_vs_keras.png").is_file()


def test_saved_model_answers_a_base64_rest_body_in_a_tensorflow_only_process(
    version_folder, tmp_path
):
    image = _shapes_image()
    np.save(tmp_path / "image.npy", image)
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", SERVE_REST, version_folder, str(tmp_path / "image.npy")],
        cwd=tmp_path,  # not the repository: keras_hrvit is not importable there by accident
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert answers["imported_keras_hrvit"] is False
    pixels = np.array(answers["pixels"]["predictions"])
    assert pixels.shape == (1, 64, 64)
    assert pixels.min() >= 0 and pixels.max() < len(SHAPES_CLASSES)
    assert len(np.unique(pixels)) > 1  # a map that tells regions apart, so equality means much
    for form in ("named", "plain"):
        classes = np.array(answers[form]["predictions"])
        np.testing.assert_array_equal(classes, pixels, err_msg=form)


def test_bytes_signature_serves_png_and_jpeg_as_their_decoded_pixels(served):
    image = _shapes_image()
    expected = _serve(served, image)
    assert len(np.unique(expected)) > 1
    png = served.serving_bytes(tf.constant([_encode(image, "PNG")])).numpy()
    assert png.shape == (1, 64, 64) and png.dtype == np.int32
    np.testing.assert_array_equal(png[0], expected)
    jpeg = _encode(image, "JPEG", quality=95)
    served_jpeg = served.serving_bytes(tf.constant([jpeg])).numpy()[0]
    # TensorFlow decodes JPEG with a faster, less exact transform than Pillow (pixels differ by
    # a few levels, enough to flip some pixels of a barely trained model): the answer is that
    # of TensorFlow's pixels, which are Pillow's give or take those levels.
    decoded = tf.io.decode_jpeg(jpeg, channels=3).numpy()
    pillow = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    assert np.abs(decoded.astype(int) - pillow).mean() < 3
    np.testing.assert_array_equal(served_jpeg, _serve(served, decoded))
    # A grey PNG is served as the RGB image of three equal channels.
    grey = image.mean(axis=-1).astype(np.uint8)
    served_grey = served.serving_bytes(tf.constant([_encode(grey, "PNG")])).numpy()[0]
    np.testing.assert_array_equal(served_grey, _serve(served, np.repeat(grey[..., None], 3, -1)))


def test_bytes_signature_serves_mixed_sizes_each_at_its_own_size(served):
    large, small = _shapes_image(64), _shapes_image(48)[:40, :36]
    batch = tf.constant([_encode(large, "PNG"), _encode(small, "PNG")])
    classes = served.serving_bytes(batch).numpy()
    assert classes.shape == (2, 64, 64)
    np.testing.assert_array_equal(classes[0], _serve(served, large))
    # The small image's map is the one it gets alone, padded past its size with -1.
    np.testing.assert_array_equal(classes[1, :40, :36], _serve(served, small))
    assert (classes[1, 40:] == PADDING_CLASS).all() and (classes[1, :, 36:] == PADDING_CLASS).all()
    assert (classes[0] >= 0).all() and (classes[1, :40, :36] >= 0).all()
    empty = served.serving_bytes(tf.constant([], tf.string)).numpy()
    assert empty.shape[0] == 0 and empty.dtype == np.int32


@pytest.mark.parametrize(
    "index, pattern",
    [
        (1, r"image_bytes\[1\]: 12 bytes that are not a JPEG, PNG, GIF or BMP file"),
        (0, r"image_bytes\[0\]: got 16x24 pixels \(height x width\).*at least 32x32"),
    ],
)
def test_bytes_signature_refuses_a_bad_item_naming_it(served, index, pattern):
    good = _encode(_shapes_image(), "PNG")
    bad = b"not an image" if index else _encode(np.zeros((16, 24, 3), np.uint8), "PNG")
    batch = [good, bad] if index else [bad, good]
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        served.serving_bytes(tf.constant(batch))


def _plain_segmenter(seed):
    # A one-layer model on NHWC images exports in seconds; its output is (batch, H, W, classes).
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    return keras.Model(inputs, keras.layers.Conv2D(3, 1)(keras.layers.Rescaling(1 / 255)(inputs)))


def test_bytes_signature_of_a_classifier_answers_each_image(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    classifier = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(features))
    folder = export_saved_model(
        classifier, tmp_path / "classifier", task="classification", verbose=False, progress=False
    )
    loaded = tf.saved_model.load(folder)  # alive while serving: it owns the variables
    images = [_shapes_image(64), _shapes_image(48)[:40]]
    answer = loaded.serving_bytes(tf.constant([_encode(image, "PNG") for image in images]))
    assert answer.shape == (2, 4)
    for row, image in zip(answer.numpy(), images):
        np.testing.assert_allclose(row, _serve(loaded, image), atol=1e-6)


def test_export_writes_versions_and_refuses_an_existing_one(tmp_path, capsys):
    base = tmp_path / "models" / "plain"
    first = _plain_segmenter(0)
    options = {"task": "segmentation", "verbose": False}
    written = export_saved_model(first, base, version=1, **options)
    assert written == os.path.join(str(base), "1")
    # The progress bar goes to stderr, one step per stage.
    err = capsys.readouterr().err
    assert "export: 3/3 stages" in err and "serving_bytes" in err
    with pytest.raises(FileExistsError, match=r"version 1 of .*plain' exists.*overwrite=True"):
        export_saved_model(first, base, version=1, **options)
    for version in (0, -1, "2", 1.0, True):
        with pytest.raises(ValueError, match=r"`version` must be an integer"):
            export_saved_model(first, base, version=version, **options)
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=r"a_file' is a file"):
        export_saved_model(first, tmp_path / "a_file", version=1, **options)
    image = np.random.default_rng(0).integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    loaded = tf.saved_model.load(str(base / "1"))  # alive while serving: it owns the variables
    before = loaded.serve(tf.constant(image)).numpy()

    second = _plain_segmenter(1)
    expected = np.argmax(keras.ops.convert_to_numpy(second(image.astype("float32"))), -1)
    assert not np.array_equal(expected, before)
    export_saved_model(second, base, version=1, overwrite=True, progress=False, **options)
    export_saved_model(second, base, version=2, progress=False, **options)
    assert sorted(os.listdir(base)) == ["1", "2"]  # the old version 1 and the staging folder gone
    for version in ("1", "2"):
        served = tf.saved_model.load(str(base / version))
        np.testing.assert_array_equal(served.serve(tf.constant(image)).numpy(), expected)


def test_export_cli_writes_a_version_folder_once(tmp_path, capsys):
    model_file = str(tmp_path / "plain.keras")
    _plain_segmenter(0).save(model_file)
    base = tmp_path / "models" / "plain"
    argv = [model_file, str(base), "--version", "3", "--task", "segmentation"]
    assert export_cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert f"Saved a SavedModel at {str(base / '3')!r}" in out
    assert "serving_bytes: image_bytes: string (None,) -> output_0: int32" in out
    assert "export: 3/3 stages" in err
    assert os.listdir(base) == ["3"]
    with pytest.raises(SystemExit) as info:
        export_cli.main(argv + ["--quiet"])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip().splitlines()[-1].startswith("error: version 3 of ")


def test_export_cli_help_example_parses_and_version_needs_a_saved_model(capsys):
    parser = export_cli.build_parser()
    help_text = parser.format_help()
    lines = help_text.splitlines()
    (example,) = [line for line in lines if "-m keras_hrvit.export" in line and "--version" in line]
    args = parser.parse_args(shlex.split(example)[3:])
    assert (args.model, args.version, args.format) == ("runs/shapes/model.keras", 1, "saved_model")
    with pytest.raises(SystemExit) as info:
        export_cli.main(["model.keras", "model.onnx", "--format", "onnx", "--version", "1"])
    assert info.value.code == 2
    assert "--version: only a SavedModel has versions" in capsys.readouterr().err
