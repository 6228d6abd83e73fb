"""Convert a checkpoint of the original HRViT code into a Keras model, weights file or preset
folder.

    python -m keras_hrvit.convert SRC DST.keras --model PRESET [--task TASK]
        [--num-classes N] [--head-channels C] [--config JSON] [--ema] [--overwrite] [--no-progress]
    python -m keras_hrvit.convert SRC --preset-dir DIR --model PRESET [...]

SRC is a `.pth`/`.pt` (needs PyTorch), `.npz` or `.safetensors` file holding a timm trainer
checkpoint (`state_dict`, `state_dict_ema`), an MMSegmentation checkpoint (`backbone.*`,
`decode_head.*`, `auxiliary_head.*`) or a bare state dict, with or without `module.` prefixes.
The task, number of classes and head widths are read from the checkpoint unless given. The
weights are loaded strictly, checked on a random image, and written atomically: on any error no
DST file is left. DST ending in `.keras` holds the whole model (`keras.saving.load_model` reads
it after `import keras_hrvit`), ending in `.weights.h5` the weights only. `--preset-dir DIR`
writes the converted model as a preset folder instead (`config.json`, `model.weights.h5`,
`metadata.json` with the weights' SHA-256; see `keras_hrvit.preset_io`), which
`HRViTClassifier.from_preset(DIR)` / `HRViTSegmenter.from_preset(DIR)` load, checking the hash.
The options are in `keras_hrvit/cli/convert.py` (`keras_hrvit.cli.convert.main` runs it from
Python).
"""

import contextlib
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
    progress=False,
):
    """Converts checkpoint `src` into a Keras file `dst`, or a preset folder `preset_dir`.

    `dst` ending in `.keras` gets the whole model (`keras.saving.load_model` reads it after
    `import keras_hrvit`); ending in `.weights.h5`, the weights only, for a model built with the
    same arguments. Returns the written path. Arguments are as in
    `build_model` and `read_checkpoint`. `preset_dir` writes the whole model with
    `preset_io.save_to_preset`, so that `from_preset(preset_dir)` rebuilds it with these weights.
    `progress` shows a progress bar on stderr, one step per stage (read, build, load, check,
    write).

    Example:
    >>> convert_checkpoint("ade.pth", "b1_ade.weights.h5", model="hrvit_b1_ade20k")
    'b1_ade.weights.h5'
    >>> convert_checkpoint("ade.pth", "b1_ade.keras", model="hrvit_b1_ade20k")
    'b1_ade.keras'
    >>> convert_checkpoint("ade.pth", model="hrvit_b1_ade20k", preset_dir="presets/b1_ade")
    'presets/b1_ade'
    """
    target = _check_target(dst, preset_dir, overwrite)
    with _stages(progress) as stage:
        stage("read checkpoint")
        state = read_checkpoint(src, ema=ema, trust_pickle=trust_pickle)
        stage("build model")
        keras_model, task = build_model(
            state,
            model=model,
            config=config,
            task=task,
            num_classes=num_classes,
            head_channels=head_channels,
        )
        stage("load weights")
        _load_strictly(
            keras_model, state, f"{os.fspath(src)!r}", f"{task} model {_describe(model, config)}"
        )
        stage("check outputs")
        _check_outputs(keras_model)
        stage("write")
        if preset_dir is None and target.endswith(".keras"):
            atomic_write(target, keras_model.save, ".keras")
        elif preset_dir is None:
            atomic_write(target, keras_model.save_weights, ".weights.h5")
        else:
            preset_io.save_to_preset(keras_model, target)
        stage(None)
    return target


_STAGES = 5  # the `stage` calls of `convert_checkpoint`


@contextlib.contextmanager
def _stages(progress):
    """Yields `stage(name)`, which completes the previous stage and names the next one (None:
    done) on a tqdm bar on stderr; with `progress` False the bar is off."""
    from tqdm.auto import tqdm

    bar = tqdm(total=_STAGES, desc="convert", unit="stage", file=sys.stderr, disable=not progress)
    started = False

    def stage(name):
        nonlocal started
        if started:
            bar.update()
        started = True
        if name is not None:
            bar.set_postfix_str(name)

    try:
        yield stage
    finally:
        bar.close()


def _check_target(dst, preset_dir, overwrite):
    """The path to write, checked first: `dst` (a `.keras` or `.weights.h5` file) or
    `preset_dir`."""
    if (dst is None) == (preset_dir is None):
        raise ValueError(
            "Give exactly one of DST (a `.keras` or `.weights.h5` path) and `--preset-dir`."
        )
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
    if not dst.endswith((".keras", ".weights.h5")):
        raise ValueError(
            f"DST must end with `.keras` (the model) or `.weights.h5` (its weights), got {dst!r}."
        )
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


if __name__ == "__main__":
    from keras_hrvit.cli.convert import main

    raise SystemExit(0 if main() else 1)
