"""The UperNet decode head and the FCN auxiliary head, as MMSegmentation's `UPerHead`/`FCNHead`."""

import keras
from keras import ops

from keras_hrvit.layers.common import batch_norm, check_positive_int, register, resize_to
from keras_hrvit.layers.conv import Conv2D


def _check_dropout(dropout):
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1), got {dropout}.")
    return dropout


def _bin_matrix(length, size, dtype):
    """`(size, length)` matrix whose row `i` averages PyTorch's adaptive bin `i` of `length`.

    Bin `i` covers `[floor(i * length / size), ceil((i + 1) * length / size))`; `length` may be a
    dynamic (symbolic) scalar, which is why the bins are built with tensor ops.
    """
    i = ops.arange(size, dtype="int32")
    start = (i * length) // size
    end = ((i + 1) * length + size - 1) // size
    pos = ops.arange(length, dtype="int32")
    inside = ops.logical_and(pos[None, :] >= start[:, None], pos[None, :] < end[:, None])
    inside = ops.cast(inside, dtype)
    return inside / ops.sum(inside, axis=1, keepdims=True)


def adaptive_average_pool(x, output_size):
    """Adaptive average pooling of NHWC `x` with PyTorch's `nn.AdaptiveAvgPool2d` bins.

    Unlike `keras.ops.adaptive_average_pool`, works when the spatial size is only known at run
    time on the TensorFlow backend. Bins may overlap when the input is not a multiple of the
    output, or smaller than it.

    Args:
        x: tensor of shape `(batch, height, width, channels)`.
        output_size: an int or a `(height, width)` pair.

    Example:
    >>> x = keras.ops.reshape(keras.ops.arange(7.0), (1, 7, 1, 1))
    >>> keras.ops.convert_to_numpy(adaptive_average_pool(x, (3, 1))).ravel().tolist()
    [1.0, 3.0, 5.0]
    """
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    check_positive_int(out_h, "output_size[0]")
    check_positive_int(out_w, "output_size[1]")
    shape = ops.shape(x)
    dtype = keras.backend.standardize_dtype(x.dtype)
    rows = _bin_matrix(shape[1], out_h, dtype)
    cols = _bin_matrix(shape[2], out_w, dtype)
    x = ops.einsum("ih,bhwc->biwc", rows, x)
    return ops.einsum("jw,biwc->bijc", cols, x)


@register
class ConvBNReLU(keras.layers.Layer):
    """Convolution without bias -> BatchNorm -> ReLU: MMCV's `ConvModule` with a BN norm.

    A `kernel_size` of 3 pads by 1 ("same" at stride 1), as the UperNet and FCN heads do.

    Example:
    >>> ConvBNReLU(8, 3)(keras.ops.ones((1, 5, 6, 4))).shape
    (1, 5, 6, 8)
    """

    def __init__(self, filters, kernel_size=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = check_positive_int(filters, "filters")
        self.kernel_size = check_positive_int(kernel_size, "kernel_size")
        if kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be odd to pad symmetrically, got {kernel_size}.")
        policy = self.dtype_policy
        self.conv = Conv2D(
            filters, kernel_size, padding="same", use_bias=False, name="conv", dtype=policy
        )
        self.bn = batch_norm("bn", dtype=policy)

    def build(self, input_shape):
        self.conv.build(tuple(input_shape))
        self.bn.build(tuple(input_shape[:-1]) + (self.filters,))

    def call(self, x, training=None):
        return ops.relu(self.bn(self.conv(x), training=training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size)
        return config


@register
class UPerNetHead(keras.layers.Layer):
    """UperNet: a pyramid pooling module on the coarsest branch, then an FPN over all branches.

    Follows MMSegmentation's `UPerHead`: PPM (adaptive average pooling to each of `pool_scales`,
    1x1 conv, bilinear resize back) and a 3x3 `bottleneck` give the top lateral; 1x1 lateral
    convs on the other branches; a top-down pathway adds each upsampled level to the one below;
    3x3 FPN convs on all laterals but the top; everything is resized to the finest branch,
    concatenated, fused by a 3x3 conv and classified after channel-wise dropout
    (`nn.Dropout2d`). Name it `decode_head` for checkpoint conversion.

    Returns logits at the finest branch's resolution (1/4 of the image for HRViT).

    Args:
        num_classes: output classes.
        channels: width of every conv of the head (512 in the paper).
        pool_scales: output sizes of the pyramid pooling module.
        dropout: channel-wise dropout rate before the classifier.
        num_inputs: number of feature maps, finest first.

    Example:
    >>> head = UPerNetHead(num_classes=7, channels=16)
    >>> shapes = [(1, 16, 16, 8), (1, 8, 8, 16), (1, 4, 4, 24), (1, 2, 2, 32)]
    >>> head([keras.ops.ones(s) for s in shapes]).shape
    (1, 16, 16, 7)
    """

    def __init__(
        self,
        num_classes,
        channels=512,
        pool_scales=(1, 2, 3, 6),
        dropout=0.1,
        num_inputs=4,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.channels = check_positive_int(channels, "channels")
        self.num_inputs = check_positive_int(num_inputs, "num_inputs")
        pool_scales = tuple(pool_scales)
        if not pool_scales:
            raise ValueError("`pool_scales` must not be empty.")
        for scale in pool_scales:
            check_positive_int(scale, "pool_scales[i]")
        self.pool_scales = pool_scales
        self.dropout = _check_dropout(dropout)
        policy = self.dtype_policy
        self.psp_modules = [
            ConvBNReLU(channels, 1, name=f"psp_{i}", dtype=policy) for i in range(len(pool_scales))
        ]
        self.bottleneck = ConvBNReLU(channels, 3, name="bottleneck", dtype=policy)
        self.lateral_convs = [
            ConvBNReLU(channels, 1, name=f"lateral_{i}", dtype=policy)
            for i in range(num_inputs - 1)
        ]
        self.fpn_convs = [
            ConvBNReLU(channels, 3, name=f"fpn_{i}", dtype=policy) for i in range(num_inputs - 1)
        ]
        self.fpn_bottleneck = ConvBNReLU(channels, 3, name="fpn_bottleneck", dtype=policy)
        self.dropout_layer = keras.layers.SpatialDropout2D(
            dropout, data_format="channels_last", dtype=policy
        )
        self.conv_seg = Conv2D(num_classes, 1, name="conv_seg", dtype=policy)

    def build(self, input_shape):
        if len(input_shape) != self.num_inputs:
            raise ValueError(
                f"UPerNetHead expects {self.num_inputs} feature maps, got {len(input_shape)}."
            )
        top = tuple(input_shape[-1])
        for layer in self.psp_modules:
            layer.build(top)
        psp_channels = top[-1] + len(self.pool_scales) * self.channels
        self.bottleneck.build(top[:-1] + (psp_channels,))
        width = (None, None, None, self.channels)
        for lateral, fpn, shape in zip(self.lateral_convs, self.fpn_convs, input_shape[:-1]):
            lateral.build(tuple(shape))
            fpn.build(width)
        self.fpn_bottleneck.build((None, None, None, self.channels * self.num_inputs))
        self.conv_seg.build(width)

    def call(self, features, training=None):
        top = features[-1]
        psp = [top] + [
            resize_to(module(adaptive_average_pool(top, scale), training=training), top)
            for scale, module in zip(self.pool_scales, self.psp_modules)
        ]
        laterals = [conv(f, training=training) for conv, f in zip(self.lateral_convs, features)]
        laterals.append(self.bottleneck(ops.concatenate(psp, axis=-1), training=training))
        # Top-down: each level receives the already-updated level above it.
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize_to(laterals[i], laterals[i - 1])
        outs = [conv(x, training=training) for conv, x in zip(self.fpn_convs, laterals)]
        outs.append(laterals[-1])
        outs = [outs[0]] + [resize_to(x, outs[0]) for x in outs[1:]]
        x = self.fpn_bottleneck(ops.concatenate(outs, axis=-1), training=training)
        return self.conv_seg(self.dropout_layer(x, training=training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (self.num_classes,)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            channels=self.channels,
            pool_scales=list(self.pool_scales),
            dropout=self.dropout,
            num_inputs=self.num_inputs,
        )
        return config


@register
class FCNHead(keras.layers.Layer):
    """The auxiliary FCN head: `num_convs` 3x3 ConvBNReLU -> channel-wise dropout -> 1x1 conv.

    MMSegmentation's `FCNHead` without `concat_input`, used on branch 2 during training (loss
    weight 0.4). Call it on a single feature map, or on the list of branches, in which case it
    takes `features[in_index]`. Name it `auxiliary_head` for checkpoint conversion.

    Args:
        num_classes: output classes.
        channels: width of the convs (256 in the paper).
        dropout: channel-wise dropout rate before the classifier.
        num_convs: number of 3x3 convs before the classifier.
        in_index: which branch to use when called on a list of feature maps.

    Example:
    >>> head = FCNHead(num_classes=7, channels=16)
    >>> head(keras.ops.ones((1, 4, 5, 24))).shape
    (1, 4, 5, 7)
    """

    def __init__(self, num_classes, channels=256, dropout=0.1, num_convs=1, in_index=2, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.channels = check_positive_int(channels, "channels")
        self.num_convs = check_positive_int(num_convs, "num_convs")
        if isinstance(in_index, bool) or not isinstance(in_index, int):
            raise ValueError(f"`in_index` must be an integer, got {in_index!r}.")
        self.in_index = in_index
        self.dropout = _check_dropout(dropout)
        policy = self.dtype_policy
        self.convs = [
            ConvBNReLU(channels, 3, name=f"conv_{i}", dtype=policy) for i in range(num_convs)
        ]
        self.dropout_layer = keras.layers.SpatialDropout2D(
            dropout, data_format="channels_last", dtype=policy
        )
        self.conv_seg = Conv2D(num_classes, 1, name="conv_seg", dtype=policy)

    def _select(self, inputs):
        return inputs[self.in_index] if isinstance(inputs, (list, tuple)) else inputs

    def build(self, input_shape):
        # A list of shapes is a list of feature maps; a single shape is a tuple of ints/None.
        if isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple)):
            input_shape = input_shape[self.in_index]
        shape = tuple(input_shape)
        if len(shape) != 4:
            raise ValueError(f"FCNHead expects NHWC feature maps, got shape {shape}.")
        for conv in self.convs:
            conv.build(shape)
            shape = shape[:-1] + (self.channels,)
        self.conv_seg.build(shape)

    def call(self, inputs, training=None):
        x = self._select(inputs)
        for conv in self.convs:
            x = conv(x, training=training)
        return self.conv_seg(self.dropout_layer(x, training=training))

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple)):
            input_shape = input_shape[self.in_index]
        return tuple(input_shape[:-1]) + (self.num_classes,)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            channels=self.channels,
            dropout=self.dropout,
            num_convs=self.num_convs,
            in_index=self.in_index,
        )
        return config
