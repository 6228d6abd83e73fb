"""Reading checkpoints of the original PyTorch code: `.pth`/`.pt`, `.npz` and `.safetensors`.

`read_checkpoint(path)` returns a flat `{name: numpy array}` state dict with wrappers removed:
timm trainer dicts (`state_dict`, `state_dict_ema`), MMSegmentation dicts (`state_dict` with
`backbone.`/`decode_head.` names) and bare state dicts, with or without `module.` prefixes.
Only `.pth`/`.pt` need PyTorch (`pip install keras_hrvit[torch]`).
"""

import argparse
import json
import os
import pickle
import zipfile

import numpy as np

FORMATS = (".pth", ".pt", ".npz", ".safetensors")
# Trainer dicts keep the weights under one of these keys, in this order of preference.
_STATE_KEYS = ("state_dict", "model", "module", "net")
_EMA_KEYS = ("state_dict_ema", "model_ema")

_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or holds no state dict."""


def strip_module_prefix(name):
    """Removes DataParallel's `module.` prefixes (the `backbone.` of MMSeg is kept)."""
    while name.startswith("module."):
        name = name[len("module.") :]
    return name


def read_checkpoint(path, ema=False, trust_pickle=False):
    """Reads a checkpoint of the original code into `{name: float numpy array}`.

    Args:
        path: a `.pth`/`.pt` (PyTorch), `.npz` or `.safetensors` file.
        ema: take the EMA weights (`state_dict_ema`) of a timm trainer checkpoint.
        trust_pickle: let PyTorch unpickle arbitrary objects (`weights_only=False`); only for
            files from a trusted source whose extra entries `weights_only` refuses.

    Raises:
        CheckpointError: unreadable (truncated, corrupt) file, unknown format, or no weights.

    Example:
    >>> state = read_checkpoint("hrvit_b1_ade20k.pth")
    >>> state["decode_head.conv_seg.weight"].shape
    (150, 256, 1, 1)
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist.")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FORMATS:
        raise CheckpointError(
            f"Unknown checkpoint format {suffix!r} of {path!r}; expected one of {FORMATS}."
        )
    if suffix in (".pth", ".pt"):
        raw = _read_torch(path, trust_pickle)
    elif suffix == ".npz":
        raw = _read_npz(path)
    else:
        raw = _read_safetensors(path)
    state = _unwrap(raw, ema, path)
    return {strip_module_prefix(k): _to_numpy(v, k, path) for k, v in state.items()}


def _read_torch(path, trust_pickle):
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"Reading {path!r} needs PyTorch: `pip install keras_hrvit[torch]` (or convert the "
            "checkpoint to .npz/.safetensors where PyTorch is installed)."
        ) from None
    if trust_pickle:
        return _torch_load(torch, path, weights_only=False)
    try:
        return _torch_load(torch, path, weights_only=True)
    except pickle.UnpicklingError as first:
        # timm trainer checkpoints also store `args`, an argparse.Namespace, which the safe
        # unpickler refuses by default; allow just that type before giving up.
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                return _torch_load(torch, path, weights_only=True)
        except pickle.UnpicklingError:
            raise CheckpointError(
                f"{path!r} holds Python objects that PyTorch's safe loader refuses ({first}). "
                "If you trust the file, pass `--trust-pickle` (`trust_pickle=True`)."
            ) from None


def _torch_load(torch, path, weights_only):
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as error:
        # The caller retries a weights_only refusal; anything else is a broken file.
        if weights_only and "Weights only load failed" in str(error):
            raise
        raise CheckpointError(
            f"{path!r} is not a readable PyTorch checkpoint ({_first_line(error)})."
        ) from None
    except (KeyError, IndexError) as error:
        # The safe unpickler reading bytes that are no pickle (a text file named .pth).
        raise CheckpointError(
            f"{path!r} is not a readable PyTorch checkpoint (unpickling failed: "
            f"{type(error).__name__} {error})."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"{path!r} could not be read; is it truncated or corrupt? ({_first_line(error)})"
        ) from None


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as data:
            # Read every array now: a truncated member only fails when it is accessed.
            return {k: np.array(data[k]) for k in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"{path!r} could not be read as .npz; is it truncated or corrupt? "
            f"({_first_line(error)})"
        ) from None


def _read_safetensors(path):
    # The format: 8-byte little-endian header size, a JSON header, then the raw tensor bytes.
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path!r} is too short to be a .safetensors file.")
        header_size = int.from_bytes(prefix, "little")
        if header_size <= 0 or 8 + header_size > size:
            raise CheckpointError(
                f"{path!r} has an invalid .safetensors header size; is it truncated or corrupt?"
            )
        try:
            header = json.loads(f.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(
                f"{path!r} has a corrupt .safetensors header ({error})."
            ) from None
        buffer = f.read()
    header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path!r}: bad .safetensors entry for {name!r}.") from None
        if end > len(buffer) or begin > end:
            raise CheckpointError(
                f"{path!r} ends before the data of {name!r}; the file is truncated or corrupt."
            )
        raw = buffer[begin:end]
        if dtype == "BF16":
            # bfloat16 is the top half of a float32.
            array = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        elif dtype in _SAFETENSORS_DTYPES:
            array = np.frombuffer(raw, np.dtype(_SAFETENSORS_DTYPES[dtype]).newbyteorder("<"))
        else:
            raise CheckpointError(f"{path!r}: unsupported dtype {dtype} of {name!r}.")
        if array.size != int(np.prod(shape, dtype=np.int64)):
            raise CheckpointError(f"{path!r}: the data of {name!r} does not match its shape.")
        tensors[name] = array.reshape(shape)
    return tensors


def _is_state_dict(value):
    return (
        isinstance(value, dict)
        and value
        and all(hasattr(v, "shape") and isinstance(k, str) for k, v in value.items())
    )


def _unwrap(raw, ema, path):
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path!r} holds a {type(raw).__name__}, not a state dict.")
    keys = _EMA_KEYS if ema else _STATE_KEYS
    for key in keys:
        if _is_state_dict(raw.get(key)):
            return raw[key]
    if ema:
        raise CheckpointError(
            f"{path!r} has no EMA weights (none of {', '.join(_EMA_KEYS)}); drop `--ema`."
        )
    tensors = {k: v for k, v in raw.items() if hasattr(v, "shape")}
    if not tensors:
        raise CheckpointError(
            f"{path!r} holds no weights: no tensors and none of the keys {', '.join(_STATE_KEYS)} "
            f"(found keys: {', '.join(map(str, list(raw)[:10]))})."
        )
    return tensors


def _to_numpy(value, name, path):
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        # numpy has no bfloat16: widen it first.
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    array = np.asarray(value)
    if array.dtype == object:
        raise CheckpointError(f"{path!r}: entry {name!r} is not a numeric array.")
    return array


def _first_line(error):
    return (str(error).splitlines() or [type(error).__name__])[0][:300]
