"""Filling Keras models from state dicts of the original PyTorch code (no torch needed)."""

import collections
import logging

import numpy as np

from keras_hrvit.weights.torch_names import torch_variable_map

logger = logging.getLogger(__name__)

LoadResult = collections.namedtuple("LoadResult", ["missing", "unexpected"])

# Wrappers that training code adds in front of the original names.
_PREFIXES = ("module.", "backbone.")
_IGNORED_SUFFIXES = ("num_batches_tracked",)


def normalize_name(name):
    """Strips `module.` (DataParallel) and `backbone.` (MMSegmentation) from a parameter name."""
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name


def _to_numpy(value):
    # torch tensors are converted without importing torch.
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def load_torch_state_dict(model, state_dict, strict=True):
    """Loads a state dict of the original HRViT code into a backbone, classifier or segmenter.

    Args:
        model: a model of this package (`HRViTBackbone`, a classifier, a segmenter).
        state_dict: mapping of original parameter names (with or without `module.` or
            `backbone.`) to arrays (numpy arrays or torch tensors).
        strict: raise if a parameter of `model` is missing from `state_dict`.

    Returns:
        `LoadResult(missing, unexpected)`: sorted lists of original names that `model` needed but
        did not get, and that `state_dict` had but `model` has no place for.

    Raises:
        ValueError: a shape mismatch (nothing is assigned then) naming the Keras variable and the
            original parameter, or, with `strict`, missing parameters.

    Example:
    >>> state = dict(np.load("weights.npz"))
    >>> load_torch_state_dict(backbone, state)
    LoadResult(missing=[], unexpected=['head.classifier.bias', ...])
    """
    if not hasattr(state_dict, "items"):
        raise TypeError(
            f"`state_dict` must be a mapping of names to arrays, got {type(state_dict)}."
        )
    given = {}
    for name, value in state_dict.items():
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        given[normalize_name(name)] = value
    expected = torch_variable_map(model)
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))

    assignments, mismatches = [], []
    for name in sorted(set(expected) & set(given)):
        variable, to_keras = expected[name]
        source = _to_numpy(given[name])
        try:
            array = to_keras(source)
        except ValueError:
            array = source
        if tuple(array.shape) != tuple(variable.shape):
            mismatches.append(
                f"  {variable.path}: expects {tuple(variable.shape)}, but {name} has "
                f"{tuple(source.shape)}"
            )
        else:
            assignments.append((variable, array))
    if mismatches:
        raise ValueError(
            f"The checkpoint does not fit model {model.name!r} ({len(mismatches)} shape "
            "mismatches; is it for another variant?). Nothing was loaded.\n"
            + "\n".join(mismatches[:20])
        )
    if strict and missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise ValueError(
            f"The checkpoint lacks {len(missing)} parameters of model {model.name!r} "
            f"(is it for another variant or task?). Nothing was loaded. Missing: {shown}"
        )
    for variable, array in assignments:
        variable.assign(array.astype(variable.dtype))
    if unexpected:
        logger.warning(
            "%d checkpoint parameters have no place in %s and were ignored (e.g. %s).",
            len(unexpected),
            model.name,
            ", ".join(unexpected[:3]),
        )
    return LoadResult(missing, unexpected)
