"""Preset folders: save, load, hash checks and hub handles, on a tiny model and without network."""

import json
import os
import sys

import keras
import numpy as np
import pytest

from keras_hrvit import preset_io

pytestmark = pytest.mark.backend


@keras.saving.register_keras_serializable(package="keras_hrvit_tests")
class TinyNet(keras.Model):
    """A functional model with constructor arguments, like the models presets hold."""

    def __init__(self, units=4, num_outputs=2, **kwargs):
        inputs = keras.Input((3,))
        x = keras.layers.Dense(units, activation="relu")(inputs)
        outputs = keras.layers.Dense(num_outputs)(x)
        super().__init__(inputs, outputs, **kwargs)
        self.units = units
        self.num_outputs = num_outputs

    def get_config(self):
        return {
            "units": self.units,
            "num_outputs": self.num_outputs,
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_hrvit_tests")
class OtherNet(TinyNet):
    pass


def _inputs():
    return np.random.default_rng(0).normal(size=(5, 3)).astype("float32")


def _saved(path, units=4):
    model = TinyNet(units=units, name="tiny")
    preset_io.save_to_preset(model, path)
    return model


def _one_line(error):
    assert "\n" not in str(error.value), str(error.value)
    return str(error.value)


def test_round_trip_gives_identical_outputs_and_keras_hub_layout(tmp_path):
    preset = tmp_path / "presets" / "tiny"
    model = _saved(preset)

    assert sorted(os.listdir(preset)) == ["config.json", "metadata.json", "model.weights.h5"]
    config = json.loads((preset / "config.json").read_text())
    assert config["registered_name"] == "keras_hrvit_tests>TinyNet"
    assert config["config"]["units"] == 4
    metadata = json.loads((preset / "metadata.json").read_text())
    assert metadata["class_name"] == "keras_hrvit_tests>TinyNet"
    assert metadata["keras_version"] == keras.__version__
    assert metadata["parameter_count"] == model.count_params()
    assert metadata["weights_file"] == "model.weights.h5"
    assert len(metadata["weights_sha256"]) == 64
    assert metadata["date"].endswith("+00:00")

    loaded = preset_io.load_preset_model(str(preset), expected_class=TinyNet)
    assert type(loaded) is TinyNet
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(_inputs())),
        keras.ops.convert_to_numpy(model(_inputs())),
    )
    # Without its weights the model is freshly initialized: the outputs above came from the file.
    fresh = preset_io.load_preset_model(str(preset), load_weights=False)
    assert not np.allclose(
        keras.ops.convert_to_numpy(fresh(_inputs())),
        keras.ops.convert_to_numpy(model(_inputs())),
    )


# Keras warns about the layers it skips before it fails on the mismatched shapes.
@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_config_overrides_and_no_weights(tmp_path):
    _saved(tmp_path)
    model = preset_io.load_preset_model(tmp_path, load_weights=False, config_overrides={"units": 7})
    assert model.units == 7
    # Other weights no longer fit: the friendly error of load_weights_into says so.
    with pytest.raises(ValueError, match="does not fit model"):
        preset_io.load_preset_model(tmp_path, config_overrides={"units": 7})


def test_wrong_expected_class_is_refused(tmp_path):
    _saved(tmp_path)
    with pytest.raises(ValueError, match="holds a 'keras_hrvit_tests>TinyNet', not a OtherNet"):
        preset_io.load_preset_model(tmp_path, expected_class=OtherNet)


def test_corrupted_weights_are_refused_naming_file_and_hashes(tmp_path):
    _saved(tmp_path)
    metadata = json.loads((tmp_path / "metadata.json").read_text())
    weights = tmp_path / "model.weights.h5"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))

    with pytest.raises(ValueError) as error:
        preset_io.load_preset_model(tmp_path)
    message = _one_line(error)
    assert str(weights) in message
    assert metadata["weights_sha256"] in message
    assert "got " in message


def test_missing_weights_file_is_named(tmp_path):
    _saved(tmp_path)
    os.remove(tmp_path / "model.weights.h5")
    with pytest.raises(FileNotFoundError, match="model.weights.h5"):
        preset_io.load_preset_model(tmp_path)
    assert preset_io.load_preset_model(tmp_path, load_weights=False).units == 4


def test_truncated_config_gives_one_line_error(tmp_path):
    _saved(tmp_path)
    config = tmp_path / "config.json"
    config.write_text(config.read_text()[:40])
    with pytest.raises(ValueError) as error:
        preset_io.load_preset_config(tmp_path)
    assert str(config) in _one_line(error)
    assert "truncated or not JSON" in str(error.value)


def test_missing_metadata_is_named(tmp_path):
    _saved(tmp_path)
    os.remove(tmp_path / "metadata.json")
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        preset_io.load_preset_config(tmp_path)


@pytest.mark.parametrize("fail", ["save_weights", "count_params"])
def test_save_interrupted_between_files_is_refused(tmp_path, monkeypatch, fail):
    _saved(tmp_path, units=4)
    second = TinyNet(units=6, name="tiny")

    def crash(*args, **kwargs):
        raise RuntimeError("killed")

    # `save_weights` fails after config.json; `count_params` after the weights file.
    monkeypatch.setattr(second, fail, crash)
    with pytest.raises(RuntimeError, match="killed"):
        preset_io.save_to_preset(second, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "metadata.json", "model.weights.h5"]
    with pytest.raises(ValueError, match="SHA-256") as error:
        preset_io.load_preset_model(tmp_path)
    _one_line(error)


def test_hf_handle_downloads_with_snapshot_download(tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    model = _saved(tmp_path)
    calls = []

    def snapshot_download(repo_id, revision=None, **kwargs):
        calls.append((repo_id, revision))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert preset_io.resolve_preset("hf://user/repo@v1") == str(tmp_path)
    loaded = preset_io.load_preset_model("hf://user/repo")
    assert calls == [("user/repo", "v1"), ("user/repo", None)]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(_inputs())),
        keras.ops.convert_to_numpy(model(_inputs())),
    )


def test_kaggle_handle_downloads_with_model_download(tmp_path, monkeypatch):
    kagglehub = pytest.importorskip("kagglehub")
    _saved(tmp_path)
    calls = []

    def model_download(handle, *args, **kwargs):
        calls.append(handle)
        return str(tmp_path)

    monkeypatch.setattr(kagglehub, "model_download", model_download)
    model = preset_io.load_preset_model("kaggle://owner/hrvit/keras/tiny/2")
    assert calls == ["owner/hrvit/keras/tiny/2"]
    assert model.units == 4


def test_missing_hub_library_names_the_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match="pip install huggingface_hub"):
        preset_io.resolve_preset("hf://user/repo")


@pytest.mark.parametrize(
    "handle", ["gs://bucket/preset", "http://example.com/preset", "hf://user", "kaggle://a/b"]
)
def test_unknown_scheme_or_malformed_handle_is_refused(handle):
    with pytest.raises(ValueError) as error:
        preset_io.resolve_preset(handle)
    message = _one_line(error)
    assert handle in message
    if handle.startswith(("gs", "http")):
        assert "hf://owner/name" in message and "kaggle://" in message


def test_folder_without_config_is_refused(tmp_path):
    (tmp_path / "model.weights.h5").write_bytes(b"")
    with pytest.raises(ValueError) as error:
        preset_io.resolve_preset(tmp_path)
    message = _one_line(error)
    assert str(tmp_path) in message and "config.json" in message


def test_other_names_resolve_to_none(tmp_path):
    assert preset_io.resolve_preset("hrvit_b1") is None
    assert preset_io.resolve_preset(str(tmp_path / "missing")) is None
    with pytest.raises(ValueError, match="'hrvit_b1' was not found"):
        preset_io.load_preset_model("hrvit_b1")
