"""Convert a checkpoint of the original HRViT code into a Keras weights file or preset folder.

    python -m keras_hrvit.convert SRC DST.weights.h5 --model PRESET [--task TASK]
        [--num-classes N] [--head-channels C] [--config JSON] [--ema] [--overwrite]
    python -m keras_hrvit.convert SRC --preset-dir DIR --model PRESET [...]

SRC is a `.pth`/`.pt` (needs PyTorch), `.npz` or `.safetensors` file holding a timm trainer
checkpoint (`state_dict`, `state_dict_ema`), an MMSegmentation checkpoint (`backbone.*`,
`decode_head.*`, `auxiliary_head.*`) or a bare state dict, with or without `module.` prefixes.
The task, number of classes and head widths are read from the checkpoint unless given. The
weights are loaded strictly, checked on a random image, and written atomically: on any error no
DST file is left. `--preset-dir DIR` writes the converted model as a preset folder instead
(`config.json`, `model.weights.h5`, `metadata.json` with the weights' SHA-256; see
`keras_hrvit.preset_io`), which `HRViTClassifier.from_preset(DIR)` /
`HRViTSegmenter.from_preset(DIR)` load, checking the hash.
"""

import argparse
import json
import logging
import os
import sys

import keras
import numpy as np

from keras_hrvit import preset_io
from keras_hrvit.files import atomic_write
from keras_hrvit.weights.checkpoints import read_checkpoint
from keras_hrvit.weights.torch_loading import load_torch_state_dict, normalize_name

logger = logging.getLogger(__name__)

TASKS = ("classification", "segmentation")
_SEG_HEAD_MARKERS = {"segformer": "decode_head.fusion_conv.", "upernet": "decode_head.psp_modules."}


def detect_task(state_dict):
    """`"segmentation"`, `"classification"` or None (backbone only) from a state dict's names."""
    names = [normalize_name(k) for k in state_dict]
    if any(n.startswith("decode_head.") for n in names):
        return "segmentation"
    if any(n.startswith("head.") for n in names):
        return "classification"
    return None


def build_model(
    state_dict, model=None, config=None, task=None, num_classes=None, head_channels=None
):
    """Builds the Keras model that `state_dict` fits (not loaded yet).

    Args:
        state_dict: `{original name: array}`, e.g. from `read_checkpoint`.
        model: a backbone preset (`hrvit_b1`, ...) or segmenter preset (`hrvit_b1_ade20k`, ...).
        config: instead of `model`, the `HRViTBackbone` arguments of a non-preset variant.
        task: `"classification"` or `"segmentation"`; read from the checkpoint when None.
        num_classes: read from the checkpoint's last head layer when None.
        head_channels: head width(s); the preset's, or read from the checkpoint, when None.

    Example:
    >>> model, task = build_model(read_checkpoint("ade.pth"), model="hrvit_b1_ade20k")
    """
    from keras_hrvit.models import HRViTBackbone, HRViTClassifier, HRViTSegmenter
    from keras_hrvit.presets import BACKBONE_PRESETS, SEGMENTER_PRESETS

    if (model is None) == (config is None):
        raise ValueError("Give exactly one of `model` (a preset name) and `config`.")
    if model is not None and model not in BACKBONE_PRESETS and model not in SEGMENTER_PRESETS:
        raise ValueError(
            f"Unknown preset {model!r}. Backbone (classification) presets: "
            f"{', '.join(BACKBONE_PRESETS)}; segmenter presets: {', '.join(SEGMENTER_PRESETS)}."
        )
    if task is not None and task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}, got {task!r}.")
    state = {normalize_name(k): v for k, v in state_dict.items()}
    found = detect_task(state)
    if model in SEGMENTER_PRESETS:
        task = task or "segmentation"
        if task != "segmentation":
            raise ValueError(f"{model!r} is a segmentation preset; it cannot take task={task!r}.")
    task = task or found
    if task is None:
        raise ValueError(
            "The checkpoint has neither a classification head (`head.*`) nor a decode head "
            "(`decode_head.*`); pass the task explicitly."
        )
    if found is not None and found != task:
        raise ValueError(
            f"The checkpoint is a {found} checkpoint (its head layers are "
            f"{_example(state, 'decode_head.' if found == 'segmentation' else 'head.')}), "
            f"but a {task} model was asked for."
        )
    name = model or "hrvit"

    if task == "classification":
        classes = num_classes or _out_channels(state, "head.classifier.weight", "--num-classes")
        widths = head_channels or _classifier_head_channels(state)
        backbone = (
            HRViTBackbone.from_preset(model)
            if model is not None
            else _backbone_from_config(HRViTBackbone, config)
        )
        kwargs = {"head_channels": tuple(widths)} if widths else {}
        built = HRViTClassifier(backbone, classes=classes, name=name, **kwargs)
        return built, task

    classes = num_classes or _out_channels(state, "decode_head.conv_seg.weight", "--num-classes")
    head = next((h for h, marker in _SEG_HEAD_MARKERS.items() if _has(state, marker)), None)
    auxiliary = _has(state, "auxiliary_head.")
    if model in SEGMENTER_PRESETS:
        preset = SEGMENTER_PRESETS[model]
        if head is not None and head != preset["head"]:
            raise ValueError(
                f"The checkpoint has a {head} decode head ({_example(state, 'decode_head.')}), "
                f"but preset {model!r} uses a {preset['head']} head."
            )
        overrides = {"num_classes": classes}
        if head_channels:
            overrides["head_channels"] = _single_width(head_channels)
        return HRViTSegmenter.from_preset(model, **overrides), task
    if head is None:
        raise ValueError(
            "Cannot tell the decode head of the checkpoint (no `decode_head.fusion_conv.*` of "
            "SegFormer nor `decode_head.psp_modules.*` of UperNet)."
        )
    widths = head_channels or (_in_channels(state, "decode_head.conv_seg.weight"),)
    backbone = (
        HRViTBackbone.from_preset(model)
        if model is not None
        else _backbone_from_config(HRViTBackbone, config)
    )
    segmenter = HRViTSegmenter(
        backbone,
        num_classes=classes,
        head=head,
        head_channels=_single_width(widths),
        auxiliary_head=auxiliary and head == "upernet",
        name=name,
    )
    return segmenter, task


def convert_checkpoint(
    src,
    dst=None,
    model=None,
    config=None,
    task=None,
    num_classes=None,
    head_channels=None,
    ema=False,
    trust_pickle=False,
    preset_dir=None,
    overwrite=False,
):
    """Converts checkpoint `src` into Keras weights at `dst`, or a preset folder `preset_dir`.

    Returns the written path: the `.weights.h5` file, or the folder. Arguments are as in
    `build_model` and `read_checkpoint`. `preset_dir` writes the whole model with
    `preset_io.save_to_preset`, so that `from_preset(preset_dir)` rebuilds it with these weights.

    Example:
    >>> convert_checkpoint("ade.pth", "b1_ade.weights.h5", model="hrvit_b1_ade20k")
    'b1_ade.weights.h5'
    >>> convert_checkpoint("ade.pth", model="hrvit_b1_ade20k", preset_dir="presets/b1_ade")
    'presets/b1_ade'
    """
    target = _check_target(dst, preset_dir, overwrite)
    state = read_checkpoint(src, ema=ema, trust_pickle=trust_pickle)
    keras_model, task = build_model(
        state,
        model=model,
        config=config,
        task=task,
        num_classes=num_classes,
        head_channels=head_channels,
    )
    _load_strictly(
        keras_model, state, f"{os.fspath(src)!r}", f"{task} model {_describe(model, config)}"
    )
    _check_outputs(keras_model)
    if preset_dir is None:
        atomic_write(target, keras_model.save_weights, ".weights.h5")
    else:
        preset_io.save_to_preset(keras_model, target)
    return target


def _check_target(dst, preset_dir, overwrite):
    """The path to write: `dst` (a `.weights.h5` file) or `preset_dir`, checked before the work."""
    if (dst is None) == (preset_dir is None):
        raise ValueError("Give exactly one of DST (a `.weights.h5` path) and `--preset-dir`.")
    if preset_dir is not None:
        preset_dir = os.fspath(preset_dir)
        if os.path.exists(preset_dir) and not os.path.isdir(preset_dir):
            raise ValueError(f"`--preset-dir` {preset_dir!r} exists and is not a folder.")
        held = (preset_io.CONFIG_FILE, preset_io.WEIGHTS_FILE, preset_io.METADATA_FILE)
        if not overwrite and any(os.path.exists(os.path.join(preset_dir, f)) for f in held):
            raise FileExistsError(
                f"{preset_dir!r} already holds a preset; pass `--overwrite` to replace it."
            )
        return preset_dir
    dst = os.fspath(dst)
    if not dst.endswith(".weights.h5"):
        raise ValueError(f"DST must end with `.weights.h5`, got {dst!r}.")
    if os.path.exists(dst) and not overwrite:
        raise FileExistsError(f"{dst!r} exists; pass `--overwrite` to replace it.")
    return dst


def _load_strictly(model, state, source, described):
    """Loads `state` into `model`; every model weight must be set and no parameter left over.

    Only the checkpoint's auxiliary head may be left over, when `model` has none.
    """
    try:
        result = load_torch_state_dict(model, state, strict=True)
    except ValueError as error:
        raise ValueError(f"{source} does not fit the {described}: {error}") from None
    has_aux = any(layer.name == "auxiliary_head" for layer in model.layers)
    ignorable = () if has_aux else ("auxiliary_head.",)
    leftover = [n for n in result.unexpected if not n.startswith(ignorable)]
    if leftover:
        shown = ", ".join(leftover[:10]) + (" ..." if len(leftover) > 10 else "")
        raise ValueError(
            f"{source} has {len(leftover)} parameters that the {described} has no place for (a "
            f"checkpoint of another variant?): {shown}"
        )


def _check_outputs(model):
    images = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32")
    outputs = model(images, training=False)
    for output in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
        if not np.all(np.isfinite(keras.ops.convert_to_numpy(output))):
            raise ValueError(
                "The converted model gives non-finite outputs on a random image; the checkpoint "
                "holds NaN/inf values or does not belong to this architecture."
            )


def _backbone_from_config(backbone_class, config):
    if not isinstance(config, dict):
        raise ValueError(f"`config` must be a dict of HRViTBackbone arguments, got {config!r}.")
    try:
        return backbone_class(**config)
    except TypeError as error:
        raise ValueError(f"`config` is not a valid HRViTBackbone configuration: {error}") from None


def _describe(model, config):
    return repr(model) if model is not None else f"of config {json.dumps(config)}"


def _has(state, prefix):
    return any(name.startswith(prefix) for name in state)


def _example(state, prefix):
    names = sorted(n for n in state if n.startswith(prefix))
    return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")


def _out_channels(state, name, flag):
    if name not in state:
        raise ValueError(f"The checkpoint lacks {name!r}; give the number of classes with {flag}.")
    return int(np.shape(state[name])[0])


def _in_channels(state, name):
    return int(np.shape(state[name])[1])


def _classifier_head_channels(state):
    widths = []
    while f"head.incre_modules.{len(widths)}.0.conv1.weight" in state:
        widths.append(int(np.shape(state[f"head.incre_modules.{len(widths)}.0.conv1.weight"])[0]))
    return tuple(widths) or None


def _single_width(widths):
    widths = tuple(widths) if isinstance(widths, (list, tuple)) else (widths,)
    if len(widths) != 1:
        raise ValueError(f"A segmentation head has one width; got head channels {widths}.")
    return int(widths[0])


def _parse_config(text):
    if os.path.isfile(text):
        with open(text) as f:
            text = f.read()
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"`--config` is neither a JSON file nor JSON text: {error}") from None
    if not isinstance(config, dict):
        raise ValueError("`--config` must be a JSON object of HRViTBackbone arguments.")
    return config


def _parse_widths(text):
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an int or comma-separated ints, got {text!r}"
        ) from None
    if any(w < 1 for w in widths):
        raise argparse.ArgumentTypeError(f"head channels must be positive, got {text!r}")
    return widths


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_hrvit.convert",
        description="Convert a checkpoint of the original HRViT code to Keras weights or a "
        "preset folder.",
    )
    parser.add_argument("src", help="checkpoint: .pth/.pt (needs torch), .npz or .safetensors")
    parser.add_argument("dst", nargs="?", help="output .weights.h5 (omit with --preset-dir)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="preset: hrvit_b1..b3 or a segmenter preset")
    which.add_argument("--config", help="HRViTBackbone arguments as JSON text or a JSON file")
    parser.add_argument("--task", choices=TASKS, help="default: read from the checkpoint")
    parser.add_argument("--num-classes", type=_positive_int, help="default: from the checkpoint")
    parser.add_argument(
        "--head-channels",
        type=_parse_widths,
        help="head width (segmentation) or 4 comma-separated widths (classification)",
    )
    parser.add_argument("--ema", action="store_true", help="use a timm checkpoint's EMA weights")
    parser.add_argument(
        "--preset-dir",
        metavar="DIR",
        help="write the model as a preset folder (config.json, model.weights.h5, metadata.json) "
        "for from_preset(DIR), instead of DST",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing DST or preset folder"
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="let torch unpickle arbitrary objects (trusted files only)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = convert_checkpoint(
            args.src,
            args.dst,
            model=args.model,
            config=_parse_config(args.config) if args.config else None,
            task=args.task,
            num_classes=args.num_classes,
            head_channels=args.head_channels,
            ema=args.ema,
            trust_pickle=args.trust_pickle,
            preset_dir=args.preset_dir,
            overwrite=args.overwrite,
        )
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
        if argv is not None:
            raise
        parser.exit(1, f"error: {error}\n")
    print(f"Wrote {path}")
    return path


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
