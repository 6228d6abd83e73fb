"""Backbone, classifier and segmenter: shapes, sizes, parameter counts, training, errors."""

import keras
import numpy as np
import pytest
from reference import MICRO_CONFIG, fast_compile_kwargs, micro_backbone, tiny_backbone

import keras_hrvit
from keras_hrvit import presets

# Training mode on JAX is checked against the original (outputs, gradients, BatchNorm
# statistics) by tests/test_train_reference.py; this fit costs CI a minute of XLA there.
JAX_TRAIN_REASON = "train mode on JAX: tests/test_train_reference.py; XLA time in CI"


def _count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize(
    "height, width, stem",
    [(224, 224, (56, 56)), (200, 296, (50, 74)), (97, 131, (25, 33)), (32, 32, (8, 8))],
)
def test_output_shapes_any_size(height, width, stem):
    backbone = micro_backbone()
    features = backbone(np.random.rand(1, height, width, 3).astype("float32"))
    h, w = stem
    expected = []
    for channels in (16, 16, 32, 32):
        expected.append((1, h, w, channels))
        h, w = -(-h // 2), -(-w // 2)
    assert [tuple(f.shape) for f in features] == expected
    assert all(np.isfinite(keras.ops.convert_to_numpy(f)).all() for f in features)


def test_pyramid_outputs_name_the_four_levels():
    backbone = tiny_backbone()
    assert list(backbone.pyramid_outputs) == ["P2", "P3", "P4", "P5"]
    assert backbone.pyramid_outputs["P5"].shape[-1] == 64


@pytest.mark.parametrize(
    "preset, backbone_count, classifier_count",
    [
        ("hrvit_b1", 7_758_008, 19_685_152),
        pytest.param("hrvit_b2", 20_310_944, 32_486_408, marks=pytest.mark.slow),
        pytest.param("hrvit_b3", 25_507_960, 37_870_304, marks=pytest.mark.slow),
    ],
)
def test_parameter_counts_match_the_original(preset, backbone_count, classifier_count):
    classifier = keras_hrvit.HRViTClassifier(preset, classes=1000)
    assert _count(classifier.backbone) == backbone_count
    assert _count(classifier) == classifier_count


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset, overrides, count",
    [
        ("hrvit_b1_ade20k", {}, 8_183_118),
        ("hrvit_b2_ade20k", {}, 20_809_782),
        ("hrvit_b3_ade20k", {}, 28_724_494),
        ("hrvit_b1_cityscapes", {"head_channels": 768}, 10_505_163),
    ],
)
def test_segformer_parameter_counts_match_the_original(preset, overrides, count):
    assert _count(keras_hrvit.HRViTSegmenter.from_preset(preset, **overrides)) == count


@pytest.mark.slow
def test_variant_functions_build_the_preset_classifier():
    model = keras_hrvit.HRViTB1(classes=7, input_shape=(64, 64, 3), classifier_activation=None)
    assert isinstance(model, keras_hrvit.HRViTClassifier)
    assert model.name == "hrvit_b1" and model.output_shape == (None, 7)
    pooled = keras_hrvit.HRViTB1(include_top=False, pooling="avg")
    assert pooled.output_shape == (None, 2048)
    backbone = keras_hrvit.HRViTB1(include_top=False)
    assert isinstance(backbone, keras_hrvit.HRViTBackbone) and len(backbone.outputs) == 4


# Slow: fit on every backend is checked in CI by test_tasks (a segmenter) and
# test_train_classification (a classifier on mixed labels); this one cost a minute of CI.
@pytest.mark.slow
@pytest.mark.backend
@pytest.mark.skipif(keras.backend.backend() == "jax", reason=JAX_TRAIN_REASON)
def test_fit_decreases_the_loss_in_train_mode():
    keras.utils.set_random_seed(1)
    model = keras_hrvit.HRViTClassifier(
        micro_backbone(drop_path_rate=0.2),
        classes=3,
        head_channels=(4, 4, 4, 4),
        classifier_activation=None,
        dropout=0.1,
    )
    images = (255 * np.random.rand(8, 32, 32, 3)).astype("float32")
    labels = np.arange(8) % 3
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **fast_compile_kwargs(),
    )
    bn = model.backbone.get_layer("stem").bn1
    history = model.fit(images, labels, batch_size=4, epochs=8, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses
    # BatchNorm statistics moved: the model really ran in training mode.
    assert not np.allclose(keras.ops.convert_to_numpy(bn.moving_mean), 0.0)


def test_segmenter_call_and_predict_give_logits_at_input_size():
    model = keras_hrvit.HRViTSegmenter(micro_backbone(), num_classes=5, head_channels=8)
    images = np.random.default_rng(0).integers(0, 256, (2, 70, 90, 3)).astype("uint8")
    logits = model.predict(images, verbose=0)
    assert logits.shape == (2, 70, 90, 5) and logits.dtype == np.float32
    called = keras.ops.convert_to_numpy(model(images, training=False))
    np.testing.assert_allclose(called, logits, atol=1e-5)
    # The head works at 1/4 and its logits are resized as MMSegmentation resizes them.
    features = model.backbone(images, training=False)
    quarter = model.decode_head(features, training=False)
    assert tuple(quarter.shape) == (2, 18, 23, 5)
    resized = keras.ops.image.resize(quarter, (70, 90), interpolation="bilinear", antialias=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(resized), logits, atol=1e-5)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="Unknown backbone preset 'hrvit_b4'.*hrvit_b1, hrvit_b2"):
        keras_hrvit.HRViTBackbone.from_preset("hrvit_b4")
    with pytest.raises(ValueError, match="Unknown preset 'hrvit_b1_voc'.*hrvit_b1_ade20k"):
        keras_hrvit.HRViTSegmenter.from_preset("hrvit_b1_voc")


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(ValueError, match="3 channels"):
        tiny_backbone(input_shape=(None, None, 4))
    backbone = tiny_backbone()
    with pytest.raises(ValueError, match="3 channels"):
        backbone(np.zeros((1, 64, 64, 1), "float32"))


def test_too_small_images_are_a_clear_error():
    with pytest.raises(ValueError, match="at least 32 pixels, got 16"):
        tiny_backbone(input_shape=(16, 64, 3))
    with pytest.raises(ValueError, match="at least 32 pixels"):
        tiny_backbone()(np.zeros((1, 64, 20, 3), "float32"))


def test_weights_of_another_variant_are_a_clear_error(tmp_path):
    path = str(tmp_path / "other.weights.h5")
    other = keras_hrvit.HRViTClassifier(
        tiny_backbone(channels=(16, 32, 48, 96)), classes=10, head_channels=(4, 4, 4, 4)
    )
    other.save_weights(path)
    model = keras_hrvit.HRViTClassifier(tiny_backbone(), classes=10, head_channels=(4, 4, 4, 4))
    with pytest.raises(ValueError, match="does not fit model.*First mismatch"):
        keras_hrvit.weights.load_weights_into(model, path)
    with pytest.raises(ValueError, match=r"`weights` must be None, a `\.weights\.h5`.*'imagenet'"):
        keras_hrvit.HRViTB1(weights="imagenet")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        keras_hrvit.HRViTB1(weights=str(tmp_path / "no.weights.h5"))


def test_variant_functions_take_a_preset_folder_as_weights(tmp_path, monkeypatch):
    # HRViTB1 on the micro configuration: the same code path at a fraction of b1's build time.
    monkeypatch.setitem(presets.BACKBONE_PRESETS, "hrvit_b1", dict(MICRO_CONFIG))
    model = keras_hrvit.HRViTB1(weights=None, classes=3, head_channels=(4, 4, 4, 4))
    for variable in model.weights[:3]:
        variable.assign(np.full(variable.shape, 0.5, "float32"))
    model.save_to_preset(tmp_path / "b1")
    loaded = keras_hrvit.HRViTB1(
        weights=str(tmp_path / "b1"), classes=3, head_channels=(4, 4, 4, 4)
    )
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
