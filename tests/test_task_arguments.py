"""What the task models do with keyword arguments: backbone arguments given to `from_preset`
build the backbone, keras.Model's own are taken, and anything else is refused by name (Keras's
functional constructor would drop it without a word)."""

import keras
import numpy as np
import pytest
from reference import micro_backbone

from keras_hrvit import HRViTClassifier, HRViTSegmenter

SEGMENTER_ACCEPTS = "backbone, num_classes, head, head_channels, dropout, auxiliary_head"
CLASSIFIER_ACCEPTS = (
    "backbone, classes, classifier_activation, head_channels, dropout, drop_path_rate, input_tensor"
)
BACKBONE_ACCEPTS = (
    "stem_channels, channels, blocks, head_dim, window_sizes, mlp_ratios, drop_path_rate, remat, "
    "input_shape, include_preprocessing, dtype"
)


def test_constructors_refuse_unknown_keyword_arguments():
    backbone = micro_backbone()
    with pytest.raises(TypeError) as info:
        HRViTSegmenter(backbone, 5, bogus_arg=True, remat=True)
    assert str(info.value) == (
        "HRViTSegmenter got unknown keyword argument(s) bogus_arg, remat; it accepts "
        f"{SEGMENTER_ACCEPTS}, name, trainable, dtype."
    )
    with pytest.raises(TypeError) as info:
        HRViTClassifier(backbone, classes=3, num_classes=3)
    assert str(info.value) == (
        "HRViTClassifier got unknown keyword argument(s) num_classes; it accepts "
        f"{CLASSIFIER_ACCEPTS}, name, trainable, dtype."
    )

    # keras.Model's own are taken; a dtype given with a backbone instance must be its policy.
    model = HRViTSegmenter(backbone, 5, head_channels=8, name="seg", trainable=False, dtype=None)
    assert (model.name, model.trainable) == ("seg", False)
    assert HRViTSegmenter(backbone, 5, head_channels=8, dtype="float32").num_classes == 5
    with pytest.raises(ValueError) as info:
        HRViTSegmenter(backbone, 5, dtype="mixed_bfloat16")
    assert str(info.value) == (
        "`dtype` 'mixed_bfloat16' is not the policy of the given backbone ('float32'); the "
        "heads follow the backbone's policy, so build the backbone with dtype='mixed_bfloat16'."
    )
    # A rate the given backbone would not use is refused, not dropped.
    with pytest.raises(ValueError, match=r"^`drop_path_rate` builds a backbone from a preset"):
        HRViTClassifier(backbone, classes=3, drop_path_rate=0.2)


def test_from_preset_builds_the_backbone_with_backbone_arguments():
    model = HRViTSegmenter.from_preset("hrvit_b1_ade20k", remat=True)
    assert model.backbone.remat is True and model.backbone.drop_path_rate == 0.1
    blocks = [layer for layer in model.backbone.layers if "_block" in layer.name]
    assert len(blocks) == 35 and all(block.remat for block in blocks)  # b1 has 35 blocks

    model = HRViTSegmenter.from_preset(
        "hrvit_tiny_shapes",
        include_preprocessing=False,
        drop_path_rate=0.2,
        input_shape=(64, 96, 3),
        dtype="mixed_bfloat16",
        name="tiny",
    )
    backbone = model.backbone
    assert (backbone.include_preprocessing, backbone.drop_path_rate) == (False, 0.2)
    assert backbone.image_shape == (64, 96, 3) and model.input_shape == (None, 64, 96, 3)
    assert backbone.dtype_policy.name == model.decode_head.dtype_policy.name == "mixed_bfloat16"
    assert model.name == "tiny" and model.num_classes == 5
    # A backbone preset with num_classes takes them too.
    model = HRViTSegmenter.from_preset("hrvit_tiny", num_classes=3, remat=True)
    assert model.backbone.remat and model.backbone.drop_path_rate == 0.1

    classifier = HRViTClassifier.from_preset(
        "hrvit_tiny", classes=4, remat=True, include_preprocessing=False, dtype="mixed_bfloat16"
    )
    assert classifier.backbone.remat and not classifier.backbone.include_preprocessing
    assert classifier.get_layer("head").dtype_policy.name == "mixed_bfloat16"
    assert classifier.backbone.drop_path_rate == 0.1  # the classifier presets' default


def test_from_preset_refuses_unknown_arguments_naming_the_accepted_ones():
    with pytest.raises(TypeError) as info:
        HRViTSegmenter.from_preset("hrvit_b1_ade20k", rematerialize=True)
    assert str(info.value) == (
        "HRViTSegmenter.from_preset got unknown keyword argument(s) rematerialize; it accepts "
        f"load_weights, {SEGMENTER_ACCEPTS}, {BACKBONE_ACCEPTS}, name, trainable."
    )
    with pytest.raises(TypeError, match=r"^HRViTClassifier\.from_preset got unknown .* top;"):
        HRViTClassifier.from_preset("hrvit_tiny", top=False)
    # Backbone arguments cannot reach a backbone that is built already.
    with pytest.raises(ValueError) as info:
        HRViTSegmenter.from_preset("hrvit_tiny_shapes", backbone=micro_backbone(), remat=True)
    assert str(info.value) == (
        "Backbone argument(s) remat cannot apply: `backbone` is an HRViTBackbone built already; "
        "build it with them instead."
    )


def test_preset_folder_takes_backbone_arguments_and_refuses_others(tmp_path):
    model = HRViTSegmenter(micro_backbone(), num_classes=3, head_channels=8)
    images = np.random.default_rng(0).integers(0, 256, (1, 32, 48, 3)).astype("uint8")
    expected = model.predict(images, verbose=0)
    folder = str(tmp_path / "preset")
    model.save_to_preset(folder)

    loaded = HRViTSegmenter.from_preset(folder, remat=True, drop_path_rate=0.3, name="again")
    assert loaded.backbone.remat and loaded.backbone.drop_path_rate == 0.3
    assert loaded.name == "again"
    # Same weights (remat and drop path change training only).
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, atol=1e-5)
    with pytest.raises(TypeError, match=r"^HRViTSegmenter\.from_preset got unknown .* bogus;"):
        HRViTSegmenter.from_preset(folder, bogus=1)
    # from_config of the saved config rebuilds the model as it was.
    config = keras.saving.serialize_keras_object(model)
    assert not keras.saving.deserialize_keras_object(config).backbone.remat
