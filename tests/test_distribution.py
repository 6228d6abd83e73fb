"""Data-parallel training (`keras_hrvit.distribution`, `--distribution data_parallel`).

The two-device runs need their devices set up before JAX or TensorFlow initializes, so they run
in subprocesses (`tests/distribution_worker.py`) on two virtual CPU devices: JAX with
`XLA_FLAGS=--xla_force_host_platform_device_count=2`, TensorFlow with two logical CPU devices.
They run on both backends whichever backend this process uses, and are marked `slow` (XLA
compiles the sharded train step for minutes; TensorFlow's eager runs under MirroredStrategy
take more than a minute). The other tests run in this process and are backend-sensitive.

How close one-device and data-parallel training come (two AdamW steps of a micro HRViT, the
same initial weights and global batch of 4), and why not closer. Measured on both backends:

- The first step's loss (the same weights, the batch split over two devices) agrees to 2e-6
  (relative): the reductions run in another order, nothing else.
- AdamW divides each gradient element by its own RMS, so after an update these last-bit
  differences show wherever a gradient element is tiny: 97% of the weights agree to 1% of their
  learning rate, but up to 0.6% of them differ by more than 0.1 learning rate and a few by two
  (the weights whose gradient is zero up to rounding, such as biases that feed a
  BatchNormalization, and elements whose first gradient is tiny). Hence the second step's loss
  agrees to about 1e-5.
- AdamW's update hardly depends on the gradients' scale, so its second moments (the gradients'
  RMS per weight) are compared as well: they agree to 2e-4, which shows that the replicas'
  gradients add up to the global batch's gradient.
"""

import json
import os
import re
import subprocess
import sys
import types
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from distribution_worker import LEARNING_RATE, MICRO_SEGMENTER, STEPS
from reference import MICRO_CONFIG, with_fast_xla_flags

import keras_hrvit
from keras_hrvit import presets
from keras_hrvit.cli import train
from keras_hrvit.distribution import (
    check_distribution,
    check_gradient_clipping,
    data_parallel_devices,
    distribution_scope,
    model_distribution,
    shardable_batches,
)
from keras_hrvit.layers.common import synchronized_batch_norm

TESTS = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(TESTS, "distribution_worker.py")
ROOT = os.path.dirname(TESTS)
HEADS = ("decode_head", "auxiliary_head")
FIRST_LOSS_RTOL = 1e-5
LOSS_RTOL = 1e-4
# Gradients whose RMS is below this fraction of the median are not compared: those of weights
# that feed a BatchNormalization are rounding noise (measured: up to 1e-5 of the median), and
# the attention behind zero-initialized gates gets its first gradient in the second step (up to
# 9e-4). All others measured above 4e-3.
NOISE_RATIO = 1e-3
GRADIENT_RMS_RTOL = 1e-3
# In units of each weight's learning rate (measured: RMS up to 0.026, 0.6% above 0.1).
WEIGHT_DIFF_RMS = 0.1
WEIGHT_DIFF_LARGE, WEIGHT_DIFF_LARGE_SHARE = 0.1, 0.02
# Moving statistics of BatchNormalization (measured up to 2.5e-5).
MOVING_STATISTICS_ATOL = 1e-4


def _worker(backend, task, tmp_path, *args, timeout=900):
    """Runs tests/distribution_worker.py on two CPU devices; returns its results and output."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, TESTS, env.get("PYTHONPATH")]))
    if backend == "jax":
        flags = env.get("XLA_FLAGS", "").split()
        flags = [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")]
        flags.append("--xla_force_host_platform_device_count=2")
        env["XLA_FLAGS"] = " ".join(with_fast_xla_flags(flags))
    output = tmp_path / f"{task}_{backend}.json"
    proc = subprocess.run(
        [sys.executable, WORKER, task, str(output), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    with open(output, encoding="utf-8") as f:
        return json.load(f), proc


# --- one device vs two ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend, task",
    [
        # Three eager runs under MirroredStrategy, 75 s of CI on a 2-core CPU: `make test-slow`.
        # CI keeps the distribution module's in-process checks below.
        pytest.param("tensorflow", "segmentation", marks=pytest.mark.slow),
        # Two XLA compilations of the train step, two to three minutes on a 2-core CPU.
        pytest.param("jax", "segmentation", marks=pytest.mark.slow),
        pytest.param("tensorflow", "classification", marks=pytest.mark.slow),
        pytest.param("jax", "classification", marks=pytest.mark.slow),
    ],
)
def test_data_parallel_training_matches_one_device(backend, task, tmp_path):
    result, _ = _worker(backend, task, tmp_path)
    assert result["backend"] == backend
    assert result["replicas"] == 2 and result["built_for"] == "data_parallel"
    # TensorFlow needs synchronized BatchNormalization; JAX normalizes over the global batch.
    assert result["synchronized_bn"] == [backend == "tensorflow"]
    assert "distribution_scope('data_parallel')" in result["unbuilt_error"]
    with np.load(tmp_path / f"{task}_{backend}.npz") as npz:
        arrays = {}
        for key in npz.files:
            kind, path = key.split("/", 1)
            arrays.setdefault(kind, {})[path] = npz[key]
    assert_equivalent(result, arrays)


def assert_equivalent(result, arrays):
    """The checks of one-device against data-parallel training (see the module docstring)."""
    single_loss, parallel_loss = result["single_loss"], result["parallel_loss"]
    assert len(single_loss) == len(parallel_loss) == STEPS
    np.testing.assert_allclose(parallel_loss[0], single_loss[0], rtol=FIRST_LOSS_RTOL)
    np.testing.assert_allclose(parallel_loss, single_loss, rtol=LOSS_RTOL)

    single_rms, parallel_rms = arrays["single_gradient_rms"], arrays["parallel_gradient_rms"]
    rms = {path: float(np.sqrt(np.mean(np.square(g)))) for path, g in single_rms.items()}
    median = np.median(list(rms.values()))
    noise = {path for path, value in rms.items() if value < NOISE_RATIO * median}
    assert len(noise) < len(rms) / 4
    for path in rms.keys() - noise:
        parallel = float(np.sqrt(np.mean(np.square(parallel_rms[path]))))
        np.testing.assert_allclose(parallel, rms[path], rtol=GRADIENT_RMS_RTOL, err_msg=path)

    single, parallel = arrays["single"], arrays["parallel"]
    assert single.keys() == parallel.keys() and single_rms.keys() <= single.keys()
    steps = []
    for path in single_rms:
        learning_rate = LEARNING_RATE * (10 if path.startswith(HEADS) else 1)
        steps.append(np.abs(single[path] - parallel[path]).ravel() / learning_rate)
    steps = np.concatenate(steps)
    assert np.sqrt(np.mean(np.square(steps))) <= WEIGHT_DIFF_RMS
    assert np.mean(steps > WEIGHT_DIFF_LARGE) <= WEIGHT_DIFF_LARGE_SHARE
    # Each run moves a weight by about one learning rate per step at most.
    assert steps.max() <= 2 * STEPS
    for path in single.keys() - single_rms.keys():
        np.testing.assert_allclose(
            parallel[path], single[path], atol=MOVING_STATISTICS_ATOL, err_msg=path
        )


# --- the command line ----------------------------------------------------------------------------


def _cli_argv(output_dir, extra=()):
    return [
        "segmentation",
        "--dataset", "shapes",
        "--image-size", "32",
        "--train-images", "8",
        "--val-images", "5",  # batches of 2, 2 and 1: JAX cannot split the last one
        "--model", "test_micro_shapes",
        "--batch-size", "2",
        "--epochs", "1",
        "--steps-per-epoch", "1",
        "--lr", "1e-3",
        "--warmup-steps", "0",
        "--no-tensorboard",
        "--verbose", "0",
        "--distribution", "data_parallel",
        "--output-dir", str(output_dir),
        *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "backend, validation",
    [
        # The CLI's wiring only: the one-device equality above checks the training itself.
        pytest.param("tensorflow", False, marks=pytest.mark.slow),
        pytest.param("tensorflow", True, marks=pytest.mark.slow),
        # XLA compiles the sharded train step for about a minute on a 2-core CPU.
        pytest.param("jax", True, marks=pytest.mark.slow),
    ],
)
def test_cli_trains_data_parallel(backend, validation, tmp_path):
    # TensorFlow traces the train step for a minute or more, so it runs eagerly here (as in the
    # other training tests; MirroredStrategy supports it); JAX compiles it.
    extra = ["--run-eagerly"] if backend == "tensorflow" else []
    if not validation:
        extra.append("--no-validation")
    run = tmp_path / "run"
    result, proc = _worker(backend, "cli", tmp_path, *_cli_argv(run, extra))
    assert result["exit_code"] == 0, proc.stderr[-5000:]
    with open(run / "train_args.json", encoding="utf-8") as f:
        settings = json.load(f)
    assert settings["distribution"] == "data_parallel" and settings["backend"] == backend
    with open(run / "history.json", encoding="utf-8") as f:
        records = json.load(f)
    assert len(records) == 1 and np.isfinite(records[0]["loss"])
    if validation:
        assert 0.0 <= records[0]["val_mean_iou"] <= 1.0
        if backend == "jax":
            assert "skips its batches whose size is not a multiple of the 2 devices" in proc.stderr
    # The model saved after data-parallel training loads anywhere, with plain BatchNorm.
    model = keras.saving.load_model(run / "model.keras", compile=False)
    assert model.num_classes == 5
    norms = [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert norms and not any(layer.synchronized for layer in norms)


# --- errors --------------------------------------------------------------------------------------


def _one_device():
    if keras.backend.backend() == "torch":
        return True
    return len(data_parallel_devices()) < 2


def _expected_errors():
    """What the error for `data_parallel` says here: why, and how to get a working setup."""
    backend = keras.backend.backend()
    if backend == "torch":
        return ["supported on the JAX and TensorFlow backends", "KERAS_BACKEND=jax"]
    hint = {
        "jax": "XLA_FLAGS=--xla_force_host_platform_device_count=2",
        "tensorflow": "tf.config.set_logical_device_configuration",
    }[backend]
    name = {"jax": "JAX", "tensorflow": "TensorFlow"}[backend]
    return [f"needs at least 2 devices, but {name} sees 1", hint]


@pytest.mark.backend
@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_cli_data_parallel_errors_on_torch_or_one_device(task, tmp_path, monkeypatch, capsys):
    if not _one_device():
        pytest.skip("more than one device is visible")
    monkeypatch.setitem(presets.BACKBONE_PRESETS, "test_micro", dict(MICRO_CONFIG))
    monkeypatch.setitem(presets.SEGMENTER_PRESETS, "test_micro_shapes", MICRO_SEGMENTER)
    if task == "segmentation":
        argv = _cli_argv(tmp_path)
    else:
        argv = ["classification", "--model", "hrvit_tiny", "--epochs", "1"]
        argv += ["--distribution", "data_parallel", "--output-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_:
        train.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--distribution data_parallel" in err
    for text in _expected_errors():
        assert text in err
    assert not os.path.exists(tmp_path / "train_args.json")  # stopped before any work


@pytest.mark.backend
def test_python_api_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown distribution 'model_parallel'"):
        check_distribution("model_parallel")
    assert check_distribution(None) == check_distribution("none") == "none"
    with distribution_scope("none") as scope:
        assert scope is None
    if not _one_device():
        pytest.skip("more than one device is visible")
    expected = re.escape(_expected_errors()[0])
    with pytest.raises(ValueError, match=expected):
        with distribution_scope("data_parallel"):
            pass
    from keras_hrvit.tasks.segmentation import train_segmenter

    model = keras_hrvit.HRViTSegmenter(
        keras_hrvit.HRViTBackbone(**MICRO_CONFIG), num_classes=3, head_channels=16
    )
    assert model_distribution(model) == "none"
    ds = tf.data.Dataset.from_tensors((np.zeros((2, 32, 32, 3), "float32"), np.zeros((2, 32, 32))))
    with pytest.raises(ValueError, match=expected):
        train_segmenter(model, ds, output_dir=str(tmp_path), epochs=1, distribution="data_parallel")


# --- pieces --------------------------------------------------------------------------------------


@pytest.mark.backend
def test_synchronized_batch_norm_scope_is_not_saved(tmp_path):
    backbone = keras_hrvit.HRViTBackbone(**MICRO_CONFIG, name="micro")
    with synchronized_batch_norm():
        synced = keras_hrvit.HRViTSegmenter(backbone, num_classes=3, head_channels=16)
    assert synced.decode_head.fusion_bn.synchronized == (keras.backend.backend() == "tensorflow")
    # The backbone was built outside the scope.
    assert not backbone.get_layer("stem").bn1.synchronized
    path = tmp_path / "synced.keras"
    synced.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert not loaded.decode_head.fusion_bn.synchronized
    assert "synchronized" not in json.dumps(loaded.get_config())
    for a, b in zip(synced.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def _batches(sizes, static):
    ds = tf.data.Dataset.from_tensor_slices(np.arange(sum(sizes), dtype="float32")[:, None])
    if static:
        return ds.batch(sizes[0], drop_remainder=True)
    return ds.batch(sizes[0])


@pytest.mark.backend
def test_shardable_batches():
    two = types.SimpleNamespace(num_model_replicas=2)
    even = _batches([4, 4], static=True)
    assert shardable_batches(even, None) is even
    if keras.backend.backend() != "jax":
        # TensorFlow's MirroredStrategy splits any batch.
        assert shardable_batches(_batches([3, 3], static=True), two) is not None
        return
    assert shardable_batches(even, two) is even
    with pytest.raises(ValueError, match="batches of 3, which data-parallel training on JAX"):
        shardable_batches(_batches([3, 3], static=True), two, "train_ds")
    with pytest.warns(UserWarning, match="skips its batches whose size is not a multiple"):
        filtered = shardable_batches(_batches([2, 2, 1], static=False), two, "val_ds")
    assert [int(x.shape[0]) for x in filtered] == [2, 2]


@pytest.mark.backend
def test_gradient_clipping_warning_on_tensorflow_replicas():
    replicas = types.SimpleNamespace(num_replicas_in_sync=2)
    clipped = keras.optimizers.AdamW(global_clipnorm=1.0)
    tensorflow = keras.backend.backend() == "tensorflow"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert check_gradient_clipping(clipped, replicas) == tensorflow
        assert not check_gradient_clipping(keras.optimizers.AdamW(), replicas)
        assert not check_gradient_clipping(clipped, None)
    assert len(caught) == int(tensorflow)
    if tensorflow:
        assert "global_clipnorm=1.0" in str(caught[0].message)
