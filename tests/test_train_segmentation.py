"""Training and evaluation entry points: CLI runs, resume after a crash, reports, overlays.

The runs use a micro HRViT (one block per branch, 4 modules) registered as a temporary preset:
the cost of these tests is mostly tracing/compiling the train step, which grows with the
number of layers, not with their width.
"""

import json
import os

import keras
import numpy as np
import pytest
from reference import register_micro_presets, segmentation_argv

from keras_hrvit.cli import evaluate, train
from keras_hrvit.data import SHAPES_CLASSES, load_shapes, segmentation_eval_pipeline
from keras_hrvit.tasks import segmentation as seg
from keras_hrvit.training import WarmupPolyDecay
from keras_hrvit.visualize import colorize, palette, segmentation_panel

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_register_micro = register_micro_presets
_train_argv = segmentation_argv


@pytest.fixture
def micro_presets(monkeypatch):
    _register_micro(monkeypatch)


# The CLI around the train step is backend-neutral, so its shared run is PyTorch's in CI (a
# quarter of TensorFlow's eager time). On JAX the run cost CI a minute and a half of XLA
# compilation, and the JAX train step is the one `fit` compiles in tests/test_tasks.py; the
# CLI's TensorFlow runs are test_run_faults' and test_pretrained's.
CLI_RUN_ON_TORCH = pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="the CLI's train steps on JAX and TensorFlow run elsewhere; CI time",
)


def _records(output_dir):
    with open(os.path.join(output_dir, "history.json"), encoding="utf-8") as f:
        return json.load(f)


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG_SIGNATURE


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One short CLI run shared by the output and evaluation tests."""
    output_dir = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as monkeypatch:
        _register_micro(monkeypatch)
        keras.utils.set_random_seed(0)
        assert train.main(_train_argv(output_dir)) == 0
    keras.backend.clear_session()
    return output_dir


# --- CLI training, evaluation, resume ----------------------------------------------------------


@pytest.mark.backend
@CLI_RUN_ON_TORCH
def test_cli_run_writes_checkpoints_history_curves_and_model(trained_run):
    files = sorted(os.listdir(trained_run / "checkpoints"))
    assert files == ["best.json", "best.keras", "last.json", "last.keras"]
    assert not os.path.exists(trained_run / "backup")  # removed after a finished run
    assert _is_png(trained_run / "training_curves.png")
    records = _records(trained_run)
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"loss", "mean_iou", "val_loss", "val_mean_iou", "learning_rate"} <= set(records[-1])
    assert 0.0 <= records[-1]["val_mean_iou"] <= 1.0
    with open(trained_run / "train_args.json", encoding="utf-8") as f:
        assert json.load(f)["backend"] == keras.backend.backend()

    # Loads after `import keras_hrvit` alone, optimizer and schedule included.
    model = keras.saving.load_model(trained_run / "model.keras")
    assert model.num_classes == 5 and model.optimizer.built
    # The default recipe, "scratch", with the run's --lr 1e-3 and 2 warm-up steps: one rate.
    schedule = model.optimizer._learning_rate
    assert (schedule.base_lr, schedule.warmup_steps, schedule.power) == (1e-3, 2, 0.0)
    assert not model.optimizer.lr_multipliers
    logits = model.predict(np.zeros((1, 64, 64, 3), "uint8"), verbose=0)
    assert logits.shape == (1, 64, 64, 5)


@pytest.mark.backend
@CLI_RUN_ON_TORCH
def test_evaluate_cli_writes_report_and_overlays(trained_run, tmp_path, capsys):
    out = tmp_path / "eval"
    # No --image-size: it is read from the run's train_args.json (64, not the default 128).
    argv = [str(trained_run / "model.keras"), "--dataset", "shapes"]
    argv += ["--num-images", "4", "--batch-size", "2", "--num-overlays", "3"]
    argv += ["--output-dir", str(out), "--no-progress"]
    assert evaluate.main(argv) == 0
    assert "mIoU" in capsys.readouterr().out
    with open(out / "report.json", encoding="utf-8") as f:
        report = json.load(f)
    assert 0.0 <= report["mIoU"] <= 1.0
    assert report["num_images"] == 4
    assert report["num_pixels"] == 4 * 64 * 64
    assert list(report["per_class"]) == list(SHAPES_CLASSES)
    overlays = sorted(os.listdir(out / "overlays"))
    assert overlays == ["0000.png", "0001.png", "0002.png"]
    assert all(_is_png(out / "overlays" / name) for name in overlays)


@pytest.mark.backend
@CLI_RUN_ON_TORCH
def test_evaluate_segmenter_slide_and_flip(trained_run):
    model = keras.saving.load_model(trained_run / "model.keras", compile=False)
    ds = segmentation_eval_pipeline(load_shapes("validation", 2, image_size=64), batch_size=2)
    whole = seg.evaluate_segmenter(model, ds, progress=False)
    slide = seg.evaluate_segmenter(
        model, ds, mode="slide", crop_size=48, stride=16, flip=True, progress=False
    )
    assert whole["num_images"] == slide["num_images"] == 2
    assert slide["mode"] == "slide" and slide["flip"] and slide["crop_size"] == [48, 48]
    assert 0.0 <= slide["mIoU"] <= 1.0


class _CrashMidEpoch(keras.callbacks.Callback):
    """Raises after the first batch of the second epoch (0-based epoch 1)."""

    def __init__(self):
        super().__init__()
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1:
            raise RuntimeError("simulated crash")


# Resuming is Keras's BackupAndRestore plus our schedule: backend-neutral. CI resumes a killed
# CLI run to the same epochs and learning rates in tests/test_kill_resume.py; this crash inside
# an epoch (and the optimizer's step count) costs 80 s of tracing on TensorFlow.
@pytest.mark.slow
def test_interrupted_run_resumes_schedule_and_epochs(micro_presets, tmp_path, monkeypatch):
    epochs, steps = 3, 2
    # No validation: each run then traces the train step only.
    argv = _train_argv(tmp_path, epochs=epochs, steps=steps, extra=["--no-validation"])
    original = seg.standard_callbacks
    with monkeypatch.context() as patch:
        patch.setattr(
            seg, "standard_callbacks", lambda *a, **k: original(*a, **k) + [_CrashMidEpoch()]
        )
        with pytest.raises(RuntimeError, match="simulated crash"):
            train.main(argv)
    assert os.path.isdir(tmp_path / "backup")
    assert [r["epoch"] for r in _records(tmp_path)] == [1]
    assert os.path.exists(tmp_path / "checkpoints" / "last.keras")
    keras.backend.clear_session()

    assert train.main(argv) == 0
    records = _records(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    # The learning rate logged after epoch e is the schedule at step e * steps: a restart from
    # scratch would log schedule(steps) again after the resumed epoch.
    schedule = WarmupPolyDecay(1e-3, epochs * steps, warmup_steps=2)
    expected = [float(keras.ops.convert_to_numpy(schedule(e * steps))) for e in (1, 2, 3)]
    assert [r["learning_rate"] for r in records] == pytest.approx(expected, abs=1e-9)
    assert not os.path.exists(tmp_path / "backup")
    model = keras.saving.load_model(tmp_path / "model.keras")
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == epochs * steps


@pytest.mark.backend
@CLI_RUN_ON_TORCH
def test_upernet_auxiliary_head_trains_one_step(micro_presets, tmp_path):
    extra = ["--head", "upernet", "--head-channels", "16", "--no-validation", "--recipe", "paper"]
    argv = _train_argv(tmp_path, epochs=1, steps=1, model="test_micro", extra=extra)
    assert train.main(argv) == 0
    record = _records(tmp_path)[-1]
    # Two outputs: Keras prefixes the main head's metric with its output name.
    assert "logits_mean_iou" in record and np.isfinite(record["loss"])
    assert "auxiliary_logits_loss" in record
    model = keras.saving.load_model(tmp_path / "model.keras")
    assert len(model.outputs) == 2
    assert seg.mean_iou_key(model) == "val_logits_mean_iou"
    # --recipe paper: both heads at 10x, the paper's poly decay, at the run's --lr.
    heads = {path.split("/")[0] for path in model.optimizer.lr_multipliers}
    assert heads == {"decode_head", "auxiliary_head"}
    assert set(model.optimizer.lr_multipliers.values()) == {10.0}
    assert (model.optimizer._learning_rate.base_lr, model.optimizer._learning_rate.power) == (
        1e-3,
        1.0,
    )


# --- argument checks and helpers (no training) ---------------------------------------------------


def test_unknown_preset_lists_known_ones(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(_train_argv(tmp_path, model="hrvit_b9"))
    err = capsys.readouterr().err
    assert "unknown --model 'hrvit_b9'" in err
    assert "hrvit_b1_ade20k" in err and "hrvit_tiny" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "folder"], "--images-dir and --masks-dir"),
        (["--dataset", "cityscapes"], "needs --data-dir"),
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--ratio-range", "2", "1"], "--ratio-range"),
        (["--lr", "0"], "--lr must be > 0"),
    ],
)
def test_bad_arguments_give_clear_errors(micro_presets, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        train.main(_train_argv(tmp_path) + argv)
    assert message in capsys.readouterr().err


def test_train_requires_a_task(capsys):
    with pytest.raises(SystemExit):
        train.main([])
    assert "segmentation" in capsys.readouterr().err


def test_evaluate_rejects_missing_model(tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluate.main([str(tmp_path / "none.keras"), "--dataset", "shapes", "--output-dir", "x"])
    assert "not found" in capsys.readouterr().err


def test_build_segmenter_from_backbone_preset_and_errors(micro_presets):
    model = seg.build_segmenter("test_micro", num_classes=3, head="upernet")
    assert len(model.outputs) == 2 and model.num_classes == 3
    assert seg.mean_iou_key(model) == "val_logits_mean_iou"
    with pytest.raises(ValueError, match="needs `num_classes`"):
        seg.build_segmenter("test_micro")
    with pytest.raises(ValueError, match="Unknown preset 'nope'.*hrvit_tiny_shapes"):
        seg.build_segmenter("nope", num_classes=3)


def test_palette_and_panel():
    colors = palette()
    assert colors.shape == (256, 3) and colors.dtype == np.uint8
    assert colors[0].tolist() == [0, 0, 0] and colors[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in colors[:20].tolist()}) == 20
    mask = np.array([[0, 1], [4, 255]])
    assert colorize(mask)[1, 1].tolist() == colors[255].tolist()
    image = np.full((40, 50, 3), 100, np.uint8)
    labels = np.zeros((40, 50), np.int64)
    labels[5:20, 5:20] = 3
    panel = segmentation_panel(image, labels, labels, class_names=SHAPES_CLASSES)
    assert panel.size[0] > 3 * 50 and panel.mode == "RGB"
    with pytest.raises(ValueError, match="same height and width"):
        segmentation_panel(image, labels[:10], labels)
