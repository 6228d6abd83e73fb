"""Preset folders in KerasHub's layout: save a model to one, and load a model from one.

A preset folder holds three files:

- `config.json`: `keras.saving.serialize_keras_object(model)`, the class and its constructor
  arguments;
- `model.weights.h5`: `model.save_weights`;
- `metadata.json`: versions, registered class name, parameter count, date, and the SHA-256 of
  the weights file and of `config.json`.

A folder may be local, or a Hugging Face (`hf://owner/name[@revision]`) or Kaggle
(`kaggle://owner/model/framework/variation[/version]`) model repository that is downloaded
first. Loading refuses a folder whose files do not match the hashes in `metadata.json`, so a
save interrupted between two files, or a corrupted download, is never loaded silently.
"""

import datetime
import json
import os

import keras

from keras_hrvit.files import atomic_write, file_sha256, write_text
from keras_hrvit.weights.files import load_weights_into

CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "model.weights.h5"

_ALLOWED_HANDLES = (
    "a local preset folder, hf://owner/name[@revision], "
    "kaggle://owner/model/framework/variation[/version], or a built-in preset name"
)


def save_to_preset(model, preset_dir):
    """Writes `model` to the preset folder `preset_dir` (created if missing).

    Each file goes to a temporary name first and is then moved into place. `metadata.json` is
    written last and holds the hashes of the two other files, so a save interrupted between
    files leaves a folder that `load_preset_model` refuses rather than one that loads a config
    with weights of another save.

    Example:
    >>> save_to_preset(model, "presets/my_hrvit")
    >>> model = load_preset_model("presets/my_hrvit")
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model, got {type(model).__name__}.")
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} is not built: call it on data (or `build`) before "
            "save_to_preset, so that its weights exist."
        )
    preset_dir = os.fspath(preset_dir)
    os.makedirs(preset_dir, exist_ok=True)
    # Serialize before touching the folder: a model that cannot be serialized changes nothing.
    config_text = json.dumps(keras.saving.serialize_keras_object(model), indent=4)

    write_text(os.path.join(preset_dir, CONFIG_FILE), config_text)
    digests = {}

    def write_weights(tmp):
        model.save_weights(tmp)
        # Hash the very file that is moved into place, not a second save of the model.
        digests["weights"] = file_sha256(tmp)

    atomic_write(os.path.join(preset_dir, WEIGHTS_FILE), write_weights, ".weights.h5")

    from keras_hrvit import __version__

    metadata = {
        "keras_version": keras.__version__,
        "keras_hrvit_version": __version__,
        "class_name": keras.saving.get_registered_name(type(model)),
        "parameter_count": int(model.count_params()),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": digests["weights"],
        "config_sha256": file_sha256(os.path.join(preset_dir, CONFIG_FILE)),
    }
    metadata_text = json.dumps(metadata, indent=4)
    write_text(os.path.join(preset_dir, METADATA_FILE), metadata_text)


def resolve_preset(handle):
    """Returns the local folder of a preset handle, downloading it first if it is on a hub.

    `handle` is a local folder holding `config.json`, `hf://owner/name[@revision]` (downloaded
    with `huggingface_hub.snapshot_download`), or
    `kaggle://owner/model/framework/variation[/version]` (downloaded with
    `kagglehub.model_download`). Anything else that is not an existing folder, such as a
    built-in preset name, gives None.

    Example:
    >>> resolve_preset("hf://keras-hrvit/hrvit_b1@main")
    '/home/me/.cache/huggingface/hub/models--keras-hrvit--hrvit_b1/snapshots/...'
    >>> resolve_preset("hrvit_b1") is None
    True
    """
    if isinstance(handle, os.PathLike):
        handle = os.fspath(handle)
    if not isinstance(handle, str):
        raise TypeError(f"Preset handle must be a string or path, got {type(handle).__name__}.")
    if "://" in handle:
        scheme, rest = handle.split("://", 1)
        if scheme == "hf":
            return _check_folder(_download_hf(handle, rest), handle)
        if scheme == "kaggle":
            return _check_folder(_download_kaggle(handle, rest), handle)
        raise ValueError(
            f"Preset handle {handle!r} has an unknown scheme {scheme + '://'!r}; allowed: "
            f"{_ALLOWED_HANDLES}."
        )
    if os.path.isdir(handle):
        return _check_folder(handle, handle)
    return None


def load_preset_config(preset_dir):
    """Reads `config.json` and `metadata.json` of a preset folder; returns `(config, metadata)`.

    `config.json` must match the `config_sha256` that `metadata.json` records (when it records
    one), so a config rewritten after its weights were saved is refused.

    Example:
    >>> config, metadata = load_preset_config("presets/my_hrvit")
    >>> config["class_name"], metadata["weights_file"]
    ('HRViTBackbone', 'model.weights.h5')
    """
    preset_dir = os.fspath(preset_dir)
    config_path = os.path.join(preset_dir, CONFIG_FILE)
    metadata_path = os.path.join(preset_dir, METADATA_FILE)
    config = _read_json(config_path)
    metadata = _read_json(metadata_path)
    if not {"class_name", "config"} <= config.keys() or not isinstance(config["config"], dict):
        raise ValueError(
            f"{config_path} is not a serialized Keras object: it needs a 'class_name' and a "
            "'config' object, as written by save_to_preset."
        )
    expected = metadata.get("config_sha256")
    if expected is not None:
        actual = file_sha256(config_path)
        if actual != str(expected).lower():
            raise ValueError(
                f"{config_path} does not match {METADATA_FILE} (expected SHA-256 {expected}, "
                f"got {actual}): the save was interrupted or the file was edited; save the "
                "preset again."
            )
    return config, metadata


def verify_preset_weights(preset_dir, metadata):
    """Checks the preset's weights file against `metadata["weights_sha256"]`; returns its path.

    Example:
    >>> config, metadata = load_preset_config("presets/my_hrvit")
    >>> model.load_weights(verify_preset_weights("presets/my_hrvit", metadata))
    """
    preset_dir = os.fspath(preset_dir)
    metadata_path = os.path.join(preset_dir, METADATA_FILE)
    name = metadata.get("weights_file", WEIGHTS_FILE)
    # The name comes from a possibly downloaded file: keep it inside the preset folder.
    if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
        raise ValueError(
            f"{metadata_path} has weights_file={name!r}; it must be a file name inside the "
            f"preset folder, such as {WEIGHTS_FILE!r}."
        )
    if not name.endswith(".weights.h5"):
        raise ValueError(
            f"{metadata_path} has weights_file={name!r}; only '.weights.h5' files are allowed."
        )
    path = os.path.join(preset_dir, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Preset weights file {path} does not exist.")
    expected = metadata.get("weights_sha256")
    if not isinstance(expected, str) or not expected:
        raise ValueError(
            f"{metadata_path} has no 'weights_sha256', so {path} cannot be checked; save the "
            "preset with save_to_preset."
        )
    actual = file_sha256(path)
    if actual != expected.lower():
        raise ValueError(
            f"Preset weights file {path} is corrupted or from another save: expected SHA-256 "
            f"{expected}, got {actual}."
        )
    return path


def load_preset_model(handle_or_dir, load_weights=True, expected_class=None, config_overrides=None):
    """Builds the model of a preset folder or hub handle, with its weights unless told not to.

    `config_overrides` replaces top-level constructor arguments of `config.json`;
    `expected_class` (a class or tuple of classes) refuses a preset holding another kind of
    model.

    Example:
    >>> model = load_preset_model("hf://keras-hrvit/hrvit_b1", expected_class=HRViTBackbone)
    >>> model = load_preset_model("presets/my_hrvit", config_overrides={"dtype": "bfloat16"})
    """
    preset_dir = resolve_preset(handle_or_dir)
    if preset_dir is None:
        raise ValueError(f"Preset {handle_or_dir!r} was not found; allowed: {_ALLOWED_HANDLES}.")
    config, metadata = load_preset_config(preset_dir)
    config_path = os.path.join(preset_dir, CONFIG_FILE)
    if config_overrides:
        if not isinstance(config_overrides, dict):
            raise TypeError(
                f"`config_overrides` must be a dict of constructor arguments, got "
                f"{type(config_overrides).__name__}."
            )
        config = {**config, "config": {**config["config"], **config_overrides}}
    held = config.get("registered_name") or config["class_name"]
    if expected_class is not None:
        # Refuse before building: a full model may take long to build for nothing.
        cls = keras.saving.get_registered_object(held)
        if isinstance(cls, type) and not issubclass(cls, expected_class):
            raise _wrong_class(preset_dir, held, expected_class)
    # Check the weights first too, so a corrupted download fails before the build.
    weights_path = verify_preset_weights(preset_dir, metadata) if load_weights else None
    try:
        model = keras.saving.deserialize_keras_object(config)
    except (TypeError, ValueError) as error:
        # Keras's message repeats the whole config; its first line says what went wrong.
        reason = str(error).strip().split("\n")[0][:300]
        raise ValueError(f"Cannot build {held!r} from {config_path}: {reason}") from None
    if expected_class is not None and not isinstance(model, expected_class):
        raise _wrong_class(preset_dir, held, expected_class)
    if weights_path is not None:
        load_weights_into(model, weights_path)
    return model


def _read_json(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Preset file {path} does not exist.")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"Preset file {path} is truncated or not JSON ({error}); save the preset again."
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"Preset file {path} must hold a JSON object, got {type(data).__name__}.")
    return data


def _check_folder(folder, handle):
    folder = os.fspath(folder)
    if not os.path.isfile(os.path.join(folder, CONFIG_FILE)):
        raise ValueError(
            f"Preset folder {folder} (from {handle!r}) has no {CONFIG_FILE}; a preset folder "
            f"holds {CONFIG_FILE}, {WEIGHTS_FILE} and {METADATA_FILE}, as save_to_preset writes."
        )
    return folder


def _download_hf(handle, rest):
    repo_id, at, revision = rest.partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or (at and not revision):
        raise ValueError(
            f"Hugging Face preset handle {handle!r} must be hf://owner/name or "
            "hf://owner/name@revision."
        )
    try:
        import huggingface_hub
    except ImportError:
        raise ImportError(
            f"Loading {handle!r} needs the huggingface_hub package: pip install huggingface_hub"
        ) from None
    return huggingface_hub.snapshot_download(repo_id=repo_id, revision=revision or None)


def _download_kaggle(handle, rest):
    parts = rest.split("/")
    if len(parts) not in (4, 5) or not all(parts):
        raise ValueError(
            f"Kaggle preset handle {handle!r} must be "
            "kaggle://owner/model/framework/variation[/version]."
        )
    try:
        import kagglehub
    except ImportError:
        raise ImportError(
            f"Loading {handle!r} needs the kagglehub package: pip install kagglehub"
        ) from None
    return kagglehub.model_download(rest)


def _wrong_class(preset_dir, held, expected_class):
    classes = expected_class if isinstance(expected_class, tuple) else (expected_class,)
    asked = " or ".join(cls.__name__ for cls in classes)
    return ValueError(f"Preset {preset_dir} holds a {held!r}, not a {asked} as was asked.")
