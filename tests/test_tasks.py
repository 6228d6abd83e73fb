"""The task models as a Keras user meets them: raw images, `compile()` defaults, preset folders."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from reference import micro_backbone

from keras_hrvit import HRViTClassifier, HRViTSegmenter
from keras_hrvit.data import load_shapes, segmentation_train_pipeline
from keras_hrvit.training import ParamGroupAdamW, WarmupPolyDecay


def _eager_on_tensorflow():
    # TensorFlow spends minutes tracing hrvit_tiny's train step into a graph; the others compile
    # (JAX) or run eagerly (PyTorch) by default.
    return {"run_eagerly": True} if keras.backend.backend() == "tensorflow" else {}


def _paper_groups(model):
    """The paper's optimizer groups, written out: `{path: (lr multiplier, decays)}`.

    MMSegmentation's HRViT configs: weight decay 0.01 except parameters whose names contain
    "norm", which in HRViT are exactly its LayerNorms (its BatchNorms, biases and heads decay);
    learning rate x10 on the decode and auxiliary heads.
    """
    layer_norms = {
        v.path
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.LayerNormalization)
        for v in layer.trainable_weights
    }
    groups = {}
    for variable in model.trainable_variables:
        head = variable.path.split("/")[0] in ("decode_head", "auxiliary_head")
        groups[variable.path] = (10.0 if head else 1.0, variable.path not in layer_norms)
    return groups


# On PyTorch in CI (the other tests here check backend-neutral logic, on TensorFlow only).
# JAX's train step is checked against the original's outputs, gradients and BatchNorm
# statistics by tests/test_train_reference.py (this fit cost 90 s of XLA compilation), and
# TensorFlow's `fit` with the `compile()` defaults by the CLI runs of test_train_segmentation
# (this eager fit cost 50 s); both run it with `-m slow`.
@pytest.mark.backend
@(pytest.mark.backend if keras.backend.backend() == "torch" else pytest.mark.slow)
def test_preset_segmenter_trains_with_compile_defaults_on_raw_images():
    keras.utils.set_random_seed(0)
    model = HRViTSegmenter.from_preset("hrvit_tiny_shapes")
    pairs = load_shapes("train", num_images=8, image_size=64)
    train = segmentation_train_pipeline(pairs, crop_size=64, batch_size=4, seed=0)
    images, masks = next(iter(train))
    assert images.dtype == tf.float32 and float(tf.reduce_max(images)) > 1.0  # 0-255 pixels
    batch = tf.data.Dataset.from_tensors((images, masks)).repeat()

    model.compile(**_eager_on_tensorflow())
    history = model.fit(batch, epochs=3, steps_per_epoch=2, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0], losses
    assert "mean_iou" in history.history

    # The from-scratch recipe: one AdamW group with decay everywhere, at a constant 2e-3; the
    # schedule spans the first `fit` (6 steps) when no run length is given.
    optimizer = model.optimizer
    assert isinstance(optimizer, ParamGroupAdamW)
    assert optimizer.weight_decay == pytest.approx(0.01)
    settings = optimizer.variable_settings()
    assert {(s["lr_mult"], s["decay"]) for s in settings.values()} == {(1.0, True)}
    schedule = optimizer._learning_rate
    assert isinstance(schedule, WarmupPolyDecay)
    assert (schedule.base_lr, schedule.total_steps, schedule.warmup_steps) == (2e-3, 6, 0)
    assert [float(schedule(step)) for step in (0, 5, 6)] == pytest.approx([2e-3] * 3)


def test_compile_recipes_run_length_and_changes():
    model = HRViTSegmenter(micro_backbone(), num_classes=3, head="upernet", auxiliary_head=True)
    paper_args = dict(recipe="paper", epochs=10, steps_per_epoch=300)
    model.compile(**paper_args, learning_rate=2e-3, head_lr_mult=1.0)
    schedule = model.optimizer._learning_rate
    assert (schedule.base_lr, schedule.total_steps, schedule.warmup_steps) == (2e-3, 3000, 1500)
    assert float(schedule(2250)) == pytest.approx(2e-3 / 4)  # poly decay, power 1
    assert set(model.optimizer.lr_multipliers) == set()
    model.compile(recipe="paper", total_steps=100)
    assert model.optimizer._learning_rate.warmup_steps == 100  # capped at the run
    assert model.optimizer._learning_rate.base_lr == 6e-5
    groups = {p: (s["lr_mult"], s["decay"]) for p, s in model.optimizer.variable_settings().items()}
    assert groups == _paper_groups(model)
    # Both heads at 10x in the paper's recipe, nothing in the default one.
    assert {p.split("/")[0] for p in model.optimizer.lr_multipliers} == {
        "decode_head",
        "auxiliary_head",
    }
    model.compile(total_steps=100, learning_rate=1e-3)
    assert model.optimizer._learning_rate.base_lr == 1e-3 and not model.optimizer.lr_multipliers
    with pytest.raises(ValueError) as info:
        model.compile(recipe="fast")
    assert str(info.value) == "`recipe` must be one of 'scratch', 'paper'; got 'fast'."
    with pytest.raises(ValueError, match="pass `steps_per_epoch` too"):
        model.compile(epochs=3)
    with pytest.raises(ValueError, match="`learning_rate` must be finite"):
        model.compile(learning_rate=float("nan"))
    with pytest.raises(ValueError, match="configure the default optimizer"):
        model.compile(optimizer="adam", learning_rate=1e-3)
    with pytest.raises(ValueError, match="^recipe configure the default optimizer"):
        model.compile(optimizer="adam", recipe="paper")


def test_standard_losses_work_or_are_refused_naming_the_right_one():
    model = HRViTSegmenter(micro_backbone(), num_classes=3, head_channels=8)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 48, 3)).astype("uint8")
    masks = np.random.default_rng(1).integers(0, 3, (2, 32, 48)).astype("int32")
    masks[:, :4] = 255
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    model.compile(optimizer="adam", loss=loss, metrics=[], **_eager_on_tensorflow())
    logs = model.train_on_batch(images, masks, return_dict=True)
    assert np.isfinite(logs["loss"])
    for wrong in ("sparse_categorical_crossentropy", keras.losses.SparseCategoricalCrossentropy()):
        with pytest.raises(ValueError, match="outputs logits.*SegmentationCrossEntropy"):
            model.compile(optimizer="adam", loss=wrong)


def test_auxiliary_head_trains_on_one_mask_per_image():
    model = HRViTSegmenter(micro_backbone(), num_classes=3, head="upernet", auxiliary_head=True)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype("uint8")
    masks = np.random.default_rng(1).integers(0, 3, (2, 32, 32)).astype("int32")
    model.compile(total_steps=2, **_eager_on_tensorflow())
    logs = model.train_on_batch(images, masks, return_dict=True)
    assert {"logits_loss", "auxiliary_logits_loss", "logits_mean_iou"} <= set(logs)
    weighted = logs["logits_loss"] + 0.4 * logs["auxiliary_logits_loss"]
    assert logs["loss"] == pytest.approx(weighted, rel=1e-4)


def test_classifier_compile_defaults_take_class_ids_and_soft_labels():
    model = HRViTClassifier(
        micro_backbone(), classes=4, head_channels=(4, 4, 4, 4), classifier_activation=None
    )
    model.compile(epochs=1, steps_per_epoch=2, batch_size=2, **_eager_on_tensorflow())
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype("uint8")
    ids = model.train_on_batch(images, np.array([1, 3]), return_dict=True)
    soft = model.train_on_batch(images, np.eye(4, dtype="float32")[[1, 3]], return_dict=True)
    assert np.isfinite(ids["loss"]) and np.isfinite(soft["loss"]) and "top1_accuracy" in ids
    # 1e-3 per 1024 images, linearly scaled to the batch of 2.
    assert model.optimizer._learning_rate.base_lr == pytest.approx(1e-3 * 2 / 1024)
    exempt = {v.path for v in model.trainable_variables if v.name in ("gamma", "beta", "bias")}
    assert set(model.optimizer.no_decay_paths) == exempt
    assert model.optimizer.global_clipnorm == 1.0


@pytest.mark.parametrize("kind", ["segmenter", "classifier"])
def test_save_to_preset_and_from_preset_give_identical_outputs(kind, tmp_path):
    if kind == "segmenter":
        model = HRViTSegmenter(micro_backbone(), num_classes=3, head_channels=8)
    else:
        model = HRViTClassifier(micro_backbone(), classes=4, head_channels=(4, 4, 4, 4))
    for variable in model.non_trainable_variables:  # BatchNorm statistics
        variable.assign(np.random.default_rng(0).uniform(0.5, 1.5, variable.shape))
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 40, 3)).astype("uint8")
    expected = keras.ops.convert_to_numpy(model(images, training=False))
    model.save_to_preset(tmp_path / "preset")
    restored = type(model).from_preset(str(tmp_path / "preset"))
    assert type(restored) is type(model)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(restored(images, training=False)), expected
    )
    with pytest.raises(ValueError, match="holds"):
        other = HRViTClassifier if kind == "segmenter" else HRViTSegmenter
        other.from_preset(str(tmp_path / "preset"))


def test_corrupted_preset_weights_are_refused_naming_file_and_hash(tmp_path):
    model = HRViTSegmenter(micro_backbone(), num_classes=3, head_channels=8)
    model.save_to_preset(tmp_path / "preset")
    weights = tmp_path / "preset" / "model.weights.h5"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.weights\.h5.*SHA-256"):
        HRViTSegmenter.from_preset(str(tmp_path / "preset"))


def test_hf_handle_resolves_through_the_hub_library(tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    model = HRViTSegmenter(micro_backbone(), num_classes=3, head_channels=8)
    model.save_to_preset(tmp_path / "download")
    calls = []

    def snapshot_download(repo_id, revision=None, **kwargs):
        calls.append(repo_id)
        return str(tmp_path / "download")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    restored = HRViTSegmenter.from_preset("hf://someone/hrvit-micro")
    assert calls == ["someone/hrvit-micro"] and restored.num_classes == 3
