"""A short segmentation run that kills itself at a chosen point (see tests/test_kill_resume.py).

    python tests/kill_worker.py KILL_AT OUTPUT_DIR

KILL_AT:
    none: run to the end.
    step:E:B: SIGKILL after batch B of epoch E (both 1-based), mid-epoch.
    backup:N: in the N-th save of the resume state: the weights file is half written, then
        SIGKILL (as a kill while h5py writes it).
    checkpoint:N: the same in the N-th save of `checkpoints/last.keras`.

The run is `python -m keras_hrvit.train segmentation` on the micro HRViT (tests/reference.py),
3 epochs of 2 steps, without validation or TensorBoard.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
from reference import MICRO_CONFIG, MICRO_SEGMENTER, segmentation_argv  # noqa: E402

from keras_hrvit import presets  # noqa: E402
from keras_hrvit.cli import train  # noqa: E402
from keras_hrvit.tasks import segmentation as seg  # noqa: E402

EPOCHS = 3
STEPS = 2


def _kill():
    os.kill(os.getpid(), signal.SIGKILL)


class KillAtStep(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch + 1) == self.at:
            _kill()


def _kill_in_write(method, marker, count):
    """Wraps `keras.Model.<method>`: its `count`-th call on a path containing `marker` writes
    the file, cuts it in half, and kills the process."""
    original = getattr(keras.Model, method)
    calls = []

    def write(self, filepath, *args, **kwargs):
        original(self, filepath, *args, **kwargs)
        if marker in os.fspath(filepath):
            calls.append(filepath)
            if len(calls) == count:
                with open(filepath, "r+b") as f:
                    f.truncate(os.path.getsize(filepath) // 2)
                _kill()

    setattr(keras.Model, method, write)


def main(kill_at, output_dir):
    presets.BACKBONE_PRESETS["test_micro"] = dict(MICRO_CONFIG)
    presets.SEGMENTER_PRESETS["test_micro_shapes"] = MICRO_SEGMENTER
    kind, *numbers = kill_at.split(":")
    numbers = [int(n) for n in numbers]
    if kind == "step":
        standard = seg._run_callbacks
        seg._run_callbacks = lambda *a: standard(*a) + [KillAtStep(*numbers)]
    elif kind == "backup":
        _kill_in_write("save_weights", os.path.join(output_dir, "backup"), *numbers)
    elif kind == "checkpoint":
        # `last.keras` is written as `.last.tmp-*.keras` (keras_hrvit.files.atomic_write).
        _kill_in_write("save", os.path.join(output_dir, "checkpoints", ".last"), *numbers)
    argv = segmentation_argv(output_dir, epochs=EPOCHS, steps=STEPS)
    argv += ["--no-validation", "--no-tensorboard"]
    return train.main(argv)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
