"""Weights in and out: checkpoints of the original PyTorch code, and Keras weight files."""

from keras_hrvit.weights.files import load_weights_into
from keras_hrvit.weights.torch_loading import LoadResult, load_torch_state_dict

__all__ = ["LoadResult", "load_torch_state_dict", "load_weights_into"]
