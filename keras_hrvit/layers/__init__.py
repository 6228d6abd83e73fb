"""The building blocks of HRViT, each a serializable Keras layer."""

from keras_hrvit.layers.attention import CrossShapedAttention
from keras_hrvit.layers.batch_norm import TorchBatchNormalization
from keras_hrvit.layers.block import HRViTBlock
from keras_hrvit.layers.des import DES
from keras_hrvit.layers.drop_path import DropPath
from keras_hrvit.layers.fusion import FusionBlock
from keras_hrvit.layers.mixcfn import MixCFN
from keras_hrvit.layers.preprocessing import ImageNormalization
from keras_hrvit.layers.resize import ResizeLike
from keras_hrvit.layers.stem import ConvStem, EffPatchEmbed

__all__ = [
    "ConvStem",
    "CrossShapedAttention",
    "DES",
    "DropPath",
    "EffPatchEmbed",
    "FusionBlock",
    "HRViTBlock",
    "ImageNormalization",
    "MixCFN",
    "ResizeLike",
    "TorchBatchNormalization",
]
