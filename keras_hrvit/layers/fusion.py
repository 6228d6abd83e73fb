"""Dense cross-resolution fusion between the branches."""

import keras
from keras import ops

from keras_hrvit.layers.common import batch_norm, gelu, register
from keras_hrvit.layers.conv import Conv2D, DepthwiseConv2D


@register
class FusionBlock(keras.layers.Layer):
    """`out[i] = GELU(sum_j path_ij(x[j]))` over all input branches `j`.

    `j == i` is the identity; a higher-resolution input (`j < i`) is downsampled by a strided
    depthwise conv, BatchNorm, 1x1 conv, BatchNorm; a lower-resolution one (`j > i`) by a 1x1
    conv, BatchNorm and nearest upsampling, cropped to the target size so that any input size
    works. An output beyond the inputs creates a new, coarser branch.

    Args:
        in_channels: channels of each input branch.
        out_channels: channels of each output branch; at least as many as the inputs, and equal
            to the inputs' channels on the branches they share.

    Example:
    >>> fusion = FusionBlock([32, 64], [32, 64, 128])
    >>> [t.shape for t in fusion([keras.ops.ones((1, 8, 8, 32)), keras.ops.ones((1, 4, 4, 64))])]
    [(1, 8, 8, 32), (1, 4, 4, 64), (1, 2, 2, 128)]
    """

    def __init__(self, in_channels, out_channels, **kwargs):
        super().__init__(**kwargs)
        self.in_channels = [int(c) for c in in_channels]
        self.out_channels = [int(c) for c in out_channels]
        if not self.in_channels or len(self.out_channels) < len(self.in_channels):
            raise ValueError(
                "FusionBlock needs at least one input and at least as many outputs as inputs; "
                f"got in_channels={in_channels}, out_channels={out_channels}."
            )
        for i, (cin, cout) in enumerate(zip(self.in_channels, self.out_channels)):
            if cin != cout:
                raise ValueError(
                    f"Branch {i} keeps its width through fusion: in_channels[{i}]={cin} but "
                    f"out_channels[{i}]={cout}."
                )
        policy = self.dtype_policy
        # paths[i][j] is the list of layers from input j to output i ([] for the identity).
        self.paths = []
        for i, cout in enumerate(self.out_channels):
            row = []
            for j in range(len(self.in_channels)):
                name = f"path_{i}_{j}"
                if j < i:
                    f = 2 ** (i - j)
                    row.append(
                        [
                            keras.layers.ZeroPadding2D(f // 2, dtype=policy),
                            DepthwiseConv2D(
                                f + 1, strides=f, use_bias=False, name=f"{name}_dw", dtype=policy
                            ),
                            batch_norm(f"{name}_dw_bn", dtype=policy),
                            Conv2D(cout, 1, name=f"{name}_conv", dtype=policy),
                            batch_norm(f"{name}_bn", dtype=policy),
                        ]
                    )
                elif j > i:
                    row.append(
                        [
                            Conv2D(cout, 1, name=f"{name}_conv", dtype=policy),
                            batch_norm(f"{name}_bn", dtype=policy),
                        ]
                    )
                else:
                    row.append([])
            self.paths.append(row)

    def build(self, input_shape):
        for row in self.paths:
            for j, path in enumerate(row):
                shape = tuple(input_shape[j])
                for layer in path:
                    layer.build(shape)
                    shape = layer.compute_output_shape(shape)

    def call(self, inputs, training=None):
        if len(inputs) != len(self.in_channels):
            raise ValueError(
                f"FusionBlock expects {len(self.in_channels)} branches, got {len(inputs)}."
            )
        outputs = []
        for i, row in enumerate(self.paths):
            target = ops.shape(inputs[i])[1:3] if i < len(inputs) else None
            total = None
            for j, path in enumerate(row):
                y = inputs[j]
                for layer in path:
                    y = layer(y, training=training) if _has_training(layer) else layer(y)
                if j > i:
                    f = 2 ** (j - i)
                    y = ops.repeat(ops.repeat(y, f, axis=1), f, axis=2)
                    y = y[:, : target[0], : target[1]]
                total = y if total is None else total + y
            outputs.append(gelu(total))
        return outputs

    def compute_output_shape(self, input_shape):
        shapes = []
        for i, cout in enumerate(self.out_channels):
            if i < len(input_shape):
                shapes.append(tuple(input_shape[i][:-1]) + (cout,))
            else:
                b, h, w = input_shape[-1][:3]
                f = 2 ** (i - len(input_shape) + 1)
                h, w = (None if n is None else -(-n // f) for n in (h, w))
                shapes.append((b, h, w, cout))
        return shapes

    def get_config(self):
        config = super().get_config()
        config.update(in_channels=self.in_channels, out_channels=self.out_channels)
        return config


def _has_training(layer):
    return isinstance(layer, keras.layers.BatchNormalization)
