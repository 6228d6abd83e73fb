"""Convert a checkpoint of the original HRViT code into a Keras `.weights.h5` file.

    python -m keras_hrvit.convert SRC DST.weights.h5 --model PRESET [--task TASK]
        [--num-classes N] [--head-channels C] [--config JSON] [--ema] [--cache] [--overwrite]

SRC is a `.pth`/`.pt` (needs PyTorch), `.npz` or `.safetensors` file holding a timm trainer
checkpoint (`state_dict`, `state_dict_ema`), an MMSegmentation checkpoint (`backbone.*`,
`decode_head.*`, `auxiliary_head.*`) or a bare state dict, with or without `module.` prefixes.
The task, number of classes and head widths are read from the checkpoint unless given. The
weights are loaded strictly, checked on a random image, and written atomically: on any error no
DST file is left. `--cache` writes `<preset>.weights.h5` and its `.sha256` into the preset cache
(`$KERAS_HRVIT_HOME`, default `~/.keras/keras_hrvit`) for `weights="<preset>"`.
"""

import argparse
import json
import logging
import os
import sys
import tempfile

import keras
import numpy as np

from keras_hrvit.weights import cache
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
    from keras_hrvit.models.presets import BACKBONE_PRESETS, SEGMENTER_PRESETS

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
    to_cache=False,
    overwrite=False,
):
    """Converts checkpoint `src` into Keras weights at `dst` (or into the preset cache).

    Returns the written path. Arguments are as in `build_model` and `read_checkpoint`;
    `to_cache=True` writes `<model>.weights.h5` and its `.sha256` into the preset cache.

    Example:
    >>> convert_checkpoint("ade.pth", "b1_ade.weights.h5", model="hrvit_b1_ade20k")
    'b1_ade.weights.h5'
    """
    if to_cache:
        if dst is not None:
            raise ValueError("Give DST or `--cache`, not both.")
        if model is None:
            raise ValueError("`--cache` needs a preset `--model` (the file is named after it).")
        dst = cache.preset_weights_path(model)
        overwrite = True
    if dst is None:
        raise ValueError("Give DST (a `.weights.h5` path) or `--cache`.")
    dst = os.fspath(dst)
    if not dst.endswith(".weights.h5"):
        raise ValueError(f"DST must end with `.weights.h5`, got {dst!r}.")
    if os.path.exists(dst) and not overwrite:
        raise FileExistsError(f"{dst!r} exists; pass `--overwrite` to replace it.")

    state = read_checkpoint(src, ema=ema, trust_pickle=trust_pickle)
    keras_model, task = build_model(
        state,
        model=model,
        config=config,
        task=task,
        num_classes=num_classes,
        head_channels=head_channels,
    )
    if to_cache and task == "segmentation" and model in _backbone_presets():
        raise ValueError(
            "`--cache` of a segmentation checkpoint needs a segmenter preset (e.g. "
            f"{model}_ade20k), not the backbone preset {model!r}."
        )
    try:
        result = load_torch_state_dict(keras_model, state, strict=True)
    except ValueError as error:
        raise ValueError(
            f"{os.fspath(src)!r} does not fit the {task} model {_describe(model, config)}: {error}"
        ) from None
    has_aux = any(layer.name == "auxiliary_head" for layer in keras_model.layers)
    ignorable = () if has_aux else ("auxiliary_head.",)
    leftover = [n for n in result.unexpected if not n.startswith(ignorable)]
    if leftover:
        shown = ", ".join(leftover[:10]) + (" ..." if len(leftover) > 10 else "")
        raise ValueError(
            f"{os.fspath(src)!r} has {len(leftover)} parameters that the {task} model "
            f"{_describe(model, config)} has no place for (a checkpoint of another variant?): "
            f"{shown}"
        )
    _check_outputs(keras_model)
    _save_atomically(keras_model, dst)
    if to_cache:
        digest = cache.write_sha256_sidecar(dst)
        logger.info("Cached %s (sha256 %s).", dst, digest)
    return dst


def _check_outputs(model):
    images = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32")
    outputs = model(images, training=False)
    for output in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
        if not np.all(np.isfinite(keras.ops.convert_to_numpy(output))):
            raise ValueError(
                "The converted model gives non-finite outputs on a random image; the checkpoint "
                "holds NaN/inf values or does not belong to this architecture."
            )


def _save_atomically(model, dst):
    parent = os.path.dirname(os.path.abspath(dst))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=parent, prefix=f".{os.path.basename(dst)}.", suffix=".tmp.weights.h5"
    )
    os.close(fd)
    try:
        model.save_weights(tmp, overwrite=True)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _backbone_presets():
    from keras_hrvit.models.presets import BACKBONE_PRESETS

    return BACKBONE_PRESETS


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
        description="Convert a checkpoint of the original HRViT code to Keras weights.",
    )
    parser.add_argument("src", help="checkpoint: .pth/.pt (needs torch), .npz or .safetensors")
    parser.add_argument("dst", nargs="?", help="output .weights.h5 (omit with --cache)")
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
    parser.add_argument("--cache", action="store_true", help="write into the preset cache")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DST")
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
            to_cache=args.cache,
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
