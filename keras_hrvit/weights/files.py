"""Keras weight files: loading with errors that say what does not fit."""

import os

import keras


def load_weights_into(model, path):
    """Loads a `.weights.h5` or `.keras` file into `model`, or raises a clear error.

    Example:
    >>> load_weights_into(model, "hrvit_b1_ade20k.weights.h5")
    """
    path = os.fspath(path)
    if not path.endswith((".weights.h5", ".keras")):
        raise ValueError(f"Weights must be a `.weights.h5` or `.keras` file, got {path!r}.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"Weights file {path!r} does not exist.")
    try:
        model.load_weights(path)
    except (ValueError, KeyError) as error:
        raise ValueError(
            f"The weights file {path!r} does not fit model {model.name!r} (a file for another "
            f"variant, head or number of classes?): {error}"
        ) from error
