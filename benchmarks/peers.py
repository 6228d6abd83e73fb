"""KerasHub's SegFormer on a Mix Transformer (MiT), the peer both benchmarks measure against.

`bench.py` uses MiT-B1 as SegFormer publishes it; `from_scratch.py` a MiT of `hrvit_tiny`'s
widths. Both need keras-hub (`pip install -e ".[bench]"`).
"""

# SegFormer's MiT-B1: widths 64/128/320/512, heads 1/2/5/8, depths 2/2/2/2.
MIT_B1 = {"hidden_dims": (64, 128, 320, 512), "num_heads": (1, 2, 5, 8)}
# `hrvit_tiny`'s widths with MiT's head size of about 16 channels.
MIT_TINY = {"hidden_dims": (16, 32, 48, 64), "num_heads": (1, 2, 3, 4)}


def mit_backbone(hidden_dims, num_heads, image_shape, drop_path_rate=0.0):
    """A four-stage MiT with SegFormer's depths, patch sizes, strides and reduction ratios."""
    import keras_hub

    return keras_hub.models.MiTBackbone(
        layerwise_depths=[2, 2, 2, 2],
        num_layers=4,
        layerwise_num_heads=list(num_heads),
        layerwise_sr_ratios=[8, 4, 2, 1],
        max_drop_path_rate=drop_path_rate,
        layerwise_patch_sizes=[7, 3, 3, 3],
        layerwise_strides=[4, 2, 2, 2],
        hidden_dims=list(hidden_dims),
        image_shape=image_shape,
    )


def segformer_backbone(mit, projection_filters):
    """SegFormer's all-MLP decoder on `mit` (without its classifier)."""
    import keras_hub

    return keras_hub.models.SegFormerBackbone(
        image_encoder=mit, projection_filters=projection_filters
    )
