"""Segmentation datasets as `tf.data.Dataset`s of `(image uint8 (H, W, 3), mask uint8 (H, W))`.

ADE20K, Cityscapes, folders of images with PNG masks (palette PNGs such as Pascal VOC's are read
as class indices) and any TensorFlow Datasets segmentation builder. All loaders return the same
kind of pairs as `load_shapes`, ready for `segmentation_train_pipeline` and
`segmentation_eval_pipeline`. Mask value 255 means "ignore".
"""

import io
import os
import struct
import warnings

import numpy as np
import tensorflow as tf

from keras_hrvit.data.graph_map import graph_map
from keras_hrvit.data.segmentation import IGNORE_LABEL

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step",
    "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

# Cityscapes label id -> train id, from cityscapesScripts' labels.py; every other id is ignored.
_CITYSCAPES_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
_CITYSCAPES_SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", _PNG_SIGNATURE, b"BM", b"GIF87a", b"GIF89a")


def _reduce_zero_label(mask):
    """ADE20K's 0 ("other") becomes the ignore label and every other class moves down by one;
    the ignore label stays (MMSegmentation's `reduce_zero_label`), not class 254."""
    ignore = tf.constant(IGNORE_LABEL, mask.dtype)
    return tf.where((mask == 0) | (mask == ignore), ignore, mask - 1)


# The official release of the MIT Scene Parsing Benchmark, which HRViT and MMSegmentation use.
ADE20K_URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
ADE20K_FOLDER = "ADEChallengeData2016"
# Images (and as many annotations) per split of the release: fewer means an interrupted
# extraction or copy.
ADE20K_SPLIT_SIZES = {"training": 20210, "validation": 2000}
_ADE20K_SPLITS = {
    "train": "training",
    "training": "training",
    "validation": "validation",
    "val": "validation",
}
# `keras.utils.get_file("X.zip", extract=True)` keeps the archive as X.zip and extracts it into
# X_extracted/ next to it; the archive holds one ADEChallengeData2016 folder.
_ADE20K_ARCHIVE = ADE20K_FOLDER + ".zip"
_ADE20K_EXTRACTED = ADE20K_FOLDER + "_extracted"


def _keras_datasets_dir():
    """Where `keras.utils.get_file` keeps datasets by default: `$KERAS_HOME/datasets`, else
    `~/.keras/datasets` (`/tmp/.keras/datasets` when the home folder is read-only)."""
    home = os.environ.get("KERAS_HOME")
    if not home:
        user = os.path.expanduser("~")
        home = os.path.join(user if os.access(user, os.W_OK) else "/tmp", ".keras")
    return os.path.join(home, "datasets")


def _is_ade20k_root(path):
    return os.path.isdir(os.path.join(path, "images")) and os.path.isdir(
        os.path.join(path, "annotations")
    )


def _find_ade20k(base):
    """`(root, extraction)`: the ADEChallengeData2016 folder that `base` is or holds, and the
    folder `load_ade20k` extracted it into (None for a folder of the user's); `(None, None)`
    when there is none."""
    extraction = os.path.join(base, _ADE20K_EXTRACTED)
    candidates = (
        (base, None),
        (os.path.join(base, ADE20K_FOLDER), None),
        (os.path.join(extraction, ADE20K_FOLDER), extraction),
    )
    for root, extracted_into in candidates:
        if _is_ade20k_root(root):
            return root, extracted_into
    return None, None


def _download_ade20k(base):
    """Downloads and extracts the release into `base`; returns `(root, extraction folder)`."""
    import keras

    os.makedirs(base, exist_ok=True)  # get_file falls back to /tmp for a folder not there yet
    # No `file_hash`: the release publishes no checksum and none could be computed where this
    # was written (no network). `load_ade20k` counts the extracted files instead, which catches
    # the likelier failure, an interrupted download or extraction.
    extraction = keras.utils.get_file(
        _ADE20K_ARCHIVE, ADE20K_URL, cache_dir=base, cache_subdir="", extract=True
    )
    root = os.path.join(extraction, ADE20K_FOLDER)
    if not _is_ade20k_root(root):
        raise FileNotFoundError(
            f"The archive {os.path.join(base, _ADE20K_ARCHIVE)} of {ADE20K_URL} did not extract "
            f"to {root} with images/ and annotations/: delete the archive and {extraction} and "
            "call load_ade20k again to download it anew."
        )
    return root, extraction


def _count_files(path, extension):
    # Directory entries only: no file is opened, so 20k images are counted in milliseconds.
    try:
        with os.scandir(path) as entries:
            return sum(1 for entry in entries if entry.name.lower().endswith(extension))
    except FileNotFoundError:
        return 0


def _check_ade20k_size(root, folder, extraction):
    """Refuses an incomplete extraction of the release (`extraction`, the folder it was
    extracted into, else None); warns about a folder of the user's that holds fewer images than
    the release (a subset, or an interrupted copy)."""
    images = _count_files(os.path.join(root, "images", folder), ".jpg")
    annotations = _count_files(os.path.join(root, "annotations", folder), ".png")
    expected = ADE20K_SPLIT_SIZES[folder]
    if images >= expected and annotations >= expected:
        return
    found = f"{images:,} {folder} images and {annotations:,} annotations"
    if extraction is not None:
        archive = os.path.join(os.path.dirname(extraction), _ADE20K_ARCHIVE)
        raise ValueError(
            f"ADE20K folder {root} is incomplete: {found}, where the release has {expected:,} of "
            f"each (an interrupted download or extraction); delete {extraction} (and {archive} "
            "if extracting it again fails) and call load_ade20k again."
        )
    warnings.warn(
        f"ADE20K folder {root} holds {found}, fewer than the release's {expected:,}: results "
        "are not comparable with ADE20K's (load_folder reads subsets without this warning).",
        stacklevel=3,
    )


def load_ade20k(
    split="train",
    data_dir=None,
    reduce_zero_label=True,
    shuffle_files=False,
    download=True,
    seed=None,
):
    """ADE20K (the MIT Scene Parsing Benchmark's `ADEChallengeData2016`), 150 classes.

    Reads `images/{training,validation}/*.jpg` and their single-channel PNG annotations
    `annotations/{training,validation}/*.png` (0 = "other", 1-150 the classes) with
    `load_folder`. With `reduce_zero_label=True` (MMSegmentation's ADE20K setting, used by
    HRViT) label 0 becomes 255 (ignored) and labels 1-150 become 0-149, indexing
    `ADE20K_CLASSES`.

    When the folder is missing and `download=True`, the official archive (`ADE20K_URL`, about
    1 GB, kept next to the data) is downloaded with `keras.utils.get_file` and extracted into
    `data_dir/ADEChallengeData2016_extracted/`; a split with fewer files than the release's
    20,210 / 2,000 there is refused, and a folder of your own with fewer gets a warning.
    (TensorFlow Datasets' `scene_parse150` is not this data: its annotations are the 2017
    instance-segmentation track's masks, 100 object categories without wall, sky or floor.)

    Args:
        split: `"train"` (or `"training"`) or `"validation"` (or `"val"`).
        data_dir: the `ADEChallengeData2016` folder, or a folder holding it (or the
            `ADEChallengeData2016_extracted` folder of a download); `None` for Keras's cache,
            `~/.keras/datasets` (`$KERAS_HOME/datasets`).
        reduce_zero_label: map 0 to 255 and shift the other labels down by one.
        shuffle_files: shuffle the file order on every iteration.
        download: download and extract the release when `data_dir` does not hold it.
        seed: seed of the file shuffling.

    Example:
    >>> ds = load_ade20k("validation", data_dir="/data/ADEChallengeData2016")
    >>> image, mask = next(iter(ds))  # uint8 (H, W, 3), uint8 (H, W)
    """
    if not isinstance(split, str) or split not in _ADE20K_SPLITS:
        raise ValueError(
            f"`split` must be 'train' (or 'training') or 'validation' (or 'val'), got {split!r}."
        )
    _check_seed(seed)
    folder = _ADE20K_SPLITS[split]
    base = _keras_datasets_dir() if data_dir is None else os.path.expanduser(os.fspath(data_dir))
    root, extraction = _find_ade20k(base)
    if root is None:
        if not download:
            raise FileNotFoundError(
                f"ADE20K ({ADE20K_FOLDER} with images/ and annotations/) not found in {base}: "
                f"pass download=True, or download {ADE20K_URL} and extract it there."
            )
        root, extraction = _download_ade20k(base)
    _check_ade20k_size(root, folder, extraction)
    return load_folder(
        os.path.join(root, "images", folder),
        os.path.join(root, "annotations", folder),
        reduce_zero_label=reduce_zero_label,
        shuffle_files=shuffle_files,
        seed=seed,
    )


# Mask features tried, in order, when `load_tfds_segmentation` is given no `mask_key`.
TFDS_MASK_KEYS = ("segmentation_mask", "annotation", "label", "mask")


def _is_image_feature(feature, tfds):
    """Whether a tfds feature holds images or label maps: `Image`, or an integer `Tensor` of
    shape `(H, W)` or `(H, W, C)`."""
    if isinstance(feature, tfds.features.Image):
        return True
    if isinstance(feature, tfds.features.Tensor):
        return len(feature.shape) in (2, 3) and tf.as_dtype(feature.tf_dtype).is_integer
    return False


def _tfds_mask_key(features, name, image_key, mask_key, tfds):
    """The mask feature of a tfds builder: `mask_key`, checked, or the one it picks itself."""
    keys = ", ".join(sorted(features.keys()))
    if mask_key is not None:
        if mask_key not in features:
            raise ValueError(
                f"`mask_key` {mask_key!r} is not a feature of tfds builder {name!r}; its features "
                f"are: {keys}."
            )
        if mask_key == image_key or not _is_image_feature(features[mask_key], tfds):
            kind = type(features[mask_key]).__name__
            kind = "the image" if mask_key == image_key else f"a {kind}"
            raise ValueError(
                f"`mask_key` {mask_key!r} of tfds builder {name!r} is {kind}, not a mask image; "
                f"its features are: {keys}."
            )
        return mask_key
    candidates = [
        key for key in features if key != image_key and _is_image_feature(features[key], tfds)
    ]
    for key in TFDS_MASK_KEYS:
        if key in candidates:
            return key
    if len(candidates) == 1:
        return candidates[0]
    found = f"image features {', '.join(sorted(candidates))}" if candidates else "no image feature"
    raise ValueError(
        f"Pass `mask_key`: tfds builder {name!r} has {found} besides {image_key!r} and none named "
        f"{', '.join(TFDS_MASK_KEYS)}; its features are: {keys}."
    )


def _check_tfds_split(split, splits, name):
    """A split that the prepared builder does not have, named with the ones it has."""
    if not splits:  # unknown until the data is prepared
        return
    for part in split.split("+"):
        base = part.split("[")[0].strip()
        if base not in splits:
            raise ValueError(
                f"`split` {split!r}: tfds builder {name!r} has no split {base!r}; its splits "
                f"are: {', '.join(sorted(splits))}."
            )


def _to_rgb(image):
    """Grayscale images (with or without alpha) as three equal channels, RGBA without alpha."""
    if image.shape.rank == 2:
        image = image[..., None]
    channels = image.shape[-1]
    if channels in (1, 2):
        return tf.tile(image[..., :1], [1, 1, 3])
    return image[..., :3]


def _check_tfds_image(features, name, image_key, tfds):
    """Refuses an `image_key` that is not a feature `_to_rgb` can make uint8 RGB."""
    feature = features[image_key] if image_key in features else None
    if feature is None or not _is_image_feature(feature, tfds):
        raise ValueError(
            f"`image_key` {image_key!r} is not an image feature of tfds builder {name!r}; its "
            f"features are: {', '.join(sorted(features.keys()))}."
        )
    shape, dtype = tuple(feature.shape), tf.as_dtype(feature.tf_dtype)
    channels = shape[-1] if len(shape) == 3 else 1
    if dtype != tf.uint8 or channels not in (1, 2, 3, 4):
        raise ValueError(
            f"`image_key` {image_key!r} of tfds builder {name!r} holds {dtype.name} images of "
            f"shape {shape}; this loader takes uint8 images with 1 to 4 channels."
        )


def _check_uint8_labels(mask, where):
    """`mask` as uint8; labels outside 0-255 stop the pipeline instead of wrapping around."""
    if mask.dtype == tf.uint8:
        return mask
    wide = tf.cast(mask, tf.int64)
    bad = tf.reduce_any((wide < 0) | (wide > 255))
    found = tf.where(tf.reduce_min(wide) < 0, tf.reduce_min(wide), tf.reduce_max(wide))
    # The message begins like the pipelines' label check, so the command lines print it alone.
    check = tf.debugging.Assert(
        tf.logical_not(bad),
        [tf.strings.format("mask has label {}, outside 0-255 (" + where + ")", found)],
    )
    with tf.control_dependencies([check]):
        return tf.cast(mask, tf.uint8)


def load_tfds_segmentation(
    name,
    split="train",
    image_key="image",
    mask_key=None,
    reduce_zero_label=False,
    data_dir=None,
    shuffle_files=False,
    download=True,
):
    """Any TensorFlow Datasets segmentation builder, as `(image, mask)` pairs.

    Images are made RGB (grayscale tiled, alpha dropped); masks of shape `(H, W, C)` keep
    channel 0. Masks that are not uint8 must hold labels 0-255: others stop the pipeline.
    Image and mask sizes are checked by the segmentation pipelines.

    Args:
        name: builder name, e.g. `"oxford_iiit_pet"` (configs and versions as tfds takes them,
            `"name/config:1.0.0"`).
        split: split name, sliced or combined as tfds takes it (`"train[:10%]"`,
            `"train+test"`); one the prepared builder lacks is refused, naming its splits.
        image_key: the image feature.
        mask_key: the mask feature; `None` picks the first of `segmentation_mask`,
            `annotation`, `label` and `mask` that is an image, else the only image feature
            other than `image_key`.
        reduce_zero_label: map label 0 to 255 (ignored) and shift the others down by one, e.g.
            Oxford-IIIT Pets' trimaps 1-3 to classes 0-2.
        data_dir: TFDS data directory; `None` for TFDS's default (`~/tensorflow_datasets`).
        shuffle_files: shuffle the order of the TFDS shards.
        download: let TFDS download and prepare the data when it is missing.

    Example:
    >>> ds = load_tfds_segmentation("oxford_iiit_pet", "test", reduce_zero_label=True)
    >>> image, mask = next(iter(ds))  # uint8 (H, W, 3), uint8 (H, W) with classes 0-2 and 255
    """
    import tensorflow_datasets as tfds

    for argument, value in (("name", name), ("split", split), ("image_key", image_key)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"`{argument}` must be a non-empty string, got {value!r}.")
    if mask_key is not None and (not isinstance(mask_key, str) or not mask_key):
        raise ValueError(f"`mask_key` must be None or a feature name, got {mask_key!r}.")
    if data_dir is not None:
        data_dir = os.path.expanduser(os.fspath(data_dir))
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"`name` {name!r} is not a TensorFlow Datasets builder (see "
            "https://www.tensorflow.org/datasets/catalog)."
        ) from None
    features = builder.info.features
    _check_tfds_image(features, name, image_key, tfds)
    mask_key = _tfds_mask_key(features, name, image_key, mask_key, tfds)
    if download:
        builder.download_and_prepare()
    _check_tfds_split(split, builder.info.splits, name)
    try:
        ds = builder.as_dataset(split=split, shuffle_files=shuffle_files)
    except AssertionError as error:  # TFDS asserts that a prepared dataset exists
        if "could not find data" not in str(error):
            raise
        where = data_dir if data_dir is not None else "TFDS's default data_dir"
        raise FileNotFoundError(
            f"tfds builder {name!r} is not prepared in {where}: pass download=True, or the "
            "data_dir where it was prepared."
        ) from None
    where = f"feature {mask_key} of tfds builder {name}"

    def convert(example):
        image = _to_rgb(example[image_key])
        mask = example[mask_key]
        if mask.shape.rank == 3:
            mask = mask[..., 0]
        mask = _check_uint8_labels(mask, where)
        if reduce_zero_label:
            mask = _reduce_zero_label(mask)
        return image, mask

    return graph_map(ds, convert, num_parallel_calls=tf.data.AUTOTUNE)


def _read_header(path, size=32):
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


def _jpeg_size(path):
    """`(height, width)` from a JPEG's frame header, or `None` where it cannot be told."""
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"\xff\xd8":
                return None
            while True:
                marker = f.read(2)
                if len(marker) < 2 or marker[0] != 0xFF:
                    return None
                while marker[1] == 0xFF:  # fill bytes
                    marker = marker[1:] + f.read(1)
                    if len(marker) < 2:
                        return None
                kind = marker[1]
                if 0xD0 <= kind <= 0xD7 or kind == 0x01:  # markers without a segment
                    continue
                if kind in (0xD9, 0xDA):  # end of image, start of scan: no frame header
                    return None
                (length,) = struct.unpack(">H", f.read(2))
                # SOF0-SOF15, except DHT (C4), JPG (C8) and DAC (CC).
                if 0xC0 <= kind <= 0xCF and kind not in (0xC4, 0xC8, 0xCC):
                    _, height, width = struct.unpack(">BHH", f.read(5))
                    return (height, width) if height and width else None
                f.seek(length - 2, os.SEEK_CUR)
    except (OSError, struct.error):
        return None


def _header_size(header, path):
    """`(height, width)` of an image from its first bytes (JPEG: from the file), or `None`."""
    try:
        if header.startswith(_PNG_SIGNATURE):
            width, height = struct.unpack(">II", header[16:24])
        elif header.startswith((b"GIF87a", b"GIF89a")):
            width, height = struct.unpack("<HH", header[6:10])
        elif header.startswith(b"BM"):
            if struct.unpack("<I", header[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
                width, height = struct.unpack("<HH", header[18:22])
            else:
                width, height = struct.unpack("<ii", header[18:26])
        elif header.startswith(b"\xff\xd8\xff"):
            return _jpeg_size(path)
        else:
            return None
    except struct.error:
        return None
    # BMPs store the height negated when their rows run top to bottom.
    return (abs(height), width) if height and width else None


def _mask_problem(header):
    """Why a mask file cannot be used, or `None`."""
    if not header.startswith(_PNG_SIGNATURE) or len(header) < 26:
        return "not a PNG file"
    return None


def _image_problem(header):
    if not any(header.startswith(signature) for signature in _IMAGE_SIGNATURES):
        return "not a JPEG, PNG, BMP or GIF file"
    return None


def _size_text(size):
    return f"{size[0]}x{size[1]}"


def _drop_unusable(pairs):
    """Drops pairs whose files fail the header checks or whose image and mask sizes differ (as
    their headers tell), with one warning listing them. Returns the kept pairs and, for an
    error, a one-line account of the dropped ones (`None` when none were dropped)."""
    kept, unreadable, mismatched = [], [], []
    for image_path, mask_path in pairs:
        image_header, mask_header = _read_header(image_path), _read_header(mask_path)
        problem = _image_problem(image_header)
        if problem is not None:
            unreadable.append(f"{image_path}: {problem}")
            continue
        problem = _mask_problem(mask_header)
        if problem is not None:
            unreadable.append(f"{mask_path}: {problem}")
            continue
        image_size = _header_size(image_header, image_path)
        mask_size = _header_size(mask_header, mask_path)
        # Sizes that the headers do not tell are compared when the files are decoded.
        if image_size is not None and mask_size is not None and image_size != mask_size:
            mismatched.append(
                f"{image_path}: image is {_size_text(image_size)} but its mask {mask_path} is "
                f"{_size_text(mask_size)}"
            )
            continue
        kept.append((image_path, mask_path))
    problems = unreadable + mismatched
    if not problems:
        return kept, None
    listed = "\n  ".join(problems[:10])
    more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
    warnings.warn(
        f"Skipping {len(problems)} example(s) with unreadable files or image and mask sizes "
        f"that differ:\n  {listed}{more}",
        stacklevel=3,
    )
    counts = []
    if unreadable:
        counts.append(f"{len(unreadable)} unreadable")
    if mismatched:
        counts.append(f"{len(mismatched)} with image and mask sizes that differ")
    return kept, f"{' and '.join(counts)}, e.g. {problems[0]}"


def _pair_count(n):
    return f"{n} image/mask pair" + ("" if n == 1 else "s")


def _palette_indices(data):
    """The pixel indices of a palette PNG (bytes) as a uint8 `(H, W)` array."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if image.mode != "P":
            raise ValueError(f"expected a palette PNG, PIL reads mode {image.mode!r}")
        return np.asarray(image, dtype=np.uint8)


def _decode_mask(data):
    # Byte 25 of a PNG (in its IHDR chunk) is the colour type; 3 means palette, whose pixels are
    # the class indices (Pascal VOC). TensorFlow's decoder expands a palette into its RGB colours
    # whatever `channels` asks for, so PIL reads those files.
    is_palette = tf.equal(tf.strings.substr(data, 25, 1), b"\x03")

    def palette():
        mask = tf.numpy_function(_palette_indices, [data], tf.uint8, stateful=False)
        return tf.ensure_shape(mask, [None, None])

    def other():
        # Grayscale masks have one channel; for RGB(A) label images the first channel is the class.
        return tf.io.decode_png(data, channels=0)[..., 0]

    return tf.cond(is_palette, palette, other)


def _refuse_empty(ds, message):
    """`ds`, failing with `message` where a pass over it ends without one example."""
    flagged = graph_map(ds, lambda image, mask: (image, mask, False))
    end = tf.data.Dataset.from_tensors(
        (tf.zeros([0, 0, 3], tf.uint8), tf.zeros([0, 0], tf.uint8), True)
    )

    def count(seen, example):
        check = tf.debugging.Assert(tf.logical_not(example[2]) | (seen > 0), [message])
        with tf.control_dependencies([check]):
            return seen + 1, example

    ds = flagged.concatenate(end).scan(tf.constant(0, tf.int64), count)
    ds = ds.filter(lambda image, mask, last: tf.logical_not(last))
    return graph_map(ds, lambda image, mask, last: (image, mask))


def _pairs_dataset(pairs, where, extra=None, map_mask=None, shuffle_files=False, seed=None):
    """Reads and decodes `(image_path, mask_path)` pairs; undecodable files are dropped, and a
    pass that decodes none fails with a message naming `where` the pairs are."""
    image_paths = [p[0] for p in pairs]
    mask_paths = [p[1] for p in pairs]
    columns = (image_paths, mask_paths) if extra is None else (image_paths, mask_paths, extra)
    ds = tf.data.Dataset.from_tensor_slices(columns)
    if shuffle_files:
        ds = ds.shuffle(len(pairs), seed=seed, reshuffle_each_iteration=True)

    def load(image_path, mask_path, *rest):
        image = tf.io.decode_image(tf.io.read_file(image_path), channels=3, expand_animations=False)
        mask = _decode_mask(tf.io.read_file(mask_path))
        if map_mask is not None:
            mask = map_mask(mask, *rest)
        # A mismatch would silently misalign every crop; failing here drops the pair below.
        tf.debugging.assert_equal(
            tf.shape(image)[:2], tf.shape(mask), message="image and mask sizes differ"
        )
        return tf.ensure_shape(image, [None, None, 3]), tf.ensure_shape(mask, [None, None])

    ds = graph_map(ds, load, num_parallel_calls=tf.data.AUTOTUNE)
    # Files that pass the header check but fail to decode (truncated, mismatched) are logged and
    # skipped instead of stopping a long training run; but not all of them, silently.
    ds = ds.ignore_errors(log_warning=True)
    return _refuse_empty(
        ds,
        f"None of the {_pair_count(len(pairs))} in {where} could be decoded with matching image "
        "and mask sizes (the TensorFlow log names each error)",
    )


def _check_seed(seed):
    if seed is not None and not isinstance(seed, (int, np.integer)):
        raise ValueError(f"`seed` must be an integer or None, got {seed!r}.")


def load_cityscapes(root, split="train", shuffle_files=False, seed=None):
    """Cityscapes fine annotations from the standard folder layout, with the 19 train ids.

    Expects `root/leftImg8bit/{split}/{city}/*_leftImg8bit.png` and
    `root/gtFine/{split}/{city}/*_gtFine_labelIds.png`. Label ids are mapped to train ids
    0-18 (indexing `CITYSCAPES_CLASSES`), every other id to 255. Where cityscapesScripts'
    `*_gtFine_labelTrainIds.png` exists next to the label ids, it is used as is.

    Args:
        root: the Cityscapes folder holding `leftImg8bit` and `gtFine`.
        split: `"train"`, `"val"` (or `"validation"`) or `"test"`.
        shuffle_files: shuffle the file order on every iteration.
        seed: seed of the file shuffling.

    Example:
    >>> ds = load_cityscapes("/data/cityscapes", split="val")
    >>> image, mask = next(iter(ds))  # uint8 (1024, 2048, 3), uint8 (1024, 2048)
    """
    _check_seed(seed)
    if split not in _CITYSCAPES_SPLITS:
        raise ValueError(f"`split` must be one of {sorted(_CITYSCAPES_SPLITS)}, got {split!r}.")
    folder = _CITYSCAPES_SPLITS[split]
    layout = (
        f"Expected the Cityscapes layout root/leftImg8bit/{folder}/<city>/*_leftImg8bit.png and "
        f"root/gtFine/{folder}/<city>/*_gtFine_labelIds.png"
    )
    image_root = os.path.join(os.fspath(root), "leftImg8bit", folder)
    label_root = os.path.join(os.fspath(root), "gtFine", folder)
    for path in (image_root, label_root):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"Folder {path} not found. {layout}.")
    pairs, train_ids, unlabelled = [], [], []
    cities = 0
    for city in sorted(os.listdir(image_root)):
        city_dir = os.path.join(image_root, city)
        if not os.path.isdir(city_dir):
            continue
        cities += 1
        for name in sorted(os.listdir(city_dir)):
            if not name.endswith("_leftImg8bit.png"):
                continue
            stem = name[: -len("_leftImg8bit.png")]
            label_dir = os.path.join(label_root, city)
            train_id_path = os.path.join(label_dir, stem + "_gtFine_labelTrainIds.png")
            label_id_path = os.path.join(label_dir, stem + "_gtFine_labelIds.png")
            if os.path.isfile(train_id_path):
                pairs.append((os.path.join(city_dir, name), train_id_path))
                train_ids.append(True)
            elif os.path.isfile(label_id_path):
                pairs.append((os.path.join(city_dir, name), label_id_path))
                train_ids.append(False)
            else:
                unlabelled.append(name)
    if unlabelled:
        warnings.warn(
            f"Skipping {len(unlabelled)} Cityscapes image(s) without a gtFine label, "
            f"e.g. {unlabelled[0]}.",
            stacklevel=2,
        )
    if not pairs:
        raise FileNotFoundError(
            f"No labelled images found under {image_root}: {cities} city folder(s), "
            f"{len(unlabelled)} *_leftImg8bit.png image(s) without a label. {layout}."
        )
    flags = dict(zip(pairs, train_ids))
    found = len(pairs)
    pairs, dropped = _drop_unusable(pairs)
    where = f"{image_root} and {label_root}"
    if not pairs:
        raise ValueError(f"None of the {_pair_count(found)} in {where} can be used: {dropped}.")
    table = np.full(256, IGNORE_LABEL, np.uint8)
    for label_id, train_id in _CITYSCAPES_ID_TO_TRAIN_ID.items():
        table[label_id] = train_id
    table = tf.constant(table)

    def to_train_ids(mask, is_train_id):
        return tf.where(is_train_id, mask, tf.gather(table, tf.cast(mask, tf.int32)))

    return _pairs_dataset(
        pairs,
        where,
        extra=[flags[p] for p in pairs],
        map_mask=to_train_ids,
        shuffle_files=shuffle_files,
        seed=seed,
    )


def load_folder(
    images_dir,
    masks_dir,
    mask_suffix="",
    reduce_zero_label=False,
    shuffle_files=False,
    seed=None,
):
    """Any folder of images with PNG masks paired by file name.

    The mask of `images_dir/NAME.jpg` (or .jpeg, .png, .bmp, .gif) is
    `masks_dir/NAME{mask_suffix}.png`, a single-channel PNG of class indices, or a palette PNG
    whose pixel indices are the classes (Pascal VOC's `SegmentationClass`, where the border
    index 255 stays 255, ignored); for RGB masks the first channel is used. Images without a
    mask are skipped with a warning, and so are files that are not valid images or PNGs (files
    that only fail to decode later are dropped with a TensorFlow log warning).

    Args:
        images_dir: folder of images (not searched recursively).
        masks_dir: folder of PNG masks.
        mask_suffix: what mask names add to the image's name, e.g. `"_mask"`.
        reduce_zero_label: map label 0 to 255 and shift the others down by one, as for ADE20K's
            `ADEChallengeData2016` annotations.
        shuffle_files: shuffle the file order on every iteration.
        seed: seed of the file shuffling.

    Example:
    >>> ds = load_folder("data/images", "data/masks", mask_suffix="_mask")
    >>> image, mask = next(iter(ds))  # uint8 (H, W, 3), uint8 (H, W)
    """
    _check_seed(seed)
    layout = (
        "Expected images_dir/NAME.(jpg|jpeg|png|bmp|gif) with a mask "
        f"masks_dir/NAME{mask_suffix}.png for each image"
    )
    for name, path in (("images_dir", images_dir), ("masks_dir", masks_dir)):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"`{name}` folder {path} not found. {layout}.")
    pairs, missing = [], []
    names = sorted(os.listdir(images_dir))
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext.lower() not in _IMAGE_EXTENSIONS:
            continue
        mask_path = os.path.join(masks_dir, stem + mask_suffix + ".png")
        if os.path.isfile(mask_path):
            pairs.append((os.path.join(images_dir, name), mask_path))
        else:
            missing.append(name)
    if missing:
        warnings.warn(
            f"Skipping {len(missing)} image(s) without a mask in {masks_dir}, e.g. {missing[0]}.",
            stacklevel=2,
        )
    if not pairs:
        others = len(names) - len(missing)
        ignored = f" ({others} other file(s) ignored)" if others else ""
        raise FileNotFoundError(
            f"No image with a mask found in {images_dir}: {len(missing)} image file(s) there"
            f"{ignored}, none with a mask in {masks_dir}. {layout}."
        )
    found = len(pairs)
    pairs, dropped = _drop_unusable(pairs)
    where = f"{images_dir} and {masks_dir}"
    if not pairs:
        raise ValueError(f"None of the {_pair_count(found)} in {where} can be used: {dropped}.")
    return _pairs_dataset(
        pairs,
        where,
        map_mask=_reduce_zero_label if reduce_zero_label else None,
        shuffle_files=shuffle_files,
        seed=seed,
    )
