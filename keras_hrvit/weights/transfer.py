"""Copying the HRViT backbone of one model of this package into another, layer by layer.

Example:
>>> copied = transfer_backbone_weights(pretrained_classifier, segmenter)
"""

import keras

from keras_hrvit.models.backbone import HRViTBackbone


def find_backbone(model):
    """The `HRViTBackbone` of `model` (itself, `model.backbone`, or its one nested backbone)."""
    if isinstance(model, HRViTBackbone):
        return model
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, HRViTBackbone):
        return backbone
    nested = [layer for layer in getattr(model, "layers", ()) if isinstance(layer, HRViTBackbone)]
    return nested[0] if len(nested) == 1 else None


def backbone_layers(model, role):
    """`{name: layer}` of the weighted backbone layers of `model`, in the backbone's order."""
    if not isinstance(model, keras.Model):
        raise ValueError(f"The {role} must be a keras.Model; received {type(model).__name__}.")
    backbone = find_backbone(model)
    # Without a nested backbone, the model's own layers stand for it (e.g. a functional model
    # wired on a backbone's graph): layers are matched by name anyway.
    layers = backbone.layers if backbone is not None else model.layers
    return {layer.name: layer for layer in layers if layer.weights}


def transfer_plan(source, destination, source_name):
    """`[(target layer, values)]`, or a ValueError naming the first layer that does not fit."""
    plan = []
    for name, layer in destination.items():
        src = source.get(name)
        if src is None:
            raise ValueError(
                f"Layer {name!r} of the target backbone is missing from {source_name!r}; it was "
                "not built on an HRViT backbone of the same configuration."
            )
        if type(src) is not type(layer):
            raise ValueError(
                f"Layer {name!r} is a {type(src).__name__} in {source_name!r} but a "
                f"{type(layer).__name__} in the target."
            )
        values = src.get_weights()
        if len(values) != len(layer.weights):
            raise ValueError(
                f"Layer {name!r} has {len(values)} weights in {source_name!r} but "
                f"{len(layer.weights)} in the target; the backbone configurations differ."
            )
        for value, variable in zip(values, layer.weights):
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(
                    f"Shape mismatch in layer {name!r}, weight {variable.path!r}: source "
                    f"{tuple(value.shape)} vs target {tuple(variable.shape)}; the backbone "
                    "configurations differ."
                )
        plan.append((layer, values))
    return plan


def transfer_backbone_weights(source_model, target_model):
    """Copies the backbone weights of one model into the backbone of another, layer by layer.

    Backbone layers have the same names (`stem`, `m{m}_fusion`, `m{m}_embed{i}`,
    `m{m}_branch{i}_block{b}`, `m{m}_norm{i}`) in every model of this package, so every
    weighted layer of the target's backbone is matched by name in `source_model`; all its
    weights, BatchNorm statistics included, are copied. Drop path rates may differ (they have
    no weights). Everything is checked before anything is written, so a mismatch leaves the
    target untouched.

    Args:
        source_model: an `HRViTClassifier`, `HRViTSegmenter` or `HRViTBackbone` (or a model
            holding one `HRViTBackbone`) with the pretrained weights.
        target_model: an `HRViTSegmenter`, `HRViTClassifier`, `HRViTBackbone` or a model with
            one `HRViTBackbone`.

    Returns:
        The names of the copied layers, in the target backbone's order.

    Raises:
        ValueError: naming the first target layer that is missing from `source_model`, is of
            another type, or has weights of other shapes (a different backbone configuration).

    Example:
    >>> segmenter = HRViTSegmenter("hrvit_tiny", num_classes=5)
    >>> copied = transfer_backbone_weights(pretrained_classifier, segmenter)
    """
    source = backbone_layers(source_model, "source model")
    target_backbone = find_backbone(target_model)
    if target_backbone is None:
        raise ValueError(
            "The target must be an HRViTSegmenter, an HRViTClassifier, an HRViTBackbone or a "
            "model holding exactly one HRViTBackbone; received "
            f"{type(target_model).__name__} {getattr(target_model, 'name', '')!r}."
        )
    destination = backbone_layers(target_backbone, "target")
    plan = transfer_plan(source, destination, source_model.name)
    for layer, values in plan:
        layer.set_weights(values)
    return [layer.name for layer, _ in plan]


__all__ = ["backbone_layers", "find_backbone", "transfer_backbone_weights", "transfer_plan"]
