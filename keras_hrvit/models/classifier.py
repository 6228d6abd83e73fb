"""ImageNet-style classifiers, in the manner of `keras.applications`."""

import os

import keras

from keras_hrvit.heads.classification import HRNetClassifierHead
from keras_hrvit.models.backbone import HRViTBackbone
from keras_hrvit.weights.cache import is_preset_name, preset_names
from keras_hrvit.weights.files import load_weights_into


def HRViTClassifier(
    backbone,
    include_top=True,
    weights=None,
    input_shape=None,
    classes=1000,
    classifier_activation="softmax",
    pooling=None,
    head_channels=(32, 64, 128, 256),
    dropout=0.1,
    drop_path_rate=0.1,
    name=None,
):
    """Builds an HRViT classifier (or feature extractor) on a backbone.

    Args:
        backbone: a backbone preset name (`hrvit_b1`, `hrvit_b2`, `hrvit_b3`), built with
            `input_shape` and `drop_path_rate`, or an `HRViTBackbone` instance, used as it is.
        include_top: add the HRNetV2 head, dropout and the `classes`-way dense layer. Without it
            the model is the backbone (four feature maps) or, with `pooling`, the pooled head
            features.
        weights: `None` (random initialization), the path of a `.weights.h5` or `.keras` file,
            or a preset name whose file is in the preset cache (`keras_hrvit.weights.cache`).
        input_shape: image shape, default `(None, None, 3)` (any size of at least 32).
        classes: number of classes of the top layer.
        classifier_activation: activation of the top layer (`None` for logits).
        pooling: with `include_top=False`, `"avg"` returns the 2048-d pooled head features;
            `None` returns the backbone's four maps.
        head_channels: bottleneck widths of the head, one per branch.
        dropout: dropout before the top layer.
        drop_path_rate: stochastic depth of a backbone built from a preset name.

    Example:
    >>> model = HRViTClassifier("hrvit_b1", classes=10, classifier_activation=None)
    >>> model(keras.ops.ones((1, 224, 224, 3))).shape
    (1, 10)
    """
    if include_top and pooling not in (None, "avg"):
        raise ValueError(f"With `include_top=True` the head pools by average; got {pooling=!r}.")
    if pooling not in (None, "avg"):
        raise ValueError(f"`pooling` must be None or 'avg', got {pooling!r}.")
    if include_top and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 1):
        raise ValueError(f"`classes` must be a positive integer, got {classes!r}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1), got {dropout}.")
    _check_weights_argument(weights)
    if isinstance(backbone, HRViTBackbone):
        name = name or backbone.name
    else:
        name = name or backbone
        backbone = HRViTBackbone.from_preset(
            backbone,
            drop_path_rate=drop_path_rate,
            input_shape=tuple(input_shape) if input_shape else (None, None, 3),
            name=f"{name}_backbone" if include_top or pooling else name,
        )
    if include_top or pooling:
        inputs = backbone.input
        x = HRNetClassifierHead(head_channels, name="head")(backbone.outputs)
        if include_top:
            x = keras.layers.Dropout(dropout, name="head_dropout")(x)
            x = keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
        model = keras.Model(inputs, x, name=name)
    else:
        model = backbone
    if weights is not None:
        load_weights_into(model, weights)
    return model


def _check_weights_argument(weights):
    if weights is None or is_preset_name(weights):
        return
    if not isinstance(weights, (str, os.PathLike)) or not str(weights).endswith(
        (".weights.h5", ".keras")
    ):
        raise ValueError(
            "`weights` must be None, the path of a `.weights.h5` or `.keras` file, or a preset "
            f"name ({', '.join(preset_names())}); got {weights!r}."
        )


def _variant(preset):
    def build(
        include_top=True,
        weights=None,
        input_shape=None,
        classes=1000,
        classifier_activation="softmax",
        pooling=None,
        head_channels=(32, 64, 128, 256),
        dropout=0.1,
        drop_path_rate=0.1,
        name=None,
    ):
        return HRViTClassifier(
            preset,
            include_top=include_top,
            weights=weights,
            input_shape=input_shape,
            classes=classes,
            classifier_activation=classifier_activation,
            pooling=pooling,
            head_channels=head_channels,
            dropout=dropout,
            drop_path_rate=drop_path_rate,
            name=name,
        )

    build.__name__ = preset.replace("hrvit_", "HRViT").upper().replace("HRVIT", "HRViT")
    build.__doc__ = (
        f"HRViT-{preset[-2:]} classifier (`{preset}`); arguments as `HRViTClassifier`.\n\n"
        f"Example:\n>>> model = keras_hrvit.{build.__name__}(weights=None, classes=10)\n"
    )
    return build


HRViTB1 = _variant("hrvit_b1")
HRViTB2 = _variant("hrvit_b2")
HRViTB3 = _variant("hrvit_b3")
