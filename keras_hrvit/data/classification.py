"""ImageNet-style classification data: an embedded toy set, loaders and the paper's transforms.

HRViT's ImageNet recipe is DeiT's (timm): random resized crop, horizontal flip, RandAugment
`rand-m9-mstd0.5-inc1`, random erasing 0.25, Mixup 0.8 / CutMix 1.0 switching with probability 0.5
and label smoothing 0.1; evaluation resizes the shorter side to `int(224 / 0.9)` and center crops.

Everything runs in `tf.data` with TensorFlow ops, so it feeds a model on any Keras backend. The
batch-level augmentations are the Keras core layers `MixUp`, `CutMix` and `RandomErasing`, which
switch themselves to TensorFlow inside `tf.data`. The per-image steps (crop, flip, RandAugment) use
stateless TensorFlow ops with one seed per image: Keras has no random resized crop, and its
`RandAugment` draws one list of operations per batch with ranges that differ from timm's.

Example:

```python
train, class_names = load_classification_data("embedded", "train")
train = classification_train_pipeline(train, len(class_names), image_size=64, batch_size=32)
val, _ = load_classification_data("embedded", "validation")
val = classification_eval_pipeline(val, len(class_names), image_size=64, batch_size=64)
```
"""

import math
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_hrvit.data.constants import IMAGENET_MEAN, IMAGENET_STD

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
_INTERPOLATIONS = ("bicubic", "bilinear")

# timm's `rand-m9-mstd0.5-inc1` operation set (`_RAND_INCREASING_TRANSFORMS`), in timm's order.
RANDAUGMENT_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
# timm fills pixels uncovered by geometric ops with the ImageNet mean in 0-255 (`img_mean`).
_RANDAUGMENT_FILL = tuple(float(round(m)) for m in IMAGENET_MEAN)


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
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)):
        raise ValueError(f"`num_images` must be a positive integer; received {num_images!r}.")
    if num_images < 1:
        raise ValueError(f"`num_images` must be a positive integer; received {num_images}.")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise ValueError(
            f"`image_size` must be an integer of at least 16; received {image_size!r}."
        )
    if image_size < 16:
        raise ValueError(f"`image_size` must be an integer of at least 16; received {image_size}.")
    if seed is None:
        seed = _EMBEDDED_SEED
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer or None; received {seed!r}.")

    split_id = _EMBEDDED_SPLITS[split]
    labels = np.arange(num_images, dtype=np.int32) % len(EMBEDDED_CLASSES)
    images = np.empty((num_images, image_size, image_size, 3), dtype=np.uint8)
    for i in range(num_images):
        rng = np.random.default_rng([int(seed), split_id, i])
        images[i] = _embedded_image(rng, int(labels[i]), int(image_size))
    return images, labels


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

    return ds.map(to_pair, num_parallel_calls=tf.data.AUTOTUNE), class_names


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
            stacklevel=2,
        )
    if not paths:
        raise ValueError(
            f"No images with extensions {IMAGE_EXTENSIONS} found under {directory!r} "
            f"in classes {class_names}."
        )

    ds = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, np.int32)))
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)

    def decode(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return image, label

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    # Files that pass the header check but are truncated fail here; drop them, don't crash.
    return ds.ignore_errors(log_warning=True), class_names


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

    def reject(names, kind):
        given = {"image_size": image_size, "num_images": num_images, "data_dir": data_dir}
        given["manual_dir"] = manual_dir
        bad = [n for n in names if given[n] is not None]
        if bad:
            raise ValueError(f"{', '.join(f'`{n}`' for n in bad)} do(es) not apply to {kind}.")

    if source == "embedded":
        reject(("data_dir", "manual_dir"), "the embedded set")
        if shuffle:
            raise ValueError(
                "`shuffle` does not apply to the embedded set; shuffle in the pipeline."
            )
        ds = load_embedded_classification(
            split, num_images=num_images, image_size=image_size or 64, seed=seed
        )
        return ds, list(EMBEDDED_CLASSES)
    if source.startswith("tfds:"):
        reject(("image_size", "num_images"), "tfds sources")
        if seed is not None:
            raise ValueError("`seed` does not apply to tfds sources; shuffle in the pipeline.")
        return load_tfds_classification(
            source[len("tfds:") :],
            split,
            data_dir=data_dir,
            manual_dir=manual_dir,
            shuffle_files=shuffle,
        )
    reject(("image_size", "num_images", "data_dir", "manual_dir"), "folder sources")
    if not os.path.isdir(os.path.expanduser(source)):
        raise ValueError(
            f"`source` {source!r} is neither 'embedded', 'tfds:NAME' nor an existing folder."
        )
    root = os.path.expanduser(source)
    if split is not None:
        candidates = [split] + (["val"] if split == "validation" else [])
        folders = [
            os.path.join(root, c) for c in candidates if os.path.isdir(os.path.join(root, c))
        ]
        if not folders:
            raise ValueError(
                f"Folder {root!r} has no {' or '.join(map(repr, candidates))} sub-folder. Use "
                "root/<split>/<class>/* or pass split=None to read root/<class>/*."
            )
        root = folders[0]
    return load_image_folder(root, shuffle=shuffle, seed=seed)


# ------------------------------------------------------------------------------------------------
# Per-image transforms
# ------------------------------------------------------------------------------------------------


def _split_seed(seed, num):
    return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def _random_resized_crop_box(height, width, seed, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's `RandomResizedCrop.get_params`: `(top, left, crop_height, crop_width)`.

    Ten tries at an area fraction drawn from `scale` and a log-uniform aspect ratio from `ratio`;
    the first crop that fits wins, else the whole image center-cropped to the nearest ratio.
    `seed` is a stateless seed (int `[2]`).
    """
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    s_area, s_ratio, s_top, s_left = _split_seed(seed, 4)
    target = h * w * tf.random.stateless_uniform([10], s_area, scale[0], scale[1])
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = tf.exp(tf.random.stateless_uniform([10], s_ratio, log_ratio[0], log_ratio[1]))
    # tf.round rounds half to even, like Python's round() in torchvision.
    crop_w = tf.round(tf.sqrt(target * aspect))
    crop_h = tf.round(tf.sqrt(target / aspect))
    fits = (crop_w > 0) & (crop_w <= w) & (crop_h > 0) & (crop_h <= h)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)

    # No fit in ten tries: a too-wide image keeps its height, a too-tall one its width.
    in_ratio = w / h
    fallback_w = tf.where(in_ratio > ratio[1], tf.round(h * ratio[1]), w)
    fallback_h = tf.where(in_ratio < ratio[0], tf.round(w / ratio[0]), h)
    found = tf.reduce_any(fits)
    crop_h = tf.where(found, crop_h[first], fallback_h)
    crop_w = tf.where(found, crop_w[first], fallback_w)
    # randint(0, h - crop_h + 1) when found; the center otherwise.
    top = tf.where(
        found,
        tf.floor(tf.random.stateless_uniform([], s_top) * (h - crop_h + 1)),
        tf.floor((h - crop_h) / 2),
    )
    left = tf.where(
        found,
        tf.floor(tf.random.stateless_uniform([], s_left) * (w - crop_w + 1)),
        tf.floor((w - crop_w) / 2),
    )
    box = tf.cast(tf.stack([top, left, crop_h, crop_w]), tf.int32)
    return tf.unstack(box)


def _resize(image, size, interpolation):
    # Antialiased bicubic is PIL's bicubic (Keys a=-0.5 with a widened kernel when downscaling);
    # PIL then rounds to uint8, which the RandAugment ops below expect. Same size: no resampling.
    size = tf.convert_to_tensor(size, tf.int32)
    unchanged = tf.reduce_all(tf.shape(image)[:2] == size)
    return tf.cond(
        unchanged,
        lambda: image,
        lambda: tf.clip_by_value(
            tf.round(tf.image.resize(image, size, method=interpolation, antialias=True)), 0, 255
        ),
    )


def _blend(degenerate, image, factor):
    return tf.clip_by_value(tf.round(degenerate + factor * (image - degenerate)), 0.0, 255.0)


def _luminance(image):
    # PIL's RGB -> L conversion.
    return tf.round(tf.reduce_sum(image * [0.299, 0.587, 0.114], axis=-1, keepdims=True))


def _affine(image, matrix, fill=_RANDAUGMENT_FILL):
    """PIL `Image.transform(AFFINE, matrix)`: output pixel (x, y) samples input (a x + b y + c,
    d x + e y + f). Uncovered pixels get `fill` (per channel)."""
    fill = tf.constant(fill, tf.float32)
    transform = tf.concat([tf.cast(matrix, tf.float32), tf.zeros([2])], axis=0)[None]
    # The op fills with one scalar: shift so that the per-channel fill becomes 0.
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=(image - fill)[None],
        transforms=transform,
        output_shape=tf.shape(image)[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return tf.clip_by_value(tf.round(out[0] + fill), 0.0, 255.0)


def _rotate(image, degrees):
    theta = degrees * math.pi / 180.0
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    cy, cx = (size[0] - 1) / 2, (size[1] - 1) / 2
    cos, sin = tf.cos(theta), tf.sin(theta)
    matrix = [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy]
    return _affine(image, tf.stack(matrix))


def _sharpness_degenerate(image):
    # PIL's ImageFilter.SMOOTH (3x3 kernel, centre 5, sum 13); PIL leaves the border untouched.
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
    smooth = tf.round(smooth)
    inner = tf.pad(tf.ones_like(smooth), [[1, 1], [1, 1], [0, 0]])
    return tf.where(inner > 0, tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]), image)


def _auto_contrast(image):
    # PIL ImageOps.autocontrast(cutoff=0): stretch each channel to [0, 255].
    lo = tf.reduce_min(image, axis=[0, 1], keepdims=True)
    hi = tf.reduce_max(image, axis=[0, 1], keepdims=True)
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    stretched = tf.clip_by_value(tf.floor((image - lo) * scale), 0.0, 255.0)
    return tf.where(hi > lo, stretched, image)


def _equalize_channel(channel):
    # PIL ImageOps.equalize: lut[i] = (step // 2 + #pixels below i) // step, where step is the
    # pixel count without the last non-empty bin, divided by 255.
    values = tf.cast(channel, tf.int32)
    hist = tf.math.bincount(values, minlength=256, maxlength=256)
    last = tf.gather(hist, tf.reduce_max(tf.where(hist > 0)))
    step = (tf.reduce_sum(hist) - last) // 255
    lut = (tf.cumsum(hist, exclusive=True) + step // 2) // tf.maximum(step, 1)
    lut = tf.cast(tf.clip_by_value(lut, 0, 255), tf.float32)
    return tf.where(step > 0, tf.gather(lut, values), channel)


def _equalize(image):
    return tf.stack([_equalize_channel(image[..., c]) for c in range(3)], axis=-1)


def _posterize(image, bits):
    # Keep the top `bits` bits; 0 bits gives black, like PIL's posterize.
    step = tf.pow(2.0, 8.0 - tf.cast(bits, tf.float32))
    return tf.floor(image / step) * step


# Traced once per process and called as a function: fifteen branches are slow to build into every
# pipeline's graph, twice per image.
@tf.function(
    input_signature=[
        tf.TensorSpec([], tf.int32),
        tf.TensorSpec([None, None, 3], tf.float32),
        tf.TensorSpec([], tf.float32),
        tf.TensorSpec([], tf.float32),
    ],
    autograph=False,
)
def _randaugment_op(index, image, magnitude, sign):
    """Applies op `RANDAUGMENT_OPS[index]` at timm level `magnitude` (0-10) and sign (+-1)."""
    level = magnitude / 10.0
    enhance = tf.maximum(0.1, 1.0 + sign * level * 0.9)  # timm _enhance_increasing_level_to_arg
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    shear = sign * level * 0.3
    shift = sign * level * 0.45  # timm translate_pct

    # Argument ranges at level 10 are timm's `*_level_to_arg` functions.
    ops = {
        "AutoContrast": lambda: _auto_contrast(image),
        "Equalize": lambda: _equalize(image),
        "Invert": lambda: 255.0 - image,
        "Rotate": lambda: _rotate(image, sign * level * 30.0),
        "PosterizeIncreasing": lambda: _posterize(image, 4 - tf.floor(level * 4)),
        "SolarizeIncreasing": lambda: tf.where(
            image >= 256 - tf.floor(level * 256), 255.0 - image, image
        ),
        "SolarizeAdd": lambda: tf.where(
            image < 128, tf.minimum(image + tf.floor(level * 110), 255.0), image
        ),
        "ColorIncreasing": lambda: _blend(_luminance(image), image, enhance),
        "ContrastIncreasing": lambda: _blend(
            tf.floor(tf.reduce_mean(_luminance(image)) + 0.5), image, enhance
        ),
        "BrightnessIncreasing": lambda: _blend(tf.zeros_like(image), image, enhance),
        "SharpnessIncreasing": lambda: _blend(_sharpness_degenerate(image), image, enhance),
        "ShearX": lambda: _affine(image, tf.stack([1.0, shear, 0.0, 0.0, 1.0, 0.0])),
        "ShearY": lambda: _affine(image, tf.stack([1.0, 0.0, 0.0, shear, 1.0, 0.0])),
        "TranslateXRel": lambda: _affine(image, tf.stack([1.0, 0.0, shift * width, 0.0, 1.0, 0.0])),
        "TranslateYRel": lambda: _affine(
            image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, shift * height])
        ),
    }
    branches = [ops[name] for name in RANDAUGMENT_OPS]
    out = tf.switch_case(index, branches)
    out.set_shape(image.shape)
    return out


def rand_augment(image, seed, num_ops=2, magnitude=9.0, magnitude_std=0.5, prob=0.5):
    """timm's RandAugment (`rand-m{magnitude}-mstd{magnitude_std}-inc1`) on one image.

    Picks `num_ops` operations of `RANDAUGMENT_OPS` uniformly with replacement; each is applied
    with probability `prob` at a level drawn from N(magnitude, magnitude_std) clipped to [0, 10]
    and a random sign, mapped to each op's range exactly as timm does (rotate 30 degrees, shear
    0.3, translate 45 % of the size, enhance factor 1 +- 0.9, ... at level 10). Only the chosen
    branch runs, so the cost is that of `num_ops` ops, not of all fifteen.

    Args:
        image: float `[H, W, 3]` in 0-255 (integral values, as PIL's uint8).
        seed: stateless seed, int `[2]`.

    Returns:
        The augmented float32 image, integral values in 0-255.

    Example:
    >>> image = tf.fill([32, 32, 3], 100.0)
    >>> rand_augment(image, seed=tf.constant([1, 2])).shape
    TensorShape([32, 32, 3])
    """
    image = tf.cast(image, tf.float32)
    for i in range(num_ops):
        s_op, s_apply, s_level, s_sign = _split_seed(
            tf.random.experimental.stateless_fold_in(seed, i), 4
        )
        index = tf.random.stateless_uniform([], s_op, 0, len(RANDAUGMENT_OPS), dtype=tf.int32)
        apply = tf.random.stateless_uniform([], s_apply) < prob
        level = magnitude + magnitude_std * tf.random.stateless_normal([], s_level)
        level = tf.clip_by_value(level, 0.0, 10.0)
        sign = tf.where(tf.random.stateless_uniform([], s_sign) < 0.5, -1.0, 1.0)
        image = tf.cond(
            apply,
            lambda image=image, index=index, level=level, sign=sign: _randaugment_op(
                index, image, level, sign
            ),
            lambda image=image: image,
        )
    return image


def normalize_imagenet(images):
    """`(x - mean) / std` with the ImageNet statistics on 0-255 pixels; returns float32.

    Example:
    >>> normalize_imagenet(tf.constant([[123.675, 116.28, 103.53]])).numpy().tolist()
    [[0.0, 0.0, 0.0]]
    """
    images = tf.cast(images, tf.float32)
    return (images - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def resize_center_crop(image, image_size=224, crop_pct=0.9, interpolation="bicubic"):
    """timm's evaluation transform on one image, before normalization.

    Resizes the shorter side to `floor(image_size / crop_pct)` (the longer side scaled and
    floored, as torchvision's `Resize(int)`), then crops the central `image_size` square with
    torchvision's `CenterCrop` offsets (`round((size - crop) / 2)`, half to even).

    Returns:
        float32 `[image_size, image_size, 3]`, values in 0-255.

    Example:
    >>> resize_center_crop(tf.zeros([375, 500, 3], tf.uint8)).shape  # via 248 x 330
    TensorShape([224, 224, 3])
    """
    image = tf.cast(image, tf.float32)
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    scale_size = int(math.floor(image_size / crop_pct))
    short = tf.minimum(h, w)
    # Integer arithmetic gives torchvision's int(size * long / short) without float error.
    new_h = tf.where(h <= w, scale_size, (scale_size * h) // short)
    new_w = tf.where(h <= w, (scale_size * w) // short, scale_size)
    image = _resize(image, tf.stack([new_h, new_w]), interpolation)
    top = tf.cast(tf.round(tf.cast(new_h - image_size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - image_size, tf.float32) / 2.0), tf.int32)
    image = image[top : top + image_size, left : left + image_size]
    image.set_shape([image_size, image_size, 3])
    return image


# ------------------------------------------------------------------------------------------------
# Pipelines
# ------------------------------------------------------------------------------------------------


def _check_positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}; received {value!r}.")


def _check_fraction(name, value, upper=1.0, upper_open=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    ok = ok and (value < upper if upper_open else value <= upper)
    if not ok:
        bracket = ")" if upper_open else "]"
        raise ValueError(f"`{name}` must be a number in [0, {upper}{bracket}; received {value!r}.")


def _check_range(name, value, lower_bound):
    ok = isinstance(value, (tuple, list)) and len(value) == 2
    ok = ok and all(isinstance(v, (int, float)) for v in value)
    if not ok or not lower_bound < value[0] <= value[1]:
        raise ValueError(
            f"`{name}` must be a pair (low, high) with {lower_bound} < low <= high; "
            f"received {value!r}."
        )


def _check_interpolation(interpolation):
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(
            f"`interpolation` must be one of {_INTERPOLATIONS}; received {interpolation!r}."
        )


def _image_label(*element):
    """Accepts `(image, label)` pairs or tfds-style `{"image": ..., "label": ...}` dicts."""
    if len(element) == 1 and isinstance(element[0], dict):
        if "image" not in element[0] or "label" not in element[0]:
            raise ValueError(
                "Dataset elements that are dicts need 'image' and 'label' keys; "
                f"received keys {sorted(element[0])}."
            )
        image, label = element[0]["image"], element[0]["label"]
    elif len(element) == 2:
        image, label = element
    else:
        raise ValueError(
            "Dataset elements must be (image, label) pairs or dicts with 'image' and 'label'; "
            f"received {len(element)} components."
        )
    if image.shape.rank != 3:
        raise ValueError(
            f"Expected unbatched [H, W, C] images; received shape {image.shape}. "
            "Pass the dataset before `.batch()`."
        )
    return _as_rgb(image), tf.cast(tf.reshape(label, []), tf.int32)


def _one_hot(label, num_classes, label_smoothing):
    checks = [
        tf.debugging.assert_non_negative(label, message="Negative class label."),
        tf.debugging.assert_less(
            label, num_classes, message=f"Class label out of range for num_classes={num_classes}."
        ),
    ]
    with tf.control_dependencies(checks):
        off = label_smoothing / num_classes
        return tf.one_hot(label, num_classes, on_value=1.0 - label_smoothing + off, off_value=off)


def classification_train_pipeline(
    ds,
    num_classes,
    image_size=224,
    batch_size=128,
    *,
    scale=(0.08, 1.0),
    ratio=(3 / 4, 4 / 3),
    interpolation="bicubic",
    hflip=0.5,
    randaugment=True,
    randaugment_num_ops=2,
    randaugment_magnitude=9.0,
    randaugment_magnitude_std=0.5,
    random_erasing=0.25,
    mixup_alpha=0.8,
    cutmix_alpha=1.0,
    switch_prob=0.5,
    label_smoothing=0.1,
    shuffle_buffer_size=1024,
    drop_remainder=True,
    seed=None,
):
    """The paper's (DeiT / timm) ImageNet training transforms as a batched `tf.data` pipeline.

    Per image: random resized crop to `image_size` (scale, log-uniform ratio, bicubic), horizontal
    flip, RandAugment `rand-m9-mstd0.5-inc1` (see `rand_augment`), ImageNet normalization.
    Per batch: `keras.layers.RandomErasing` with probability `random_erasing`, then Mixup
    (`keras.layers.MixUp`, Beta(mixup_alpha)) or CutMix (`keras.layers.CutMix`,
    Beta(cutmix_alpha)), CutMix being chosen for a whole batch with probability `switch_prob`.

    Label smoothing is applied here, before mixing, as timm's `Mixup` does: targets are
    `(1 - label_smoothing) * one_hot + label_smoothing / num_classes`, then mixed, so they are soft
    labels that sum to 1. Train with `keras.losses.CategoricalCrossentropy()` WITHOUT its own
    `label_smoothing` (that would smooth twice).

    Mixing differences from timm: Keras draws one mixing weight per image (timm's "elem" mode,
    not its default one per batch), and CutMix boxes stay inside the image. Random erasing fills
    with per-pixel N(0, 1) noise in normalized space (timm's "pixel" mode), which the Keras layer
    clips to [-1, 1]; its box area is in (0.02, 1/3) like timm's.

    Args:
        ds: dataset of `(image, label)` (uint8 `[H, W, 3]`, int label) or tfds-style dicts.
        num_classes: number of classes (width of the label vectors).
        image_size: output height and width.
        batch_size: images per batch.
        scale, ratio: random resized crop area fraction and aspect ratio ranges.
        interpolation: `"bicubic"` (DeiT's) or `"bilinear"` for the crop resize.
        hflip: probability of a horizontal flip.
        randaugment: `True` for timm's RandAugment, `False` for none, or any callable (e.g.
            `keras.layers.RandAugment(value_range=(0, 255))`) applied to one float 0-255 image.
        randaugment_num_ops, randaugment_magnitude, randaugment_magnitude_std: its parameters.
        random_erasing: probability of erasing a box in each image.
        mixup_alpha, cutmix_alpha: Beta parameters; 0 turns that mix off. Keras' CutMix accepts
            `cutmix_alpha` up to 1.
        switch_prob: probability of CutMix instead of Mixup when both are on.
        label_smoothing: smoothing of the one-hot labels, in [0, 1).
        shuffle_buffer_size: shuffle buffer in images; 0 or None turns shuffling off.
        drop_remainder: drop the last partial batch (timm's `drop_last`).
        seed: integer for a reproducible pipeline; `None` draws fresh randomness every epoch.

    Returns:
        A `tf.data.Dataset` of `(images, labels)`: float32 `[B, image_size, image_size, 3]`
        normalized images and float32 `[B, num_classes]` soft labels.

    Example:
    >>> ds = load_embedded_classification("train", num_images=32)
    >>> ds = classification_train_pipeline(ds, 8, image_size=64, batch_size=16, seed=0)
    >>> images, labels = next(iter(ds))
    >>> images.shape, labels.shape
    (TensorShape([16, 64, 64, 3]), TensorShape([16, 8]))
    """
    if not isinstance(ds, tf.data.Dataset):
        raise ValueError(f"`ds` must be a tf.data.Dataset; received {type(ds).__name__}.")
    _check_positive_int("num_classes", num_classes, 2)
    _check_positive_int("image_size", image_size, 8)
    _check_positive_int("batch_size", batch_size)
    _check_range("scale", scale, 0.0)
    if scale[1] > 1.0:
        raise ValueError(f"`scale` values must be at most 1; received {scale!r}.")
    _check_range("ratio", ratio, 0.0)
    _check_interpolation(interpolation)
    _check_fraction("hflip", hflip)
    _check_fraction("random_erasing", random_erasing)
    _check_fraction("switch_prob", switch_prob)
    _check_fraction("label_smoothing", label_smoothing, upper_open=True)
    _check_fraction("cutmix_alpha", cutmix_alpha)
    if (
        isinstance(mixup_alpha, bool)
        or not isinstance(mixup_alpha, (int, float))
        or mixup_alpha < 0
    ):
        raise ValueError(f"`mixup_alpha` must be a number >= 0; received {mixup_alpha!r}.")
    if randaugment is True:
        _check_positive_int("randaugment_num_ops", randaugment_num_ops)
        _check_fraction("randaugment_magnitude", randaugment_magnitude, upper=10.0)
        _check_fraction("randaugment_magnitude_std", randaugment_magnitude_std, upper=10.0)
    elif randaugment not in (False, None) and not callable(randaugment):
        raise ValueError(
            "`randaugment` must be True, False or a callable on one image; "
            f"received {randaugment!r}."
        )
    if shuffle_buffer_size is not None and shuffle_buffer_size != 0:
        _check_positive_int("shuffle_buffer_size", shuffle_buffer_size)
    if seed is not None:
        _check_positive_int("seed", seed, 0)

    def layer_seed(offset):
        return None if seed is None else seed + offset

    ds = ds.map(_image_label, num_parallel_calls=tf.data.AUTOTUNE)
    if shuffle_buffer_size:
        ds = ds.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
    # One stateless seed per image keeps the parallel map reproducible; fresh each epoch.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip((ds, seeds))

    def per_image(pair, image_seed):
        image, label = pair
        image_seed = tf.stack([image_seed, tf.constant(0, tf.int64)])
        s_crop, s_flip, s_aug = _split_seed(image_seed, 3)
        shape = tf.shape(image)
        top, left, crop_h, crop_w = _random_resized_crop_box(
            shape[0], shape[1], s_crop, scale, ratio
        )
        image = tf.cast(image[top : top + crop_h, left : left + crop_w], tf.float32)
        image = _resize(image, [image_size, image_size], interpolation)
        flip = tf.random.stateless_uniform([], s_flip) < hflip
        image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
        if randaugment is True:
            image = rand_augment(
                image,
                s_aug,
                num_ops=randaugment_num_ops,
                magnitude=float(randaugment_magnitude),
                magnitude_std=float(randaugment_magnitude_std),
            )
        elif randaugment:
            image = tf.cast(randaugment(image), tf.float32)
        image = tf.reshape(image, [image_size, image_size, 3])
        target = _one_hot(label, num_classes, float(label_smoothing))
        return normalize_imagenet(image), target, s_aug

    ds = ds.map(per_image, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    erasing = None
    if random_erasing > 0:
        # factor=(p, p): the layer draws its probability from `factor`; a single float p would
        # mean "uniform in [0, p]", i.e. p / 2 on average.
        erasing = keras.layers.RandomErasing(
            factor=(random_erasing, random_erasing),
            scale=(0.02, 1 / 3),
            fill_value=None,
            value_range=(-1.0, 1.0),
            seed=layer_seed(1),
        )
    mixup = keras.layers.MixUp(alpha=mixup_alpha, seed=layer_seed(2)) if mixup_alpha > 0 else None
    # CutMix draws its Beta parameter uniformly from `factor`: (a, a) pins it to a.
    cutmix = None
    if cutmix_alpha > 0:
        cutmix = keras.layers.CutMix(factor=(cutmix_alpha, cutmix_alpha), seed=layer_seed(3))

    def per_batch(images, labels, batch_seeds):
        if erasing is not None:
            images = erasing(images, training=True)
        if mixup is None and cutmix is None:
            return images, labels
        if mixup is None or cutmix is None:
            layer = mixup or cutmix
            out = layer({"images": images, "labels": labels}, training=True)
            return out["images"], out["labels"]
        mixed = mixup({"images": images, "labels": labels}, training=True)
        cut = cutmix({"images": images, "labels": labels}, training=True)
        switch_seed = tf.random.experimental.stateless_fold_in(batch_seeds[0], 1)
        use_cutmix = tf.random.stateless_uniform([], switch_seed) < switch_prob
        return (
            tf.where(use_cutmix, cut["images"], mixed["images"]),
            tf.where(use_cutmix, cut["labels"], mixed["labels"]),
        )

    # Sequential: the Keras layers keep their random state in variables, so a parallel map would
    # make seeded runs order-dependent. Batch-level work is small next to the per-image map.
    ds = ds.map(per_batch)
    return ds.prefetch(tf.data.AUTOTUNE)


def classification_eval_pipeline(
    ds,
    num_classes,
    image_size=224,
    crop_pct=0.9,
    batch_size=128,
    *,
    interpolation="bicubic",
    drop_remainder=False,
):
    """timm's evaluation transform as a batched `tf.data` pipeline.

    Resizes the shorter side to `floor(image_size / crop_pct)` (bicubic), center crops
    `image_size`, normalizes with the ImageNet mean and std, and one-hot encodes the labels.

    Args:
        ds: dataset of `(image, label)` (uint8 `[H, W, 3]`, int label) or tfds-style dicts.
        num_classes: number of classes.
        image_size: output height and width.
        crop_pct: fraction of the resized image kept by the center crop, in (0, 1].
        batch_size: images per batch.
        interpolation: `"bicubic"` or `"bilinear"`.
        drop_remainder: drop the last partial batch.

    Returns:
        A `tf.data.Dataset` of float32 `[B, image_size, image_size, 3]` images and float32
        `[B, num_classes]` one-hot labels.

    Example:
    >>> ds = load_embedded_classification("validation", num_images=16)
    >>> ds = classification_eval_pipeline(ds, 8, image_size=64, batch_size=8)
    >>> [tuple(x.shape) for x in next(iter(ds))]
    [(8, 64, 64, 3), (8, 8)]
    """
    if not isinstance(ds, tf.data.Dataset):
        raise ValueError(f"`ds` must be a tf.data.Dataset; received {type(ds).__name__}.")
    _check_positive_int("num_classes", num_classes, 2)
    _check_positive_int("image_size", image_size, 8)
    _check_positive_int("batch_size", batch_size)
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)):
        raise ValueError(f"`crop_pct` must be a number in (0, 1]; received {crop_pct!r}.")
    if not 0 < crop_pct <= 1:
        raise ValueError(f"`crop_pct` must be a number in (0, 1]; received {crop_pct!r}.")
    _check_interpolation(interpolation)

    def per_image(*element):
        image, label = _image_label(*element)
        image = resize_center_crop(image, image_size, crop_pct, interpolation)
        return normalize_imagenet(image), _one_hot(label, num_classes, 0.0)

    ds = ds.map(per_image, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
