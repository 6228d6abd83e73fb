"""The models' input normalization: ImageNet statistics on 0-255 RGB images."""

import keras
from keras import ops

from keras_hrvit.layers.common import register
from keras_hrvit.layers.stem import check_image_shape
from keras_hrvit.presets import IMAGENET_MEAN, IMAGENET_STD


@register
class ImageNormalization(keras.layers.Normalization):
    """`keras.layers.Normalization` with fixed per-channel statistics on 0-255 RGB images.

    Refuses images that are not RGB: a plain `Normalization` would broadcast a 1-channel
    image to 3 channels and answer silently wrong. Computes in float32 by default, so mixed
    precision starts from exact values; `uint8` input is cast.

    Args:
        mean, std: three per-channel values on 0-255 pixels (ImageNet's by default, as the
            original training code).

    Example:
    >>> images = np.broadcast_to(np.float32([123.675, 116.28, 103.53]), (1, 32, 32, 3))
    >>> float(keras.ops.max(keras.ops.abs(ImageNormalization()(images))))
    0.0
    """

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, **kwargs):
        mean = [float(m) for m in mean]
        std = [float(s) for s in std]
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(
                f"`mean` and `std` need three values (R, G, B), `std` positive; got {mean}, {std}."
            )
        for key in ("axis", "variance", "invert"):
            kwargs.pop(key, None)  # fixed by this layer; present in configs from get_config
        kwargs.setdefault("dtype", "float32")
        super().__init__(axis=-1, mean=mean, variance=[s * s for s in std], **kwargs)
        self.input_spec = keras.layers.InputSpec(ndim=4)
        self.image_mean, self.image_std = mean, std

    def build(self, input_shape):
        check_image_shape(input_shape, 3)
        super().build(input_shape)

    def call(self, inputs):
        check_image_shape(ops.shape(inputs), 3)
        return super().call(inputs)

    def get_config(self):
        config = super().get_config()
        config.update(mean=self.image_mean, std=self.image_std)
        return config
