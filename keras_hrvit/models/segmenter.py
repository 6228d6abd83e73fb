"""Semantic segmentation: an HRViT backbone, a decode head, logits at the image size."""

import keras

from keras_hrvit.heads.segformer import SegFormerHead
from keras_hrvit.heads.upernet import FCNHead, UPerNetHead
from keras_hrvit.layers.resize import ResizeLike
from keras_hrvit.models.backbone import HRViTBackbone
from keras_hrvit.models.task import (
    BACKBONE_ARGUMENTS,
    HRViTTask,
    build_backbone_argument,
    check_task_kwargs,
)
from keras_hrvit.presets import (
    BACKBONE_PRESETS,
    HEAD_CHANNELS,
    IGNORE_LABEL,
    SEGMENTATION_RECIPES,
    SEGMENTER_PRESETS,
)
from keras_hrvit.validation import check_choice, check_number, check_positive_int

HEADS = ("segformer", "upernet")
HEAD_LAYERS = ("decode_head", "auxiliary_head")
# MMSegmentation weighs the auxiliary FCN head's loss by 0.4.
AUXILIARY_LOSS_WEIGHT = 0.4


@keras.saving.register_keras_serializable(package="keras_hrvit")
class HRViTSegmenter(HRViTTask):
    """HRViT segmenter: backbone, then a SegFormer or UperNet head, logits at the image size.

    Takes RGB images as people have them (`uint8` or float, 0-255; the backbone normalizes
    them). Calling the model and `predict` follow one convention, KerasHub's: per-pixel class
    logits `(batch, H, W, num_classes)` at the input's height and width (the head works at 1/4
    and its logits are resized bilinearly, as MMSegmentation does). Class maps are
    `keras.ops.argmax(logits, -1)`; `keras_hrvit.inference.predict_classes` adds sliding-window
    and multi-scale inference. With `auxiliary_head=True` (UperNet) the model has a second
    output, the auxiliary FCN head's logits, used in training only.

    `compile()` sets up one of two recipes (`SEGMENTATION_RECIPES` in `keras_hrvit.presets`):
    - `"scratch"`, the default, for random weights: AdamW at a constant 2e-3, weight decay 0.01
      on every variable. It learned best in the package's from-scratch study (benchmarks/README).
    - `"paper"`, `compile(recipe="paper")`, to fine-tune a pretrained backbone as the paper did:
      AdamW at 6e-5 with weight decay 0.01 on all but the LayerNorms (its MMSegmentation configs
      exempt the parameters named `norm`), the heads at 10x the learning rate, linear warm-up
      then poly decay. From random weights it learns far slower.
    Keywords change one value of the recipe, e.g. `compile(recipe="paper", learning_rate=1e-4)`
    or `compile(decay_exempt="norms_and_biases")`. Both use `SegmentationCrossEntropy` ignoring
    label 255 (weighted 1 and 0.4 with the auxiliary head, which trains on the same masks) and
    mean IoU. Standard Keras losses work on the logits, e.g.
    `keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)`.

    Args:
        backbone: an `HRViTBackbone` or a backbone preset name.
        num_classes: number of classes.
        head: `"segformer"` or `"upernet"`.
        head_channels: head width (default 256 for SegFormer, 512 for UperNet).
        dropout: channel dropout before the classifier of the head.
        auxiliary_head: add MMSegmentation's auxiliary FCN head (UperNet only).
        **kwargs: keras.Model's `name`, `trainable` and `dtype` (the backbone's policy, or the
            one to build a backbone preset name with); anything else is refused.

    Example:
    >>> model = HRViTSegmenter.from_preset("hrvit_tiny_shapes")
    >>> model.compile(epochs=10, steps_per_epoch=100)
    >>> model.predict(np.zeros((1, 128, 160, 3), "uint8"), verbose=0).shape
    (1, 128, 160, 5)
    """

    config_args = ("num_classes", "head", "head_channels", "dropout", "auxiliary_head")
    presets = SEGMENTER_PRESETS
    recipes = SEGMENTATION_RECIPES
    default_recipe = "scratch"

    def __init__(
        self,
        backbone,
        num_classes,
        head="segformer",
        head_channels=None,
        dropout=0.1,
        auxiliary_head=False,
        **kwargs,
    ):
        check_task_kwargs(type(self), kwargs)
        backbone = build_backbone_argument(backbone, dtype=kwargs.pop("dtype", None))
        check_positive_int("num_classes", num_classes)
        check_choice("head", head, HEADS)
        if auxiliary_head and head != "upernet":
            raise ValueError("`auxiliary_head=True` needs `head='upernet'`.")
        head_channels = head_channels or HEAD_CHANNELS[head]
        check_positive_int("head_channels", head_channels)
        check_number("dropout", dropout, 0, 1)
        inputs = keras.Input(shape=backbone.image_shape, name="images")
        features = backbone(inputs)
        head_class = SegFormerHead if head == "segformer" else UPerNetHead
        policy = backbone.dtype_policy  # the heads follow the backbone, as in KerasHub's tasks
        decode_head = head_class(
            num_classes, channels=head_channels, dropout=dropout, name="decode_head", dtype=policy
        )
        outputs = ResizeLike(dtype="float32", name="logits")([decode_head(features), inputs])
        if auxiliary_head:
            aux = FCNHead(num_classes, dropout=dropout, name="auxiliary_head", dtype=policy)
            aux = aux(features[2])
            aux = ResizeLike(dtype="float32", name="auxiliary_logits")([aux, inputs])
            outputs = [outputs, aux]
        kwargs.setdefault("name", f"{backbone.name}_segmenter")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.backbone = backbone
        self.decode_head = decode_head
        self.num_classes = num_classes
        self.head = head
        self.head_channels = head_channels
        self.dropout = dropout
        self.auxiliary_head = auxiliary_head

    @classmethod
    def _from_builtin_preset(cls, preset, **overrides):
        """Segmenter presets (`hrvit_b1_ade20k`, ...), or a backbone preset with `num_classes`;
        backbone arguments among `overrides` build the backbone."""
        if preset in SEGMENTER_PRESETS:
            config = {**SEGMENTER_PRESETS[preset], **overrides}
            if "head" in overrides and "auxiliary_head" not in overrides:
                # Switching a preset's head decides the auxiliary head afresh.
                config["auxiliary_head"] = config["head"] == "upernet"
            config.setdefault("name", preset)
        elif preset in BACKBONE_PRESETS:
            if "num_classes" not in overrides:
                raise ValueError(f"Backbone preset {preset!r} needs `num_classes`.")
            config = {"backbone": preset, "drop_path_rate": 0.1, **overrides}
            config.setdefault("auxiliary_head", config.get("head") == "upernet")
        else:
            return super()._from_builtin_preset(preset)
        backbone_args = {key: config.pop(key) for key in BACKBONE_ARGUMENTS if key in config}
        if isinstance(config["backbone"], str):
            config["backbone"] = HRViTBackbone.from_preset(config["backbone"], **backbone_args)
        else:
            given = sorted(key for key in backbone_args if key in overrides)
            if given:
                raise ValueError(
                    f"Backbone argument(s) {', '.join(given)} cannot apply: `backbone` is an "
                    "HRViTBackbone built already; build it with them instead."
                )
        return cls(**config)

    # --- training defaults --------------------------------------------------------------------

    def _default_total_steps(self, recipe):
        return recipe["total_steps"]

    def _auto_schedule(self, total_steps, settings):
        from keras_hrvit.training import WarmupPolyDecay

        learning_rate = check_number("learning_rate", settings["learning_rate"], 0, strict=True)
        warmup_steps = check_number("warmup_steps", settings["warmup_steps"], 0, integer=True)
        return WarmupPolyDecay(
            float(learning_rate),
            int(total_steps),
            warmup_steps=min(int(warmup_steps), int(total_steps)),
            warmup_ratio=settings["warmup_ratio"],
            power=settings["power"],
        )

    def _auto_optimizer(self, schedule, settings):
        from keras_hrvit.training import build_adamw
        from keras_hrvit.training.optimizers import EXCLUDE_MODES

        weight_decay = check_number("weight_decay", settings["weight_decay"], 0)
        decay_exempt = check_choice("decay_exempt", settings["decay_exempt"], EXCLUDE_MODES)
        head_lr_mult = check_number("head_lr_mult", settings["head_lr_mult"], 0, strict=True)
        clipnorm = settings["clipnorm"]
        if clipnorm is not None:
            check_number("clipnorm", clipnorm, 0, strict=True)
        heads = [name for name in HEAD_LAYERS if _has_layer(self, name)]
        return build_adamw(
            self,
            schedule,
            weight_decay=float(weight_decay),
            beta_1=settings["beta_1"],
            beta_2=settings["beta_2"],
            clipnorm=clipnorm,
            exclude_from_decay=decay_exempt,
            lr_multipliers={name: float(head_lr_mult) for name in heads}
            if head_lr_mult != 1.0
            else None,
        )

    def _auto_loss(self):
        from keras_hrvit.losses import SegmentationCrossEntropy

        losses = [SegmentationCrossEntropy(ignore_label=IGNORE_LABEL) for _ in self.outputs]
        return losses if len(losses) > 1 else losses[0]

    def _auto_loss_weights(self):
        return [1.0, AUXILIARY_LOSS_WEIGHT] if self.auxiliary_head else None

    def _auto_metrics(self):
        from keras_hrvit.metrics import SegmentationMeanIoU

        metric = SegmentationMeanIoU(self.num_classes, ignore_label=IGNORE_LABEL, name="mean_iou")
        return [[metric], []] if self.auxiliary_head else [metric]

    def _check_loss(self, loss):
        for item in loss if isinstance(loss, (list, tuple)) else [loss]:
            if _expects_probabilities(item):
                raise ValueError(
                    f"HRViTSegmenter outputs logits, but the loss {item!r} expects "
                    "probabilities: use `keras_hrvit.losses.SegmentationCrossEntropy()` (ignores "
                    "label 255) or `keras.losses.SparseCategoricalCrossentropy(from_logits=True, "
                    "ignore_class=255)`."
                )
        return loss

    def _standardize_targets(self, y):
        # One mask trains both heads, as in MMSegmentation.
        if self.auxiliary_head and not isinstance(y, (list, tuple, dict)):
            return [y, y]
        return y


def _has_layer(model, name):
    return any(layer.name == name for layer in model.layers)


_PROBABILITY_LOSSES = (
    "sparse_categorical_crossentropy",
    "categorical_crossentropy",
    "binary_crossentropy",
)


def _expects_probabilities(loss):
    if isinstance(loss, str):
        return loss in _PROBABILITY_LOSSES
    config = loss.get_config() if isinstance(loss, keras.losses.Loss) else {}
    return config.get("from_logits") is False


__all__ = ["AUXILIARY_LOSS_WEIGHT", "HEADS", "HRViTSegmenter"]
