"""Backbone, classifier and segmenter: shapes, sizes, parameter counts, training, errors."""

import keras
import numpy as np
import pytest
from reference import fast_compile_kwargs, micro_backbone, tiny_backbone

import keras_hrvit


def _count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize(
    "height, width, stem",
    [(224, 224, (56, 56)), (200, 296, (50, 74)), (97, 131, (25, 33)), (32, 32, (8, 8))],
)
def test_output_shapes_any_size(height, width, stem):
    backbone = tiny_backbone()
    features = backbone(np.random.rand(1, height, width, 3).astype("float32"))
    h, w = stem
    expected = []
    for channels in (16, 32, 48, 64):
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
    assert _count(keras_hrvit.HRViTBackbone.from_preset(preset)) == backbone_count
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
    assert model.name == "hrvit_b1" and model.output_shape == (None, 7)
    pooled = keras_hrvit.HRViTB1(include_top=False, pooling="avg")
    assert pooled.output_shape == (None, 2048)
    backbone = keras_hrvit.HRViTB1(include_top=False)
    assert isinstance(backbone, keras_hrvit.HRViTBackbone) and len(backbone.outputs) == 4


@pytest.mark.backend
def test_fit_decreases_the_loss_in_train_mode():
    keras.utils.set_random_seed(1)
    model = keras_hrvit.HRViTClassifier(
        micro_backbone(drop_path_rate=0.2),
        classes=3,
        head_channels=(4, 4, 4, 4),
        classifier_activation=None,
        dropout=0.1,
    )
    images = np.random.rand(8, 32, 32, 3).astype("float32")
    labels = np.arange(8) % 3
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **fast_compile_kwargs(),
    )
    bn = model.get_layer("stem").bn1
    history = model.fit(images, labels, batch_size=4, epochs=8, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses
    # BatchNorm statistics moved: the model really ran in training mode.
    assert not np.allclose(keras.ops.convert_to_numpy(bn.moving_mean), 0.0)


def test_segmenter_predict_returns_class_maps_at_input_size():
    model = keras_hrvit.HRViTSegmenter(tiny_backbone(), num_classes=5, head_channels=8)
    maps = model.predict(np.random.rand(2, 70, 90, 3).astype("float32"), verbose=0)
    assert maps.shape == (2, 70, 90) and maps.dtype == np.int32
    assert maps.min() >= 0 and maps.max() < 5
    assert tuple(model(np.zeros((1, 64, 96, 3))).shape) == (1, 16, 24, 5)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="Unknown backbone preset 'hrvit_b4'.*hrvit_b1, hrvit_b2"):
        keras_hrvit.HRViTBackbone.from_preset("hrvit_b4")
    with pytest.raises(ValueError, match="Unknown segmenter preset.*hrvit_b1_ade20k"):
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
    with pytest.raises(ValueError, match="does not fit model.*First mismatch"):
        keras_hrvit.HRViTClassifier(
            tiny_backbone(), classes=10, head_channels=(4, 4, 4, 4), weights=path
        )
    with pytest.raises(ValueError, match=r"must be None, the path of a `\.weights\.h5`.*hrvit_b1"):
        keras_hrvit.HRViTB1(weights="imagenet")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        keras_hrvit.HRViTClassifier(tiny_backbone(), weights=str(tmp_path / "no.weights.h5"))
