"""Bilinear resize of a feature map to the size of another tensor (the input images)."""

import keras
from keras import ops

from keras_hrvit.layers.common import register, resize_to


@register
class ResizeLike(keras.layers.Layer):
    """Resizes `inputs[0]` (NHWC) bilinearly to the height and width of `inputs[1]`.

    Half-pixel centers and no antialiasing, as PyTorch's `align_corners=False` (MMSegmentation
    resizes its logits to the image this way). The segmenters end with it in float32, so their
    logits are float32 under mixed precision too.

    Example:
    >>> layer = ResizeLike()
    >>> layer([keras.ops.ones((1, 8, 8, 5)), keras.ops.ones((1, 30, 31, 3))]).shape
    (1, 30, 31, 5)
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.input_spec = [keras.layers.InputSpec(ndim=4), keras.layers.InputSpec(ndim=4)]

    def call(self, inputs):
        x, reference = inputs
        return resize_to(ops.cast(x, self.compute_dtype), reference)

    def compute_output_shape(self, input_shape):
        x_shape, reference_shape = input_shape
        return tuple(x_shape[:1]) + tuple(reference_shape[1:3]) + tuple(x_shape[3:])
