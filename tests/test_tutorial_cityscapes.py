"""The Cityscapes tutorial's smoke run, and `keras_hrvit.data.cityscapes` against the dataset's
own evaluator (`cityscapesscripts`) on generated folders in the standard layout."""

import copy
import glob
import os
import re

import numpy as np
import pytest
from PIL import Image
from tutorials import run_tutorial

from keras_hrvit.data import CITYSCAPES_CLASSES, load_cityscapes
from keras_hrvit.data.cityscapes import (
    CITYSCAPES_PALETTE,
    CITYSCAPES_TRAIN_ID_TO_LABEL_ID,
    cityscapes_colorize,
    cityscapes_frame_name,
    cityscapes_frames,
    cityscapes_overlay,
    cityscapes_prediction_path,
    evaluate_with_cityscapesscripts,
    label_ids_to_train_ids,
    read_cityscapes_frame,
    train_ids_to_label_ids,
    write_cityscapes_prediction,
)
from keras_hrvit.metrics import ConfusionMatrix

evaluator = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
labels = pytest.importorskip("cityscapesscripts.helpers.labels")

SIZE = (64, 128)  # height, width: Cityscapes' 1:2 aspect ratio
# Label ids without a train id, ignored by both evaluations: unlabeled, ego vehicle, ground,
# parking, guard rail, caravan.
IGNORED_LABEL_IDS = (0, 1, 6, 9, 14, 29)


def _frame_name(city, index):
    return f"{city}_000000_{index:06d}"


def _write_frame(root, split, city, index, label_ids, rng):
    """One image and its `labelIds` PNG; each class is drawn in its own colour."""
    name = _frame_name(city, index)
    colours = rng.integers(0, 256, size=(256, 3))
    noise = rng.integers(0, 24, size=label_ids.shape + (3,))
    image = np.clip(colours[label_ids] + noise, 0, 255).astype(np.uint8)
    for folder, suffix, array in (
        ("leftImg8bit", "_leftImg8bit.png", image),
        ("gtFine", "_gtFine_labelIds.png", label_ids.astype(np.uint8)),
    ):
        directory = os.path.join(root, folder, split, city)
        os.makedirs(directory, exist_ok=True)
        Image.fromarray(array).save(os.path.join(directory, name + suffix))
    return name


def _random_label_ids(rng, eval_label_ids):
    """Blocks of 8x8 pixels with label ids from `eval_label_ids` and the ignored ones."""
    choices = np.array(list(eval_label_ids) + list(IGNORED_LABEL_IDS))
    blocks = rng.choice(choices, size=(SIZE[0] // 8, SIZE[1] // 8))
    return np.kron(blocks, np.ones((8, 8), np.int64)).astype(np.uint8)


def make_tree(root, frames, rng, eval_label_ids=None):
    """A Cityscapes folder: `frames` is {(split, city): count}; returns {split: [label ids]}."""
    eval_label_ids = CITYSCAPES_TRAIN_ID_TO_LABEL_ID if eval_label_ids is None else eval_label_ids
    written = {}
    for (split, city), count in frames.items():
        for index in range(count):
            label_ids = _random_label_ids(rng, eval_label_ids)
            _write_frame(root, split, city, index + 19, label_ids, rng)
            written.setdefault(split, []).append(label_ids)
    return written


def test_tutorial_smoke_run(tmp_path):
    tree = tmp_path / "cityscapes"
    rng = np.random.default_rng(0)
    make_tree(
        str(tree), {("train", "aachen"): 4, ("val", "frankfurt"): 1, ("val", "lindau"): 1}, rng
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = run_tutorial("cityscapes_upernet.py", run_dir, env={"CITYSCAPES_DATASET": str(tree)})

    assert "Outputs: ['logits', 'auxiliary_logits']" in result.stdout, result.stdout[-3000:]
    output = run_dir / "cityscapes_upernet_output"
    # One labelIds PNG per validation frame, at the image's size, holding label ids of the
    # 19 classes only; nothing else matches the evaluator's pattern.
    predictions = sorted(glob.glob(str(output / "results" / "*" / "*.png")))
    names = [os.path.relpath(p, output / "results") for p in predictions]
    assert names == [
        os.path.join("frankfurt", "frankfurt_000000_000019_pred_labelIds.png"),
        os.path.join("lindau", "lindau_000000_000019_pred_labelIds.png"),
    ]
    for path in predictions:
        with Image.open(path) as image:
            assert image.mode == "L" and image.size == (SIZE[1], SIZE[0])
            assert set(np.unique(np.asarray(image))) <= set(CITYSCAPES_TRAIN_ID_TO_LABEL_ID)
    # The tutorial prints both columns of per-class IoU and stops if they differ; here the
    # printed table is read back as well.
    rows = re.findall(r"^(\w[\w ]*?)\s+(nan|\d\.\d{4})\s+(nan|\d\.\d{4})$", result.stdout, re.M)
    table = {name: (ours, theirs) for name, ours, theirs in rows}
    assert set(table) == set(CITYSCAPES_CLASSES) | {"mIoU"}, result.stdout[-3000:]
    assert all(ours == theirs for ours, theirs in table.values()), table
    assert table["mIoU"][0] != "nan"
    for name in ("overlays.png", "model.keras", "resultPixelLevelSemanticLabeling.json"):
        assert (output / name).is_file(), name
    assert not (output / "backup").exists()  # removed once training finished


def _official_scores(root, results_dir, export_file):
    """Per-class IoU straight from cityscapesscripts' evaluator, called as its `main` would."""
    args = copy.copy(evaluator.args)
    args.predictionPath = str(results_dir)
    args.predictionWalk = None
    args.evalInstLevelScore = False  # its nIoU code uses np.in1d, gone from NumPy 2.4
    args.exportFile = str(export_file)
    args.JSONOutput = True
    args.quiet = True
    ground_truth = sorted(
        glob.glob(os.path.join(root, "gtFine", "val", "*", "*_gtFine_labelIds.png"))
    )
    predictions = [evaluator.getPrediction(args, path) for path in ground_truth]
    result = evaluator.evaluateImgLists(predictions, ground_truth, args)
    scores = result["classScores"]
    names = [labels.id2label[i].name for i in CITYSCAPES_TRAIN_ID_TO_LABEL_ID]
    return np.array([scores[name] for name in names]), result, predictions


def test_per_class_iou_equals_cityscapesscripts(tmp_path):
    rng = np.random.default_rng(1)
    root = str(tmp_path / "cityscapes")
    # Ground truth without train (train id 16), motorcycle (17) and bicycle (18).
    present = CITYSCAPES_TRAIN_ID_TO_LABEL_ID[:16]
    written = make_tree(
        root, {("val", "frankfurt"): 2, ("val", "munster"): 1}, rng, eval_label_ids=present
    )
    truth = [label_ids_to_train_ids(label_ids) for label_ids in written["val"]]
    frames = cityscapes_frames(root, "val")
    assert [f.name for f in frames] == [
        "frankfurt_000000_000019",
        "frankfurt_000000_000020",
        "munster_000000_000019",
    ]
    results_dir = tmp_path / "results"
    chosen = []
    for frame, mask in zip(frames, truth):
        # Right on about 70% of pixels, a random class 0-15 elsewhere.
        prediction = np.where(rng.random(mask.shape) < 0.7, mask, rng.integers(0, 16, mask.shape))
        prediction = np.where(mask == 255, rng.integers(0, 16, mask.shape), prediction)
        # Bicycle (18) is predicted only where the ground truth is ignored: it scores in
        # neither evaluation (NaN). Motorcycle (17) is predicted on a labelled block: IoU 0.
        ignored = np.argwhere(mask == 255)[:40]
        prediction[ignored[:, 0], ignored[:, 1]] = 18
        labelled = np.argwhere(mask != 255)[:16]
        prediction[labelled[:, 0], labelled[:, 1]] = 17
        chosen.append(prediction)
        write_cityscapes_prediction(results_dir, frame, prediction)

    # The package: ground truth through `load_cityscapes`, predictions read back from the files.
    confusion = ConfusionMatrix(len(CITYSCAPES_CLASSES))
    for (_, mask), frame in zip(load_cityscapes(root, "val"), frames):
        with Image.open(cityscapes_prediction_path(results_dir, frame)) as image:
            prediction = label_ids_to_train_ids(np.asarray(image))
        confusion.update(mask.numpy(), prediction)
    ours = confusion.per_class_iou()

    official, result, matched = _official_scores(root, results_dir, tmp_path / "result.json")
    assert matched == [cityscapes_prediction_path(results_dir, f) for f in frames]
    assert os.path.isfile(tmp_path / "result.json")
    # NaN for the same classes, equal values for the others.
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(official))
    np.testing.assert_allclose(ours, official, rtol=0, atol=1e-12)
    assert np.isclose(confusion.mean_iou(), result["averageScoreClasses"], rtol=0, atol=1e-12)

    # Both equal IoU computed here from the chosen arrays, independently of any file.
    expected = []
    for k in range(len(CITYSCAPES_CLASSES)):
        valid = [mask != 255 for mask in truth]
        tp = sum(np.sum((m == k) & (p == k) & v) for m, p, v in zip(truth, chosen, valid))
        union = sum(np.sum(((m == k) | (p == k)) & v) for m, p, v in zip(truth, chosen, valid))
        expected.append(tp / union if union else np.nan)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)
    assert np.isnan(ours[16]) and np.isnan(ours[18])  # absent (bicycle only on ignored)
    assert ours[17] == 0.0  # predicted, never right
    assert np.all((ours[:16] > 0.4) & (ours[:16] < 0.95)), ours[:16]

    # The package's wrapper of the evaluator gives the same numbers.
    wrapped = evaluate_with_cityscapesscripts(root, results_dir)
    np.testing.assert_allclose(wrapped["per_class_iou"], official, rtol=0, atol=0)
    assert wrapped["mean_iou"] == result["averageScoreClasses"]
    # And the ground truth the tutorial reads frame by frame is the loader's.
    _, mask = read_cityscapes_frame(frames[0])
    np.testing.assert_array_equal(mask, truth[0])


def test_label_tables_and_palette_match_cityscapesscripts():
    for train_id in range(len(CITYSCAPES_CLASSES)):
        label = labels.trainId2label[train_id]
        assert CITYSCAPES_TRAIN_ID_TO_LABEL_ID[train_id] == label.id
        assert tuple(CITYSCAPES_PALETTE[train_id]) == label.color
        assert CITYSCAPES_CLASSES[train_id] == label.name
    every_id = np.arange(34, dtype=np.uint8)[None]
    expected = [[labels.id2label[i].trainId for i in range(34)]]
    np.testing.assert_array_equal(label_ids_to_train_ids(every_id), expected)
    round_trip = label_ids_to_train_ids(train_ids_to_label_ids(np.arange(19)[None]))
    np.testing.assert_array_equal(round_trip, np.arange(19)[None])
    assert train_ids_to_label_ids(np.array([[255]])).tolist() == [[0]]  # unlabeled
    assert cityscapes_colorize(np.array([[13, 255]])).tolist() == [[[0, 0, 142], [0, 0, 0]]]
    image = np.full((1, 2, 3), 100, np.uint8)
    overlay = cityscapes_overlay(image, np.array([[0, 255]]), alpha=0.5)
    assert overlay.tolist() == [[[114, 82, 114], [100, 100, 100]]]  # road half-blended


def test_writer_names_files_for_the_evaluator_and_refuses_bad_input(tmp_path):
    prediction = np.zeros((2, 4), np.int32)
    path = write_cityscapes_prediction(tmp_path, "zurich_000104_000019_leftImg8bit.png", prediction)
    assert path == str(tmp_path / "zurich" / "zurich_000104_000019_pred_labelIds.png")
    assert os.listdir(tmp_path / "zurich") == ["zurich_000104_000019_pred_labelIds.png"]
    with Image.open(path) as image:
        assert np.asarray(image).tolist() == [[7] * 4] * 2  # road's label id
    assert cityscapes_frame_name("/x/ulm_000000_000019_gtFine_labelIds.png") == "ulm_000000_000019"

    with pytest.raises(ValueError, match=r"`train_ids` holds 19, .*allowed are 0-18 and 255"):
        write_cityscapes_prediction(tmp_path, "ulm_000000_000019", np.full((2, 2), 19))
    with pytest.raises(ValueError, match=r"'prediction.png' is not a Cityscapes file name"):
        write_cityscapes_prediction(tmp_path, "prediction.png", prediction)
    with pytest.raises(ValueError, match=r"`train_ids` must be an \(H, W\) array"):
        write_cityscapes_prediction(tmp_path, "ulm_000000_000019", np.zeros((2, 2), "float32"))
    assert not os.path.exists(tmp_path / "ulm")  # nothing written on refusal


def test_evaluation_refuses_missing_predictions_and_folders(tmp_path):
    root = str(tmp_path / "cityscapes")
    make_tree(root, {("val", "bremen"): 2}, np.random.default_rng(2))
    results_dir = tmp_path / "results"
    frames = cityscapes_frames(root, "val")
    write_cityscapes_prediction(results_dir, frames[0], np.zeros(SIZE, np.int32))
    with pytest.raises(RuntimeError, match=r"evaluator stopped on .*results"):
        evaluate_with_cityscapesscripts(root, results_dir)
    with pytest.raises(FileNotFoundError, match=r"`results_dir` .* is not a folder"):
        evaluate_with_cityscapesscripts(root, tmp_path / "absent")
    with pytest.raises(ValueError, match=r"`split` must be 'train' or 'val'"):
        evaluate_with_cityscapesscripts(root, results_dir, split="test")
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/train not found"):
        cityscapes_frames(root, "train")
