"""ImageNet-style classification data: the paper's training and evaluation transforms.

HRViT's ImageNet recipe is DeiT's (timm): random resized crop, horizontal flip, RandAugment
`rand-m9-mstd0.5-inc1`, random erasing 0.25, Mixup 0.8 / CutMix 1.0 switching with probability 0.5
and label smoothing 0.1; evaluation resizes the shorter side to `int(224 / 0.9)` and center crops.

Everything runs in `tf.data` with TensorFlow ops, so it feeds a model on any Keras backend. The
batch-level augmentations are the Keras core layers `MixUp`, `CutMix` and `RandomErasing`, which
switch themselves to TensorFlow inside `tf.data`. The per-image steps (crop, flip, RandAugment) use
stateless TensorFlow ops with one seed per image: Keras has no random resized crop, and its
`RandAugment` draws one list of operations per batch with ranges that differ from timm's.

The data sources (embedded set, image folders, tfds) live in
`keras_hrvit.data.classification_sources` and RandAugment in `keras_hrvit.data.randaugment`;
their public names are importable from here too.

Example:

```python
train, class_names = load_classification_data("embedded", "train")
train = classification_train_pipeline(train, len(class_names), image_size=64, batch_size=32)
val, _ = load_classification_data("embedded", "validation")
val = classification_eval_pipeline(val, len(class_names), image_size=64, batch_size=64)
```
"""

import functools
import math

import keras
import tensorflow as tf

from keras_hrvit.data.classification_sources import (
    EMBEDDED_CLASSES,
    IMAGE_EXTENSIONS,
    _as_rgb,
    generate_embedded_classification,
    load_classification_data,
    load_embedded_classification,
    load_image_folder,
    load_tfds_classification,
)
from keras_hrvit.data.graph_map import graph_map
from keras_hrvit.data.randaugment import (
    _RANDAUGMENT_FILL,  # noqa: F401  (tests reach it through this module)
    RANDAUGMENT_OPS,
    _randaugment_op,  # noqa: F401  (tests reach it through this module)
    _split_seed,
    rand_augment,
)
from keras_hrvit.presets import IMAGENET_MEAN, IMAGENET_STD
from keras_hrvit.validation import check_choice, check_number, check_positive_int

_INTERPOLATIONS = ("bicubic", "bilinear")


# ------------------------------------------------------------------------------------------------
# Per-image transforms
# ------------------------------------------------------------------------------------------------


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


def _check_dataset(ds):
    if not isinstance(ds, tf.data.Dataset):
        raise ValueError(f"`ds` must be a tf.data.Dataset; received {type(ds).__name__}.")


def _check_sizes(num_classes, image_size, batch_size):
    check_number("num_classes", num_classes, 2, integer=True)
    check_number("image_size", image_size, 8, integer=True)
    check_positive_int("batch_size", batch_size)


def _check_range(name, value, lower_bound):
    ok = isinstance(value, (tuple, list)) and len(value) == 2
    ok = ok and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
    if not ok or not lower_bound < value[0] <= value[1]:
        raise ValueError(
            f"`{name}` must be a pair (low, high) of finite numbers with {lower_bound} < low <= "
            f"high; received {value!r}."
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
    flip, RandAugment `rand-m9-mstd0.5-inc1` (see `rand_augment`); images stay 0-255.
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
        0-255 float32 images and float32 `[B, num_classes]` soft labels.

    Example:
    >>> ds = load_embedded_classification("train", num_images=32)
    >>> ds = classification_train_pipeline(ds, 8, image_size=64, batch_size=16, seed=0)
    >>> images, labels = next(iter(ds))
    >>> images.shape, labels.shape
    (TensorShape([16, 64, 64, 3]), TensorShape([16, 8]))
    """
    _check_dataset(ds)
    _check_sizes(num_classes, image_size, batch_size)
    _check_train_transforms(scale, ratio, interpolation, hflip, label_smoothing)
    augment = _randaugment_function(
        randaugment, randaugment_num_ops, randaugment_magnitude, randaugment_magnitude_std
    )
    for name, value in (("random_erasing", random_erasing), ("switch_prob", switch_prob)):
        check_number(name, value, 0, 1)
    check_number("mixup_alpha", mixup_alpha, 0)
    check_number("cutmix_alpha", cutmix_alpha, 0, 1)
    if shuffle_buffer_size is not None and shuffle_buffer_size != 0:
        check_positive_int("shuffle_buffer_size", shuffle_buffer_size)
    if seed is not None:
        check_number("seed", seed, 0, integer=True)

    ds = graph_map(ds, _image_label, num_parallel_calls=tf.data.AUTOTUNE)
    if shuffle_buffer_size:
        ds = ds.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
    # One stateless seed per image keeps the parallel map reproducible; fresh each epoch.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip((ds, seeds))
    per_image = _train_image_transform(
        num_classes, image_size, scale, ratio, interpolation, hflip, augment, label_smoothing
    )
    ds = graph_map(ds, per_image, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    per_batch = _batch_augmentation(random_erasing, mixup_alpha, cutmix_alpha, switch_prob, seed)
    # Sequential: the Keras layers keep their random state in variables, so a parallel map would
    # make seeded runs order-dependent. Batch-level work is small next to the per-image map.
    ds = graph_map(ds, per_batch)
    return ds.prefetch(tf.data.AUTOTUNE)


def _check_train_transforms(scale, ratio, interpolation, hflip, label_smoothing):
    _check_range("scale", scale, 0.0)
    if scale[1] > 1.0:
        raise ValueError(f"`scale` values must be at most 1; received {scale!r}.")
    _check_range("ratio", ratio, 0.0)
    check_choice("interpolation", interpolation, _INTERPOLATIONS)
    check_number("hflip", hflip, 0, 1)
    check_number("label_smoothing", label_smoothing, 0, 1)
    if label_smoothing == 1:
        raise ValueError(
            f"`label_smoothing` must be a number >= 0 and < 1; got {label_smoothing!r}."
        )


def _randaugment_function(randaugment, num_ops, magnitude, magnitude_std):
    """`(image, seed) -> image` for the `randaugment` argument of the train pipeline, or None."""
    if randaugment is True:
        check_positive_int("randaugment_num_ops", num_ops)
        check_number("randaugment_magnitude", magnitude, 0, 10)
        check_number("randaugment_magnitude_std", magnitude_std, 0, 10)
        return functools.partial(
            rand_augment,
            num_ops=num_ops,
            magnitude=float(magnitude),
            magnitude_std=float(magnitude_std),
        )
    if randaugment in (False, None):
        return None
    if not callable(randaugment):
        raise ValueError(
            "`randaugment` must be True, False or a callable on one image; "
            f"received {randaugment!r}."
        )
    return lambda image, seed: tf.cast(randaugment(image), tf.float32)


def _train_image_transform(
    num_classes, image_size, scale, ratio, interpolation, hflip, augment, label_smoothing
):
    """The per-image step: crop, resize, flip, RandAugment, then the smoothed one-hot label."""

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
        if augment is not None:
            image = augment(image, s_aug)
        image = tf.reshape(image, [image_size, image_size, 3])
        target = _one_hot(label, num_classes, float(label_smoothing))
        return image, target, s_aug

    return per_image


def _batch_augmentation(random_erasing, mixup_alpha, cutmix_alpha, switch_prob, seed):
    """The per-batch step: random erasing, then Mixup or CutMix (Keras layers)."""

    def layer_seed(offset):
        return None if seed is None else seed + offset

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

    mean, std = tf.constant(IMAGENET_MEAN), tf.constant(IMAGENET_STD)

    def per_batch(images, labels, batch_seeds):
        if erasing is not None:
            # timm erases in normalized space with N(0, 1) noise; the models normalize inside,
            # so erase there and map back to 0-255.
            images = erasing((images - mean) / std, training=True) * std + mean
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

    return per_batch


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
    `image_size` and one-hot encodes the labels; images stay 0-255 (the models normalize them).

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
    _check_dataset(ds)
    _check_sizes(num_classes, image_size, batch_size)
    check_number("crop_pct", crop_pct, 0, 1, strict=True)
    check_choice("interpolation", interpolation, _INTERPOLATIONS)

    def per_image(*element):
        image, label = _image_label(*element)
        image = resize_center_crop(image, image_size, crop_pct, interpolation)
        return image, _one_hot(label, num_classes, 0.0)

    ds = graph_map(ds, per_image, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


__all__ = [
    "EMBEDDED_CLASSES",
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RANDAUGMENT_OPS",
    "classification_eval_pipeline",
    "classification_train_pipeline",
    "generate_embedded_classification",
    "load_classification_data",
    "load_embedded_classification",
    "load_image_folder",
    "load_tfds_classification",
    "rand_augment",
    "resize_center_crop",
]
