"""Files written whole or not at all, and file hashes.

Every file the package writes goes through `atomic_write`: it is written under a unique temporary
name in the destination folder, flushed to disk, then moved onto its final name with
`os.replace`, which is atomic on POSIX and Windows. A run killed mid-write leaves the previous
file intact (or none), never a truncated one. This module imports nothing of TensorFlow or of the
rest of the package, so any module can use it.
"""

import hashlib
import json
import os
import uuid


def atomic_write(path, write_fn, suffix=""):
    """Calls `write_fn(tmp_path)` on a temporary file next to `path`, then moves it onto `path`.

    The folder is created if missing. On any error the temporary file is removed and `path` is
    left as it was. `suffix` is appended to the temporary name: give the file's real extension
    when the writer picks the format from the name (Keras's `save`, `save_weights`).

    Example:
    >>> atomic_write("model.weights.h5", model.save_weights, ".weights.h5")
    >>> atomic_write("notes.txt", lambda tmp: open(tmp, "w").write("done"))
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    name = os.path.basename(path)
    stem = name[: len(name) - len(suffix)] if suffix and name.endswith(suffix) else name
    tmp = os.path.join(directory, f".{stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        write_fn(tmp)
        # Flush to disk before the rename, so that a power loss cannot leave the new name
        # pointing at unwritten blocks.
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text):
    """Writes the string `text` to `path` (UTF-8) atomically.

    Example:
    >>> write_text("runs/a/README.txt", "HRViT-B1 on ADE20K\\n")
    """

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write, os.path.splitext(os.fspath(path))[1])


def write_json(path, obj, indent=2):
    """Writes `obj` as JSON to `path` atomically; `obj` is serialized before anything is written.

    Example:
    >>> write_json("runs/a/best.json", {"monitor": "val_loss", "best": 0.31})
    """
    write_text(path, json.dumps(obj, indent=indent))


def file_sha256(path, chunk_size=1 << 20):
    """The hex SHA-256 of the file at `path`, read in chunks.

    Example:
    >>> file_sha256("model.weights.h5")
    '3f1c...'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()
