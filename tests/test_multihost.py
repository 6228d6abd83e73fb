"""Multi-process data-parallel training on one machine, as on several hosts.

Two processes on localhost train the micro segmenter of tests/distribution_worker.py together
(`tests/multihost_worker.py worker`), each with one CPU device, the way the README tells users to
run on two hosts:

- JAX: `keras.distribution.initialize()` with `KERAS_DISTRIBUTION_JOB_ADDRESSES` (the
  coordinator, process 0), `KERAS_DISTRIBUTION_NUM_PROCESSES=2` and
  `KERAS_DISTRIBUTION_PROCESS_ID`; `distribution_scope("data_parallel")` then spans both
  processes' devices, and Keras feeds each process its half of every global batch.
- TensorFlow: `TF_CONFIG` with two workers and `tf.distribute.MultiWorkerMirroredStrategy`
  (ring all-reduce); the model is built in the strategy's scope and `distribution_scope`, so its
  BatchNormalization is synchronized across the workers.

One process on one device (`tests/multihost_worker.py single`) trains the same model from the
same initial weights on the same global batches. The final weights, losses and gradient RMS are
compared as in tests/test_distribution.py, with its tolerances (`assert_equivalent`; its module
docstring says why one-device and data-parallel training differ in the last bits, and what
AdamW makes of that). Both processes must also end with the same weights.

Measured (both backends): the losses agree to 1.3e-6, the weights to 0.014 learning rate (RMS),
BatchNormalization's moving statistics to 3e-5, the gradients' RMS to 7e-5 on JAX and 9e-4 on
TensorFlow (the stem's first BatchNormalization scale; the tolerance is 1e-3), and the two
processes' weights are identical. On TensorFlow, `fit` under `MultiWorkerMirroredStrategy`
needs the workarounds in `keras_hrvit.distribution.training_scope` (Keras issue 20585).

Every run compiles (JAX) or traces the train step, and both processes share two CPU cores, so
the module is `slow`. It runs both backends whichever backend this process uses.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from distribution_worker import STEPS
from reference import with_fast_xla_flags
from test_distribution import assert_equivalent

pytestmark = pytest.mark.slow

TESTS = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(TESTS, "multihost_worker.py")
ROOT = os.path.dirname(TESTS)
PROCESSES = 2
# Seconds for each run (measured on a busy 2-core CPU: JAX 104 s for one process, 235 s for
# the pair; TensorFlow 21 s and 143 s).
TIMEOUT = 900
# Both processes apply the same all-reduced gradients to the same weights.
PROCESS_WEIGHTS_ATOL = 1e-6


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, TESTS, env.get("PYTHONPATH")]))
    for name in list(env):
        if name.startswith("KERAS_DISTRIBUTION_") or name == "TF_CONFIG":
            del env[name]
    # One CPU device per process; XLA on one thread and compiling fast (as in `make test`).
    flags = [
        f
        for f in env.get("XLA_FLAGS", "").split()
        if not f.startswith(("--xla_force_host_platform_device_count", "--xla_cpu_multi_thread"))
    ]
    flags.append("--xla_cpu_multi_thread_eigen=false")
    env["XLA_FLAGS"] = " ".join(with_fast_xla_flags(flags))
    return env


def _cluster_env(backend, index, ports):
    """The environment a user sets on host `index` of the cluster (see the README)."""
    if backend == "jax":
        return {
            "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{ports[0]}",
            "KERAS_DISTRIBUTION_NUM_PROCESSES": str(len(ports)),
            "KERAS_DISTRIBUTION_PROCESS_ID": str(index),
        }
    config = {
        "cluster": {"worker": [f"localhost:{port}" for port in ports]},
        "task": {"type": "worker", "index": index},
    }
    return {"TF_CONFIG": json.dumps(config)}


def _run(commands, tmp_path, timeout=TIMEOUT):
    """Runs the processes together; fails (after stopping the others) as soon as one fails.

    A process whose peer died would wait for it in a collective until the timeout, so they are
    watched together, and all are killed on the first failure or at `timeout`.
    """
    procs, logs = [], []
    try:
        for name, args, env in commands:
            log = open(tmp_path / f"{name}.log", "w+", encoding="utf-8")
            logs.append((name, log))
            procs.append(
                subprocess.Popen(
                    [sys.executable, WORKER, *args],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                )
            )
        deadline = time.monotonic() + timeout
        failed = None
        while failed is None and any(p.poll() is None for p in procs):
            failed = next((i for i, p in enumerate(procs) if p.poll()), None)
            if time.monotonic() > deadline:
                failed = "timeout"
                break
            time.sleep(0.5)
        if failed is None:
            failed = next((i for i, p in enumerate(procs) if p.returncode), None)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    output = []
    for name, log in logs:
        log.seek(0)
        output.append(f"--- {name} ---\n{log.read()[-6000:]}")
        log.close()
    assert failed is None, f"failed: {failed}\n" + "\n".join(output)


def _load(path):
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    arrays = {}
    with np.load(os.path.splitext(path)[0] + ".npz") as npz:
        for key in npz.files:
            kind, name = key.split("/", 1)
            arrays.setdefault(kind, {})[name] = npz[key]
    return result, arrays


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_two_processes_train_like_one(backend, tmp_path):
    env = _env(backend)
    initial = str(tmp_path / "initial.npz")
    start = time.monotonic()
    _run([("single", ["single", str(tmp_path / "single.json"), initial], env)], tmp_path)
    single_seconds = time.monotonic() - start

    ports = [_free_port() for _ in range(PROCESSES)]
    start = time.monotonic()
    _run(
        [
            (
                f"worker{i}",
                ["worker", str(tmp_path / f"worker{i}.json"), initial],
                dict(env, **_cluster_env(backend, i, ports)),
            )
            for i in range(PROCESSES)
        ],
        tmp_path,
    )
    workers_seconds = time.monotonic() - start
    print(f"{backend}: one process {single_seconds:.0f} s, two {workers_seconds:.0f} s")

    single, single_arrays = _load(tmp_path / "single.json")
    workers = [_load(tmp_path / f"worker{i}.json") for i in range(PROCESSES)]
    for i, (result, _) in enumerate(workers):
        assert result["backend"] == backend
        assert result["process_index"] == i and result["process_count"] == PROCESSES
        # One device per process: the replicas are the processes.
        assert result["local_devices"] == 1 and result["devices"] == PROCESSES
        assert result["replicas"] == PROCESSES and result["built_for"] == "data_parallel"
        assert result["synchronized_bn"] == [backend == "tensorflow"]
        assert len(result["loss"]) == STEPS
    # The processes log the same (global) losses and end with the same weights.
    (first, first_arrays), (second, second_arrays) = workers
    np.testing.assert_allclose(second["loss"], first["loss"], rtol=1e-6)
    for kind in ("weights", "gradient_rms"):
        assert first_arrays[kind].keys() == second_arrays[kind].keys()
        for path, value in first_arrays[kind].items():
            np.testing.assert_allclose(
                second_arrays[kind][path], value, atol=PROCESS_WEIGHTS_ATOL, err_msg=path
            )

    result = {"single_loss": single["loss"], "parallel_loss": first["loss"]}
    arrays = {
        "single": single_arrays["weights"],
        "parallel": first_arrays["weights"],
        "single_gradient_rms": single_arrays["gradient_rms"],
        "parallel_gradient_rms": first_arrays["gradient_rms"],
    }
    assert_equivalent(result, arrays)
