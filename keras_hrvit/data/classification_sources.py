"""Classification data sources: the embedded shape set, image folders and tensorflow-datasets.

Every loader returns `(dataset, class_names)`, a `tf.data.Dataset` of `(uint8 [H, W, 3] image,
int32 label)` pairs, ready for `classification_train_pipeline` / `classification_eval_pipeline`
(`keras_hrvit.data.classification`); `load_classification_data` picks the loader from a source
string. All names are also importable from `keras_hrvit.data.classification`.

Example:
>>> ds, class_names = load_classification_data("embedded", "validation", num_images=32)
>>> len(class_names)
8
"""

import numbers
import os
import warnings

import numpy as np
import tensorflow as tf

from keras_hrvit.data.graph_map import graph_map
from keras_hrvit.validation import check_positive_int

EMBEDDED_CLASSES = (
    "circle",
    "ring",
    "square",
    "frame",
    "triangle",
    "cross",
    "stripes",
    "checker",
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

_EMBEDDED_SEED = 1337
_EMBEDDED_SPLITS = {"train": 0, "validation": 1}
_EMBEDDED_DEFAULT_SIZES = {"train": 2048, "validation": 512}


# ------------------------------------------------------------------------------------------------
# Embedded procedural data set
# ------------------------------------------------------------------------------------------------


def _shape_mask(name, dx, dy, r, rng):
    """Boolean mask of class `name` centred at the origin of the offsets `dx`, `dy`."""
    box = np.maximum(np.abs(dx), np.abs(dy))
    half = 0.85 * r  # squares of half-width 0.85 r cover about the area of a disc of radius r
    if name == "circle":
        return np.hypot(dx, dy) <= r
    if name == "ring":
        d = np.hypot(dx, dy)
        return (d <= r) & (d >= 0.55 * r)
    if name == "square":
        return box <= half
    if name == "frame":
        return (box <= half) & (box >= 0.5 * half)
    if name == "triangle":
        # Apex at the top, base 0.8 r below the centre: width grows linearly with depth.
        depth = dy + r
        return (dy <= 0.8 * r) & (depth >= 0) & (np.abs(dx) <= depth / 1.8)
    if name == "cross":
        arm = 0.3 * r
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    if name == "stripes":
        coord = dx if rng.random() < 0.5 else dy
        period = 2 * half / 5
        return (box <= half) & (np.floor((coord + half) / period) % 2 == 0)
    if name == "checker":
        period = 2 * half / 4
        cells = np.floor((dx + half) / period) + np.floor((dy + half) / period)
        return (box <= half) & (cells % 2 == 0)
    raise ValueError(f"Unknown embedded class {name!r}.")


def _embedded_image(rng, label, image_size):
    grid = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size
    yy, xx = np.meshgrid(grid, grid, indexing="ij")

    # Textured background: two close, muted colours mixed by a random wave and a gradient.
    base = rng.uniform(50, 205, size=3)
    other = np.clip(base + rng.uniform(-30, 30, size=3), 0, 255)
    freq = rng.uniform(1.0, 6.0, size=2) * rng.choice([-1, 1], size=2)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * (freq[0] * xx + freq[1] * yy) + rng.uniform(0, 2 * np.pi))
    ramp = rng.uniform(-1, 1) * (xx - 0.5) + rng.uniform(-1, 1) * (yy - 0.5)
    mix = np.clip(0.7 * wave + 0.5 * ramp + 0.15, 0, 1)[..., None]
    image = base * (1 - mix) + other * mix

    # The object's colour stays far from the background so the class is easy to see.
    background = 0.5 * (base + other)
    for _ in range(100):
        colour = rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - background) > 140:
            break
    r = rng.uniform(0.22, 0.36)
    cx, cy = rng.uniform(r + 0.02, 0.98 - r, size=2)
    mask = _shape_mask(EMBEDDED_CLASSES[label], xx - cx, yy - cy, r, rng)
    image = np.where(mask[..., None], colour, image)
    image = image + rng.normal(0, 4, size=image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _check_split(split, allowed):
    if split not in allowed:
        raise ValueError(
            f"Unknown split {split!r}; expected one of {', '.join(map(repr, allowed))}."
        )


def generate_embedded_classification(split="train", num_images=None, image_size=64, seed=None):
    """Generates the embedded shape-classification set as numpy arrays.

    Each image shows one object (see `EMBEDDED_CLASSES`) with a random colour, size and position
    on a textured background. Image `i` depends only on `(seed, split, i, image_size)`, so the
    set is deterministic, a longer set extends a shorter one, and splits never share an image.
    Labels cycle through the classes, so any `num_images >= len(EMBEDDED_CLASSES)` has them all.

    Args:
        split: `"train"` or `"validation"`.
        num_images: number of images; defaults to 2048 for train and 512 for validation.
        image_size: height and width in pixels, at least 16.
        seed: integer that selects another draw of the set; `None` uses the package's fixed seed.

    Returns:
        `(images, labels)`: uint8 `[N, image_size, image_size, 3]` and int32 `[N]`.

    Example:
    >>> images, labels = generate_embedded_classification("validation", num_images=16)
    >>> images.shape, labels[:3].tolist()
    ((16, 64, 64, 3), [0, 1, 2])
    """
    _check_split(split, tuple(_EMBEDDED_SPLITS))
    if num_images is None:
        num_images = _EMBEDDED_DEFAULT_SIZES[split]
    check_positive_int("num_images", num_images)
    if not _is_int(image_size) or image_size < 16:
        raise ValueError(
            f"`image_size` must be an integer of at least 16; received {image_size!r}."
        )
    if seed is None:
        seed = _EMBEDDED_SEED
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer or None; received {seed!r}.")

    split_id = _EMBEDDED_SPLITS[split]
    labels = np.arange(num_images, dtype=np.int32) % len(EMBEDDED_CLASSES)
    images = np.empty((num_images, image_size, image_size, 3), dtype=np.uint8)
    for i in range(num_images):
        rng = np.random.default_rng([int(seed), split_id, i])
        images[i] = _embedded_image(rng, int(labels[i]), int(image_size))
    return images, labels


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def load_embedded_classification(split="train", num_images=None, image_size=64, seed=None):
    """The embedded shape-classification set as a `tf.data.Dataset` (no download needed).

    Arguments as in `generate_embedded_classification`. Class names are `EMBEDDED_CLASSES`.
    The full ImageNet recipe is too strong for a few epochs on 64-pixel toys; with light
    augmentation (`classification_train_pipeline(..., image_size=64, scale=(0.35, 1.0),
    randaugment=False, mixup_alpha=0.0, cutmix_alpha=0.0, random_erasing=0.0)`) the 1.4 M-parameter
    `hrvit_tiny` classifier (AdamW 2e-3, batch 32) reached 44 % validation top-1 after 5 epochs of
    2048 images on PyTorch (chance: 12.5 %). At 32 pixels with 1024 images it memorizes instead
    (62 % top-1 on its training images, 16 % on validation after 4 epochs).

    Returns:
        A `tf.data.Dataset` of `(image, label)`: uint8 `[image_size, image_size, 3]`, int32 `[]`.

    Example:
    >>> ds = load_embedded_classification("train", num_images=64, image_size=64)
    >>> image, label = next(iter(ds))
    >>> image.shape, image.dtype.name, label.dtype.name
    (TensorShape([64, 64, 3]), 'uint8', 'int32')
    """
    images, labels = generate_embedded_classification(split, num_images, image_size, seed)
    return tf.data.Dataset.from_tensor_slices((images, labels))


# ------------------------------------------------------------------------------------------------
# Loaders
# ------------------------------------------------------------------------------------------------


def _as_rgb(image):
    """Grayscale images are repeated to 3 channels and alpha is dropped, as PIL's RGB convert."""
    image = tf.cond(
        tf.shape(image)[-1] == 1,
        lambda: tf.tile(image, [1, 1, 3]),
        lambda: image[..., :3],
    )
    image.set_shape([None, None, 3])
    return image


def load_tfds_classification(
    name,
    split="train",
    data_dir=None,
    manual_dir=None,
    download=True,
    shuffle_files=False,
    image_key="image",
    label_key="label",
):
    """Loads an image-classification builder of `tensorflow-datasets`.

    `imagenet2012` needs the archives downloaded by hand: pass their folder as `manual_dir`.

    Args:
        name: builder name, e.g. `"imagenet2012"`, `"cifar10"`, `"oxford_flowers102"`.
        split: split name or slice, e.g. `"train"`, `"validation"`, `"train[:10%]"`.
        data_dir: where tfds keeps prepared data; `None` uses its default.
        manual_dir: folder with manually downloaded archives (`ILSVRC2012_img_train.tar`, ...).
        download: whether tfds may download and prepare the data when it is missing.
        shuffle_files: shuffle the order of the record files (for training).
        image_key: name of the image feature.
        label_key: name of the `ClassLabel` feature.

    Returns:
        `(dataset, class_names)`: a dataset of `(uint8 [H, W, 3] image, int32 label)` and the list
        of class names of the label feature.

    Example:
    ```python
    train, names = load_tfds_classification(
        "imagenet2012", "train", data_dir="~/tfds", manual_dir="~/downloads/imagenet"
    )
    ```
    """
    import tensorflow_datasets as tfds

    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a tensorflow-datasets builder name; received {name!r}.")
    kwargs = {}
    if manual_dir is not None:
        manual_dir = os.path.expanduser(str(manual_dir))
        kwargs["download_config"] = tfds.download.DownloadConfig(manual_dir=manual_dir)
    if data_dir is not None:
        data_dir = os.path.expanduser(str(data_dir))
    ds, info = tfds.load(
        name,
        split=split,
        data_dir=data_dir,
        download=download,
        shuffle_files=shuffle_files,
        with_info=True,
        download_and_prepare_kwargs=kwargs or None,
    )
    features = info.features
    for key in (image_key, label_key):
        if key not in features:
            raise ValueError(
                f"Builder {name!r} has no feature {key!r}; its features are "
                f"{', '.join(sorted(features.keys()))}. Pass `image_key` / `label_key`."
            )
    if not isinstance(features[label_key], tfds.features.ClassLabel):
        raise ValueError(
            f"Feature {label_key!r} of builder {name!r} is a {type(features[label_key]).__name__}, "
            "not a ClassLabel; this loader is for image classification builders."
        )
    class_names = list(features[label_key].names)

    def to_pair(example):
        image = _as_rgb(tf.cast(example[image_key], tf.uint8))
        return image, tf.cast(example[label_key], tf.int32)

    return graph_map(ds, to_pair, num_parallel_calls=tf.data.AUTOTUNE), class_names


_SIGNATURES = (
    (b"\xff\xd8\xff",),  # JPEG
    (b"\x89PNG\r\n\x1a\n",),
    (b"GIF87a", b"GIF89a"),
    (b"BM",),
)


def _looks_like_image(path):
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            head = f.read(16)
    except (OSError, tf.errors.OpError):
        return False
    return any(head.startswith(sig) for group in _SIGNATURES for sig in group)


def load_image_folder(directory, class_names=None, shuffle=False, seed=None, verify_images=True):
    """Loads `directory/<class_name>/*.jpg|png|...` like `keras.utils.image_dataset_from_directory`.

    Classes are the sub-folders in alphabetical order (or `class_names`, in that order). Images are
    decoded as RGB at their own size. A file that is not an image (checked from its first bytes
    when `verify_images`) is skipped with a warning; one that fails to decode later is dropped by
    `tf.data` (`ignore_errors`), so a damaged file never stops training.

    Args:
        directory: root folder with one sub-folder per class.
        class_names: optional list of sub-folder names to use, in label order.
        shuffle: shuffle the file list (every epoch) before decoding; cheap even for ImageNet.
        seed: seed of that shuffle.
        verify_images: read the first bytes of every file to skip non-images up front. Costs one
            small read per file; turn off for very large folders on slow storage.

    Returns:
        `(dataset, class_names)`: a dataset of `(uint8 [H, W, 3] image, int32 label)`.

    Example:
    ```python
    train, names = load_image_folder("~/data/imagenet/train", shuffle=True)
    ```
    """
    directory = os.path.expanduser(str(directory))
    if not tf.io.gfile.isdir(directory):
        raise ValueError(f"`directory` {directory!r} is not an existing folder.")
    class_names = _class_folders(directory, class_names)
    paths, labels = _image_files(directory, class_names, verify_images)

    ds = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, np.int32)))
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)

    def decode(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return image, label

    ds = graph_map(ds, decode, num_parallel_calls=tf.data.AUTOTUNE)
    # Files that pass the header check but are truncated fail here; drop them, don't crash.
    return ds.ignore_errors(log_warning=True), class_names


def _class_folders(directory, class_names):
    """The class sub-folders of `directory`: all of them, sorted, or the `class_names` given."""
    found = sorted(
        d for d in tf.io.gfile.listdir(directory) if tf.io.gfile.isdir(os.path.join(directory, d))
    )
    found = [d.rstrip("/") for d in found]
    if class_names is None:
        class_names = found
    else:
        class_names = list(class_names)
        missing = [c for c in class_names if c not in found]
        if missing:
            raise ValueError(
                f"`class_names` {missing} have no sub-folder in {directory!r}; "
                f"sub-folders are {found}."
            )
    if not class_names:
        raise ValueError(f"{directory!r} has no class sub-folders (expected root/<class>/*.jpg).")
    return class_names


def _image_files(directory, class_names, verify_images):
    """`(paths, labels)` of the image files of every class folder; warns of skipped files."""
    paths, labels, skipped = [], [], []
    for label, name in enumerate(class_names):
        folder = os.path.join(directory, name)
        for file in sorted(tf.io.gfile.listdir(folder)):
            if not file.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(folder, file)
            if verify_images and not _looks_like_image(path):
                skipped.append(path)
                continue
            paths.append(path)
            labels.append(label)
    if skipped:
        shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        warnings.warn(
            f"Skipping {len(skipped)} file(s) that are not readable images: {shown}",
            stacklevel=3,  # the caller of load_image_folder
        )
    if not paths:
        raise ValueError(
            f"No images with extensions {IMAGE_EXTENSIONS} found under {directory!r} "
            f"in classes {class_names}."
        )
    return paths, labels


def load_classification_data(
    source,
    split="train",
    *,
    image_size=None,
    num_images=None,
    seed=None,
    data_dir=None,
    manual_dir=None,
    shuffle=False,
):
    """One entry point for every classification source.

    Args:
        source: `"embedded"` (the built-in shape set), `"tfds:NAME"` (a tensorflow-datasets
            builder, e.g. `"tfds:imagenet2012"`) or a folder path. A folder is read as
            `source/<split>/<class>/*` (`"validation"` also finds a `val` folder), or as
            `source/<class>/*` when `split=None`.
        split: `"train"`, `"validation"` or, for tfds, any split string.
        image_size: embedded set only: image size (default 64).
        num_images: embedded set only: number of images.
        seed: embedded set: which draw of the set; folders: seed of the file shuffle.
        data_dir: tfds only: data folder.
        manual_dir: tfds only: folder of manually downloaded archives (`imagenet2012`).
        shuffle: tfds: shuffle the record files; folders: shuffle the file list.

    Returns:
        `(dataset, class_names)`: `(uint8 [H, W, 3] image, int32 label)` pairs and the class names.

    Example:
    >>> ds, class_names = load_classification_data("embedded", "validation", num_images=32)
    >>> len(class_names)
    8
    """
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(
            f"`source` must be 'embedded', 'tfds:NAME' or a folder path; received {source!r}."
        )
    source = os.fspath(source)
    given = {
        "image_size": image_size,
        "num_images": num_images,
        "data_dir": data_dir,
        "manual_dir": manual_dir,
    }

    if source == "embedded":
        _reject_options(given, ("data_dir", "manual_dir"), "the embedded set")
        if shuffle:
            raise ValueError(
                "`shuffle` does not apply to the embedded set; shuffle in the pipeline."
            )
        ds = load_embedded_classification(
            split, num_images=num_images, image_size=image_size or 64, seed=seed
        )
        return ds, list(EMBEDDED_CLASSES)
    if source.startswith("tfds:"):
        _reject_options(given, ("image_size", "num_images"), "tfds sources")
        if seed is not None:
            raise ValueError("`seed` does not apply to tfds sources; shuffle in the pipeline.")
        return load_tfds_classification(
            source[len("tfds:") :],
            split,
            data_dir=data_dir,
            manual_dir=manual_dir,
            shuffle_files=shuffle,
        )
    _reject_options(given, tuple(given), "folder sources")
    return load_image_folder(_split_folder(source, split), shuffle=shuffle, seed=seed)


def _reject_options(given, names, kind):
    bad = [n for n in names if given[n] is not None]
    if bad:
        raise ValueError(f"{', '.join(f'`{n}`' for n in bad)} do(es) not apply to {kind}.")


def _split_folder(source, split):
    """The folder of `split` under the folder source: `source/<split>` (or `val`), or `source`."""
    root = os.path.expanduser(source)
    if not os.path.isdir(root):
        raise ValueError(
            f"`source` {source!r} is neither 'embedded', 'tfds:NAME' nor an existing folder."
        )
    if split is None:
        return root
    candidates = [split] + (["val"] if split == "validation" else [])
    folders = [os.path.join(root, c) for c in candidates if os.path.isdir(os.path.join(root, c))]
    if not folders:
        raise ValueError(
            f"Folder {root!r} has no {' or '.join(map(repr, candidates))} sub-folder. Use "
            "root/<split>/<class>/* or pass split=None to read root/<class>/*."
        )
    return folders[0]
