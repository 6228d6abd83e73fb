"""Crash-safe checkpointing, training curves and a standard callback set for `model.fit`.

Every file written here goes through `keras_hrvit.files.atomic_write` (a temporary name in the
destination directory, then `os.replace`), so a run killed mid-save leaves the previous file
intact instead of a truncated one.
"""

import csv
import importlib.util
import io
import json
import logging
import math
import os

import keras
import numpy as np

from keras_hrvit.files import atomic_write, remove_stale_temporaries, write_json
from keras_hrvit.training.backup import AtomicBackupAndRestore
from keras_hrvit.validation import check_choice, check_positive_int

logger = logging.getLogger(__name__)

MODES = ("auto", "min", "max")
_MAX_HINTS = ("acc", "iou", "dice", "auc", "precision", "recall", "f1", "fmeasure")


def _resolve_mode(monitor, mode):
    check_choice("mode", mode, MODES)
    if mode != "auto":
        return mode
    name = monitor.lower()
    return "max" if any(hint in name for hint in _MAX_HINTS) else "min"


def _read_json(path, consequence):
    """The JSON in `path`, or None with a warning naming the file when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        logger.warning("%s cannot be read (%s); %s.", path, error, consequence)
        return None


def _to_float(value):
    try:
        return float(keras.ops.convert_to_numpy(value))
    except (TypeError, ValueError):
        return None


class AtomicModelCheckpoint(keras.callbacks.Callback):
    """Saves `last` every `save_freq` epochs and `best` by a monitored metric, atomically.

    Files are `<directory>/<last_name>.keras` and `<directory>/<best_name>.keras` (or
    `.weights.h5` with `save_weights_only=True`). The best value is kept in
    `<directory>/<best_name>.json`, so a run resumed with `BackupAndRestore` (first epoch > 0)
    does not overwrite a better `best` with the first epoch after the restart; a run starting
    at epoch 0 starts a fresh `best`. Epochs whose loss is NaN/inf are
    not saved.

    Args:
        directory: Output directory (created if missing).
        monitor: Metric name in the epoch logs for `best`, e.g. `"val_loss"`.
        mode: `"min"`, `"max"` or `"auto"` (max for accuracy/IoU-like names).
        save_best: Whether to keep `best`.
        save_weights_only: Save `model.save_weights` files instead of full `.keras` models.
        save_freq: Save `last` every this many epochs (the final epoch is always saved).
        verbose: 1 prints a line when `best` improves.

    Example:

    >>> ckpt = AtomicModelCheckpoint("runs/exp1/checkpoints", monitor="val_mean_io_u")
    >>> model.fit(train_ds, validation_data=val_ds, epochs=10, callbacks=[ckpt])
    """

    def __init__(
        self,
        directory,
        monitor="val_loss",
        mode="auto",
        save_best=True,
        save_weights_only=False,
        save_freq=1,
        verbose=0,
        last_name="last",
        best_name="best",
    ):
        super().__init__()
        if not directory:
            raise ValueError("`directory` must be a non-empty path.")
        check_positive_int("save_freq", save_freq)
        if not last_name or not best_name or last_name == best_name:
            raise ValueError(
                "`last_name` and `best_name` must be distinct non-empty names. Received: "
                f"last_name={last_name!r}, best_name={best_name!r}"
            )
        self.directory = os.fspath(directory)
        self.monitor = monitor
        self.mode = _resolve_mode(monitor, mode)
        self.save_best = save_best
        self.save_weights_only = save_weights_only
        self.save_freq = save_freq
        self.verbose = verbose
        self.suffix = ".weights.h5" if save_weights_only else ".keras"
        self.last_path = os.path.join(self.directory, last_name + self.suffix)
        self.best_path = os.path.join(self.directory, best_name + self.suffix)
        self.best_state_path = os.path.join(self.directory, best_name + ".json")
        # The epoch of `last`, for a resume that falls back on it (`AtomicBackupAndRestore`).
        self.last_state_path = os.path.join(self.directory, last_name + ".json")
        self.best = None
        self._warned_missing = False
        self._first_epoch_seen = False

    def on_train_begin(self, logs=None):
        self.best = None
        self._first_epoch_seen = False
        if self.save_best and os.path.exists(self.best_state_path):
            state = _read_json(self.best_state_path, "the best value is tracked afresh")
            if isinstance(state, dict) and (state.get("monitor"), state.get("mode")) == (
                self.monitor,
                self.mode,
            ):
                self.best = state.get("best")

    def on_epoch_begin(self, epoch, logs=None):
        if not self._first_epoch_seen and epoch == 0:
            # A run that starts from scratch must not compete with an earlier run's best.
            self.best = None
        self._first_epoch_seen = True

    def _save(self, path):
        if self.save_weights_only:
            atomic_write(path, lambda tmp: self.model.save_weights(tmp), self.suffix)
        else:
            atomic_write(path, lambda tmp: self.model.save(tmp), self.suffix)

    def _improved(self, value):
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        loss = _to_float(logs.get("loss", 0.0))
        if loss is not None and not math.isfinite(loss):
            logger.warning("Epoch %d: loss is %s, not writing checkpoints.", epoch + 1, loss)
            return
        final = self.params.get("epochs") == epoch + 1 if self.params else False
        if (epoch + 1) % self.save_freq == 0 or final or self.model.stop_training:
            self._save(self.last_path)
            write_json(self.last_state_path, {"epoch": epoch + 1})
        if not self.save_best:
            return
        value = _to_float(logs[self.monitor]) if self.monitor in logs else None
        if value is None:
            if not self._warned_missing:
                logger.warning(
                    "AtomicModelCheckpoint: %r is not in the epoch logs (available: %s); "
                    "`best` is not saved.",
                    self.monitor,
                    sorted(logs),
                )
                self._warned_missing = True
            return
        if math.isfinite(value) and self._improved(value):
            if self.verbose:
                print(f"\nEpoch {epoch + 1}: {self.monitor} improved to {value:.5g}, saving best.")
            self.best = value
            self._save(self.best_path)
            write_json(
                self.best_state_path,
                {"monitor": self.monitor, "mode": self.mode, "best": value, "epoch": epoch + 1},
            )


def _epoch_record(model, epoch, logs):
    """`{"epoch": epoch + 1, metric: float, ...}` of an epoch's logs, with the learning rate."""
    record = {"epoch": epoch + 1}
    for key, value in (logs or {}).items():
        value = _to_float(value)
        if value is not None:
            record[key] = value
    optimizer = getattr(model, "optimizer", None)
    if "learning_rate" not in record and optimizer is not None:
        lr = _to_float(optimizer.learning_rate)
        if lr is not None:
            record["learning_rate"] = lr
    return record


class TrainingCurves(keras.callbacks.Callback):
    """Writes `history.json` and a `training_curves.png` (train and val per metric) each epoch.

    On a resumed run (e.g. with `BackupAndRestore`) the existing JSON is read back and epochs
    from the restart point on are replaced, so the curves cover the whole run. The learning
    rate is recorded as `learning_rate` when the optimizer exposes one.

    Args:
        output_dir: Directory for the two files (created if missing).
        json_name: File name of the JSON history (a list of per-epoch records).
        png_name: File name of the PNG plot.

    Example:

    >>> model.fit(x, y, validation_split=0.1, epochs=5, callbacks=[TrainingCurves("runs/a")])
    """

    def __init__(self, output_dir, json_name="history.json", png_name="training_curves.png"):
        super().__init__()
        if not output_dir:
            raise ValueError("`output_dir` must be a non-empty path.")
        if not json_name.endswith(".json") or not png_name.endswith(".png"):
            raise ValueError(
                "`json_name` must end in '.json' and `png_name` in '.png'. Received: "
                f"json_name={json_name!r}, png_name={png_name!r}"
            )
        self.output_dir = os.fspath(output_dir)
        self.json_path = os.path.join(self.output_dir, json_name)
        self.png_path = os.path.join(self.output_dir, png_name)
        self.records = []
        self._first_epoch_seen = False

    def on_train_begin(self, logs=None):
        self.records = []
        self._first_epoch_seen = False
        if os.path.exists(self.json_path):
            records = _read_json(self.json_path, "the curves start again from this run")
            self.records = records if isinstance(records, list) else []

    def on_epoch_begin(self, epoch, logs=None):
        if not self._first_epoch_seen:
            # Records are 1-based; drop what a restart from 0-based `epoch` will redo.
            self.records = [r for r in self.records if r.get("epoch", 0) <= epoch]
            self._first_epoch_seen = True

    def on_epoch_end(self, epoch, logs=None):
        record = _epoch_record(self.model, epoch, logs)
        self.records = [r for r in self.records if r.get("epoch") != epoch + 1] + [record]
        write_json(self.json_path, self.records)
        atomic_write(self.png_path, self._plot, ".png")

    def _plot(self, path):
        # The object-oriented API with an explicit Agg canvas: no pyplot global state, no
        # display needed, and no interference with the user's chosen matplotlib backend.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        keys = []
        for record in self.records:
            for key in record:
                base = key[4:] if key.startswith("val_") else key
                if key != "epoch" and base not in keys:
                    keys.append(base)
        ncols = min(3, max(1, len(keys)))
        nrows = max(1, math.ceil(len(keys) / ncols))
        fig = Figure(figsize=(4.5 * ncols, 3.2 * nrows))
        FigureCanvasAgg(fig)
        for i, key in enumerate(keys):
            ax = fig.add_subplot(nrows, ncols, i + 1)
            for name, label in ((key, "train"), ("val_" + key, "val")):
                points = [(r["epoch"], r[name]) for r in self.records if name in r]
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, marker="o", markersize=3, label=label)
            ax.set_title(key)
            ax.set_xlabel("epoch")
            if key == "learning_rate":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)


class AtomicCSVLogger(keras.callbacks.CSVLogger):
    """`keras.callbacks.CSVLogger` that rewrites the whole CSV atomically after every epoch.

    One row per epoch: `epoch` (1-based, as in `history.json`), then the metrics in sorted
    order and the learning rate; a metric an epoch lacks is left empty. On a resumed run
    (`AtomicBackupAndRestore`, first epoch > 0) the rows already in the file are kept up to
    the restart point and those of the epochs redone are dropped, so no epoch appears twice;
    a run starting at epoch 0 starts a fresh file. An unreadable file is started afresh with a
    warning.

    Args:
        filename: the CSV file, e.g. `"runs/a/history.csv"`.
        separator: the field separator.

    Example:
    >>> model.fit(x, y, epochs=5, callbacks=[AtomicCSVLogger("runs/a/history.csv")])
    """

    def __init__(self, filename, separator=","):
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"`separator` must be one character, got {separator!r}.")
        super().__init__(os.fspath(filename), separator=separator, append=True)
        if not self.filename:
            raise ValueError("`filename` must be a non-empty path.")
        self.rows = []
        self._first_epoch_seen = False

    def on_train_begin(self, logs=None):
        self.rows = self._read_rows() if os.path.exists(self.filename) else []
        self._first_epoch_seen = False

    def on_epoch_begin(self, epoch, logs=None):
        if not self._first_epoch_seen:
            # Rows are 1-based; drop what a restart from 0-based `epoch` will redo.
            self.rows = [row for row in self.rows if row["epoch"] <= epoch]
            self._first_epoch_seen = True

    def on_epoch_end(self, epoch, logs=None):
        record = _epoch_record(self.model, epoch, logs)
        self.rows = [row for row in self.rows if row["epoch"] != epoch + 1] + [record]
        atomic_write(self.filename, self._write, ".csv")

    def on_train_end(self, logs=None):
        pass  # every epoch wrote the whole file: nothing is left open

    def _columns(self):
        keys = {key for row in self.rows for key in row if key != "epoch"}
        return ["epoch"] + sorted(keys)

    def _write(self, path):
        text = io.StringIO()
        writer = csv.DictWriter(
            text, fieldnames=self._columns(), delimiter=self.sep, lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(self.rows)
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text.getvalue())

    def _read_rows(self):
        """The rows of the existing file as records, or `[]` with a warning."""
        try:
            with open(self.filename, encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f, delimiter=self.sep))
            records = []
            for row in rows:
                record = {"epoch": int(row["epoch"])}
                record.update(
                    (key, float(value))
                    for key, value in row.items()
                    if key not in ("epoch", None) and value not in ("", None)
                )
                records.append(record)
            return records
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning(
                "%s cannot be read (%s); the CSV starts again from this run.", self.filename, error
            )
            return []


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; nothing of the diverged epoch was saved."""


def raise_if_diverged(history, output_dir=None):
    """Raises `TrainingDiverged` when an epoch of `history` (a `fit` History) ended with a
    non-finite loss, naming the epoch and what was kept; otherwise returns `history`.

    `TerminateOnNaN` stops `fit` at the first non-finite batch, but `fit` still returns
    normally: a caller that saved the model then would save NaN weights.

    Example:
    >>> history = raise_if_diverged(model.fit(...), "runs/a")
    """
    losses = history.history.get("loss", [])
    for index, loss in enumerate(losses):
        if not math.isfinite(loss):
            epoch = history.epoch[index] + 1 if history.epoch else index + 1
            kept = ""
            if output_dir is not None:
                kept = (
                    f" {os.path.join(output_dir, 'checkpoints', 'last.keras')} and the resume "
                    f"state in {os.path.join(output_dir, 'backup')} hold epoch {epoch - 1} (if "
                    "any): rerun to resume from there, with a lower learning rate."
                )
            raise TrainingDiverged(
                f"Training diverged: the loss was {loss} in epoch {epoch}; nothing of that "
                f"epoch was saved.{kept}"
            )
    return history


def save_model(model, path):
    """Saves `model` as a `.keras` file atomically; refuses a model with NaN/inf weights.

    Example:
    >>> save_model(model, "runs/a/model.keras")
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"The model path must end in '.keras'; got {path!r}.")
    for variable in model.weights:
        if not np.all(np.isfinite(keras.ops.convert_to_numpy(variable))):
            raise TrainingDiverged(
                f"Not saving {path!r}: weight {variable.path} holds NaN or infinite values."
            )
    atomic_write(path, lambda tmp: model.save(tmp), ".keras")
    return path


def _tensorflow_available():
    return importlib.util.find_spec("tensorflow") is not None


def standard_callbacks(
    output_dir,
    monitor="val_loss",
    mode="auto",
    save_best=True,
    save_weights_only=False,
    backup=True,
    tensorboard=True,
    curves=True,
    verbose=0,
    csv_log=True,
):
    """The callback set for a resumable training run under `output_dir`.

    Returns, in order: `TerminateOnNaN`, `AtomicModelCheckpoint(output_dir/checkpoints)`,
    `TrainingCurves(output_dir)` (`curves`), `AtomicCSVLogger(output_dir/history.csv)`
    (`csv_log`), `TensorBoard(output_dir/logs)` (`tensorboard`) and last
    `AtomicBackupAndRestore(output_dir/backup)`, which restores weights, optimizer state and
    the epoch when `fit` is rerun after a crash or a kill (falling back on
    `checkpoints/last.keras` when that state is unreadable). The resume state is written last
    in each epoch: a run killed before it redoes the epoch, rewriting everything else.
    Temporary files a killed run left in `output_dir` are removed first.
    TensorBoard needs the `tensorflow` and `tensorboard` packages (on any Keras backend): it is
    left out where TensorFlow is not installed (a PyTorch or JAX install), and skipped with a
    logged warning where only `tensorboard` is missing.

    Example:

    >>> callbacks = standard_callbacks("runs/hrvit_b1_ade", monitor="val_loss")
    >>> model.fit(train_ds, validation_data=val_ds, epochs=100, callbacks=callbacks)
    """
    if not output_dir:
        raise ValueError("`output_dir` must be a non-empty path.")
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    for path in remove_stale_temporaries(output_dir):
        logger.warning("Removed %s, left by a run killed while writing it.", path)
    out = [keras.callbacks.TerminateOnNaN()]
    out.append(
        AtomicModelCheckpoint(
            os.path.join(output_dir, "checkpoints"),
            monitor=monitor,
            mode=mode,
            save_best=save_best,
            save_weights_only=save_weights_only,
            verbose=verbose,
        )
    )
    if curves:
        out.append(TrainingCurves(output_dir))
    if csv_log:
        out.append(AtomicCSVLogger(os.path.join(output_dir, "history.csv")))
    # Keras's TensorBoard callback writes through TensorFlow; without it there is nothing to
    # warn about on a PyTorch or JAX install.
    if tensorboard and _tensorflow_available():
        if importlib.util.find_spec("tensorboard") is None:
            logger.warning(
                "Skipping the TensorBoard callback: it needs tensorboard, which is not installed."
            )
        else:
            out.append(keras.callbacks.TensorBoard(os.path.join(output_dir, "logs")))
    if backup:
        checkpoint = "last.weights.h5" if save_weights_only else "last.keras"
        out.append(
            AtomicBackupAndRestore(
                os.path.join(output_dir, "backup"),
                fallback=os.path.join(output_dir, "checkpoints", checkpoint),
            )
        )
    return out


__all__ = [
    "AtomicCSVLogger",
    "AtomicModelCheckpoint",
    "TrainingCurves",
    "TrainingDiverged",
    "raise_if_diverged",
    "save_model",
    "standard_callbacks",
]
