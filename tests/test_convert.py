"""Converting checkpoints of the original code (fixture state dicts) into weights and presets."""

import argparse
import json
import os

import keras
import numpy as np
import pytest
from reference import nhwc, reference, state_dict, tiny_backbone, tiny_config

import keras_hrvit
from keras_hrvit.cli.convert import main
from keras_hrvit.weights import CheckpointError, load_weights_into, read_checkpoint

# Minutes per backend (full conversions); run with `make test-slow`.
pytestmark = pytest.mark.slow
TOLERANCE = 1e-4
SIZE = "224x224"


def _config_json():
    # The fixture holds normalized images: the models' own normalization stays off.
    return json.dumps(dict(tiny_config()[0], include_preprocessing=False))


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
    model = keras_hrvit.HRViTClassifier(
        tiny_backbone(include_preprocessing=False),
        classes=10,
        head_channels=raw["head_channels"],
        classifier_activation=None,
    )
    load_weights_into(model, weights)
    return model


def _assert_classifier_matches(model):
    logits = keras.ops.convert_to_numpy(model(nhwc(reference()[f"in/{SIZE}"]), training=False))
    np.testing.assert_allclose(logits, reference()[f"logits/{SIZE}"], atol=TOLERANCE)


def _assert_segmenter_matches(model):
    # The reference is the head's output at 1/4; the segmenter resizes it to the image.
    features = model.backbone(nhwc(reference()[f"in/{SIZE}"]), training=False)
    logits = keras.ops.convert_to_numpy(model.decode_head(features, training=False))
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
    model = keras_hrvit.HRViTSegmenter(
        tiny_backbone(include_preprocessing=False), num_classes=7, head_channels=24
    )
    load_weights_into(model, str(dst))
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


def test_preset_dir_loads_with_from_preset_and_refuses_corrupted_weights(tmp_path):
    # A bare classification state dict in .npz, converted into a preset folder.
    src, preset = tmp_path / "ckpt.npz", tmp_path / "classifier"
    np.savez(src, **_classification_state())
    args = [str(src), "--config", _config_json(), "--preset-dir", str(preset)]
    assert main(args) == str(preset)
    assert sorted(os.listdir(preset)) == ["config.json", "metadata.json", "model.weights.h5"]
    classifier = keras_hrvit.HRViTClassifier.from_preset(str(preset), classifier_activation=None)
    _assert_classifier_matches(classifier)
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(args)

    # An MMSegmentation checkpoint: head type, width and classes come from the checkpoint.
    src, preset = tmp_path / "seg.npz", tmp_path / "segmenter"
    np.savez(src, **_mmseg_state())
    main([str(src), "--config", _config_json(), "--preset-dir", str(preset)])
    _assert_segmenter_matches(keras_hrvit.HRViTSegmenter.from_preset(str(preset)))
    with pytest.raises(ValueError, match="holds a .*not a HRViTSegmenter"):
        keras_hrvit.HRViTSegmenter.from_preset(str(tmp_path / "classifier"))

    weights = preset / "model.weights.h5"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        keras_hrvit.HRViTSegmenter.from_preset(str(preset))


def test_dst_and_preset_dir_are_exclusive(tmp_path):
    src = tmp_path / "ckpt.npz"
    np.savez(src, **_classification_state())
    both = [str(src), str(tmp_path / "out.weights.h5"), "--preset-dir", str(tmp_path / "p")]
    for args in (both, [str(src)]):
        with pytest.raises(ValueError, match="exactly one of DST"):
            main([*args, "--config", _config_json()])
    assert os.listdir(tmp_path) == [src.name]
