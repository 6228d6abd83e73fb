"""Training runs under faults: bad numbers, divergence, reruns, busy and bad folders, bad labels.

Rows of the fault table (CONTRIBUTING.md, "Faults"); each checks the exit code, the one line
the user reads, and what is left on disk.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from reference import micro_backbone, register_micro_presets, segmentation_argv

import keras_hrvit
from keras_hrvit.cli import evaluate, train
from keras_hrvit.tasks import segmentation as seg


@pytest.fixture
def micro(monkeypatch):
    register_micro_presets(monkeypatch)


def _exit_code(argv):
    try:
        return train.main(argv)
    except SystemExit as exit_:
        return exit_.code


@pytest.mark.parametrize("task", ["segmentation", "classification"])
@pytest.mark.parametrize("option", ["--lr", "--weight-decay", "--clipnorm"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused(task, option, value, tmp_path, capsys):
    run = str(tmp_path / "run")
    argv = [task, "--model", "hrvit_tiny", "--output-dir", run, f"{option}={value}"]
    with pytest.raises(SystemExit) as exit_:
        train.main(argv)
    assert exit_.value.code == 2
    assert f"argument {option}: expected a finite number, got '{value}'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_diverged_run_exits_non_zero_and_keeps_the_last_finite_state(
    micro, tmp_path, monkeypatch, capsys
):
    class Poison(keras.callbacks.Callback):
        """NaN weights from epoch 2 on, as a too-high learning rate gives."""

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                for variable in self.model.trainable_variables:
                    variable.assign(np.full(variable.shape, np.nan, variable.dtype))

    standard = seg._run_callbacks
    monkeypatch.setattr(seg, "_run_callbacks", lambda *a: standard(*a) + [Poison()])
    out = tmp_path / "run"
    assert _exit_code(segmentation_argv(out, epochs=3)) == 1
    err = capsys.readouterr().err
    assert "error: Training diverged: the loss was nan in epoch 2" in err
    assert not (out / "model.keras").exists()
    last = keras.saving.load_model(out / "checkpoints" / "last.keras")
    assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in last.weights)
    assert json.loads((out / "checkpoints" / "last.json").read_text()) == {"epoch": 1}
    state = json.loads((out / "backup" / "training_metadata.json").read_text())
    assert state["epoch"] == 1 and (out / "backup" / state["weights"]).exists()
    assert not (out / ".lock").exists()


def test_a_finished_run_is_not_overwritten_without_asking(micro, tmp_path, capsys):
    out = tmp_path / "run"
    assert _exit_code(segmentation_argv(out, epochs=1, steps=1)) == 0
    first = (out / "model.keras").read_bytes()
    assert _exit_code(segmentation_argv(out, epochs=1, steps=1)) == 2
    assert "holds a finished run (model.keras); pass --overwrite" in capsys.readouterr().err
    assert (out / "model.keras").read_bytes() == first
    argv = segmentation_argv(out, epochs=1, steps=1, extra=["--overwrite", "--seed", "3"])
    assert _exit_code(argv) == 0
    assert (out / "model.keras").read_bytes() != first


def test_a_busy_folder_is_refused_and_a_dead_runs_lock_taken_over(micro, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(str(other.pid))
        assert _exit_code(segmentation_argv(out, epochs=1, steps=1)) == 2
        assert f"is in use by another run (process {other.pid})" in capsys.readouterr().err
    finally:
        other.kill()
        other.wait()
    assert _exit_code(segmentation_argv(out, epochs=1, steps=1)) == 0  # its process is gone
    assert not (out / ".lock").exists()


def test_an_output_dir_under_a_file_is_one_line(micro, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert _exit_code(segmentation_argv(tmp_path / "file" / "run")) == 2
    assert "--output-dir" in (err := capsys.readouterr().err) and "cannot be created" in err


def test_fewer_classes_than_the_dataset_holds_is_refused(micro, tmp_path, capsys):
    argv = segmentation_argv(tmp_path / "run", extra=["--num-classes", "3"])
    assert _exit_code(argv) == 2
    assert "--num-classes 3 is fewer than the 5 classes of --dataset shapes" in (
        capsys.readouterr().err
    )


def test_labels_beyond_num_classes_stop_the_run_with_one_line(micro, tmp_path, capsys):
    import tensorflow as tf

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        mask = np.full((64, 64, 1), i + 6, np.uint8)  # labels 6-9, for a 5-class model
        tf.io.write_file(str(images / f"{i}.png"), tf.io.encode_png(image))
        tf.io.write_file(str(masks / f"{i}.png"), tf.io.encode_png(mask))
    argv = segmentation_argv(tmp_path / "run", epochs=1, steps=1)
    argv[argv.index("shapes")] = "folder"
    argv += ["--images-dir", str(images), "--masks-dir", str(masks), "--num-classes", "5"]
    assert _exit_code(argv) == 1
    err = capsys.readouterr().err
    assert "error: mask has label " in err and "but num_classes is 5 (labels 0-4" in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run" / "model.keras").exists()

    # `evaluate` would leave those pixels out of the mIoU: it stops too.
    model = keras_hrvit.HRViTSegmenter(micro_backbone(), num_classes=5, head_channels=8)
    model.save(tmp_path / "model.keras")
    argv = [str(tmp_path / "model.keras"), "--dataset", "folder", "--images-dir", str(images)]
    argv += ["--masks-dir", str(masks), "--output-dir", str(tmp_path / "eval")]
    assert evaluate.main(argv) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "error: mask has label 6, but num_classes is 5" in errors[0]


def test_unreadable_history_and_best_files_restart_with_a_warning(tmp_path, caplog):
    from keras_hrvit.training import AtomicModelCheckpoint, TrainingCurves

    (tmp_path / "history.json").write_text('[{"epoch": 1, "loss"')
    (tmp_path / "best.json").write_text("{")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.ones((4, 2), "float32")
    callbacks = [TrainingCurves(tmp_path), AtomicModelCheckpoint(tmp_path, monitor="loss")]
    model.fit(x, x[:, :1], epochs=2, verbose=0, callbacks=callbacks)
    records = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in records] == [1, 2]
    assert "history.json cannot be read" in caplog.text
    assert "best.json cannot be read" in caplog.text
    assert os.path.exists(tmp_path / "best.keras")
