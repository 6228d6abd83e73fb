"""Weight files of named presets, placed by the user in a local cache directory.

No pretrained HRViT weights were ever published, so nothing is downloaded: a preset's weights are
a `<preset>.weights.h5` file in `KERAS_HRVIT_HOME` (default `~/.keras/keras_hrvit`), produced by
converting a checkpoint of the original code:

    python -m keras_hrvit.convert ckpt.pth --model hrvit_b1_ade20k --cache

Each file is checked against a SHA-256 from `KNOWN_SHA256` (empty: nothing was published) or
from the `<preset>.weights.h5.sha256` file that `convert --cache` writes next to it.
"""

import hashlib
import logging
import os
import re

logger = logging.getLogger(__name__)

# Published weights would be pinned here: {preset: sha256 hex digest}.
KNOWN_SHA256 = {}

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def cache_dir():
    """The directory of preset weight files: `$KERAS_HRVIT_HOME` or `~/.keras/keras_hrvit`.

    Example:
    >>> cache_dir()
    '/home/me/.keras/keras_hrvit'
    """
    return os.path.expanduser(os.environ.get("KERAS_HRVIT_HOME") or "~/.keras/keras_hrvit")


def preset_names():
    """Every preset that can have a weight file: backbone (ImageNet classifier) and segmenter."""
    from keras_hrvit.models.presets import BACKBONE_PRESETS, SEGMENTER_PRESETS

    return sorted(BACKBONE_PRESETS) + sorted(SEGMENTER_PRESETS)


def is_preset_name(name):
    """True when `name` names a preset (rather than a weight file path)."""
    return isinstance(name, str) and name in preset_names()


def preset_weights_path(preset):
    """Where the weight file of `preset` goes in the cache (whether or not it exists)."""
    _check_preset(preset)
    return os.path.join(cache_dir(), f"{preset}.weights.h5")


def file_sha256(path, chunk_size=1 << 20):
    """Hex SHA-256 of the file at `path`."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_sha256_sidecar(path):
    """Writes `<path>.sha256` (in `sha256sum` format) atomically; returns the digest."""
    digest = file_sha256(path)
    sidecar = f"{path}.sha256"
    tmp = f"{sidecar}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{digest}  {os.path.basename(path)}\n")
    os.replace(tmp, sidecar)
    return digest


def expected_sha256(preset):
    """The pinned digest of `preset`'s file: `KNOWN_SHA256`, else its sidecar, else None."""
    if preset in KNOWN_SHA256:
        return KNOWN_SHA256[preset].lower()
    sidecar = preset_weights_path(preset) + ".sha256"
    if not os.path.exists(sidecar):
        return None
    with open(sidecar) as f:
        fields = f.read().split()
    if not fields or not _HEX64.match(fields[0]):
        raise ValueError(f"{sidecar!r} does not hold a SHA-256 hex digest.")
    return fields[0].lower()


def resolve_preset_weights(preset):
    """The verified path of `preset`'s weight file in the cache.

    Raises:
        FileNotFoundError: the file is not there; the message says where to put it and how to
            make it.
        ValueError: the file's SHA-256 differs from the pinned one.

    Example:
    >>> resolve_preset_weights("hrvit_b1_ade20k")
    '/home/me/.keras/keras_hrvit/hrvit_b1_ade20k.weights.h5'
    """
    path = preset_weights_path(preset)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"No weights for preset {preset!r}: expected the file {path!r}. No pretrained HRViT "
            "weights were published, so they cannot be downloaded. Convert a checkpoint of the "
            "original code into the cache with\n"
            f"    python -m keras_hrvit.convert CHECKPOINT.pth --model {preset} --cache\n"
            f"or place a `{preset}.weights.h5` file there (the directory is $KERAS_HRVIT_HOME, "
            "default ~/.keras/keras_hrvit)."
        )
    expected = expected_sha256(preset)
    if expected is None:
        logger.warning(
            "No SHA-256 known for %s (no %s.sha256 file); loading it unverified.", path, path
        )
        return path
    actual = file_sha256(path)
    if actual != expected:
        raise ValueError(
            f"The weights file {path!r} is corrupt or was replaced: its SHA-256 is {actual}, "
            f"expected {expected}. Convert the checkpoint again (`python -m keras_hrvit.convert "
            f"CHECKPOINT --model {preset} --cache`) or delete the stale `.sha256` file."
        )
    return path


def _check_preset(preset):
    if not is_preset_name(preset):
        raise ValueError(f"Unknown preset {preset!r}. Known presets: {', '.join(preset_names())}.")
