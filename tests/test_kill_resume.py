"""A training run killed with SIGKILL, then rerun, ends as the uninterrupted run does.

Each case runs `tests/kill_worker.py` in a subprocess that kills itself mid-step, or in the
middle of writing the resume state or a checkpoint (the file half written), then reruns the
same command: the run must resume, finish with the same epochs and learning rates, and leave
no file that cannot be read. On PyTorch, the kill mid-write of the resume state (the case Keras's
own `BackupAndRestore` fails) runs in CI and the other two are marked slow (a minute and a half
of CI); on TensorFlow and JAX all are slow (compiling the train step in every new process costs
them about a minute a run).
"""

import json
import os
import signal
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest

import keras_hrvit  # noqa: F401  (registers the classes the saved models name)

pytestmark = [pytest.mark.backend] + (
    [] if keras.backend.backend() == "torch" else [pytest.mark.slow]
)

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kill_worker.py")
KILLS = [
    pytest.param("step:2:1", marks=pytest.mark.slow),
    "backup:2",
    pytest.param("checkpoint:2", marks=pytest.mark.slow),
]


def _run(kill_at, output_dir):
    return subprocess.run(
        [sys.executable, WORKER, kill_at, str(output_dir)],
        capture_output=True,
        text=True,
        env=dict(os.environ, KERAS_BACKEND=keras.backend.backend()),
        timeout=900,
    )


def _history(output_dir):
    with open(os.path.join(output_dir, "history.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("whole")
    run = _run("none", output_dir)
    assert run.returncode == 0, run.stderr[-3000:]
    return _history(output_dir)


def _check_readable(output_dir):
    for path in output_dir.rglob("*"):
        assert ".tmp-" not in path.name, f"a temporary file was left: {path}"
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.name.endswith(".keras"):
            keras.saving.load_model(path, compile=False)
        elif path.suffix == ".h5":
            h5py.File(path, "r").close()


@pytest.mark.parametrize("kill_at", KILLS)
def test_a_killed_run_resumes_to_the_same_end(kill_at, uninterrupted, tmp_path):
    output_dir = tmp_path / "run"
    killed = _run(kill_at, output_dir)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    rerun = _run("none", output_dir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Resuming the interrupted run" in rerun.stdout
    history = _history(output_dir)
    assert [r["epoch"] for r in history] == [r["epoch"] for r in uninterrupted] == [1, 2, 3]
    np.testing.assert_allclose(
        [r["learning_rate"] for r in history],
        [r["learning_rate"] for r in uninterrupted],
        rtol=1e-6,
    )
    assert not (output_dir / "backup").exists() and not (output_dir / ".lock").exists()
    _check_readable(output_dir)
