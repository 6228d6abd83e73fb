"""Every model survives `model.save` / `keras.saving.load_model` and weight files unchanged."""

import keras
import numpy as np
import pytest
from reference import tiny_backbone

import keras_hrvit

pytestmark = pytest.mark.backend


def _outputs(model, images):
    out = model(images, training=False)
    out = out if isinstance(out, (list, tuple)) else [out]
    return [keras.ops.convert_to_numpy(o) for o in out]


def _randomize_norm_statistics(model):
    # Fresh BatchNorms are identities at inference; random statistics make the check meaningful.
    rng = np.random.default_rng(0)
    for weight in model.weights:
        if "moving_" in weight.path or "gamma" in weight.path:
            weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype("float32"))


MODELS = {
    "backbone": lambda: tiny_backbone(drop_path_rate=0.1),
    "classifier": lambda: keras_hrvit.HRViTClassifier(
        tiny_backbone(), classes=4, head_channels=(4, 4, 4, 4)
    ),
    "segmenter": lambda: keras_hrvit.HRViTSegmenter(
        tiny_backbone(), num_classes=3, head_channels=8
    ),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_save_and_load_model_give_identical_outputs(kind, tmp_path):
    model = MODELS[kind]()
    _randomize_norm_statistics(model)
    images = np.random.rand(2, 40, 72, 3).astype("float32")
    expected = _outputs(model, images)
    path = str(tmp_path / f"{kind}.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is type(model)
    for a, b in zip(expected, _outputs(restored, images)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_save_and_load_weights_give_identical_outputs(kind, tmp_path):
    model = MODELS[kind]()
    _randomize_norm_statistics(model)
    images = np.random.rand(1, 48, 48, 3).astype("float32")
    path = str(tmp_path / f"{kind}.weights.h5")
    model.save_weights(path)
    other = MODELS[kind]()
    other.load_weights(path)
    for a, b in zip(_outputs(model, images), _outputs(other, images)):
        np.testing.assert_array_equal(a, b)


def test_segmenter_config_round_trip_keeps_the_backbone():
    model = MODELS["segmenter"]()
    clone = keras_hrvit.HRViTSegmenter.from_config(model.get_config())
    assert clone.backbone.get_config() == model.backbone.get_config()
    assert clone.count_params() == model.count_params()
