"""Converting checkpoints of the original code (fixture state dicts) and the preset cache."""

import argparse
import json
import os

import keras
import numpy as np
import pytest
from reference import nhwc, reference, state_dict, tiny_backbone, tiny_config

import keras_hrvit
from keras_hrvit.convert import main
from keras_hrvit.models import presets
from keras_hrvit.weights import CheckpointError, cache, read_checkpoint

# Minutes per backend (full conversions); run with `make test-slow`.
pytestmark = pytest.mark.slow
TOLERANCE = 1e-4
SIZE = "224x224"


def _config_json():
    return json.dumps(tiny_config()[0])


def _classification_state():
    return state_dict("sd/")


def _mmseg_state():
    # MMSegmentation's layout, saved from a DataParallel model.
    weights = {f"module.backbone.{k}": v for k, v in state_dict("sd/").items() if "head." not in k}
    weights.update({f"module.{k}": v for k, v in state_dict("seg/").items()})
    return weights


def _save_torch(path, payload):
    torch = pytest.importorskip("torch")

    def convert(value):
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return (
            torch.from_numpy(np.ascontiguousarray(value))
            if isinstance(value, np.ndarray)
            else value
        )

    torch.save(convert(payload), path)


def _save_safetensors(path, state):
    header, offset, chunks = {}, 0, []
    for name, value in state.items():
        data = np.ascontiguousarray(value, "<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(value.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        chunks.append(data)
    encoded = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little") + encoded + b"".join(chunks))


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _classifier(weights):
    _, raw = tiny_config()
    return keras_hrvit.HRViTClassifier(
        tiny_backbone(),
        classes=10,
        head_channels=raw["head_channels"],
        classifier_activation=None,
        weights=weights,
    )


def _assert_classifier_matches(model):
    logits = keras.ops.convert_to_numpy(model(nhwc(reference()[f"in/{SIZE}"]), training=False))
    np.testing.assert_allclose(logits, reference()[f"logits/{SIZE}"], atol=TOLERANCE)


def _assert_segmenter_matches(model):
    logits = keras.ops.convert_to_numpy(model(nhwc(reference()[f"in/{SIZE}"]), training=False))
    np.testing.assert_allclose(logits, nhwc(reference()[f"seglogits/{SIZE}"]), atol=TOLERANCE)


def test_timm_checkpoint_converts_and_matches_reference(tmp_path):
    src, dst = tmp_path / "ckpt.pth", tmp_path / "tiny.weights.h5"
    # A timm trainer checkpoint: weights plus an argparse.Namespace the safe loader refuses.
    state = {f"module.{k}": v for k, v in _classification_state().items()}
    _save_torch(src, {"state_dict": state, "args": argparse.Namespace(lr=0.1), "epoch": 299})
    assert main([str(src), str(dst), "--config", _config_json()]) == str(dst)
    _assert_classifier_matches(_classifier(str(dst)))


def test_mmseg_checkpoint_converts_and_matches_reference(tmp_path):
    src, dst = tmp_path / "ckpt.pth", tmp_path / "seg.weights.h5"
    _save_torch(src, {"meta": {"iter": 160000}, "state_dict": _mmseg_state()})
    # Task, number of classes, head type and width are all read from the checkpoint.
    main([str(src), str(dst), "--config", _config_json()])
    model = keras_hrvit.HRViTSegmenter(tiny_backbone(), num_classes=7, head_channels=24)
    keras_hrvit.weights.load_weights_into(model, str(dst))
    _assert_segmenter_matches(model)


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_numpy_formats_read_without_torch(tmp_path, fmt):
    src, state = tmp_path / f"ckpt.{fmt}", _mmseg_state()
    if fmt == "npz":
        np.savez(src, **state)
    else:
        _save_safetensors(src, state)
    read = read_checkpoint(src)
    assert sorted(read) == sorted(k[len("module.") :] for k in state)
    for name, value in state.items():
        np.testing.assert_array_equal(read[name[len("module.") :]], value)


@pytest.mark.parametrize("fmt", ["pth", "npz", "safetensors"])
def test_truncated_checkpoint_is_a_clear_error(tmp_path, fmt):
    src, dst = tmp_path / f"ckpt.{fmt}", tmp_path / "out.weights.h5"
    state = _classification_state()
    if fmt == "pth":
        _save_torch(src, {"state_dict": state})
    elif fmt == "npz":
        np.savez(src, **state)
    else:
        _save_safetensors(src, state)
    _truncate(src)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        main([str(src), str(dst), "--config", _config_json()])
    assert os.listdir(tmp_path) == [src.name]


def test_checkpoint_of_another_config_names_the_layers(tmp_path):
    src, dst = tmp_path / "ckpt.npz", tmp_path / "out.weights.h5"
    np.savez(src, **_classification_state())
    other = dict(tiny_config()[0], channels=[16, 32, 48, 96])
    with pytest.raises(ValueError, match=r"does not fit (.|\n)*expects .*, but features\.\S+ has"):
        main([str(src), str(dst), "--config", json.dumps(other)])
    assert os.listdir(tmp_path) == [src.name]


def test_checkpoint_of_another_task_is_a_clear_error(tmp_path):
    src, dst = tmp_path / "ckpt.npz", tmp_path / "out.weights.h5"
    np.savez(src, **_mmseg_state())
    with pytest.raises(ValueError, match="segmentation checkpoint .*decode_head.*classification"):
        main([str(src), str(dst), "--config", _config_json(), "--task", "classification"])
    np.savez(src, **_classification_state())
    with pytest.raises(ValueError, match="classification checkpoint .*head.*segmentation model"):
        main([str(src), str(dst), "--model", "hrvit_b1_ade20k"])
    assert os.listdir(tmp_path) == [src.name]


@pytest.fixture
def tiny_preset(monkeypatch, tmp_path):
    # A preset of the fixture's size, so the cache is exercised without a full-size model.
    monkeypatch.setitem(presets.BACKBONE_PRESETS, "hrvit_tiny", tiny_config()[0])
    monkeypatch.setenv("KERAS_HRVIT_HOME", str(tmp_path / "cache"))
    return "hrvit_tiny"


def test_missing_preset_file_says_where_and_how(tiny_preset):
    path = cache.preset_weights_path("hrvit_b1_ade20k")
    with pytest.raises(FileNotFoundError) as info:
        cache.resolve_preset_weights("hrvit_b1_ade20k")
    assert path in str(info.value)
    assert "python -m keras_hrvit.convert CHECKPOINT.pth --model hrvit_b1_ade20k --cache" in str(
        info.value
    )
    with pytest.raises(FileNotFoundError, match="hrvit_tiny.weights.h5"):
        _classifier(tiny_preset)


def test_preset_cache_round_trip_and_sha_mismatch(tiny_preset, tmp_path):
    # A bare state dict in .npz, converted into the cache and loaded by preset name.
    src = tmp_path / "ckpt.npz"
    np.savez(src, **_classification_state())
    path = main([str(src), "--model", tiny_preset, "--cache"])
    assert path == cache.preset_weights_path(tiny_preset)
    assert os.path.exists(path + ".sha256")
    _assert_classifier_matches(_classifier(tiny_preset))

    with open(path, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ValueError, match="SHA-256"):
        _classifier(tiny_preset)
