"""Bad input at the library's doors: each case gets one line naming the file or argument.

Each test is one row of the fault table (see CONTRIBUTING.md, "Faults"): the input, and the
error it must get instead of a traceback from deep inside h5py, zipfile or pickle.
"""

import numpy as np
import pytest
from reference import micro_backbone

import keras_hrvit
from keras_hrvit.weights.files import load_weights_into


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small classifier's weights and model files, whole."""
    root = tmp_path_factory.mktemp("saved")
    model = keras_hrvit.HRViTClassifier(micro_backbone(), classes=3, head_channels=(2, 2, 2, 2))
    model.save_weights(root / "ok.weights.h5")
    model.save(root / "ok.keras")
    return root


def _classifier():
    return keras_hrvit.HRViTClassifier(micro_backbone(), classes=3, head_channels=(2, 2, 2, 2))


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("text.weights.h5", b"hello", "is not an HDF5 weights file that can be read"),
        ("text.keras", b"hello", r"is not a Keras `\.keras` zip file that can be read"),
        ("truncated.weights.h5", "ok.weights.h5", "truncated file"),
        ("truncated.keras", "ok.keras", r"is not a Keras `\.keras` zip file"),
    ],
)
def test_unreadable_weights_files_are_named(saved, tmp_path, name, content, expected):
    path = tmp_path / name
    if isinstance(content, str):  # the first 4 kB of a whole file
        content = (saved / content).read_bytes()[:4096]
    path.write_bytes(content)
    model = _classifier()
    before = model.get_weights()
    with pytest.raises(ValueError, match=expected) as error:
        load_weights_into(model, path)
    assert repr(str(path)) in str(error.value) and "\n" not in str(error.value)
    for a, b in zip(before, model.get_weights()):  # the model is left as it was
        np.testing.assert_array_equal(a, b)


def test_a_text_file_named_pth_is_not_a_checkpoint(tmp_path):
    pytest.importorskip("torch")
    from keras_hrvit.weights.checkpoints import CheckpointError, read_checkpoint

    path = tmp_path / "notes.pth"
    path.write_text("hello world, not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a readable PyTorch checkpoint") as error:
        read_checkpoint(path)
    assert repr(str(path)) in str(error.value)
