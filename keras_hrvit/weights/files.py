"""Keras weight files: loading with errors that say what does not fit."""

import os
import re


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


def _summarize(message):
    # Keras's message prints whole weight arrays; keep the count and the first mismatch.
    parts = []
    total = re.search(r"A total of (\d+) objects could not be loaded", message)
    if total:
        parts.append(f"{total[1]} layers could not be loaded.")
    first = re.search(
        r"variable\.shape=(\(.*?\)), Received: value\.shape=(\(.*?\))\. "
        r"Target variable: <Variable path=([^,]+)",
        message,
    )
    if first:
        parts.append(f"First mismatch: {first[3]} has shape {first[1]}, the file {first[2]}.")
    return " ".join(parts) or message.split("\n")[0][:500]
