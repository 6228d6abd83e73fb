"""Weights in and out: checkpoints of the original PyTorch code, and Keras weight files."""

from keras_hrvit.weights.checkpoints import CheckpointError, read_checkpoint
from keras_hrvit.weights.files import load_weights_into
from keras_hrvit.weights.pretrained import BackboneWeightsError, load_backbone_weights
from keras_hrvit.weights.torch_loading import LoadResult, load_torch_state_dict
from keras_hrvit.weights.transfer import transfer_backbone_weights

__all__ = [
    "BackboneWeightsError",
    "CheckpointError",
    "LoadResult",
    "load_backbone_weights",
    "load_torch_state_dict",
    "load_weights_into",
    "read_checkpoint",
    "transfer_backbone_weights",
]
