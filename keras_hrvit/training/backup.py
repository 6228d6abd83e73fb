"""Resume state that survives a kill and a diverged run."""

import json
import logging
import math
import os

import keras

from keras_hrvit.files import atomic_write, write_json

logger = logging.getLogger(__name__)

STATE_FILE = "training_metadata.json"


def _finite(value):
    """False for a NaN/inf loss; True for finite values and for no value."""
    if value is None:
        return True
    try:
        return math.isfinite(float(keras.ops.convert_to_numpy(value)))
    except (TypeError, ValueError):
        return True


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` whose resume state survives kills and divergence.

    Keras rewrites `latest.weights.h5` in place, and its epoch in a second file: a run killed
    while writing leaves a file h5py cannot open, or weights and epoch that disagree. Here each
    save writes `epoch-N.weights.h5` under a temporary name and renames it, then renames into
    place the state file that names it (`training_metadata.json`), then removes the previous
    weights: at any moment the state file names a whole weights file of its own epoch.

    A batch or epoch whose loss is NaN or infinite marks the run `diverged`: nothing more is
    saved, and the backup is kept when training ends (Keras deletes it), so the last finite
    state can be resumed or inspected. When the state cannot be read, training resumes from
    `fallback`, a `.keras` checkpoint whose epoch is in the JSON file of the same stem (as
    `AtomicModelCheckpoint` writes them), and says so.

    Args:
        backup_dir: folder of the resume state.
        fallback: `.keras` (or `.weights.h5`) checkpoint to resume from when the state is
            unreadable; None to raise instead.
        save_freq: `"epoch"`, or save every this many batches.

    Example:
    >>> backup = AtomicBackupAndRestore("runs/a/backup", fallback="runs/a/checkpoints/last.keras")
    >>> model.fit(train_ds, epochs=10, callbacks=[backup])
    """

    def __init__(self, backup_dir, fallback=None, save_freq="epoch"):
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=True)
        self.fallback = None if fallback is None else os.fspath(fallback)
        self._state_path = os.path.join(self.backup_dir, STATE_FILE)
        self.diverged = False

    # --- restoring ----------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self.diverged = False
        try:
            self._load_model()
            return
        except (OSError, ValueError, KeyError, TypeError) as error:
            problem = error
        try:
            self._load_fallback(problem)
        except (OSError, ValueError, KeyError, TypeError):
            raise ValueError(
                f"The resume state in {self.backup_dir!r} cannot be read ({_one_line(problem)}) "
                "and there is no readable checkpoint to fall back on; delete the folder to "
                "start over."
            ) from None

    def _load_model(self):
        if not os.path.exists(self._state_path):
            return
        with open(self._state_path, encoding="utf-8") as f:
            state = json.load(f)
        self._restore(os.path.join(self.backup_dir, state["weights"]), int(state["epoch"]))

    def _load_fallback(self, error):
        if self.fallback is None:
            raise ValueError("no fallback")
        stem = self.fallback[: -len(".keras")] if self.fallback.endswith(".keras") else None
        stem = stem or self.fallback[: -len(".weights.h5")]
        with open(stem + ".json", encoding="utf-8") as f:
            epoch = int(json.load(f)["epoch"])
        logger.warning(
            "The resume state in %r cannot be read (%s); resuming from %r (epoch %d).",
            self.backup_dir,
            _one_line(error),
            self.fallback,
            epoch,
        )
        self._restore(self.fallback, epoch)

    def _restore(self, weights_path, epoch):
        if not self.model.built:
            raise ValueError("Build the model before `fit` to resume it (call it on a batch).")
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        self.model.load_weights(weights_path)
        self.model._initial_epoch = epoch  # how Keras's own BackupAndRestore resumes `fit`
        self._current_epoch = epoch

    # --- saving -------------------------------------------------------------------------------

    def on_train_batch_end(self, batch, logs=None):
        if not _finite((logs or {}).get("loss")):
            self.diverged = True
        if not self.diverged:
            super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if not _finite((logs or {}).get("loss")):
            self.diverged = True
        if self.diverged:
            logger.warning(
                "Epoch %d: the loss is not finite; the resume state of epoch %d is kept.",
                epoch + 1,
                self._current_epoch,
            )
            return
        super().on_epoch_end(epoch, logs)

    def _save_model(self):
        name = f"epoch-{self._current_epoch}-batch-{self._last_batch_seen}.weights.h5"
        path = os.path.join(self.backup_dir, name)
        atomic_write(path, lambda tmp: self.model.save_weights(tmp), ".weights.h5")
        write_json(
            self._state_path,
            {"epoch": self._current_epoch, "batch": self._last_batch_seen, "weights": name},
        )
        # Earlier weights, and the temporary files of a write a kill interrupted.
        for stale in os.listdir(self.backup_dir):
            if stale != name and stale.endswith(".weights.h5"):
                os.remove(os.path.join(self.backup_dir, stale))

    def on_train_end(self, logs=None):
        if not self.diverged:
            super().on_train_end(logs)


def _one_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__
