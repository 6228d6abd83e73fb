"""Cityscapes: its colour palette, train ids <-> label ids, and predictions for its evaluator.

The models predict the 19 train ids (`CITYSCAPES_CLASSES`); the dataset's own evaluator
(`cityscapesscripts`, `evalPixelLevelSemanticLabeling`) reads predictions as `labelIds` PNGs,
one per image, named `<city>_<sequence>_<frame>*.png` anywhere under a results folder.
`write_cityscapes_prediction` writes them there, `evaluate_with_cityscapesscripts` runs that
evaluator in-process, and `cityscapes_frames` / `read_cityscapes_frame` give the images and
ground truth in the order `load_cityscapes` uses, with the names the files need.

Example:

>>> frames = cityscapes_frames("/data/cityscapes", "val")
>>> image, mask = read_cityscapes_frame(frames[0])  # uint8 (1024, 2048, 3), train ids (1024, 2048)
>>> write_cityscapes_prediction("results", frames[0], mask)
'results/frankfurt/frankfurt_000000_000294_pred_labelIds.png'
"""

import copy
import glob
import os
import re
from collections import namedtuple

import numpy as np
from PIL import Image

from keras_hrvit.data.loaders import _CITYSCAPES_ID_TO_TRAIN_ID, CITYSCAPES_CLASSES
from keras_hrvit.files import atomic_write
from keras_hrvit.presets import IGNORE_LABEL

NUM_CLASSES = len(CITYSCAPES_CLASSES)

# Train id -> label id, the inverse of the loader's table (one label id per train id).
CITYSCAPES_TRAIN_ID_TO_LABEL_ID = tuple(
    sorted(_CITYSCAPES_ID_TO_TRAIN_ID, key=_CITYSCAPES_ID_TO_TRAIN_ID.get)
)
# Label id of pixels without a train id ("unlabeled", ignored in evaluation).
UNLABELED_LABEL_ID = 0

# The colours of the 19 train ids in cityscapesScripts' labels.py, indexed by train id.
CITYSCAPES_PALETTE = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    np.uint8,
)  # fmt: skip
CITYSCAPES_PALETTE.setflags(write=False)
# "unlabeled" is black in labels.py, also for the ignore label.
IGNORE_COLOR = (0, 0, 0)

_SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
# <city>_<sequence>_<frame>: how the evaluator pairs a prediction with its ground truth.
_FRAME_NAME = re.compile(r"^([A-Za-z]+)_(\d+)_(\d+)(?:_|\.|$)")
PREDICTION_SUFFIX = "_pred_labelIds.png"

CityscapesFrame = namedtuple("CityscapesFrame", ["name", "city", "image_path", "label_path"])
CityscapesFrame.__doc__ = """One Cityscapes image: `name` (`<city>_<sequence>_<frame>`), its
`city`, `image_path` (`*_leftImg8bit.png`) and `label_path` (`*_gtFine_labelIds.png`, or None
where the split has no labels)."""


def _train_id_table():
    table = np.full(256, IGNORE_LABEL, np.uint8)
    for label_id, train_id in _CITYSCAPES_ID_TO_TRAIN_ID.items():
        table[label_id] = train_id
    return table


_TO_TRAIN_ID = _train_id_table()
_TO_LABEL_ID = np.full(256, -1, np.int16)  # -1: a value that is no train id
_TO_LABEL_ID[:NUM_CLASSES] = CITYSCAPES_TRAIN_ID_TO_LABEL_ID
_TO_LABEL_ID[IGNORE_LABEL] = UNLABELED_LABEL_ID


def _class_map(values, name):
    """`values` as an integer (H, W) array (a trailing channel of 1 is dropped)."""
    array = np.asarray(values)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2 or not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise ValueError(
            f"`{name}` must be an (H, W) array of integer ids; got dtype {array.dtype} and "
            f"shape {array.shape}."
        )
    return array


def _check_train_ids(train_ids, name="train_ids"):
    array = _class_map(train_ids, name)
    bad = (array < 0) | ((array >= NUM_CLASSES) & (array != IGNORE_LABEL))
    if bad.any():
        value = int(array[bad].flat[0])
        raise ValueError(
            f"`{name}` holds {value}, which is no Cityscapes train id: allowed are "
            f"0-{NUM_CLASSES - 1} and {IGNORE_LABEL} (ignored)."
        )
    return array.astype(np.int64)


def train_ids_to_label_ids(train_ids):
    """Train ids 0-18 to Cityscapes label ids (uint8), as the official evaluator reads them.

    The ignore label 255 becomes label id 0 ("unlabeled"); any other value is refused.

    Example:
    >>> train_ids_to_label_ids(np.array([[0, 13], [18, 255]])).tolist()
    [[7, 26], [33, 0]]
    """
    return _TO_LABEL_ID[_check_train_ids(train_ids)].astype(np.uint8)


def label_ids_to_train_ids(label_ids):
    """Cityscapes label ids (a `*_gtFine_labelIds.png`) to train ids; other ids become 255.

    The same table as `load_cityscapes`.

    Example:
    >>> label_ids_to_train_ids(np.array([[7, 26], [33, 1]])).tolist()
    [[0, 13], [18, 255]]
    """
    array = _class_map(label_ids, "label_ids").astype(np.int64)
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(
            f"`label_ids` must hold Cityscapes label ids 0-255; got range "
            f"[{array.min()}, {array.max()}]."
        )
    return _TO_TRAIN_ID[array]


def cityscapes_colorize(train_ids):
    """Train ids `(H, W)` to an RGB uint8 image in the Cityscapes colours (255: black).

    Example:
    >>> cityscapes_colorize(np.array([[0, 255]])).tolist()
    [[[128, 64, 128], [0, 0, 0]]]
    """
    ids = _check_train_ids(train_ids)
    colors = np.concatenate([CITYSCAPES_PALETTE, np.uint8([IGNORE_COLOR])])
    return colors[np.where(ids == IGNORE_LABEL, NUM_CLASSES, ids)]


def cityscapes_overlay(image, train_ids, alpha=0.5):
    """`image` with `train_ids` blended over it in the Cityscapes colours (opacity `alpha`).

    Ignored pixels (255) show the image alone.

    Example:
    >>> cityscapes_overlay(np.zeros((2, 2, 3), "uint8"), np.zeros((2, 2), "int32"), 1.0)[0, 0]
    array([128,  64, 128], dtype=uint8)
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"`image` must be an (H, W, 3) RGB array; got shape {image.shape}.")
    ids = _check_train_ids(train_ids)
    if ids.shape != image.shape[:2]:
        raise ValueError(
            f"`train_ids` {ids.shape} must have the height and width of `image` {image.shape[:2]}."
        )
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1]; got {alpha!r}.")
    pixels = np.clip(image.astype(np.float32), 0, 255)
    blended = (1.0 - alpha) * pixels + alpha * cityscapes_colorize(ids).astype(np.float32)
    blended = np.where((ids == IGNORE_LABEL)[..., None], pixels, blended)
    return np.rint(blended).astype(np.uint8)


def cityscapes_frame_name(path):
    """`<city>_<sequence>_<frame>` of a Cityscapes file name or path, the key the official
    evaluator matches predictions to ground truth by.

    Example:
    >>> cityscapes_frame_name("val/lindau/lindau_000001_000019_leftImg8bit.png")
    'lindau_000001_000019'
    """
    base = os.path.basename(os.fspath(path))
    match = _FRAME_NAME.match(base)
    if match is None:
        raise ValueError(
            f"{os.fspath(path)!r} is not a Cityscapes file name: expected "
            "<city>_<sequence>_<frame>[_<type>].png, e.g. 'lindau_000001_000019_leftImg8bit.png'."
        )
    return "_".join(match.groups())


def _split_folder(split):
    if split not in _SPLITS:
        raise ValueError(f"`split` must be one of {sorted(_SPLITS)}, got {split!r}.")
    return _SPLITS[split]


def cityscapes_frames(root, split="val"):
    """The images of a split as `CityscapesFrame`s, in `load_cityscapes`'s order.

    Reads the standard layout `root/leftImg8bit/{split}/{city}/*_leftImg8bit.png` with
    `root/gtFine/{split}/{city}/*_gtFine_labelIds.png` (`label_path` is None where the label is
    missing, as for a test split without one).

    Example:
    >>> [frame.name for frame in cityscapes_frames("/data/cityscapes", "val")][:1]
    ['frankfurt_000000_000294']
    """
    folder = _split_folder(split)
    image_root = os.path.join(os.fspath(root), "leftImg8bit", folder)
    if not os.path.isdir(image_root):
        raise FileNotFoundError(
            f"Folder {image_root} not found: expected the Cityscapes layout "
            f"root/leftImg8bit/{folder}/<city>/*_leftImg8bit.png."
        )
    frames = []
    for city in sorted(os.listdir(image_root)):
        city_dir = os.path.join(image_root, city)
        if not os.path.isdir(city_dir):
            continue
        for file_name in sorted(os.listdir(city_dir)):
            if not file_name.endswith("_leftImg8bit.png"):
                continue
            stem = file_name[: -len("_leftImg8bit.png")]
            label = os.path.join(root, "gtFine", folder, city, stem + "_gtFine_labelIds.png")
            frames.append(
                CityscapesFrame(
                    cityscapes_frame_name(file_name),
                    city,
                    os.path.join(city_dir, file_name),
                    label if os.path.isfile(label) else None,
                )
            )
    if not frames:
        raise FileNotFoundError(
            f"No *_leftImg8bit.png images under {image_root}/<city>/: expected the Cityscapes "
            "layout."
        )
    return frames


def read_cityscapes_frame(frame):
    """`(image uint8 (H, W, 3), train ids uint8 (H, W) or None)` of a `CityscapesFrame`.

    The ground truth is the frame's `labelIds` PNG, the file the official evaluator reads,
    mapped to train ids with `label_ids_to_train_ids`.

    Example:
    >>> image, mask = read_cityscapes_frame(cityscapes_frames(root, "val")[0])
    """
    if not isinstance(frame, CityscapesFrame):
        raise TypeError(
            f"`frame` must be a CityscapesFrame from `cityscapes_frames`; got "
            f"{type(frame).__name__}."
        )
    with Image.open(frame.image_path) as image:
        pixels = np.asarray(image.convert("RGB"))
    if frame.label_path is None:
        return pixels, None
    with Image.open(frame.label_path) as label:
        label_ids = np.asarray(label)
    if label_ids.shape != pixels.shape[:2]:
        raise ValueError(
            f"{frame.label_path} is {label_ids.shape[0]}x{label_ids.shape[1]} but its image "
            f"{frame.image_path} is {pixels.shape[0]}x{pixels.shape[1]}: they must match."
        )
    return pixels, label_ids_to_train_ids(label_ids)


def _frame_key(frame):
    if isinstance(frame, CityscapesFrame):
        return frame.name
    if isinstance(frame, (str, os.PathLike)):
        return cityscapes_frame_name(frame)
    raise TypeError(
        f"`frame` must be a CityscapesFrame, a frame name or a Cityscapes file path; got "
        f"{type(frame).__name__}."
    )


def cityscapes_prediction_path(results_dir, frame):
    """Where `write_cityscapes_prediction` puts a frame's prediction:
    `results_dir/<city>/<city>_<sequence>_<frame>_pred_labelIds.png`.

    Example:
    >>> cityscapes_prediction_path("results", "lindau_000001_000019_leftImg8bit.png")
    'results/lindau/lindau_000001_000019_pred_labelIds.png'
    """
    name = _frame_key(frame)
    city = name.split("_")[0]
    return os.path.join(os.fspath(results_dir), city, name + PREDICTION_SUFFIX)


def write_cityscapes_prediction(results_dir, frame, train_ids):
    """Writes predicted train ids as the `labelIds` PNG the official evaluator reads.

    The file (see `cityscapes_prediction_path`) is written under a temporary name and renamed,
    so an interrupted run never leaves a truncated prediction; the temporary name starts with a
    dot, which the evaluator's `<city>_<sequence>_<frame>*.png` pattern does not match. Keep
    other PNGs of the same frames (overlays) out of `results_dir`: the evaluator refuses a frame
    with two matching files. Returns the path.

    Args:
        results_dir: the results folder (cityscapesscripts' `CITYSCAPES_RESULTS`).
        frame: a `CityscapesFrame`, a frame name or any Cityscapes file name of the image.
        train_ids: `(H, W)` predicted train ids 0-18, at the image's full resolution.

    Example:
    >>> write_cityscapes_prediction("results", frames[0], predict_classes(model, image)[0])
    'results/frankfurt/frankfurt_000000_000294_pred_labelIds.png'
    """
    path = cityscapes_prediction_path(results_dir, frame)
    label_ids = train_ids_to_label_ids(train_ids)
    atomic_write(path, lambda tmp: Image.fromarray(label_ids).save(tmp, format="PNG"), ".png")
    return path


def evaluate_with_cityscapesscripts(root, results_dir, split="val", export_file=None, quiet=True):
    """Runs cityscapesscripts' pixel-level evaluator in-process on the predictions of a split.

    Ground truth is every `root/gtFine/{split}/*/*_gtFine_labelIds.png`; each gets its
    prediction through the evaluator's own `getPrediction` (the one `<city>_<sequence>_<frame>*.png`
    under `results_dir`). The instance-level nIoU is left out: cityscapesscripts 2.3.0 computes
    it with `np.in1d`, which NumPy 2.4 removed.

    Args:
        root: the Cityscapes folder holding `gtFine`.
        results_dir: folder of the predictions (`write_cityscapes_prediction`).
        split: `"val"` (or `"validation"`) or `"train"`.
        export_file: where the evaluator writes its JSON report; None for no report.
        quiet: hide the evaluator's own printout (confusion matrix and scores).

    Returns:
        `{"per_class_iou": float64 (19,) in train-id order, NaN where the evaluator gives NaN,
        "mean_iou": float, "result": the evaluator's full result dict}`.

    Example:
    >>> scores = evaluate_with_cityscapesscripts("/data/cityscapes", "results")
    >>> dict(zip(CITYSCAPES_CLASSES, scores["per_class_iou"].round(4)))
    """
    try:
        from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as evaluator
        from cityscapesscripts.helpers.labels import id2label
    except ImportError:
        raise ImportError(
            "`evaluate_with_cityscapesscripts` needs the `cityscapesscripts` package: "
            "pip install cityscapesscripts."
        ) from None
    folder = _split_folder(split)
    if folder == "test":
        raise ValueError("`split` must be 'train' or 'val': the test split has no public labels.")
    if not os.path.isdir(results_dir):
        raise FileNotFoundError(f"`results_dir` {os.fspath(results_dir)} is not a folder.")
    search = os.path.join(os.fspath(root), "gtFine", folder, "*", "*_gtFine_labelIds.png")
    ground_truth = sorted(glob.glob(search))
    if not ground_truth:
        raise FileNotFoundError(
            f"No ground truth matches {search}: expected the Cityscapes layout."
        )
    # The module's `args` is a global that the evaluator fills in: work on a copy.
    args = copy.copy(evaluator.args)
    args.predictionPath = os.fspath(results_dir)
    args.predictionWalk = None
    args.evalInstLevelScore = False
    args.evalPixelAccuracy = False
    args.JSONOutput = export_file is not None
    args.exportFile = None if export_file is None else os.fspath(export_file)
    args.quiet = quiet
    try:
        predictions = [evaluator.getPrediction(args, path) for path in ground_truth]
        result = evaluator.evaluateImgLists(predictions, ground_truth, args)
    except SystemExit:
        # The evaluator prints "ERROR: ..." and exits; a library call should raise instead.
        raise RuntimeError(
            f"cityscapesscripts' evaluator stopped on {results_dir} (its ERROR line is printed "
            "above): each ground-truth frame needs exactly one prediction of its size."
        ) from None
    scores = result["classScores"]
    per_class = np.array(
        [scores[id2label[label_id].name] for label_id in CITYSCAPES_TRAIN_ID_TO_LABEL_ID],
        np.float64,
    )
    return {
        "per_class_iou": per_class,
        "mean_iou": float(result["averageScoreClasses"]),
        "result": result,
    }


__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "CITYSCAPES_TRAIN_ID_TO_LABEL_ID",
    "CityscapesFrame",
    "cityscapes_colorize",
    "cityscapes_frame_name",
    "cityscapes_frames",
    "cityscapes_overlay",
    "cityscapes_prediction_path",
    "evaluate_with_cityscapesscripts",
    "label_ids_to_train_ids",
    "read_cityscapes_frame",
    "train_ids_to_label_ids",
    "write_cityscapes_prediction",
]
