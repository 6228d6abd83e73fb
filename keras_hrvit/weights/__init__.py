"""Weights in and out: checkpoints of the original PyTorch code, and Keras weight files."""

from keras_hrvit.weights.cache import cache_dir, preset_weights_path, resolve_preset_weights
from keras_hrvit.weights.checkpoints import CheckpointError, read_checkpoint
from keras_hrvit.weights.files import load_weights_into
from keras_hrvit.weights.torch_loading import LoadResult, load_torch_state_dict

__all__ = [
    "CheckpointError",
    "LoadResult",
    "cache_dir",
    "load_torch_state_dict",
    "load_weights_into",
    "preset_weights_path",
    "read_checkpoint",
    "resolve_preset_weights",
]
