"""ImageNet-style pretraining: `keras_hrvit.tasks.classification` and its CLI subcommand
(`keras_hrvit.cli.train_classification`).

The fast tests use a micro HRViT (four modules, one transformer block per module, 32-pixel images)
and compile its training step once per backend; the interrupt-and-resume test trains a small
convolutional classifier, which runs the same schedule, optimizer and callbacks. The slow test
pretrains `hrvit_tiny` through the command line and checks the accuracy.
"""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from reference import MICRO_CONFIG, fast_compile_kwargs

import keras_hrvit
from keras_hrvit.cli import train_classification as cli_task
from keras_hrvit.data.classification import (
    classification_train_pipeline,
    load_classification_data,
)
from keras_hrvit.tasks import classification as task
from keras_hrvit.training import decay_exempt_variables, decay_variables
from keras_hrvit.weights import transfer_backbone_weights

NUM_CLASSES = 8
SIZE = 32

# Training mode on JAX is checked against the original (outputs, gradients, BatchNorm
# statistics) by tests/test_train_reference.py; this fit costs CI a minute of XLA there.
JAX_TRAIN_REASON = "train mode on JAX: tests/test_train_reference.py; XLA time in CI"


def _micro_classifier(drop_path_rate=0.1, **overrides):
    backbone = keras_hrvit.HRViTBackbone(
        **{**MICRO_CONFIG, **overrides}, drop_path_rate=drop_path_rate, name="micro"
    )
    model = keras_hrvit.HRViTClassifier(
        backbone,
        classes=NUM_CLASSES,
        classifier_activation=None,
        head_channels=(4, 4, 4, 4),
        name="micro_classifier",
    )
    return model, backbone


def _train_data(num_images=32, batch_size=8, **augment):
    ds, names = load_classification_data(
        "embedded", "train", image_size=SIZE, num_images=num_images
    )
    assert len(names) == NUM_CLASSES
    return classification_train_pipeline(
        ds, NUM_CLASSES, image_size=SIZE, batch_size=batch_size, seed=0, **augment
    )


@pytest.fixture(scope="module")
def micro():
    keras.utils.set_random_seed(1)
    return _micro_classifier()


# --- data: soft labels ---------------------------------------------------------------------


@pytest.mark.parametrize("switch_prob", [0.0, 1.0, 0.5], ids=["mixup", "cutmix", "both"])
def test_smoothed_and_mixed_labels_sum_to_one(switch_prob):
    ds = _train_data(
        num_images=32,
        label_smoothing=0.1,
        mixup_alpha=0.8,
        cutmix_alpha=1.0,
        switch_prob=switch_prob,
        randaugment=False,
    )
    labels = np.concatenate([y.numpy() for _, y in ds])
    np.testing.assert_allclose(labels.sum(axis=-1), 1.0, atol=1e-5)
    # Smoothing happens before mixing, so every entry keeps at least the smoothing floor.
    assert labels.min() >= 0.1 / NUM_CLASSES - 1e-6
    # Mixed targets put mass on two classes: more than one entry above the floor.
    assert ((labels > 0.1 / NUM_CLASSES + 1e-3).sum(axis=-1) > 1).any()


# --- optimizer: weight-decay exemptions ----------------------------------------------------


def test_decay_excludes_exactly_norms_and_biases(micro):
    model, _ = micro
    norm_types = (keras.layers.BatchNormalization, keras.layers.LayerNormalization)
    expected = set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for variable in layer._trainable_variables:
            if isinstance(layer, norm_types) or variable.name == "bias":
                expected.add(variable.path)
    exempt = {v.path for v in decay_exempt_variables(model)}
    assert exempt == expected
    decayed = {v.path for v in decay_variables(model)}
    assert decayed == {v.path for v in model.trainable_variables} - expected
    # Spot checks of both sides of the split.
    assert "predictions/bias" in exempt and "predictions/kernel" in decayed
    assert any(p.startswith("m0_norm0/") for p in exempt)
    assert any(p.startswith("head/") and p.endswith("gamma") for p in exempt)
    assert all(len(v.shape) >= 2 for v in decay_variables(model))

    optimizer = keras_hrvit.training.build_adamw(model, 1e-3, weight_decay=0.05)
    assert set(optimizer.no_decay_paths) == expected


# --- classifier -> segmenter weight transfer ------------------------------------------------


def test_transfer_backbone_weights_to_segmenter(micro):
    classifier, backbone = micro
    segmenter = keras_hrvit.HRViTSegmenter(
        keras_hrvit.HRViTBackbone(**MICRO_CONFIG, drop_path_rate=0.0, name="micro_seg"),
        num_classes=3,
        head_channels=8,
    )
    x = np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype("float32")

    def features(model):
        return [keras.ops.convert_to_numpy(f) for f in model(x, training=False)]

    before = features(segmenter.backbone)
    assert not np.allclose(before[0], features(backbone)[0])

    copied = transfer_backbone_weights(classifier, segmenter)
    weighted = [layer.name for layer in segmenter.backbone.layers if layer.weights]
    assert copied == weighted
    assert copied[0] == "stem" and "m3_norm3" in copied
    for got, want in zip(features(segmenter.backbone), features(backbone)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    # The segmenter's own head is untouched and the full model still runs.
    logits = segmenter(x, training=False)
    assert tuple(logits.shape) == (2, SIZE, SIZE, 3)


def test_transfer_backbone_weights_rejects_other_configs(micro):
    classifier, _ = micro
    wider = keras_hrvit.HRViTBackbone(
        **{**MICRO_CONFIG, "channels": (16, 16, 32, 48)}, name="wider"
    )
    with pytest.raises(ValueError, match="Shape mismatch in layer 'm3_fusion'"):
        transfer_backbone_weights(classifier, wider)
    with pytest.raises(ValueError, match="must be an HRViTSegmenter"):
        transfer_backbone_weights(classifier, keras.Sequential([keras.layers.Dense(2)]))


# --- training: schedule, resume, one step on mixed labels -----------------------------------


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("simulated crash")


class _Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs, self.iterations, self.lrs = [], [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)
        self.iterations.append(int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)))
        self.lrs.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))


def _expected_lr(step, lr, total, warmup):
    start, floor = min(1e-6, lr), min(1e-5, lr)
    if step < warmup:
        return start + step * (lr - start) / warmup
    t = min(step, total)
    return floor + 0.5 * (lr - floor) * (1 + math.cos(math.pi * t / total))


def _fit_kwargs(output_dir, **overrides):
    # 4 batches of 8 images; 2 steps per epoch (the finite dataset is repeated), 3 epochs, 1 of
    # warm-up: 6 steps, 2 of them warm-up.
    kwargs = dict(
        output_dir=str(output_dir),
        epochs=3,
        batch_size=8,
        steps_per_epoch=2,
        base_lr=0.128,
        warmup_epochs=1,
        tensorboard=False,
        verbose=0,
    )
    kwargs.update(overrides)
    return kwargs


# A few eager steps cost PyTorch a quarter of TensorFlow's time: this run is PyTorch's in CI, and
# TensorFlow trains on mixed labels in test_hrvit_trains_on_mixed_labels.
@pytest.mark.backend
@pytest.mark.skipif(keras.backend.backend() != "torch", reason="PyTorch's run in CI; CI time")
def test_schedule_and_resume_on_mixed_labels(tmp_path, capsys):
    # Smoothed Mixup/CutMix targets go straight into the compiled loss.
    train = _train_data(num_images=32, batch_size=8, randaugment=False)
    kwargs = _fit_kwargs(tmp_path, **fast_compile_kwargs())
    lr = 0.128 * 8 / 1024
    keras.utils.set_random_seed(2)
    model, _ = _micro_classifier()
    with pytest.raises(RuntimeError, match="simulated crash"):
        task.train_classifier(model, train, callbacks=[_Interrupt()], **kwargs)
    assert "= 0.001" in capsys.readouterr().out
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2
    assert os.path.isdir(tmp_path / "backup")

    keras.backend.clear_session()
    resumed, _ = _micro_classifier()
    recorder = _Recorder()
    history = task.train_classifier(resumed, train, callbacks=[recorder], **kwargs)
    assert recorder.epochs == [1, 2]
    assert recorder.iterations == [2, 4]
    assert recorder.lrs == pytest.approx([_expected_lr(s, lr, 6, 2) for s in (2, 4)], rel=1e-5)
    assert int(keras.ops.convert_to_numpy(resumed.optimizer.iterations)) == 6
    assert len(history.history["loss"]) == 2
    assert all(np.isfinite(history.history["loss"]))
    assert {"top1_accuracy", "top5_accuracy"} <= set(history.history)

    schedule = resumed.optimizer._learning_rate
    assert isinstance(schedule, keras_hrvit.training.WarmupCosineDecay)
    for step in (0, 1, 2, 3, 5, 6, 9):
        got = float(keras.ops.convert_to_numpy(schedule(step)))
        assert got == pytest.approx(_expected_lr(step, lr, 6, 2), rel=1e-5), step
    assert resumed.optimizer.global_clipnorm == 1.0
    assert resumed.optimizer.weight_decay == pytest.approx(0.05)
    # The paper's groups: no decay on normalization weights and biases (HRViT has no
    # position embeddings), everything else decays at 0.05.
    exempt = {v.path for v in resumed.trainable_variables if v.name in ("gamma", "beta", "bias")}
    assert set(resumed.optimizer.no_decay_paths) == exempt

    records = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert not os.path.exists(tmp_path / "backup")
    assert {"best.keras", "last.keras"} <= set(os.listdir(tmp_path / "checkpoints"))


@pytest.mark.backend
@pytest.mark.skipif(keras.backend.backend() == "jax", reason=JAX_TRAIN_REASON)
@pytest.mark.skipif(
    keras.backend.backend() == "torch",
    reason="test_schedule_and_resume_on_mixed_labels trains on mixed labels on PyTorch",
)
def test_hrvit_trains_on_mixed_labels(tmp_path):
    # The short run on every backend: two steps of a micro HRViT on smoothed Mixup/CutMix labels.
    train = _train_data(num_images=16, batch_size=8, randaugment=False)
    model, _ = _micro_classifier()
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables]
    history = task.train_classifier(
        model,
        train,
        **fast_compile_kwargs(),
        **_fit_kwargs(tmp_path, epochs=1, warmup_epochs=0),
    )
    assert np.isfinite(history.history["loss"][0])
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2
    after = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    assert any(not np.allclose(a, b) for a, b in zip(after, before))
    assert os.path.exists(tmp_path / "checkpoints" / "last.keras")


def test_train_classifier_validates_arguments(micro, tmp_path):
    model, _ = micro
    labels = np.eye(NUM_CLASSES)[np.arange(8) % NUM_CLASSES].astype("float32")
    xy = tf.data.Dataset.from_tensor_slices(
        (np.zeros((8, SIZE, SIZE, 3), "float32"), labels)
    ).batch(4, drop_remainder=True)
    common = dict(output_dir=str(tmp_path), epochs=2, batch_size=4, warmup_epochs=1)
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="must be an HRViTClassifier"):
        task.train_classifier(dense, xy, **common)
    with pytest.raises(ValueError, match="warmup_epochs"):
        task.train_classifier(model, xy, **{**common, "warmup_epochs": 3})
    with pytest.raises(ValueError, match="yields batches of 4"):
        task.train_classifier(model, xy, **{**common, "batch_size": 8})
    with pytest.raises(ValueError, match="steps_per_epoch"):
        task.train_classifier(model, xy.repeat(), **common)
    with pytest.raises(ValueError, match="set_dtype_policy"):
        task.train_classifier(model, xy, mixed_precision="mixed_bfloat16", **common)
    with pytest.raises(ValueError, match="mixed_precision"):
        task.train_classifier(model, xy, mixed_precision="float16", **common)
    with pytest.raises(ValueError, match="epochs"):
        task.train_classifier(model, xy, **{**common, "epochs": 0})


def test_build_classifier_names_and_errors():
    assert "hrvit_tiny" in task.model_names() and "hrvit_b1" in task.model_names()
    assert task.scaled_learning_rate(1e-3, 256) == pytest.approx(2.5e-4)
    with pytest.raises(ValueError, match="Unknown preset 'hrvit_b9'.*hrvit_b1"):
        task.build_classifier("hrvit_b9", 3)


# --- command line -------------------------------------------------------------------------


def test_cli_parses_classification_subcommand(tmp_path):
    from keras_hrvit.cli.train import build_parser

    parser = build_parser()
    args = parser.parse_args(
        ["classification", "--model", "hrvit_tiny", "--image-size", "64", "--light-augment"]
    )
    assert args.task == "classification"
    assert args.run is cli_task.run_train_command
    assert (args.data, args.batch_size, args.epochs, args.lr) == ("embedded", 128, 300, 1e-3)
    assert args.light_augment and not args.no_mixup and args.resume
    with pytest.raises(SystemExit):
        parser.parse_args(["classification", "--model", "resnet50"])
    bad = parser.parse_args(
        ["classification", "--epochs", "2", "--warmup-epochs", "5", "--output-dir", str(tmp_path)]
    )
    with pytest.raises(SystemExit):
        bad.run(bad, bad.command_parser)


@pytest.mark.slow
def test_pretraining_tiny_beats_chance_through_cli(tmp_path):
    # The recipe of the classification CLI's toy example, run as a user would on PyTorch, the
    # fastest CPU backend here (about 10 minutes on 2 cores; 44 % validation top-1 measured).
    # At 32 pixels with 1024 images the model memorizes its training images instead.
    pytest.importorskip("torch")
    output_dir = tmp_path / "run"
    argv = [
        sys.executable, "-m", "keras_hrvit.train",
        "classification",
        "--model", "hrvit_tiny",
        "--data", "embedded",
        "--image-size", "64",
        "--num-train-images", "2048",
        "--num-val-images", "256",
        "--batch-size", "32",
        "--epochs", "5",
        "--warmup-epochs", "1",
        "--lr", "0.064",
        "--light-augment",
        "--seed", "0",
        "--no-tensorboard",
        "--verbose", "2",
        "--output-dir", str(output_dir),
    ]  # fmt: skip
    env = dict(os.environ, KERAS_BACKEND="torch")
    subprocess.run(argv, check=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
    records = json.loads((output_dir / "history.json").read_text())
    top1 = records[-1]["val_top1_accuracy"]
    print(f"hrvit_tiny validation top-1 after {len(records)} epochs: {top1:.4f}")
    assert top1 >= 2 / NUM_CLASSES
    settings = json.loads((output_dir / "train_args.json").read_text())
    assert settings["class_names"][0] == "circle"
    assert os.path.exists(output_dir / "checkpoints" / "best.keras")
