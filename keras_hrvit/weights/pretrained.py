"""Pretrained backbone weights for fine-tuning: from any file or model that holds an HRViT backbone.

`load_backbone_weights(model, source)` fills the backbone of a segmenter, classifier or bare
backbone, leaving its head as it is, from

- a checkpoint of the original PyTorch code (`.pth`, `.pt`, `.npz`, `.safetensors`): a timm
  classification checkpoint (`head.*` names) or an MMSegmentation one (`backbone.*`,
  `decode_head.*`, `auxiliary_head.*`); only the backbone's names are loaded, every one of them
  is required, and the head names are reported as ignored;
- a `.keras` file of any model of this package holding an HRViT backbone, such as the
  `model.keras` or `checkpoints/best.keras` of `python -m keras_hrvit.train classification`;
- a `.weights.h5` file of an `HRViTBackbone`, or of a classifier or segmenter of this package
  (e.g. from `keras_hrvit.convert`), whose backbone weights are read;
- a preset folder written by `save_to_preset`, or an `hf://` / `kaggle://` handle of one.

`keras_hrvit.weights.transfer.transfer_backbone_weights(source_model, target_model)` copies the
backbone of one model of this package into another, layer by layer.

Example:
>>> segmenter = HRViTSegmenter("hrvit_b1", num_classes=150)
>>> load_backbone_weights(segmenter, "runs/in1k/model.keras")
"backbone 'hrvit_b1' <- .keras file 'runs/in1k/model.keras' (HRViTClassifier 'hrvit_b1'): ..."
"""

import os
import re

import keras
import numpy as np

from keras_hrvit.weights.checkpoints import FORMATS as CHECKPOINT_FORMATS
from keras_hrvit.weights.checkpoints import read_checkpoint
from keras_hrvit.weights.torch_loading import load_torch_state_dict, normalize_name
from keras_hrvit.weights.torch_names import torch_variable_map
from keras_hrvit.weights.transfer import backbone_layers, find_backbone, transfer_plan

# Top-level names of the original code's heads: timm's classifier, MMSegmentation's heads.
HEAD_PREFIXES = ("head", "decode_head", "auxiliary_head")
_IGNORED_SUFFIXES = ("num_batches_tracked",)

ALLOWED_SOURCES = (
    f"an original HRViT checkpoint ({', '.join(CHECKPOINT_FORMATS)}), a .keras model with an "
    "HRViT backbone (e.g. OUTPUT_DIR/model.keras of `python -m keras_hrvit.train "
    "classification`), a .weights.h5 of an HRViT backbone or model, or a preset folder / hf:// / "
    "kaggle:// handle"
)


class BackboneWeightsError(ValueError):
    """A source of backbone weights that cannot be read or does not fit the model (one line)."""


# ------------------------------------------------------------------------------------------------
# Loading from files, folders and handles
# ------------------------------------------------------------------------------------------------


def check_backbone_source(source):
    """Checks a backbone weights source without reading it; returns its kind.

    The kind is `"checkpoint"`, `"keras"`, `"weights"` or `"preset"`. Hub handles are not
    downloaded here. Used by the training CLIs to refuse a bad path before building anything.

    Raises:
        BackboneWeightsError: a source of an unknown kind.
        FileNotFoundError: a file that does not exist.

    Example:
    >>> check_backbone_source("hrvit_b1_in1k.pth")
    'checkpoint'
    """
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source:
        raise BackboneWeightsError(
            f"Backbone weights must be a path or handle, got {source!r}; allowed: "
            f"{ALLOWED_SOURCES}."
        )
    if "://" in source:
        scheme = source.split("://", 1)[0]
        if scheme not in ("hf", "kaggle"):
            raise BackboneWeightsError(
                f"Backbone weights {source!r}: unknown scheme {scheme + '://'!r}; allowed: "
                f"{ALLOWED_SOURCES}."
            )
        return "preset"
    if os.path.isdir(source):
        return "preset"
    name = source.lower()
    if name.endswith(".keras"):
        kind = "keras"
    elif name.endswith(".weights.h5"):
        kind = "weights"
    elif os.path.splitext(name)[1] in CHECKPOINT_FORMATS:
        kind = "checkpoint"
    else:
        from keras_hrvit.presets import BACKBONE_PRESETS, SEGMENTER_PRESETS

        suffix = os.path.splitext(name)[1]
        if source in BACKBONE_PRESETS or source in SEGMENTER_PRESETS:
            what = "a built-in preset name, which has no pretrained weights"
        else:
            what = f"unknown kind of file ({repr(suffix) + ' suffix' if suffix else 'no suffix'})"
        raise BackboneWeightsError(
            f"Backbone weights {source!r}: {what}; allowed: {ALLOWED_SOURCES}."
        )
    if not os.path.isfile(source):
        raise FileNotFoundError(
            f"Backbone weights {source!r}: no such file; allowed: {ALLOWED_SOURCES}."
        )
    return kind


def load_backbone_weights(model, source):
    """Loads pretrained backbone weights into `model` for fine-tuning; returns what was loaded.

    Only the backbone is written; the head keeps its weights. Every source is checked against
    the whole backbone before anything is written, so a failure leaves `model` untouched.

    Args:
        model: an `HRViTSegmenter`, `HRViTClassifier` or `HRViTBackbone` (or a model holding
            one `HRViTBackbone`).
        source: a checkpoint of the original code (`.pth`, `.pt`, `.npz`, `.safetensors`;
            classification `head.*` and MMSegmentation `decode_head.*` / `auxiliary_head.*`
            names are ignored, every backbone name is required), a `.keras` file of a model
            holding an HRViT backbone (e.g. a classifier from `python -m keras_hrvit.train
            classification`), a `.weights.h5` of an `HRViTBackbone` or of a model of this
            package with a nested backbone (only the backbone is read), a preset folder, an
            `hf://` / `kaggle://` handle, or a `keras.Model` holding an HRViT backbone.

    Returns:
        A one-line description of what was loaded.

    Raises:
        BackboneWeightsError (a ValueError): one line naming the source, what is wrong and
            what is allowed: an unknown kind of file, an unreadable file, a `.keras` file or
            preset without an HRViT backbone, or a backbone of another configuration (the first
            layer that does not fit is named).
        FileNotFoundError: a file that does not exist.
        TypeError: `model` holds no HRViT backbone.

    Example:
    >>> segmenter = HRViTSegmenter("hrvit_b1", num_classes=150)
    >>> print(load_backbone_weights(segmenter, "hrvit_b1_in1k.pth"))
    backbone 'hrvit_b1' <- original checkpoint 'hrvit_b1_in1k.pth': ... tensors; ignored ... head
    parameters (head.*)
    """
    backbone = find_backbone(model) if isinstance(model, keras.Model) else None
    if backbone is None:
        raise TypeError(
            "`model` must be an HRViTSegmenter, an HRViTClassifier, an HRViTBackbone or a model "
            f"holding one HRViTBackbone; got {type(model).__name__}."
        )
    if isinstance(source, keras.Model):
        return _from_model(backbone, source, f"model {source.name!r}", source.name)
    kind = check_backbone_source(source)
    source = os.fspath(source)
    if kind == "checkpoint":
        return _from_checkpoint(backbone, source)
    if kind == "keras":
        return _from_keras_file(backbone, source)
    if kind == "weights":
        return _from_weights_file(backbone, source)
    return _from_preset(backbone, source)


def _one_line(error):
    text = str(error).strip()
    return (text.splitlines() or [type(error).__name__])[0].rstrip(". ")[:400]


def _config_summary(backbone):
    return (
        f"stem_channels={backbone.stem_channels}, channels={list(backbone.channels)}, "
        f"blocks={[list(m) for m in backbone.blocks]}"
    )


def _mismatch(backbone, source, reason):
    return BackboneWeightsError(
        f"Backbone weights {source!r} do not fit the backbone {backbone.name!r}: backbone "
        f"configuration mismatch: {reason.rstrip('. ')}; allowed: weights of a backbone of the "
        f"same configuration ({_config_summary(backbone)})."
    )


def _describe_model(model):
    return f"{type(model).__name__} {model.name!r}"


def _from_model(backbone, source_model, label, source_name):
    if find_backbone(source_model) is None:
        raise BackboneWeightsError(
            f"Backbone weights {source_name!r}: the {label} is a {_describe_model(source_model)} "
            "without an HRViT backbone; allowed: an HRViTClassifier, HRViTSegmenter or "
            "HRViTBackbone (or a model holding one HRViTBackbone)."
        )
    source = backbone_layers(source_model, "source model")
    destination = backbone_layers(backbone, "target")
    try:
        plan = transfer_plan(source, destination, source_model.name)
    except ValueError as error:
        raise _mismatch(backbone, source_name, _one_line(error)) from None
    for layer, values in plan:
        layer.set_weights(values)
    return (
        f"backbone {backbone.name!r} <- {label} ({_describe_model(source_model)}): "
        f"{len(plan)} layers"
    )


def _from_keras_file(backbone, path):
    try:
        source_model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for broken or foreign files.
        raise BackboneWeightsError(
            f"Backbone weights {path!r}: the .keras file cannot be loaded ({_one_line(error)}); "
            f"allowed: {ALLOWED_SOURCES}."
        ) from None
    return _from_model(backbone, source_model, f".keras file {path!r}", path)


def _from_preset(backbone, handle):
    from keras_hrvit import preset_io

    try:
        folder = preset_io.resolve_preset(handle)
        if folder is None:  # resolve_preset gives None only for a name that is not a folder
            raise ValueError("not a preset folder")
        source_model = preset_io.load_preset_model(folder)
    except (ValueError, TypeError, OSError) as error:
        raise BackboneWeightsError(
            f"Backbone weights {handle!r}: the preset cannot be loaded ({_one_line(error)}); "
            f"allowed: {ALLOWED_SOURCES}."
        ) from None
    if not isinstance(source_model, keras.Model):
        raise BackboneWeightsError(
            f"Backbone weights {handle!r}: the preset holds a {type(source_model).__name__}, "
            f"not a model; allowed: {ALLOWED_SOURCES}."
        )
    return _from_model(backbone, source_model, f"preset {handle!r}", handle)


def _from_weights_file(backbone, path):
    import tempfile
    import warnings

    from keras_hrvit.weights.files import load_weights_into

    with tempfile.TemporaryDirectory() as tmp:
        backbone_file, nested = _backbone_weights_file(path, tmp)
        _check_weights_file(backbone, backbone_file, path, tmp)
        try:
            with warnings.catch_warnings():
                # Keras warns once per layer it cannot fill before it raises; the error says it.
                warnings.simplefilter("ignore")
                load_weights_into(backbone, backbone_file)
        except (ValueError, KeyError, OSError) as error:
            raise BackboneWeightsError(
                f"Backbone weights {path!r} do not fit the backbone {backbone.name!r} "
                f"({_one_line(error).replace(backbone_file, path)}); "
                f"{_WEIGHTS_FILE_ALLOWED.format(_config_summary(backbone))}."
            ) from None
    layers = sum(1 for layer in backbone.layers if layer.weights)
    kind = "backbone of the weights file" if nested else "backbone weights file"
    return f"backbone {backbone.name!r} <- {kind} {path!r}: {layers} layers"


_WEIGHTS_FILE_ALLOWED = (
    "allowed: a .weights.h5 of an HRViTBackbone, or of a classifier or segmenter of this "
    "package, with a backbone of the same configuration ({})"
)


def _backbone_weights_file(path, tmp):
    """`(file, nested)`: `path` itself for a backbone's weights file; for the weights of a model
    with a nested backbone (a classifier or segmenter, e.g. from `keras_hrvit.convert`), a file
    in `tmp` holding that backbone's group alone."""
    import h5py

    try:
        given = h5py.File(path, "r")
    except OSError as error:
        raise BackboneWeightsError(
            f"Backbone weights {path!r}: not a readable .weights.h5 file ({_one_line(error)}); "
            f"allowed: {ALLOWED_SOURCES}."
        ) from None
    with given:
        layers = given.get("layers")
        if layers is None or "conv_stem" in layers:
            return path, False
        nested = [
            key
            for key in layers
            if isinstance(layers[key], h5py.Group)
            and isinstance(layers[key].get("layers"), h5py.Group)
            and "conv_stem" in layers[key]["layers"]
        ]
        if len(nested) != 1:
            return path, False  # the check names the missing layers
        group = layers[nested[0]]
        extracted = os.path.join(tmp, "nested_backbone.weights.h5")
        with h5py.File(extracted, "w") as out:
            for key in group:
                given.copy(group[key], out, name=key)
        return extracted, True


def _snake_case(name):
    # Keras's naming of the groups of a weights file (keras.src.utils.naming.to_snake_case).
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _h5_shapes(group):
    shapes = {}

    def visit(name, item):
        if hasattr(item, "shape") and hasattr(item, "dtype"):
            shapes[name] = tuple(item.shape)

    group.visititems(visit)
    return shapes


def _check_weights_file(backbone, backbone_file, path, tmp):
    """Names the first backbone layer whose weights `backbone_file` lacks or shapes otherwise,
    by comparing it with the file the backbone itself writes (`path` is the user's file)."""
    import h5py

    def mismatch(reason):
        return BackboneWeightsError(
            f"Backbone weights {path!r} do not fit the backbone {backbone.name!r}: backbone "
            f"configuration mismatch: {reason}; "
            f"{_WEIGHTS_FILE_ALLOWED.format(_config_summary(backbone))}."
        )

    reference_path = os.path.join(tmp, "reference.weights.h5")
    backbone.save_weights(reference_path)
    with h5py.File(backbone_file, "r") as given, h5py.File(reference_path, "r") as reference:
        # Keras names each layer's group after its class, numbered in the layers' order.
        counts = {}
        for layer in backbone.layers:
            key = _snake_case(type(layer).__name__)
            if key in counts:
                counts[key] += 1
                key = f"{key}_{counts[key]}"
            else:
                counts[key] = 0
            if not layer.weights:
                continue
            group = f"layers/{key}"
            if group not in reference:
                return  # another Keras layout: Keras's own check decides
            if group not in given:
                raise mismatch(f"layer {layer.name!r} is missing from the file")
            want, got = _h5_shapes(reference[group]), _h5_shapes(given[group])
            for name in sorted(set(want) | set(got)):
                if want.get(name) != got.get(name):
                    raise mismatch(
                        f"layer {layer.name!r}: weight {name} has shape {want.get(name)} in "
                        f"the backbone, {got.get(name)} in the file"
                    )
        extra = sorted(
            key
            for key in given.get("layers", {})
            if _h5_shapes(given["layers"][key]) and f"layers/{key}" not in reference
        )
        if extra:
            raise mismatch(
                f"the file has weights of {len(extra)} layers the backbone lacks (first: "
                f"{extra[0]}; a backbone with more blocks?)"
            )


def _from_checkpoint(backbone, path):
    try:
        state = read_checkpoint(path)
    except (ValueError, OSError) as error:
        raise BackboneWeightsError(
            f"Backbone weights {path!r}: the checkpoint cannot be read ({_one_line(error)}); "
            f"allowed: {ALLOWED_SOURCES}."
        ) from None
    except ImportError as error:
        raise ImportError(_one_line(error)) from None
    given = {
        normalize_name(name): value
        for name, value in state.items()
        if not name.endswith(_IGNORED_SUFFIXES)
    }
    heads = sorted(name for name in given if name.split(".")[0] in HEAD_PREFIXES)
    body = {name: value for name, value in given.items() if name.split(".")[0] not in HEAD_PREFIXES}
    if not body:
        raise BackboneWeightsError(
            f"Backbone weights {path!r}: the checkpoint has no backbone parameters (only "
            f"{len(heads)} head parameters); allowed: {ALLOWED_SOURCES}."
        )
    _check_checkpoint(backbone, body, path)
    result = load_torch_state_dict(backbone, body, strict=True)
    loaded = len(body) - len(result.unexpected)
    text = f"backbone {backbone.name!r} <- original checkpoint {path!r}: {loaded} tensors"
    if heads:
        prefixes = sorted({name.split(".")[0] + ".*" for name in heads})
        text += f"; ignored {len(heads)} head parameters ({', '.join(prefixes)})"
    return text


def _check_checkpoint(backbone, state, path):
    """Raises a one-line error at the first backbone layer the checkpoint does not fit."""
    expected = torch_variable_map(backbone)
    for name, (variable, to_keras) in expected.items():  # in the backbone's layer order
        layer = variable.path.split("/")[0]
        if name not in state:
            count = sum(1 for other in expected if other not in state)
            raise _mismatch(
                backbone,
                path,
                f"layer {layer!r} is missing from the checkpoint ({name}"
                f"{f' and {count - 1} more parameters' if count > 1 else ''})",
            )
        source = np.asarray(state[name])
        try:
            shape = tuple(to_keras(source).shape)
        except ValueError:
            shape = tuple(np.shape(source))
        if shape != tuple(variable.shape):
            raise _mismatch(
                backbone,
                path,
                f"layer {layer!r}: {variable.path} has shape {tuple(variable.shape)}, the "
                f"checkpoint's {name} {tuple(np.shape(source))}",
            )
    extra = [name for name in state if name not in expected]
    if extra:
        raise _mismatch(
            backbone,
            path,
            f"the checkpoint has {len(extra)} backbone parameters the model has no place for "
            f"(first: {extra[0]})",
        )


__all__ = [
    "ALLOWED_SOURCES",
    "BackboneWeightsError",
    "check_backbone_source",
    "load_backbone_weights",
]
