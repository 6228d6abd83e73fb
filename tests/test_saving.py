"""Every model survives `model.save` / `keras.saving.load_model` and weight files unchanged."""

import keras
import numpy as np
import pytest
from reference import micro_backbone

import keras_hrvit

pytestmark = pytest.mark.backend


def _outputs(model, images):
    out = model(images, training=False)
    out = out if isinstance(out, (list, tuple)) else [out]
    return [keras.ops.convert_to_numpy(o) for o in out]


# One image shape for every test here: JAX compiles each operation of an eager call once per
# shape (about a minute for the first model), then reuses it for every model of that shape.
IMAGES = np.random.default_rng(0).random((2, 40, 72, 3)).astype("float32")


def _randomize_norm_statistics(model):
    # Fresh BatchNorms are identities at inference; random statistics make the check meaningful.
    rng = np.random.default_rng(0)
    for weight in model.weights:
        if "moving_" in weight.path or "gamma" in weight.path:
            weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype("float32"))


# The micro backbone has every kind of layer the full models have, at a quarter of the tiny
# one's layers: JAX runs these models eagerly op by op, a minute per model at the tiny size.
MODELS = {
    "backbone": lambda: micro_backbone(drop_path_rate=0.1),
    "classifier": lambda: keras_hrvit.HRViTClassifier(
        micro_backbone(), classes=4, head_channels=(4, 4, 4, 4)
    ),
    "segmenter": lambda: keras_hrvit.HRViTSegmenter(
        micro_backbone(), num_classes=3, head_channels=8
    ),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_save_and_load_model_give_identical_outputs(kind, tmp_path):
    model = MODELS[kind]()
    _randomize_norm_statistics(model)
    expected = _outputs(model, IMAGES)
    path = str(tmp_path / f"{kind}.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is type(model)
    for a, b in zip(expected, _outputs(restored, IMAGES)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_save_and_load_weights_give_identical_outputs(kind, tmp_path):
    model = MODELS[kind]()
    _randomize_norm_statistics(model)
    path = str(tmp_path / f"{kind}.weights.h5")
    model.save_weights(path)
    other = MODELS[kind]()
    other.load_weights(path)
    for a, b in zip(_outputs(model, IMAGES), _outputs(other, IMAGES)):
        np.testing.assert_array_equal(a, b)


def test_segmenter_config_round_trip_keeps_the_backbone():
    model = MODELS["segmenter"]()
    clone = keras_hrvit.HRViTSegmenter.from_config(model.get_config())
    assert clone.backbone.get_config() == model.backbone.get_config()
    assert clone.count_params() == model.count_params()
