"""The reference tensors of the original PyTorch code (see tests/fixtures/README.md)."""

import functools
import json
import os

import numpy as np

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "hrvit_tiny_reference.npz")
SIZES = ("224x224", "256x320")


@functools.lru_cache(maxsize=1)
def reference():
    return dict(np.load(FIXTURE))


def tiny_config():
    config = json.loads(str(reference()["config/tiny"]))
    return {
        "stem_channels": config["channels"],
        "channels": config["channel_list"][-1],
        "blocks": config["block_list"],
        "head_dim": config["dim_head"],
        "window_sizes": config["ws_list"],
        "mlp_ratios": config["mlp_ratio_list"],
    }, config


def state_dict(prefix):
    return {k[len(prefix) :]: v for k, v in reference().items() if k.startswith(prefix)}


def nhwc(array):
    return np.transpose(array, (0, 2, 3, 1))


def tiny_backbone(**overrides):
    """The fixture's configuration: small, yet every code path of the full model."""
    import keras_hrvit

    config, _ = tiny_config()
    config.update(overrides)
    config.setdefault("name", "tiny")
    return keras_hrvit.HRViTBackbone(**config)


# Four modules are the fewest that open all four branches; one transformer block per module keeps
# the training graphs small (tracing and compiling the train step dominate training tests).
MICRO_CONFIG = {
    "stem_channels": 8,
    "channels": (16, 16, 32, 32),
    "blocks": ((1,), (0, 1), (0, 0, 1), (0, 0, 0, 1)),
    "head_dim": 8,
    "window_sizes": (1, 2, 7, 7),
    "mlp_ratios": (2, 2, 2, 2),
}


def micro_backbone(**overrides):
    """The smallest backbone with every kind of layer, for training tests."""
    import keras_hrvit

    config = {**MICRO_CONFIG, **overrides}
    config.setdefault("name", "micro")
    return keras_hrvit.HRViTBackbone(**config)


def fast_compile_kwargs():
    """`model.compile` arguments under which a few training steps cost least on this backend.

    TensorFlow spends a minute or more tracing HRViT's train step into a graph, so a few steps
    run eagerly; JAX's eager mode compiles every primitive on its own, so JAX stays jitted.
    """
    import keras

    if keras.backend.backend() == "tensorflow":
        return {"run_eagerly": True, "jit_compile": False}
    return {"jit_compile": "auto"}


# Every test process runs with these (tests/conftest.py, and the processes tests start): XLA
# compiles several times faster at optimization level 0 with its older loop emitters (a micro
# HRViT's training step: 40 s, then 10 s), and tests need no speed.
FAST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")


def with_fast_xla_flags(flags):
    """`flags` (a list of XLA flags) plus each of FAST_XLA_FLAGS that it does not set."""
    names = {f.split("=")[0] for f in flags}
    return list(flags) + [f for f in FAST_XLA_FLAGS if f.split("=")[0] not in names]


def fast_compile_flags():
    """`fast_compile_kwargs` as training CLI flags."""
    return ["--run-eagerly"] if fast_compile_kwargs().get("run_eagerly") else []


# The micro HRViT as segmentation presets, for CLI runs whose cost is mostly compiling.
MICRO_SEGMENTER = {
    "backbone": "test_micro",
    "head": "segformer",
    "head_channels": 16,
    "num_classes": 5,
    "drop_path_rate": 0.0,
}


def register_micro_presets(monkeypatch):
    """Registers `test_micro` (backbone) and `test_micro_shapes` (segmenter) for one test."""
    from keras_hrvit import presets

    monkeypatch.setitem(presets.BACKBONE_PRESETS, "test_micro", dict(MICRO_CONFIG))
    monkeypatch.setitem(presets.SEGMENTER_PRESETS, "test_micro_shapes", MICRO_SEGMENTER)


def segmentation_argv(output_dir, epochs=2, steps=2, model="test_micro_shapes", extra=()):
    """`python -m keras_hrvit.train` arguments of a short micro run on the shapes set."""
    return [
        "segmentation",
        "--dataset", "shapes",
        "--image-size", "64",
        "--train-images", "8",
        "--val-images", "4",
        "--model", model,
        "--crop-size", "64",
        "--batch-size", "2",
        "--epochs", str(epochs),
        "--steps-per-epoch", str(steps),
        "--lr", "1e-3",
        "--warmup-steps", "2",
        "--verbose", "0",
        *fast_compile_flags(),
        "--output-dir", str(output_dir),
        *extra,
    ]  # fmt: skip
