"""Our models compute the original PyTorch code's function (reference tensors in fixtures/)."""

import keras
import numpy as np
import pytest
from reference import SIZES, nhwc, reference, state_dict, tiny_backbone, tiny_config

import keras_hrvit

pytestmark = pytest.mark.backend
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def classifier():
    _, raw = tiny_config()
    # The fixtures hold normalized images: the models' own normalization stays off.
    backbone = tiny_backbone(include_preprocessing=False)
    model = keras_hrvit.HRViTClassifier(
        backbone, classes=10, head_channels=raw["head_channels"], classifier_activation=None
    )
    result = keras_hrvit.weights.load_torch_state_dict(model, state_dict("sd/"))
    assert result.missing == [] and result.unexpected == []
    return backbone, model


@pytest.fixture(scope="module")
def segmenter():
    model = keras_hrvit.HRViTSegmenter(
        tiny_backbone(include_preprocessing=False), num_classes=7, head_channels=24
    )
    # MMSegmentation's layout: backbone.* and decode_head.*, with a DataParallel prefix.
    weights = {f"module.backbone.{k}": v for k, v in state_dict("sd/").items() if "head." not in k}
    weights.update(state_dict("seg/"))
    result = keras_hrvit.weights.load_torch_state_dict(model, weights)
    assert result.missing == [] and result.unexpected == []
    return model


# JAX checks the non-square size only: each new size costs JAX a compilation of every operation
# (half a minute in CI), and both sizes run on TensorFlow and PyTorch.
JAX_SKIPS_SQUARE = pytest.mark.skipif(
    keras.backend.backend() == "jax", reason="256x320 covers JAX; XLA time in CI"
)


@pytest.mark.parametrize(
    "size", [pytest.param(s, marks=JAX_SKIPS_SQUARE) if s == "224x224" else s for s in SIZES]
)
def test_backbone_and_classifier_match_reference(classifier, size):
    backbone, model = classifier
    images = nhwc(reference()[f"in/{size}"])
    features = backbone(images, training=False)
    for i, feature in enumerate(features):
        expected = nhwc(reference()[f"feat/{size}/{i}"])
        np.testing.assert_allclose(keras.ops.convert_to_numpy(feature), expected, atol=TOLERANCE)
    logits = keras.ops.convert_to_numpy(model(images, training=False))
    np.testing.assert_allclose(logits, reference()[f"logits/{size}"], atol=TOLERANCE)


@pytest.mark.parametrize(
    "size", [pytest.param(s, marks=JAX_SKIPS_SQUARE) if s == "224x224" else s for s in SIZES]
)
def test_segformer_head_matches_reference(segmenter, size):
    images = nhwc(reference()[f"in/{size}"])
    # The reference is the head's output at 1/4; the segmenter resizes it to the image.
    features = segmenter.backbone(images, training=False)
    logits = keras.ops.convert_to_numpy(segmenter.decode_head(features, training=False))
    np.testing.assert_allclose(logits, nhwc(reference()[f"seglogits/{size}"]), atol=TOLERANCE)


def _normalized(images):
    mean = np.float32(keras_hrvit.presets.IMAGENET_MEAN)
    std = np.float32(keras_hrvit.presets.IMAGENET_STD)
    return (images.astype("float32") - mean) / std


# The in-graph normalization is the same `keras.ops` arithmetic on every backend; on JAX this
# test cost a minute of XLA compilation of two models at a new size in CI.
@pytest.mark.skipif(keras.backend.backend() == "jax", reason="backend-neutral ops; XLA time")
def test_models_take_uint8_images_as_the_normalized_path(classifier, segmenter):
    """uint8 pixels in, the same outputs as the old path that normalized outside the model."""
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 80, 3)).astype("uint8")
    _, reference_classifier = classifier
    raw_classifier = keras_hrvit.HRViTClassifier(
        tiny_backbone(),
        classes=10,
        head_channels=tiny_config()[1]["head_channels"],
        classifier_activation=None,
    )
    raw_classifier.set_weights(reference_classifier.get_weights())
    expected = keras.ops.convert_to_numpy(reference_classifier(_normalized(images)))
    got = keras.ops.convert_to_numpy(raw_classifier(images))
    np.testing.assert_allclose(got, expected, atol=1e-5)

    raw_segmenter = keras_hrvit.HRViTSegmenter(tiny_backbone(), num_classes=7, head_channels=24)
    raw_segmenter.set_weights(segmenter.get_weights())
    # Calls, not predict (which gives the same, tests/test_models.py): no predict function to
    # trace or compile for a model used once.
    expected = keras.ops.convert_to_numpy(segmenter(_normalized(images), training=False))
    got = keras.ops.convert_to_numpy(raw_segmenter(images, training=False))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_backbone_loads_from_classification_checkpoint_and_reports_head():
    backbone = tiny_backbone()
    result = keras_hrvit.weights.load_torch_state_dict(backbone, state_dict("sd/"))
    assert result.missing == []
    assert result.unexpected and all(name.startswith("head.") for name in result.unexpected)


def test_shape_mismatch_names_the_layer_and_loads_nothing():
    backbone = tiny_backbone(channels=(16, 32, 48, 96))
    before = [w.copy() for w in backbone.get_weights()]
    expected = r"fusion/path_3_0_conv/kernel: expects .*blocks\.3\.0\.2\.weight"
    with pytest.raises(ValueError, match=expected):
        keras_hrvit.weights.load_torch_state_dict(backbone, state_dict("sd/"))
    for old, new in zip(before, backbone.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_missing_parameters_are_an_error_when_strict():
    weights = state_dict("sd/")
    del weights["stem.conv1.weight"]
    with pytest.raises(ValueError, match="lacks 1 parameters.*stem.conv1.weight"):
        keras_hrvit.weights.load_torch_state_dict(tiny_backbone(), weights)
    result = keras_hrvit.weights.load_torch_state_dict(tiny_backbone(), weights, strict=False)
    assert result.missing == ["stem.conv1.weight"]
