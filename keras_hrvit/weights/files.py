"""Keras weight and model files: loading with errors that say what is wrong.

`keras.saving.load_model` answers a file that is not a zip archive (a truncated download, a
file of another format renamed) with "File not found", and a damaged archive with an error from
deep inside `zipfile` or `h5py`; `load_model_file` and `load_weights_into` name the file and
what is wrong instead. `check_model_task` refuses a model of the wrong kind (a classifier given
to `evaluate`).
"""

import os
import re
import zipfile
import zlib

import keras


def load_weights_into(model, path):
    """Loads a `.weights.h5` or `.keras` file into `model`; on a mismatch `model` is unchanged.

    Weights of a preset folder are loaded, checked against their SHA-256, by
    `Class.from_preset(folder)` (see `keras_hrvit.preset_io`).

    Example:
    >>> load_weights_into(model, "hrvit_b1_ade20k.weights.h5")
    """
    path = os.fspath(path)
    if not path.endswith((".weights.h5", ".keras")):
        raise ValueError(f"Weights must be a `.weights.h5` or `.keras` file, got {path!r}.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"Weights file {path!r} does not exist.")
    # Keras may have assigned some layers before it fails: put the model back as it was.
    backup = model.get_weights()
    try:
        model.load_weights(path)
    except (ValueError, KeyError) as error:
        model.set_weights(backup)
        raise ValueError(
            f"The weights file {path!r} does not fit model {model.name!r} (a file for another "
            f"variant, head or number of classes?). {_summarize(str(error))}"
        ) from None
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        model.set_weights(backup)
        kind = "a Keras `.keras` zip file" if path.endswith(".keras") else "an HDF5 weights file"
        raise ValueError(
            f"The weights file {path!r} is not {kind} that can be read (truncated or corrupt?): "
            f"{str(error).splitlines()[0][:300]}"
        ) from None


def _summarize(message):
    # Keras's message prints whole weight arrays; keep the count and the first mismatch.
    parts = []
    total = re.search(r"A total of (\d+) objects could not be loaded", message)
    if total:
        parts.append(f"{total[1]} layers could not be loaded.")
    # The received shape is a tuple, or on PyTorch a `torch.Size([...])`.
    first = re.search(
        r"variable\.shape=\((.*?)\), Received: value\.shape=(?:torch\.Size\(\[)?\(?(.*?)[\])]+\. "
        r"Target variable: <Variable path=([^,]+)",
        message,
    )
    if first:
        parts.append(f"First mismatch: {first[3]} has shape ({first[1]}), the file ({first[2]}).")
    return " ".join(parts) or message.split("\n")[0][:500]


_KINDS = {"segmentation": "a segmenter", "classification": "a classifier"}


def load_model_file(path):
    """The model saved in the `.keras` file `path`, without its compile state.

    Raises `FileNotFoundError` for a missing file and `ValueError` for anything else wrong, one
    line naming the file.

    Example:
    >>> model = load_model_file("runs/shapes/model.keras")
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(
            f"{path} is not a .keras file; a model must be saved with `model.save('X.keras')`."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Model file {path} does not exist.")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a readable Keras model file (truncated or corrupt?): a .keras file "
            "is a zip archive and this one is not."
        )
    try:
        return keras.saving.load_model(path, compile=False)
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        raise ValueError(
            f"{path} is not a readable Keras model file (truncated or corrupt?): "
            f"{_first_line(error)}"
        ) from None
    except (ValueError, TypeError) as error:
        message = _first_line(error)
        raise ValueError(f"{path} cannot be loaded as a Keras model: {message}") from None


def check_model_task(model, path, task, command):
    """Raises a `ValueError` when `model` (from `path`) is of a kind `command` cannot use.

    `task` is `"segmentation"` or `"classification"`; models of other packages pass.

    Example:
    >>> check_model_task(load_model_file("cls.keras"), "cls.keras", "segmentation", "evaluate")
    ValueError: cls.keras is a HRViTClassifier (a classifier); evaluate needs a segmenter.
    """
    from keras_hrvit.export import model_task

    kind = model_task(model)
    if kind is not None and kind != task:
        raise ValueError(
            f"{os.fspath(path)} is a {type(model).__name__} ({_KINDS[kind]}); {command} needs "
            f"{_KINDS[task]}."
        )
    return model


def _first_line(error):
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    message = lines[0] if lines else type(error).__name__
    return message[:300]
