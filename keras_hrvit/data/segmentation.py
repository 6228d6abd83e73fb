"""tf.data pipelines for semantic segmentation, with the HRViT paper's (MMSegmentation) recipe.

Training: random rescale, random crop with the `cat_max_ratio` rule, horizontal flip,
photometric distortion, ImageNet normalization and padding to the crop size. Evaluation: an
optional keep-ratio resize and normalization. Image and mask always go through the same geometric
transform (bilinear for images, nearest for masks), and the pipelines use TensorFlow ops only, so
they run inside tf.data whatever the Keras backend.

Both pipelines take a dataset of `(image, mask)` pairs (or dicts with `"image"` and `"mask"` or
`"segmentation_mask"` keys): images `(H, W, 3)` with 0-255 values, masks `(H, W)` or `(H, W, 1)`
of class indices, 255 meaning "ignore". They return batches of float32 NHWC images and int32
`(B, H, W)` masks.

Bad examples stop the pipeline with one line, raised as `tf.errors.InvalidArgumentError` when it
is read (also through `model.fit`, on every backend): an image and a mask of different sizes, and,
when `num_classes` is given, a mask label that is neither below `num_classes` nor the ignore
label. Both are checked on the raw pair, before any resize, crop or padding.
"""

import math
import re

import numpy as np
import tensorflow as tf

from keras_hrvit.data.graph_map import graph_map
from keras_hrvit.presets import IGNORE_LABEL, IMAGENET_MEAN
from keras_hrvit.validation import check_number, check_positive_int

# MMSeg's PhotoMetricDistortion defaults; the hue delta is on OpenCV's 0-180 hue scale.
_BRIGHTNESS_DELTA = 32.0
_CONTRAST_RANGE = (0.5, 1.5)
_SATURATION_RANGE = (0.5, 1.5)
_HUE_DELTA = 18
_CROP_TRIES = 10
# How the one-line messages of the data checks begin (here and in `loaders`); TensorFlow escapes
# quotes and backslashes in them, so they use none.
_CHECK_MESSAGES = ("mask has label ", "image is ", "None of the ")


def _pair_size(value, name, allow_none=False):
    if value is None and allow_none:
        return None
    pair = value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (value, value)
    try:
        pair = tuple(int(v) for v in pair)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        pair = ()
    if len(pair) != 2 or min(pair) < 1:
        allowed = "None, " if allow_none else ""
        raise ValueError(
            f"`{name}` must be {allowed}a positive int or a pair of them, got {value!r}."
        )
    return pair


def _check_ratio_range(ratio_range):
    if ratio_range is None:
        return None
    try:
        low, high = (float(r) for r in ratio_range)
    except (TypeError, ValueError):
        low = high = -1.0
    if not (0 < low <= high and math.isfinite(high)):
        raise ValueError(
            "`ratio_range` must be None or a pair (low, high) of finite numbers with "
            "0 < low <= high, "
            f"got {ratio_range!r}."
        )
    return low, high


def _check_num_classes(num_classes):
    if num_classes is not None:
        # Masks are uint8 inside the pipelines: at most 256 labels.
        check_number("num_classes", num_classes, 1, 256, integer=True)
        num_classes = int(num_classes)
    return num_classes


def _assert(condition, message_format, values):
    """Fails with the one-line message `tf.strings.format(message_format, values)` unless
    `condition`; returns a tensor to hold a control dependency on."""

    def fail():
        # Formatted only when the check fails.
        message = tf.strings.format(message_format, values)
        with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
            return tf.constant(False)

    return tf.cond(condition, lambda: tf.constant(True), fail)


def _size_check(image, mask):
    image_size, mask_size = tf.shape(image)[:2], tf.shape(mask)[:2]
    return _assert(
        tf.reduce_all(tf.equal(image_size, mask_size)),
        "image is {}x{} but its mask is {}x{}: a mask must have the height and width of its image",
        (image_size[0], image_size[1], mask_size[0], mask_size[1]),
    )


def _label_check(mask, num_classes, ignore_label):
    """Every label is below `num_classes` or `ignore_label`; one reduction for uint8 masks."""
    if mask.dtype != tf.uint8:
        # Before the cast to uint8, which would wrap labels such as 300 or -1 into range.
        mask = tf.cast(mask, tf.int64)
    valid = tf.zeros_like(mask)
    largest = tf.cast(tf.reduce_max(tf.where(tf.equal(mask, ignore_label), valid, mask)), tf.int64)
    found, ok = largest, largest < num_classes
    if mask.dtype != tf.uint8:
        smallest = tf.reduce_min(mask)
        found = tf.where(smallest < 0, smallest, largest)
        ok = ok & (smallest >= 0)
    labels = f"labels 0-{num_classes - 1}" if num_classes > 1 else "label 0"
    return _assert(
        ok,
        f"mask has label {{}}, but num_classes is {num_classes} ({labels}, and {ignore_label} "
        "ignored)",
        (found,),
    )


def bad_example_message(error):
    """The one line of a pipeline check (bad labels, sizes or data) in a TensorFlow error.

    The pipelines refuse bad examples with a `tf.errors.InvalidArgumentError` when they are read,
    which TensorFlow and Keras surround with graph details; a command line can print this line
    alone. Returns `None` for other errors.

    Example:
    >>> try:
    ...     model.fit(segmentation_train_pipeline(pairs, 512, num_classes=150))
    ... except tf.errors.InvalidArgumentError as error:
    ...     raise SystemExit(bad_example_message(error) or error)
    """
    found = re.search(r"assertion failed: \[(.+?)\]\n", str(error) + "\n")
    if found is None or not found.group(1).startswith(_CHECK_MESSAGES):
        return None
    return found.group(1)


def _as_pairs(ds, num_classes=None, ignore_label=IGNORE_LABEL, num_parallel_calls=None):
    """Maps a dataset of pairs or dicts to `(image float32 (H, W, 3), mask uint8 (H, W))`.

    Refuses pairs of different sizes and, with `num_classes`, labels that are neither below it
    nor `ignore_label`: `tf.errors.InvalidArgumentError` with one line when the data is read.
    """
    if not isinstance(ds, tf.data.Dataset):
        raise TypeError(f"Expected a `tf.data.Dataset`, got {type(ds).__name__}.")
    spec = ds.element_spec
    if isinstance(spec, dict):
        mask_key = next((k for k in ("mask", "segmentation_mask") if k in spec), None)
        if "image" not in spec or mask_key is None:
            raise ValueError(
                "A dataset of dicts needs an 'image' key and a 'mask' or 'segmentation_mask' key, "
                f"got keys {sorted(spec)}."
            )
        ds = graph_map(ds, lambda x: (x["image"], x[mask_key]))
        spec = ds.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise ValueError(
            "Expected a dataset of (image, mask) pairs or dicts with 'image' and 'mask', "
            f"got element_spec {spec}."
        )
    image_spec, mask_spec = spec
    if image_spec.shape.rank not in (None, 3):
        raise ValueError(f"Images must be (H, W, C) (unbatched), got shape {image_spec.shape}.")
    if mask_spec.shape.rank not in (None, 2, 3):
        raise ValueError(f"Masks must be (H, W) or (H, W, 1), got shape {mask_spec.shape}.")
    if not (mask_spec.dtype.is_integer or mask_spec.dtype.is_unsigned):
        raise ValueError(f"Masks must hold integer class indices, got dtype {mask_spec.dtype}.")

    def convert(image, mask):
        if mask.shape.rank == 3:
            mask = mask[..., 0]
        checks = [_size_check(image, mask)]
        if num_classes is not None:
            checks.append(_label_check(mask, num_classes, ignore_label))
        with tf.control_dependencies(checks):
            # Labels above 255 do not exist in any supported dataset; uint8 keeps resizes cheap.
            return tf.cast(image, tf.float32), tf.cast(mask, tf.uint8)

    return graph_map(ds, convert, num_parallel_calls=num_parallel_calls)


def _keep_ratio_size(height, width, scale_long, scale_short):
    """MMCV `imrescale`: the largest size fitting in (long, short), keeping the aspect ratio."""
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    factor = tf.minimum(scale_long / tf.maximum(h, w), scale_short / tf.minimum(h, w))
    new_h = tf.cast(tf.floor(h * factor + 0.5), tf.int32)
    new_w = tf.cast(tf.floor(w * factor + 0.5), tf.int32)
    return tf.maximum(new_h, 1), tf.maximum(new_w, 1)


def _resize_pair(image, mask, new_h, new_w, resize_mask=True):
    image = tf.image.resize(image, [new_h, new_w], method="bilinear")
    if resize_mask:
        mask = tf.image.resize(mask[..., None], [new_h, new_w], method="nearest")[..., 0]
    return image, mask


def _random_rescale(image, mask, seed, base_scale, ratio_range):
    """MMSeg `Resize(img_scale=base_scale, ratio_range=..., keep_ratio=True)`."""
    shape = tf.shape(image)
    if base_scale is None:
        # MMSeg applies the ratio to the image's own size when no scale is given.
        scale_long = tf.cast(tf.maximum(shape[0], shape[1]), tf.float32)
        scale_short = tf.cast(tf.minimum(shape[0], shape[1]), tf.float32)
    else:
        scale_long, scale_short = float(max(base_scale)), float(min(base_scale))
    ratio = tf.random.stateless_uniform([], seed, ratio_range[0], ratio_range[1])
    # MMSeg truncates the sampled scale to integers before fitting the image into it.
    scale_long = tf.floor(scale_long * ratio)
    scale_short = tf.floor(scale_short * ratio)
    new_h, new_w = _keep_ratio_size(shape[0], shape[1], scale_long, scale_short)
    return _resize_pair(image, mask, new_h, new_w)


def _random_crop(image, mask, seed, crop_size, cat_max_ratio, ignore_label):
    """MMSeg `RandomCrop`: redraws the window up to 10 times while one class covers
    `cat_max_ratio` or more of the non-ignored pixels (or only one class is present)."""
    shape = tf.shape(mask)
    crop_h = tf.minimum(crop_size[0], shape[0])
    crop_w = tf.minimum(crop_size[1], shape[1])
    seed_y, seed_x = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    tries = _CROP_TRIES + 1
    offsets_y = tf.random.stateless_uniform(
        [tries], seed_y, 0, shape[0] - crop_h + 1, dtype=tf.int32
    )
    offsets_x = tf.random.stateless_uniform(
        [tries], seed_x, 0, shape[1] - crop_w + 1, dtype=tf.int32
    )
    index = tf.constant(0)
    if cat_max_ratio < 1.0:

        def acceptable(i):
            oy, ox = offsets_y[i], offsets_x[i]
            window = mask[oy : oy + crop_h, ox : ox + crop_w]
            counts = tf.math.bincount(
                tf.reshape(tf.cast(window, tf.int32), [-1]), minlength=256, maxlength=256
            )
            counts = tf.tensor_scatter_nd_update(counts, [[ignore_label]], [0])
            total = tf.reduce_sum(counts)
            largest = tf.reduce_max(counts)
            ratio = tf.cast(largest, tf.float32) / tf.cast(tf.maximum(total, 1), tf.float32)
            return (tf.math.count_nonzero(counts) > 1) & (ratio < cat_max_ratio)

        def step(i, found):
            ok = acceptable(i)
            return tf.where(ok, i, i + 1), ok

        # Walk the candidates until one is acceptable; after 10 misses the 11th is used as is.
        index, _ = tf.while_loop(
            lambda i, found: (i < _CROP_TRIES) & tf.logical_not(found),
            step,
            (index, tf.constant(False)),
        )
    oy, ox = offsets_y[index], offsets_x[index]
    return image[oy : oy + crop_h, ox : ox + crop_w], mask[oy : oy + crop_h, ox : ox + crop_w]


def _photometric_distortion(image, seed):
    """MMSeg `PhotoMetricDistortion` on a float image with 0-255 values.

    Each of brightness, contrast, saturation and hue is applied with probability 1/2; contrast
    goes first or last (after the HSV changes) with probability 1/2.
    """
    u = tf.random.stateless_uniform([10], seed)

    def chance(i):
        return u[i] < 0.5

    def between(i, low, high):
        return low + (high - low) * u[i]

    beta = between(1, -_BRIGHTNESS_DELTA, _BRIGHTNESS_DELTA)
    image = tf.where(chance(0), tf.clip_by_value(image + beta, 0.0, 255.0), image)
    contrast_first = chance(2)
    alpha = between(4, *_CONTRAST_RANGE)
    apply_contrast = chance(3)

    def contrast(img):
        return tf.where(apply_contrast, tf.clip_by_value(img * alpha, 0.0, 255.0), img)

    image = tf.where(contrast_first, contrast(image), image)
    saturation = tf.where(chance(5), between(6, *_SATURATION_RANGE), 1.0)
    # An integer hue step on OpenCV's 0-180 scale, as a fraction of the hue circle.
    hue_step = tf.floor(between(8, -_HUE_DELTA, _HUE_DELTA))
    hue_shift = tf.where(chance(7), hue_step / 180.0, 0.0)

    def hsv_change(img):
        hsv = tf.image.rgb_to_hsv(img / 255.0)
        h, s, v = tf.unstack(hsv, axis=-1)
        h = tf.math.floormod(h + hue_shift, 1.0)
        s = tf.clip_by_value(s * saturation, 0.0, 1.0)
        return tf.image.hsv_to_rgb(tf.stack([h, s, v], axis=-1)) * 255.0

    image = tf.cond(chance(5) | chance(7), lambda: hsv_change(image), lambda: tf.identity(image))
    return tf.where(contrast_first, image, contrast(image))


def pad_with_mean(image, paddings):
    """Pads an image with the ImageNet mean pixel: zeros once the model normalizes it, as
    MMSegmentation pads its normalized images with 0."""
    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    return tf.pad(image - mean, paddings + [[0, 0]]) + mean


def segmentation_train_pipeline(
    ds,
    crop_size,
    base_scale=None,
    ratio_range=(0.5, 2.0),
    batch_size=8,
    cat_max_ratio=0.75,
    flip_prob=0.5,
    photometric=True,
    shuffle_buffer=128,
    seed=None,
    drop_remainder=True,
    ignore_label=IGNORE_LABEL,
    num_parallel_calls=tf.data.AUTOTUNE,
    num_classes=None,
):
    """Batched training data with the MMSegmentation augmentation used by HRViT.

    For each example, in order: rescale to fit `base_scale * r` keeping the aspect ratio, with
    `r` uniform in `ratio_range`; crop a `crop_size` window (redrawn up to 10 times while one
    class covers `cat_max_ratio` or more of it); flip horizontally with probability `flip_prob`;
    photometric distortion (brightness, contrast, saturation, hue); pad to `crop_size` at the
    bottom and right (image: the ImageNet mean pixel, mask `ignore_label`). Images stay 0-255:
    the models normalize them inside their graph.

    Args:
        ds: `tf.data.Dataset` of `(image, mask)` pairs, images 0-255 `(H, W, 3)`, masks `(H, W)`.
        crop_size: `(height, width)` or an int, the size of every output image.
        base_scale: `(long, short)` scale, e.g. `(2048, 512)` for ADE20K and `(2048, 1024)` for
            Cityscapes; `None` rescales relative to each image's own size.
        ratio_range: `(low, high)` range of the random scale ratio; `None` for a fixed scale (no
            resize at all when `base_scale` is also `None`).
        batch_size: examples per batch.
        cat_max_ratio: the crop rule's largest share of one class; 1.0 turns the rule off.
        flip_prob: probability of a horizontal flip.
        photometric: whether to apply the photometric distortion.
        shuffle_buffer: examples held for shuffling before augmentation (raw images, so keep it
            small for large images); 0 or `None` turns shuffling off.
        seed: integer seed that makes shuffling and augmentation reproducible (each epoch still
            differs); `None` for fresh randomness.
        drop_remainder: drop the last partial batch so every batch has `batch_size` examples.
        ignore_label: mask value of pixels that count nowhere (255 for ADE20K and Cityscapes).
        num_parallel_calls: parallelism of the augmentation map.
        num_classes: the model's number of classes; when given, a mask label that is neither
            below it nor `ignore_label` stops the pipeline with an error naming the label (on
            some backends the loss would silently be wrong or NaN). `None` checks no labels.

    Returns:
        A `tf.data.Dataset` of `(images float32 (B, h, w, 3), masks int32 (B, h, w))` batches.
        An image and a mask of different sizes, or a label out of range, raise
        `tf.errors.InvalidArgumentError` with one line when the dataset is read.

    Example:
    >>> ds = load_shapes("train", num_images=16, image_size=64)
    >>> train = segmentation_train_pipeline(ds, crop_size=64, base_scale=(64, 64), batch_size=4)
    >>> images, masks = next(iter(train))
    >>> images.shape, masks.dtype.name
    (TensorShape([4, 64, 64, 3]), 'int32')
    """
    crop_size = _pair_size(crop_size, "crop_size")
    base_scale = _pair_size(base_scale, "base_scale", allow_none=True)
    ratio_range = _check_ratio_range(ratio_range)
    check_positive_int("batch_size", batch_size)
    check_number("cat_max_ratio", cat_max_ratio, 0, 1, strict=True)
    check_number("flip_prob", flip_prob, 0, 1)
    check_number("ignore_label", ignore_label, 0, 255, integer=True)
    num_classes = _check_num_classes(num_classes)
    if seed is not None and not isinstance(seed, (int, np.integer)):
        raise ValueError(f"`seed` must be an integer or None, got {seed!r}.")
    cat_max_ratio = float(cat_max_ratio)
    flip_prob = float(flip_prob)
    ignore_label = int(ignore_label)

    ds = _as_pairs(ds, num_classes, ignore_label, num_parallel_calls)
    if shuffle_buffer:
        check_positive_int("shuffle_buffer", shuffle_buffer)
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    # One stateless seed pair per example keeps augmentation reproducible under parallel maps.
    seeds = tf.data.Dataset.random(
        seed=None if seed is None else seed + 1, rerandomize_each_iteration=True
    ).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds))

    def transform(pair, example_seed):
        image, mask = pair
        rescale_seed, crop_seed, flip_seed, color_seed = tf.unstack(
            tf.random.experimental.stateless_split(example_seed, 4)
        )
        if ratio_range is not None:
            image, mask = _random_rescale(image, mask, rescale_seed, base_scale, ratio_range)
        elif base_scale is not None:
            shape = tf.shape(image)
            new_h, new_w = _keep_ratio_size(
                shape[0], shape[1], float(max(base_scale)), float(min(base_scale))
            )
            image, mask = _resize_pair(image, mask, new_h, new_w)
        image, mask = _random_crop(image, mask, crop_seed, crop_size, cat_max_ratio, ignore_label)
        flip = tf.random.stateless_uniform([], flip_seed) < flip_prob
        image = tf.where(flip, tf.reverse(image, axis=[1]), image)
        mask = tf.where(flip, tf.reverse(mask, axis=[1]), mask)
        if photometric:
            image = _photometric_distortion(image, color_seed)
        shape = tf.shape(mask)
        pad = [[0, crop_size[0] - shape[0]], [0, crop_size[1] - shape[1]]]
        image = pad_with_mean(image, pad)
        mask = tf.pad(mask, pad, constant_values=ignore_label)
        image = tf.ensure_shape(image, crop_size + (3,))
        mask = tf.ensure_shape(tf.cast(mask, tf.int32), crop_size)
        return image, mask

    ds = graph_map(ds, transform, num_parallel_calls=num_parallel_calls)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def segmentation_eval_pipeline(
    ds,
    scale=None,
    batch_size=1,
    resize_mask=False,
    pad_to_multiple=None,
    ignore_label=IGNORE_LABEL,
    num_parallel_calls=tf.data.AUTOTUNE,
    num_classes=None,
):
    """Batched evaluation data: optional keep-ratio resize, no crop; images stay 0-255.

    As in MMSegmentation, masks keep their original resolution by default, so predictions for a
    resized image must be resized back to the mask's size before scoring. Examples of different
    sizes in one batch are padded at the bottom and right (image: the ImageNet mean pixel, mask
    `ignore_label`).

    Args:
        ds: `tf.data.Dataset` of `(image, mask)` pairs, images 0-255 `(H, W, 3)`, masks `(H, W)`.
        scale: `(long, short)` test scale, e.g. `(2048, 512)` for ADE20K; the image is resized to
            the largest size fitting in it with its aspect ratio kept. `None` keeps the size.
        batch_size: examples per batch (1 is the usual for whole-image inference).
        resize_mask: also resize masks (nearest) to the resized image's size.
        pad_to_multiple: pad images (and masks of the same size) at the bottom and right to a
            multiple of this, for models that need divisible sizes; `None` for no padding.
        ignore_label: mask value of padded pixels, and of pixels that count nowhere.
        num_parallel_calls: parallelism of the preprocessing map.
        num_classes: the model's number of classes; when given, a mask label that is neither
            below it nor `ignore_label` stops the pipeline with an error naming the label.
            `None` checks no labels.

    Returns:
        A `tf.data.Dataset` of `(images float32 (B, H, W, 3), masks int32 (B, H', W'))` batches.
        An image and a mask of different sizes, or a label out of range, raise
        `tf.errors.InvalidArgumentError` with one line when the dataset is read.

    Example:
    >>> ds = load_shapes("validation", num_images=4, image_size=64)
    >>> images, masks = next(iter(segmentation_eval_pipeline(ds, batch_size=2)))
    >>> images.shape, masks.shape
    (TensorShape([2, 64, 64, 3]), TensorShape([2, 64, 64]))
    """
    scale = _pair_size(scale, "scale", allow_none=True)
    check_positive_int("batch_size", batch_size)
    if pad_to_multiple is not None:
        check_positive_int("pad_to_multiple", pad_to_multiple)
    check_number("ignore_label", ignore_label, 0, 255, integer=True)
    ignore_label = int(ignore_label)
    num_classes = _check_num_classes(num_classes)
    mask_follows_image = scale is None or resize_mask

    def transform(image, mask):
        if scale is not None:
            shape = tf.shape(image)
            new_h, new_w = _keep_ratio_size(
                shape[0], shape[1], float(max(scale)), float(min(scale))
            )
            image, mask = _resize_pair(image, mask, new_h, new_w, resize_mask=resize_mask)
        if pad_to_multiple is not None:
            shape = tf.shape(image)
            pad_h = -shape[0] % pad_to_multiple
            pad_w = -shape[1] % pad_to_multiple
            image = pad_with_mean(image, [[0, pad_h], [0, pad_w]])
            if mask_follows_image:
                mask = tf.pad(mask, [[0, pad_h], [0, pad_w]], constant_values=ignore_label)
        return image, tf.cast(mask, tf.int32)

    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    ds = _as_pairs(ds, num_classes, ignore_label, num_parallel_calls)
    ds = graph_map(ds, transform, num_parallel_calls=num_parallel_calls)
    # `padded_batch` pads with one scalar: pad (image - mean) with 0, i.e. with the mean pixel.
    ds = graph_map(ds, lambda image, mask: (image - mean, mask)).padded_batch(
        batch_size,
        padding_values=(tf.constant(0.0, tf.float32), tf.constant(ignore_label, tf.int32)),
    )
    ds = graph_map(ds, lambda images, masks: (images + mean, masks))
    return ds.prefetch(tf.data.AUTOTUNE)
