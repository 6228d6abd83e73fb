"""The command lines' extras: `--dataset tfds:NAME`, palette PNG masks, `history.csv`,
TensorBoard without TensorFlow, progress bars and the `--help` examples."""

import csv
import json
import os
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image
from reference import fast_compile_flags, micro_backbone, register_micro_presets
from tutorials import MOCK_EXAMPLES, _mock_as_dataset

import keras_hrvit
from keras_hrvit.cli import convert as convert_cli
from keras_hrvit.cli import evaluate as evaluate_cli
from keras_hrvit.cli import predict as predict_cli
from keras_hrvit.cli import train as train_cli
from keras_hrvit.data import IGNORE_LABEL, load_folder, load_tfds_segmentation
from keras_hrvit.tasks.segmentation import load_segmentation_split
from keras_hrvit.training import callbacks as callbacks_module
from keras_hrvit.training.callbacks import AtomicCSVLogger, standard_callbacks


@pytest.fixture
def mocked_tfds():
    """TFDS builders yield `tutorials.MOCK_EXAMPLES` consistent image/mask pairs, offline."""
    with tfds.testing.mock_data(as_dataset_fn=_mock_as_dataset):
        yield


def _exit_code(main, argv):
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


# --- tfds:NAME ----------------------------------------------------------------------------------


def test_tfds_loader_picks_the_mask_feature_and_reduces_zero_label(mocked_tfds):
    raw = list(tfds.load("oxford_iiit_pet", split="train").as_numpy_iterator())
    pairs = list(load_tfds_segmentation("oxford_iiit_pet", reduce_zero_label=True))
    assert len(pairs) == len(raw) == MOCK_EXAMPLES
    for example, (image, mask) in zip(raw, pairs):
        trimap = example["segmentation_mask"][..., 0]  # pet 1, background 2, border 3
        assert image.dtype == tf.uint8 and image.shape == (48, 64, 3)
        assert mask.dtype == tf.uint8 and mask.shape == (48, 64)
        np.testing.assert_array_equal(image, example["image"])
        np.testing.assert_array_equal(mask, trimap - 1)
    assert set(np.unique([m.numpy() for _, m in pairs])) == {0, 1, 2}

    # An RGB annotation (scene_parse150's, the instance track's masks: not ADE20K's 150
    # classes, see load_ade20k): channel 0 holds the label.
    raw = next(tfds.load("scene_parse150", split="test").as_numpy_iterator())
    _, mask = next(iter(load_tfds_segmentation("scene_parse150", "test")))
    np.testing.assert_array_equal(mask, raw["annotation"][..., 0])

    # Through `load_segmentation_split`, with the tfds split apart from the role.
    ds = load_segmentation_split(
        "tfds:oxford_iiit_pet", "validation", tfds_split="test", reduce_zero_label=True
    )
    assert int(next(iter(ds))[1].numpy().max()) <= 2


def test_tfds_loader_names_wrong_features_and_splits(mocked_tfds, monkeypatch):
    features = "file_name, head_bbox, image, label, segmentation_mask, species"
    with pytest.raises(ValueError) as error:
        load_tfds_segmentation("oxford_iiit_pet", mask_key="trimap")
    assert str(error.value) == (
        f"`mask_key` 'trimap' is not a feature of tfds builder 'oxford_iiit_pet'; its features "
        f"are: {features}."
    )
    with pytest.raises(ValueError, match="`mask_key` 'label' .* is a ClassLabel, not a mask"):
        load_tfds_segmentation("oxford_iiit_pet", mask_key="label")
    with pytest.raises(ValueError, match="`image_key` 'photo' is not an image feature"):
        load_tfds_segmentation("oxford_iiit_pet", image_key="photo")
    with pytest.raises(ValueError, match="`name` 'no_such_builder' is not a TensorFlow Datasets"):
        load_tfds_segmentation("no_such_builder")

    # Splits are known once the data is prepared; the mock prepares nothing, so give it two.
    split = types.SimpleNamespace(num_bytes=0)
    splits = property(lambda self: {"train": split, "test": split})
    monkeypatch.setattr(tfds.core.DatasetInfo, "splits", splits)
    with pytest.raises(ValueError) as error:
        load_tfds_segmentation("oxford_iiit_pet", "validation")
    assert str(error.value) == (
        "`split` 'validation': tfds builder 'oxford_iiit_pet' has no split 'validation'; its "
        "splits are: test, train."
    )
    assert len(list(load_tfds_segmentation("oxford_iiit_pet", "train[:50%]+test"))) == MOCK_EXAMPLES


def test_wide_masks_outside_uint8_stop_with_one_line():
    from keras_hrvit.data.loaders import _check_uint8_labels
    from keras_hrvit.data.segmentation import bad_example_message

    def checked(labels, dtype):
        # As in the loader: inside a tf.data map, where the check is a graph assertion.
        ds = tf.data.Dataset.from_tensors(tf.constant(labels, dtype))
        return ds.map(lambda mask: _check_uint8_labels(mask, "feature m of tfds builder b"))

    (kept,) = list(checked([[0, 7], [255, 3]], tf.int64))
    assert kept.dtype == tf.uint8 and kept.numpy().tolist() == [[0, 7], [255, 3]]
    for labels, found in (([[1, 300]], 300), ([[-1, 2]], -1)):
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            list(checked(labels, tf.int32))
        assert bad_example_message(error.value) == (
            f"mask has label {found}, outside 0-255 (feature m of tfds builder b)"
        )


def _train_argv(output_dir, *extra):
    return [
        "segmentation",
        "--dataset", "tfds:oxford_iiit_pet",
        "--model", "test_micro_shapes",
        "--crop-size", "64",
        "--batch-size", "2",
        "--epochs", "1",
        "--steps-per-epoch", "1",
        "--val-steps", "1",
        "--lr", "1e-3",
        "--warmup-steps", "1",
        "--verbose", "0",
        "--no-tensorboard",
        *fast_compile_flags(),
        "--output-dir", str(output_dir),
        *extra,
    ]  # fmt: skip


def test_train_and_evaluate_a_tfds_dataset(mocked_tfds, monkeypatch, tmp_path, capsys):
    register_micro_presets(monkeypatch)
    run = tmp_path / "run"
    argv = _train_argv(run, "--reduce-zero-label", "--num-classes", "3", "--val-split", "test")
    assert _exit_code(train_cli.main, argv) == 0
    settings = json.loads((run / "train_args.json").read_text())
    assert settings["dataset"] == "tfds:oxford_iiit_pet" and settings["reduce_zero_label"]
    with open(run / "history.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["epoch"] == "1" and 0.0 <= float(row["val_mean_iou"]) <= 1.0
    (record,) = json.loads((run / "history.json").read_text())
    assert float(row["loss"]) == pytest.approx(record["loss"])

    # evaluate takes --reduce-zero-label and --val-split from the run's train_args.json.
    model = str(run / "model.keras")
    argv = [model, "--dataset", "tfds:oxford_iiit_pet", "--max-batches", "2", "--no-progress"]
    argv += ["--output-dir", str(tmp_path / "eval")]
    assert evaluate_cli.main(argv) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["num_images"] == 2 and len(report["per_class"]) == 3
    assert report["num_pixels"] == 2 * 48 * 64  # classes 0-2, none ignored

    # Without the run's settings the trimap labels 1-3 do not fit 3 classes: one line, exit 1.
    os.remove(run / "train_args.json")
    capsys.readouterr()
    assert evaluate_cli.main(argv) == 1
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert "error: mask has label 3, but num_classes is 3" in line


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "--dataset tfds:oxford_iiit_pet needs --num-classes."),
        (
            ["--num-classes", "3", "--mask-key", "trimap"],
            "--dataset tfds:oxford_iiit_pet: --mask-key 'trimap' is not a feature of tfds "
            "builder 'oxford_iiit_pet'; its features are: file_name, head_bbox, image, label, "
            "segmentation_mask, species.",
        ),
    ],
)
def test_train_refuses_tfds_options_that_cannot_work(
    mocked_tfds, monkeypatch, tmp_path, capsys, extra, message
):
    register_micro_presets(monkeypatch)
    argv = _train_argv(tmp_path / "run", *extra)
    argv[argv.index("test_micro_shapes")] = "test_micro"  # a backbone: no classes of its own
    assert _exit_code(train_cli.main, argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"error: {message}")


@pytest.mark.parametrize(
    "dataset, extra, message",
    [
        ("bogus", [], "Unknown dataset 'bogus': expected one of shapes, ade20k, cityscapes"),
        ("tfds:", [], "Unknown dataset 'tfds:'"),
        ("shapes", ["--mask-key", "mask"], "--mask-key applies to --dataset tfds:NAME, not shapes"),
        ("shapes", ["--val-split", "test"], "--val-split applies to --dataset tfds:NAME"),
        ("shapes", ["--reduce-zero-label"], "--reduce-zero-label applies to --dataset folder"),
        ("ade20k", ["--reduce-zero-label"], "(its loader always reduces it)"),
    ],
)
def test_dataset_options_are_checked_first(tmp_path, capsys, dataset, extra, message):
    argv = ["segmentation", "--dataset", dataset, "--model", "hrvit_tiny_shapes"]
    argv += ["--output-dir", str(tmp_path / "run"), *extra]
    assert _exit_code(train_cli.main, argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --- palette PNG masks --------------------------------------------------------------------------


def _save_palette_png(path, indices):
    image = Image.fromarray(indices, mode="P")
    # Colours unrelated to the indices, as in VOC (class 1 is dark red, the border cream).
    colours = np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)
    image.putpalette(colours.ravel().tolist())
    image.save(path)
    assert Image.open(path).mode == "P"


def test_palette_masks_are_read_as_class_indices(tmp_path):
    images, masks = tmp_path / "JPEGImages", tmp_path / "SegmentationClass"
    images.mkdir(), masks.mkdir()
    voc = np.zeros((6, 8), np.uint8)
    voc[1:5, 2:6] = 15  # a person
    voc[1:5, [1, 6]] = 255  # its border, ignored
    voc[0, 0] = 1
    _save_palette_png(masks / "voc.png", voc)
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)  # an "L" mask next to it
    Image.fromarray(gray, mode="L").save(masks / "gray.png")
    for name in ("voc", "gray"):
        Image.fromarray(np.full((6, 8, 3), 90, np.uint8)).save(images / f"{name}.jpg")

    pairs = dict(zip(("gray", "voc"), load_folder(images, masks).as_numpy_iterator()))
    np.testing.assert_array_equal(pairs["voc"][1], voc)
    np.testing.assert_array_equal(pairs["gray"][1], gray)
    assert pairs["voc"][0].shape == (6, 8, 3)

    # reduce_zero_label keeps the border at 255 instead of making it class 254.
    (_, reduced), _ = load_folder(images, masks, reduce_zero_label=True).as_numpy_iterator()
    expected = np.where((gray == 0) | (gray == IGNORE_LABEL), IGNORE_LABEL, gray - 1)
    np.testing.assert_array_equal(reduced, expected)
    _, (_, reduced) = load_folder(images, masks, reduce_zero_label=True).as_numpy_iterator()
    np.testing.assert_array_equal(reduced[voc == 255], 255)
    np.testing.assert_array_equal(reduced[voc == 15], 14)


# --- history.csv and TensorBoard -----------------------------------------------------------------


def _mlp():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    return model


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


class _CrashAtEpochEnd(keras.callbacks.Callback):
    """A kill after the CSV row of epoch 3 is written but before its resume state is."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 2:
            raise RuntimeError("simulated kill")


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_history_csv_is_rewritten_whole_and_a_resume_drops_redone_epochs(tmp_path):
    x, y = _data()
    fit = dict(batch_size=4, epochs=4, shuffle=False, verbose=0)
    callbacks = standard_callbacks(tmp_path, monitor="loss", tensorboard=False)
    assert [type(c).__name__ for c in callbacks][-3:] == [
        "TrainingCurves",
        "AtomicCSVLogger",
        "AtomicBackupAndRestore",  # still last
    ]
    callbacks.insert(-1, _CrashAtEpochEnd())
    with pytest.raises(RuntimeError, match="simulated kill"):
        _mlp().fit(x, y, callbacks=callbacks, **fit)
    crashed = _csv_rows(tmp_path / "history.csv")
    assert [row["epoch"] for row in crashed] == ["1", "2", "3"]

    history = _mlp().fit(
        x, y, callbacks=standard_callbacks(tmp_path, monitor="loss", tensorboard=False), **fit
    )
    assert history.epoch == [2, 3]  # resumed from the state of epoch 2
    rows = _csv_rows(tmp_path / "history.csv")
    assert list(rows[0]) == ["epoch", "learning_rate", "loss"]
    assert [row["epoch"] for row in rows] == ["1", "2", "3", "4"]
    records = json.loads((tmp_path / "history.json").read_text())
    assert [float(row["loss"]) for row in rows] == pytest.approx([r["loss"] for r in records])
    assert rows[:2] == crashed[:2]
    assert float(rows[2]["loss"]) == pytest.approx(history.history["loss"][0])
    assert float(rows[0]["learning_rate"]) == pytest.approx(0.01)
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]

    # A run from epoch 0 over the folder starts the file afresh.
    _mlp().fit(x, y, epochs=1, verbose=0, callbacks=[AtomicCSVLogger(tmp_path / "history.csv")])
    assert [row["epoch"] for row in _csv_rows(tmp_path / "history.csv")] == ["1"]


def test_tensorboard_is_left_out_quietly_without_tensorflow(tmp_path, monkeypatch, caplog):
    names = [type(c).__name__ for c in standard_callbacks(tmp_path / "a", monitor="loss")]
    assert "TensorBoard" in names  # TensorFlow and tensorboard are installed here
    monkeypatch.setattr(callbacks_module, "_tensorflow_available", lambda: False)
    with caplog.at_level("DEBUG"):
        callbacks = standard_callbacks(tmp_path / "b", monitor="loss")
    assert [type(c).__name__ for c in callbacks] == [
        "TerminateOnNaN",
        "AtomicModelCheckpoint",
        "TrainingCurves",
        "AtomicCSVLogger",
        "AtomicBackupAndRestore",
    ]
    assert caplog.records == []


# --- progress bars ------------------------------------------------------------------------------


def test_predict_shows_one_progress_step_per_image(tmp_path, capsys):
    model = keras_hrvit.HRViTSegmenter(micro_backbone(), num_classes=5, head_channels=8)
    model.save(tmp_path / "model.keras")
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a", "b"):
        paths.append(str(tmp_path / f"{name}.png"))
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(paths[-1])
    argv = [str(tmp_path / "model.keras"), *paths, "--out", str(tmp_path / "out")]
    assert predict_cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "predict: 100%" in captured.err and "2/2" in captured.err
    assert [line.split(":")[0] for line in captured.out.splitlines()] == paths
    argv = [str(tmp_path / "model.keras"), paths[0], "--out", str(tmp_path / "quiet")]
    assert predict_cli.main([*argv, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith(f"{paths[0]}: ")


def test_convert_shows_its_stages(tmp_path, capsys):
    np.savez(tmp_path / "backbone.npz", **{"patch_embed.proj.weight": np.zeros((8, 3, 3, 3))})
    argv = [str(tmp_path / "backbone.npz"), str(tmp_path / "out.keras"), "--model", "hrvit_b1"]
    with pytest.raises(ValueError, match="neither a classification head"):
        convert_cli.main(argv)
    err = capsys.readouterr().err
    assert "convert:  20%" in err and "1/5" in err and "build model" in err
    with pytest.raises(ValueError, match="neither a classification head"):
        convert_cli.main([*argv, "--no-progress"])
    assert capsys.readouterr().err == ""


# --- --help -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "main, argv",
    [
        (train_cli.main, ["--help"]),
        (train_cli.main, ["segmentation", "--help"]),
        (train_cli.main, ["classification", "--help"]),
        (evaluate_cli.main, ["--help"]),
        (predict_cli.main, ["--help"]),
        (convert_cli.main, ["--help"]),
    ],
)
def test_every_help_ends_with_a_runnable_example(main, argv, capsys):
    assert _exit_code(main, argv) == 0
    out = capsys.readouterr().out
    epilog = out[out.index("\nExample") :]
    commands = [line.strip() for line in epilog.splitlines()[1:] if line.startswith("  python")]
    assert commands and all(c.startswith("python -m keras_hrvit.") for c in commands)
    # Continued lines keep their breaks: each ends with a backslash, none is re-wrapped.
    lines = epilog.splitlines()[1:]
    for line, following in zip(lines, lines[1:]):
        if following.startswith("      "):
            assert line.endswith(" \\")
