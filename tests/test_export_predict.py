"""SavedModel export served by bare TensorFlow, ONNX export served by onnxruntime, and the predict
CLI."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image
from reference import micro_backbone, tiny_backbone

import keras_hrvit
from keras_hrvit.cli.predict import main
from keras_hrvit.export import export_onnx, export_saved_model
from keras_hrvit.predict import read_image

pytest.importorskip("tensorflow")

# Exports trace the model and start a TensorFlow subprocess: minutes. `make test-slow`.
pytestmark = pytest.mark.slow

# Served in a process that imports nothing but TensorFlow: the SavedModel must stand alone.
SERVE_SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf

paths = json.loads(sys.argv[1])
image = np.load(paths["image"])
for name in ("segmenter", "classifier"):
    # Keep the loaded object alive while serving: its variables die with it.
    loaded = tf.saved_model.load(paths[name])
    np.save(paths[name + "_out"], loaded.serve(tf.constant(image[None])).numpy())
"""


def _randomize_batch_norms(model, seed=0):
    # Fresh BN statistics are (0, 1); random ones make the class maps non-trivial.
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0, 0.1, shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))


def _test_image(height=375, width=500):
    # Gradients and a checkerboard: regions the random network tells apart (noise averages out).
    y, x = np.mgrid[0:height, 0:width]
    checker = (x // 60 + y // 60) % 2
    return np.stack([255 * x / width, 255 * y / height, 255 * checker], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    image = _test_image()
    segmenter = keras_hrvit.HRViTSegmenter(tiny_backbone(), num_classes=5, head_channels=8)
    _randomize_batch_norms(segmenter)
    classifier = keras_hrvit.HRViTClassifier(
        tiny_backbone(name="tiny_cls"), classes=4, head_channels=(8, 16, 32, 64)
    )
    paths = {
        "image": str(root / "image.npy"),
        "segmenter": str(root / "segmenter_saved"),
        "classifier": str(root / "classifier_saved"),
        "segmenter_out": str(root / "segmenter_out.npy"),
        "classifier_out": str(root / "classifier_out.npy"),
        "keras": str(root / "segmenter.keras"),
    }
    np.save(paths["image"], image)
    export_saved_model(segmenter, paths["segmenter"], verbose=False)
    export_saved_model(classifier, paths["classifier"], verbose=False)
    segmenter.save(paths["keras"])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run(
        [sys.executable, "-c", SERVE_SCRIPT, json.dumps(paths)], check=True, env=env, timeout=600
    )
    x = image[None]  # the models take uint8 pixels, as the SavedModel does
    expected = {
        "classes": np.argmax(segmenter.predict(x, verbose=0)[0], axis=-1),
        "probabilities": keras.ops.convert_to_numpy(classifier(x, training=False)),
    }
    Image.fromarray(image).save(root / "street.png")
    return root, paths, image, expected


def test_saved_model_serves_class_maps_in_a_bare_tensorflow_process(exported):
    _, paths, image, expected = exported
    served = np.load(paths["segmenter_out"])
    assert served.shape == (1,) + image.shape[:2] and served.dtype == np.int32
    assert len(np.unique(expected["classes"])) > 1
    assert np.mean(served[0] == expected["classes"]) >= 0.999


def test_saved_model_serves_class_probabilities(exported):
    _, paths, _, expected = exported
    served = np.load(paths["classifier_out"])
    assert served.shape == (1, 4)
    np.testing.assert_allclose(served.sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(served, expected["probabilities"], atol=1e-4)


@pytest.mark.parametrize("model", ["keras", "segmenter"])
def test_predict_cli_writes_class_map_and_overlay(exported, tmp_path, model):
    root, paths, image, expected = exported
    main([paths[model], str(root / "street.png"), "--out", str(tmp_path)])
    assert sorted(os.listdir(tmp_path)) == ["street_classes.png", "street_overlay.png"]
    classes = np.asarray(Image.open(tmp_path / "street_classes.png"))
    assert classes.dtype == np.uint8 and classes.shape == image.shape[:2]
    assert np.mean(classes == expected["classes"]) >= 0.999
    overlay = np.asarray(Image.open(tmp_path / "street_overlay.png"))
    assert overlay.shape == image.shape and not np.array_equal(overlay, image)


def test_predict_cli_slide_mode(exported, tmp_path):
    root, paths, image, _ = exported
    main([paths["keras"], str(root / "street.png"), "--out", str(tmp_path), "--mode", "slide",
          "--crop-size", "256", "--stride", "192"])  # fmt: skip
    classes = np.asarray(Image.open(tmp_path / "street_classes.png"))
    assert classes.shape == image.shape[:2]


def test_corrupt_image_is_a_clear_error_and_leaves_no_output(exported, tmp_path):
    root, paths, _, _ = exported
    broken = tmp_path / "broken.png"
    broken.write_bytes((root / "street.png").read_bytes()[:200])
    with pytest.raises(ValueError, match="broken.png.*corrupt"):
        read_image(str(broken))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main([paths["segmenter"], str(broken), str(root / "street.png"), "--out", str(out)])
    assert info.value.code == 1
    # The good image is still processed; the broken one leaves nothing behind.
    assert sorted(os.listdir(out)) == ["street_classes.png", "street_overlay.png"]


def test_onnx_export_matches_keras_at_any_size(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    # tf2onnx's graph optimizer takes minutes for every thousand layers: the smallest model.
    segmenter = keras_hrvit.HRViTSegmenter(micro_backbone(), num_classes=5, head_channels=8)
    _randomize_batch_norms(segmenter, seed=1)
    export_onnx(segmenter, tmp_path / "classes.onnx", verbose=False)
    # A segmenter is refused the "classification" task; the same layers as a plain Keras model
    # may take it, which serves the model's raw outputs: here the logits.
    plain = keras.Model(segmenter.inputs, segmenter.outputs)
    export_onnx(plain, tmp_path / "logits.onnx", task="classification", verbose=False)
    classes = onnxruntime.InferenceSession(str(tmp_path / "classes.onnx"))
    logits = onnxruntime.InferenceSession(str(tmp_path / "logits.onnx"))
    assert [i.name for i in classes.get_inputs()] == ["images"]
    # Batch, height and width are dynamic; sizes that pad the attention stripes included.
    for batch, height, width in [(1, 375, 500), (2, 97, 130)]:
        images = np.stack([_test_image(height, width)] * batch)
        images[-1] = images[-1][::-1]
        expected = keras.ops.convert_to_numpy(segmenter(images, training=False))
        served = logits.run(None, {"images": images})[0]
        assert served.shape == expected.shape
        np.testing.assert_allclose(served, expected, atol=1e-3)
        class_map = classes.run(None, {"images": images})[0]
        assert class_map.shape == (batch, height, width)
        expected_classes = np.argmax(segmenter.predict(images, verbose=0), axis=-1)
        assert len(np.unique(expected_classes)) > 1
        assert np.mean(class_map == expected_classes) >= 0.999


def test_export_refuses_to_overwrite_and_checks_the_onnx_suffix(tmp_path):
    model = keras_hrvit.HRViTSegmenter(micro_backbone(), num_classes=3)
    with pytest.raises(ValueError, match=r"must end in \.onnx"):
        export_onnx(model, tmp_path / "model.pb")
    (tmp_path / "taken.onnx").write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="taken.onnx"):
        export_onnx(model, tmp_path / "taken.onnx")
    assert (tmp_path / "taken.onnx").read_bytes() == b"keep me"
