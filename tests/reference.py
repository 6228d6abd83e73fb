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
