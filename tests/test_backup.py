"""`AtomicBackupAndRestore`: resume state that survives kills, divergence and bad files."""

import json
import os

import keras
import numpy as np
import pytest

from keras_hrvit.training.backup import AtomicBackupAndRestore


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    return model


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 4)).astype("float32"), rng.normal(size=(16, 1)).astype("float32")


class _Stop(keras.callbacks.Callback):
    """Ends `fit` at the end of epoch `at` as a kill would: no `on_train_end`."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.at:
            raise KeyboardInterrupt


def _interrupted(backup_dir, at):
    model = _model()
    with pytest.raises(KeyboardInterrupt):
        model.fit(*_data(), epochs=5, batch_size=4, verbose=0,
                  callbacks=[AtomicBackupAndRestore(backup_dir), _Stop(at)])  # fmt: skip
    return model


def test_resumes_at_the_epoch_of_its_weights(tmp_path):
    backup_dir = tmp_path / "backup"
    _interrupted(backup_dir, at=2)
    state = json.loads((backup_dir / "training_metadata.json").read_text())
    assert state["epoch"] == 2 and sorted(os.listdir(backup_dir)) == sorted(
        ["training_metadata.json", state["weights"]]
    )
    resumed = _model(seed=1)  # other initial weights: all must come from the backup
    history = resumed.fit(*_data(), epochs=5, batch_size=4, verbose=0,
                          callbacks=[AtomicBackupAndRestore(backup_dir)])  # fmt: skip
    assert history.epoch == [2, 3, 4]
    assert int(keras.ops.convert_to_numpy(resumed.optimizer.iterations)) == 20
    assert not backup_dir.exists()  # finished: Keras's clean-up


def test_a_kill_mid_write_leaves_the_previous_state(tmp_path):
    backup_dir = tmp_path / "backup"
    _interrupted(backup_dir, at=2)
    state = json.loads((backup_dir / "training_metadata.json").read_text())
    # What a kill inside the next save leaves: a half-written temporary file.
    (backup_dir / ".epoch-3-batch-0.tmp-1-abc.weights.h5").write_bytes(b"\x89HDF\r\n")
    resumed = _model(seed=1)
    backup = AtomicBackupAndRestore(backup_dir, fallback=None)
    history = resumed.fit(*_data(), epochs=3, batch_size=4, verbose=0, callbacks=[backup])
    assert history.epoch == [2] and state["epoch"] == 2


def test_divergence_keeps_the_last_finite_state(tmp_path):
    backup_dir = tmp_path / "backup"
    model = _model()
    x, y = _data()
    y[12:] = np.inf  # the last batch of every epoch: epoch 1 diverges
    backup = AtomicBackupAndRestore(backup_dir)
    model.fit(x, y, epochs=3, batch_size=4, shuffle=False, verbose=0,
              callbacks=[backup, keras.callbacks.TerminateOnNaN()])  # fmt: skip
    assert backup.diverged
    # Epoch 1 ended non-finite: nothing was saved, so a rerun starts afresh.
    assert not backup_dir.exists() or not any(backup_dir.iterdir())


def test_divergence_after_good_epochs_keeps_them(tmp_path):
    backup_dir = tmp_path / "backup"
    model = _model()
    x, y = _data()

    class Poison(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                for v in model.trainable_variables:
                    v.assign(np.full(v.shape, np.nan, "float32"))

    backup = AtomicBackupAndRestore(backup_dir)
    model.fit(x, y, epochs=4, batch_size=4, verbose=0,
              callbacks=[backup, Poison(), keras.callbacks.TerminateOnNaN()])  # fmt: skip
    assert backup.diverged
    state = json.loads((backup_dir / "training_metadata.json").read_text())
    assert state["epoch"] == 2
    restored = _model(seed=1)
    restored.build((None, 4))
    restored.load_weights(backup_dir / state["weights"])
    assert all(np.isfinite(w).all() for w in restored.get_weights())


def test_unreadable_state_falls_back_to_the_last_checkpoint(tmp_path, caplog):
    backup_dir = tmp_path / "backup"
    model = _interrupted(backup_dir, at=2)
    model.save(tmp_path / "last.keras")
    (tmp_path / "last.json").write_text(json.dumps({"epoch": 2}))
    (backup_dir / "training_metadata.json").write_text('{"epoch": 2, "weig')  # truncated
    resumed = _model(seed=1)
    backup = AtomicBackupAndRestore(backup_dir, fallback=tmp_path / "last.keras")
    history = resumed.fit(*_data(), epochs=4, batch_size=4, verbose=0, callbacks=[backup])
    assert history.epoch == [2, 3]
    assert "cannot be read" in caplog.text and "last.keras" in caplog.text
    assert int(keras.ops.convert_to_numpy(resumed.optimizer.iterations)) == 16


def test_unreadable_state_without_a_checkpoint_is_one_clear_error(tmp_path):
    backup_dir = tmp_path / "backup"
    _interrupted(backup_dir, at=1)
    (backup_dir / "training_metadata.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot be read .*delete the folder"):
        _model().fit(*_data(), epochs=2, verbose=0, callbacks=[AtomicBackupAndRestore(backup_dir)])
