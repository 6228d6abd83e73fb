"""Semantic segmentation: an HRViT backbone and a decode head."""

import keras
from keras import ops

from keras_hrvit.heads.segformer import SegFormerHead
from keras_hrvit.heads.upernet import FCNHead, UPerNetHead
from keras_hrvit.layers.common import resize_bilinear
from keras_hrvit.models.backbone import HRViTBackbone
from keras_hrvit.models.presets import HEAD_CHANNELS, SEGMENTER_PRESETS, get_preset
from keras_hrvit.weights.files import load_weights_into

HEADS = ("segformer", "upernet")
# MMSegmentation weighs the auxiliary FCN head's loss by 0.4.
AUXILIARY_LOSS_WEIGHT = 0.4


@keras.saving.register_keras_serializable(package="keras_hrvit")
class HRViTSegmenter(keras.Model):
    """HRViT segmenter: backbone, then a SegFormer or UperNet head.

    Calling the model gives logits at 1/4 of the input size (train with
    `keras_hrvit.losses.SegmentationCrossEntropy`, which resizes them to the labels);
    `predict` returns class maps at the input size. With `auxiliary_head=True` (UperNet) the
    model has a second output, the FCN head's logits on branch 2, for training: fit it with two
    copies of the masks and loss weights `(1, AUXILIARY_LOSS_WEIGHT)`.

    Args:
        backbone: an `HRViTBackbone` or a backbone preset name.
        num_classes: number of classes.
        head: `"segformer"` or `"upernet"`.
        head_channels: head width (default 256 for SegFormer, 512 for UperNet).
        dropout: dropout before the classifier of the head.
        auxiliary_head: add MMSegmentation's auxiliary FCN head (UperNet only).

    Example:
    >>> model = HRViTSegmenter("hrvit_b1", num_classes=19)
    >>> model.predict(np.zeros((1, 128, 160, 3)), verbose=0).shape
    (1, 128, 160)
    """

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
        if isinstance(backbone, str):
            backbone = HRViTBackbone.from_preset(backbone)
        if not isinstance(backbone, HRViTBackbone):
            raise TypeError(
                f"`backbone` must be an HRViTBackbone or a preset name, got {type(backbone)}."
            )
        if head not in HEADS:
            raise ValueError(f"Unknown head {head!r}. Known heads: {', '.join(HEADS)}.")
        if auxiliary_head and head != "upernet":
            raise ValueError("`auxiliary_head=True` needs `head='upernet'`.")
        head_channels = head_channels or HEAD_CHANNELS[head]
        inputs = keras.Input(shape=backbone.image_shape, name="images")
        features = backbone(inputs)
        head_class = SegFormerHead if head == "segformer" else UPerNetHead
        decode_head = head_class(
            num_classes, channels=head_channels, dropout=dropout, name="decode_head"
        )
        outputs = decode_head(features)
        if auxiliary_head:
            aux = FCNHead(num_classes, dropout=dropout, name="auxiliary_head")(features[2])
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

    def predict_step(self, *args):
        # JAX's trainer passes (state, data) and returns (outputs, state); the others (data).
        data = args[-1]
        images, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        result = super().predict_step(*args)
        if keras.backend.backend() == "jax":
            logits, state = result
            return self.logits_to_classes(logits, images), state
        return self.logits_to_classes(result, images)

    @staticmethod
    def logits_to_classes(logits, images):
        """Class ids at the images' size from logits at any size (the main head's)."""
        if isinstance(logits, (list, tuple)):
            logits = logits[0]
        logits = resize_bilinear(logits, ops.shape(images)[1:3])
        return ops.cast(ops.argmax(logits, axis=-1), "int32")

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "head": self.head,
            "head_channels": self.head_channels,
            "dropout": self.dropout,
            "auxiliary_head": self.auxiliary_head,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)

    @classmethod
    def from_preset(cls, preset, weights=None, **overrides):
        """Builds a preset segmenter, randomly initialized unless `weights` is given.

        Presets: `hrvit_b{1,2,3}_ade20k` (150 classes), `hrvit_b{1,2,3}_cityscapes` (19 classes),
        with SegFormer heads, and `hrvit_b{1,2}_ade20k_upernet` (UperNet with its auxiliary
        head). `num_classes`, `head`, `head_channels`, `dropout`, `auxiliary_head`,
        `drop_path_rate` and `input_shape` can be overridden. `weights`: a `.weights.h5` or
        `.keras` path, or a preset name whose file is in the preset cache
        (`keras_hrvit.weights.cache`), e.g.
        `from_preset("hrvit_b1_ade20k", weights="hrvit_b1_ade20k")`.
        """
        config = get_preset(SEGMENTER_PRESETS, preset, "segmenter")
        config.update(overrides)
        backbone_args = {"drop_path_rate": config.pop("drop_path_rate")}
        if "input_shape" in config:
            backbone_args["input_shape"] = config.pop("input_shape")
        backbone = config.pop("backbone")
        if isinstance(backbone, str):
            backbone = HRViTBackbone.from_preset(backbone, **backbone_args)
        config.setdefault("name", preset)
        model = cls(backbone, **config)
        if weights is not None:
            load_weights_into(model, weights)
        return model
