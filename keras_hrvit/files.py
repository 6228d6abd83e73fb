"""Files written whole or not at all, file hashes, and a folder lock for runs.

Every file the package writes goes through `atomic_write`: it is written under a unique temporary
name in the destination folder, flushed to disk, then moved onto its final name with
`os.replace`, which is atomic on POSIX and Windows. A run killed mid-write leaves the previous
file intact (or none), never a truncated one. This module imports nothing of TensorFlow or of the
rest of the package, so any module can use it.
"""

import hashlib
import json
import os
import re
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


_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}")


def remove_stale_temporaries(folder):
    """Removes, under `folder`, the temporary files of `atomic_write` calls whose process is
    gone (killed mid-write); returns their paths. Files of running processes are kept.

    Example:
    >>> remove_stale_temporaries("runs/a")
    ['runs/a/checkpoints/.last.tmp-4242-1a2b3c4d.keras']
    """
    removed = []
    for root, _, names in os.walk(os.fspath(folder)):
        for name in names:
            match = _TEMPORARY.match(name)
            if match and not _process_runs(int(match[1])):
                path = os.path.join(root, name)
                os.remove(path)
                removed.append(path)
    return removed


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


class FolderLock:
    """Holds `folder` for one process: a `.lock` file created exclusively, naming its pid.

    A second process gets `FolderLockedError` naming the holder; a lock left by a process that
    no longer runs (killed) is taken over. Use it as a context manager.

    Example:
    >>> with FolderLock("runs/a"):
    ...     train(...)
    """

    def __init__(self, folder, name=".lock"):
        self.path = os.path.join(os.fspath(folder), name)

    def __enter__(self):
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = _lock_holder(self.path)
                if holder is not None and _process_runs(holder):
                    raise FolderLockedError(
                        f"{os.path.dirname(self.path)!r} is in use by another run (process "
                        f"{holder}); wait for it or choose another folder (if no such run "
                        f"exists, delete {self.path!r})."
                    ) from None
                os.remove(self.path)  # its process is gone: a killed run's lock
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self
        raise FolderLockedError(f"Could not take the lock {self.path!r}; another run took it.")

    def __exit__(self, *exc_info):
        if _lock_holder(self.path) == os.getpid():
            os.remove(self.path)
        return False


class FolderLockedError(RuntimeError):
    """Another running process holds the folder."""


def _lock_holder(path):
    try:
        with open(path, encoding="utf-8") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None  # gone, or written by a run killed before it wrote its pid


def _process_runs(pid):
    if pid == os.getpid() or os.name == "nt":
        return True  # Windows' os.kill(pid, 0) would terminate the process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # runs, under another user
    return True
