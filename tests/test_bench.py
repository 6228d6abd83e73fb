"""benchmarks/bench.py's bookkeeping: which configurations share a process, and the ratios."""

import argparse
import importlib.util
import os
import sys

import pytest

_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks")


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, _DIR)  # bench.py imports its neighbours (peers, original_torch)
    try:
        spec = importlib.util.spec_from_file_location("bench", os.path.join(_DIR, "bench.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(_DIR)


def _args(**overrides):
    args = dict(
        backends=["tensorflow", "jax"], models=["hrvit_b1"], tasks=["backbone"], sizes=["512"],
        modes=["default"], precisions=["float32"], measure=["inference"], remat=["off"], batch=1,
        peer=True, original=True, interleave=False, window=None,
    )  # fmt: skip
    return argparse.Namespace(**{**args, **overrides})


def _names(group):
    return [(c["process"], c["backend"], c["model"]) for c in group]


def test_each_model_runs_alone_by_default(bench):
    groups = bench._groups(_args())
    assert [_names(g) for g in groups] == [
        [("torch", "torch", "original_b1")],
        [("tensorflow", "tensorflow", "hrvit_b1")],
        [("jax", "jax", "hrvit_b1")],
        [("tensorflow", "tensorflow", "mit_b1")],
        [("jax", "jax", "mit_b1")],
    ]


def test_interleave_puts_each_backends_models_and_the_original_in_one_process(bench):
    groups = bench._groups(_args(interleave=True))
    assert [_names(g) for g in groups] == [
        [("tensorflow", "torch", "original_b1"), ("tensorflow", "tensorflow", "hrvit_b1"),
         ("tensorflow", "tensorflow", "mit_b1")],
        [("jax", "torch", "original_b1"), ("jax", "jax", "hrvit_b1"), ("jax", "jax", "mit_b1")],
    ]  # fmt: skip


def test_training_runs_segmenters_only_and_the_tiny_model_meets_its_own_peer(bench):
    args = _args(
        models=["hrvit_tiny"], tasks=["backbone", "segmenter"], measure=["train"],
        backends=["torch"],
    )  # fmt: skip
    configs = bench._configs(args)
    # No original of the tiny model exists; a train step needs the segmentation loss.
    assert [(c["model"], c["task"]) for c in configs] == [
        ("hrvit_tiny", "segmenter"),
        ("mit_tiny", "segmenter"),
    ]


def _row(process, backend, model, **figures):
    row = dict(
        process=process, backend=backend, model=model, task="segmenter", measure="train",
        interleaved=True,
        size="512x512", window="whole", mode="eager" if model.startswith("original") else "default",
        precision="float32", remat="off", batch=2,
    )  # fmt: skip
    return {**row, **figures}


def test_ratios_compare_within_a_process_when_interleaved(bench):
    rows = [
        _row("tensorflow", "torch", "original_b1", train_images_per_s=0.5),
        _row("tensorflow", "tensorflow", "hrvit_b1", train_images_per_s=1.0),
        _row("tensorflow", "tensorflow", "mit_b1", train_images_per_s=2.0),
        _row("torch", "torch", "original_b1", train_images_per_s=0.25),
        _row("jax", "jax", "hrvit_b1", train_images_per_s=0.5),
    ]
    ratios = {(r["backend"], r["against"]): r for r in bench._ratios(rows)}
    assert set(ratios) == {
        ("tensorflow", "original_b1"), ("tensorflow", "mit_b1"), ("jax", "original_b1"),
    }  # fmt: skip
    # Twice the original's images per second, in the same process; half the peer's.
    assert ratios["tensorflow", "original_b1"]["speedup"] == pytest.approx(2.0)
    assert ratios["tensorflow", "original_b1"]["same_process"]
    assert ratios["tensorflow", "mit_b1"]["speedup"] == pytest.approx(0.5)
    # JAX ran without the original in its process: the original's own process is the reference.
    assert ratios["jax", "original_b1"]["speedup"] == pytest.approx(2.0)
    assert not ratios["jax", "original_b1"]["same_process"]


def test_inference_ratio_is_their_latency_over_ours(bench):
    rows = [
        {**_row("torch", "torch", "original_b1", latency_ms=600.0), "measure": "inference"},
        {**_row("torch", "torch", "hrvit_b1", latency_ms=200.0), "measure": "inference"},
    ]
    (ratio,) = bench._ratios(rows)
    assert ratio["speedup"] == pytest.approx(3.0) and ratio["against"] == "original_b1"


def test_models_in_processes_of_one_backend_do_not_share_a_process(bench):
    rows = [
        {**_row("torch", "torch", "original_b1", latency_ms=600.0), "interleaved": False},
        {**_row("torch", "torch", "hrvit_b1", latency_ms=200.0), "interleaved": False},
    ]
    (ratio,) = bench._ratios(rows)
    assert not ratio["same_process"]
