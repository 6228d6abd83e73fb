"""Every named configuration and recipe of the package, as plain data (no imports).

Backbone presets give the arguments of `HRViTBackbone`; segmenter presets name a backbone preset
plus the head's arguments and the paper's drop path rate for that dataset; the recipes are what
`compile()` sets up by default (HRVIT_SPEC.md, "Training recipes from the paper").
"""

# ImageNet statistics on 0-255 pixels, as in the original training code. The models normalize
# inside their graph (`include_preprocessing`), so data pipelines hand them raw pixels.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
# Pixels with this label take no part in the loss or the metrics.
IGNORE_LABEL = 255

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

# Default widths of the HRNetV2 classification head, one per branch.
CLASSIFIER_HEAD_CHANNELS = (32, 64, 128, 256)
TINY_CLASSIFIER_HEAD_CHANNELS = (8, 16, 32, 64)

# The paper's fine-tuning recipe for ADE20K and Cityscapes (MMSegmentation): AdamW with weight
# decay 0.01 but none on the LayerNorms ("layer_norms": the released configs exempt parameter
# names containing "norm", HRViT's LayerNorms; its BatchNorms and all biases decay; it has no
# position embeddings), the heads at 10x the learning rate, linear warm-up then poly decay over
# 160k iterations. It fine-tunes an ImageNet-pretrained backbone.
SEGMENTATION_PAPER_RECIPE = {
    "learning_rate": 6e-5,
    "weight_decay": 0.01,
    "decay_exempt": "layer_norms",
    "beta_1": 0.9,
    "beta_2": 0.999,
    "head_lr_mult": 10.0,
    "total_steps": 160_000,
    "warmup_steps": 1500,
    "warmup_ratio": 1e-6,
    "power": 1.0,
    "clipnorm": None,
}

# The from-scratch recipe (no published HRViT weights exist to fine-tune): plain AdamW at a
# constant 2e-3 with weight decay 0.01 on every variable, the heads at the backbone's rate. It is
# what training from random weights learned best with in benchmarks/from_scratch.py's study
# (benchmarks/README.md, "Training from scratch against the peer", which has each change's effect).
SEGMENTATION_SCRATCH_RECIPE = {
    **SEGMENTATION_PAPER_RECIPE,
    "learning_rate": 2e-3,
    "decay_exempt": "none",
    "head_lr_mult": 1.0,
    "warmup_steps": 0,
    "power": 0.0,  # a constant rate (WarmupPolyDecay with power 0)
}

# The segmenter's named recipes: `HRViTSegmenter.compile(recipe=...)`, "scratch" by default.
SEGMENTATION_RECIPES = {"scratch": SEGMENTATION_SCRATCH_RECIPE, "paper": SEGMENTATION_PAPER_RECIPE}

# The paper's ImageNet recipe (DeiT's, through timm): AdamW at 1e-3 for a batch of 1024 (scaled
# linearly with the batch size), no decay on norms and biases (timm's rule: every variable with
# ndim <= 1), cosine decay over 300 epochs with 20 warm-up epochs, gradient clipping 1.0, label
# smoothing 0.1 (of class-id labels: the package's pipelines smooth and mix their soft labels
# themselves).
CLASSIFICATION_RECIPE = {
    "learning_rate": 1e-3,
    "reference_batch_size": 1024,
    "weight_decay": 0.05,
    "decay_exempt": "norms_and_biases",
    "epochs": 300,
    "steps_per_epoch": 1251,  # ImageNet-1k's 1,281,167 images at batch 1024
    "warmup_fraction": 20 / 300,
    "warmup_start_lr": 1e-6,
    "min_lr": 1e-5,
    "global_clipnorm": 1.0,
    "label_smoothing": 0.1,
}
