"""Every named configuration of the package, in one table.

Backbone presets give the arguments of `HRViTBackbone`; segmenter presets name a backbone preset
plus the head's arguments and the paper's drop path rate for that dataset.
"""

BACKBONE_PRESETS = {
    "hrvit_b1": {
        "stem_channels": 64,
        "channels": (32, 64, 128, 256),
        "blocks": ((1,), (1, 1), (1, 1, 6), (1, 1, 6), (1, 1, 6, 2), (1, 1, 2, 2)),
        "head_dim": 32,
        "window_sizes": (1, 2, 7, 7),
        "mlp_ratios": (4, 4, 4, 4),
    },
    "hrvit_b2": {
        "stem_channels": 64,
        "channels": (48, 96, 240, 384),
        "blocks": ((1,), (1, 1), (1, 1, 6), (1, 1, 6), (1, 1, 6, 2), (1, 1, 6, 2)),
        "head_dim": 24,
        "window_sizes": (1, 2, 7, 7),
        "mlp_ratios": (2, 3, 3, 3),
    },
    "hrvit_b3": {
        "stem_channels": 64,
        "channels": (64, 128, 256, 512),
        "blocks": ((1,), (1, 1), (1, 1, 6), (1, 1, 6), (1, 1, 6, 3), (1, 1, 6, 3)),
        "head_dim": 32,
        "window_sizes": (1, 2, 7, 7),
        "mlp_ratios": (2, 2, 2, 2),
    },
    # A small model for CPU demos and tests: the shapes dataset trains it from scratch.
    "hrvit_tiny": {
        "stem_channels": 16,
        "channels": (16, 32, 48, 64),
        "blocks": ((1,), (1, 1), (1, 1, 2), (1, 1, 2), (1, 1, 2, 1), (1, 1, 1, 1)),
        "head_dim": 8,
        "window_sizes": (1, 2, 7, 7),
        "mlp_ratios": (4, 3, 2, 2),
    },
}


def get_preset(table, name, kind):
    """Returns a copy of `table[name]`, or raises listing the known names."""
    if not isinstance(name, str) or name not in table:
        raise ValueError(
            f"Unknown {kind} preset {name!r}. Known presets: {', '.join(sorted(table))}."
        )
    return dict(table[name])


# Segmenters: the paper's heads and drop path rates per dataset (HRVIT_SPEC.md, "Training recipes").
SEGMENTER_PRESETS = {
    "hrvit_b1_ade20k": {
        "backbone": "hrvit_b1",
        "head": "segformer",
        "head_channels": 256,
        "num_classes": 150,
        "drop_path_rate": 0.1,
    },
    "hrvit_b2_ade20k": {
        "backbone": "hrvit_b2",
        "head": "segformer",
        "head_channels": 256,
        "num_classes": 150,
        "drop_path_rate": 0.1,
    },
    "hrvit_b3_ade20k": {
        "backbone": "hrvit_b3",
        "head": "segformer",
        "head_channels": 768,
        "num_classes": 150,
        "drop_path_rate": 0.25,
    },
    "hrvit_b1_cityscapes": {
        "backbone": "hrvit_b1",
        "head": "segformer",
        "head_channels": 256,
        "num_classes": 19,
        "drop_path_rate": 0.15,
    },
    "hrvit_b2_cityscapes": {
        "backbone": "hrvit_b2",
        "head": "segformer",
        "head_channels": 256,
        "num_classes": 19,
        "drop_path_rate": 0.15,
    },
    "hrvit_b3_cityscapes": {
        "backbone": "hrvit_b3",
        "head": "segformer",
        "head_channels": 768,
        "num_classes": 19,
        "drop_path_rate": 0.25,
    },
    "hrvit_b1_ade20k_upernet": {
        "backbone": "hrvit_b1",
        "head": "upernet",
        "head_channels": 512,
        "num_classes": 150,
        "drop_path_rate": 0.1,
        "auxiliary_head": True,
    },
    "hrvit_b2_ade20k_upernet": {
        "backbone": "hrvit_b2",
        "head": "upernet",
        "head_channels": 512,
        "num_classes": 150,
        "drop_path_rate": 0.1,
        "auxiliary_head": True,
    },
    "hrvit_tiny_shapes": {
        "backbone": "hrvit_tiny",
        "head": "segformer",
        "head_channels": 64,
        "num_classes": 5,
        "drop_path_rate": 0.0,
    },
}

# Default width of each head when `head_channels` is not given.
HEAD_CHANNELS = {"segformer": 256, "upernet": 512}
