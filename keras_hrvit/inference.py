"""Backend-agnostic segmentation inference: whole-image, sliding-window, flip and multi-scale.

The functions here take any callable that maps a float32 NHWC batch to NHWC logits at any
resolution (HRViT segmenters give theirs at the input size already) and return logits at the
input image size. They run eagerly (Python loops over windows and views), use `keras.ops`
only, and work with the TensorFlow, JAX and PyTorch backends.

Example:

>>> import keras, numpy as np
>>> model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(5, 1)])
>>> images = np.random.rand(1, 300, 700, 3).astype("float32")
>>> logits = predict_logits(model, images, mode="slide", crop_size=128, stride=85)
>>> logits.shape
(1, 300, 700, 5)
"""

import contextlib
import math

import keras
import numpy as np
from keras import ops

from keras_hrvit.layers.common import resize_bilinear
from keras_hrvit.presets import IMAGENET_MEAN

_MODES = ("whole", "slide")
_MERGES = ("probs", "logits")


def resize_logits(logits, size):
    """Bilinearly resizes NHWC logits to `size` = (height, width), half-pixel centers.

    This matches PyTorch's `F.interpolate(mode="bilinear", align_corners=False)` used by MMSeg
    (no antialiasing, also when downsampling). Returns `logits` unchanged when the static
    spatial shape already equals `size`.

    Example:

    >>> tuple(resize_logits(np.zeros((2, 8, 8, 19), "float32"), (32, 32)).shape)
    (2, 32, 32, 19)
    """
    if len(logits.shape) != 4:
        raise ValueError(
            f"`logits` must be a 4D (batch, height, width, classes) tensor; got shape "
            f"{tuple(logits.shape)}."
        )
    size = tuple(size)
    if len(size) != 2:
        raise ValueError(f"`size` must be (height, width); got {size!r}.")
    if all(isinstance(s, int | np.integer) for s in size):
        size = tuple(int(s) for s in size)
    return resize_bilinear(logits, size)


def _as_pair(value, name):
    if isinstance(value, int | np.integer):
        value = (int(value), int(value))
    try:
        pair = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(
            f"`{name}` must be a positive int or a (height, width) pair of positive ints; "
            f"got {value!r}."
        )
    return pair


def _no_grad():
    # Eager PyTorch records an autograd graph for every forward pass of a model with trainable
    # weights; over many windows that holds all activations alive. The other backends record
    # nothing outside an explicit tape/transform, so they need no guard.
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def _call_model(model, x, num_classes):
    if isinstance(model, keras.Layer):
        out = model(x, training=False)
    else:
        out = model(x)
    if isinstance(out, list | tuple):
        # Models with auxiliary heads return (main, aux, ...); inference uses the main head.
        out = out[0]
    out = ops.convert_to_tensor(out)
    if len(out.shape) != 4:
        raise ValueError(
            "The model must return 4D (batch, height, width, classes) logits; got shape "
            f"{tuple(out.shape)}."
        )
    if out.shape[0] != x.shape[0]:
        raise ValueError(
            f"The model returned a batch of {out.shape[0]} for an input batch of {x.shape[0]}."
        )
    if num_classes is not None and out.shape[-1] != num_classes:
        raise ValueError(
            f"The model returned {out.shape[-1]} channels but `num_classes={num_classes}`."
        )
    # Averaging and resizing in float16 loses precision; mixed-precision models are upcast.
    return ops.cast(out, "float32")


def slide_windows(image_size, crop_size, stride):
    """Window boxes `(y1, y2, x1, x2)` exactly as MMSeg's `slide_inference` lays them out.

    The grid has `max(H - crop_h + stride_h - 1, 0) // stride_h + 1` rows (same for columns);
    windows that would overrun the image are shifted back so the last one ends at the border.
    Every box is `crop_size` large when the image is at least that large.

    Example:

    >>> slide_windows((300, 700), 128, 85)[:2]
    [(0, 128, 0, 128), (0, 128, 85, 213)]
    """
    height, width = _as_pair(image_size, "image_size")
    crop_h, crop_w = _as_pair(crop_size, "crop_size")
    stride_h, stride_w = _as_pair(stride, "stride")
    h_grids = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    w_grids = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    boxes = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * stride_h + crop_h, height)
            x2 = min(w_idx * stride_w + crop_w, width)
            boxes.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return boxes


class _Progress:
    def __init__(self, enabled, total):
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc="inference", unit="call")

    def update(self):
        if self._bar is not None:
            self._bar.update(1)

    def close(self):
        if self._bar is not None:
            self._bar.close()


def _whole(model, x, num_classes, progress):
    out = _call_model(model, x, num_classes)
    progress.update()
    return resize_logits(out, x.shape[1:3])


def _slide(model, x, crop_size, stride, num_classes, windows_per_call, progress, pad_value):
    batch, height, width, _ = x.shape
    crop_h, crop_w = crop_size
    # Images smaller than the crop are padded at the bottom/right so every window has the
    # crop size: models with fixed window partitions accept it, and jit backends compile once.
    pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
    if pad_h or pad_w:
        value = ops.convert_to_tensor(np.asarray(pad_value, "float32"))
        x = ops.pad(x - value, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]]) + value
    padded_h, padded_w = height + pad_h, width + pad_w
    boxes = slide_windows((padded_h, padded_w), crop_size, stride)
    crop_shape = (batch, crop_h, crop_w, x.shape[-1])

    count = np.zeros((padded_h, padded_w), "float32")
    for y1, y2, x1, x2 in boxes:
        count[y1:y2, x1:x2] += 1.0

    total = None
    for start in range(0, len(boxes), windows_per_call):
        chunk = boxes[start : start + windows_per_call]
        # ops.slice takes dynamic start indices, so JAX compiles one slice for all windows
        # (static Python slicing would compile a new one per window position).
        crops = ops.concatenate(
            [ops.slice(x, (0, y1, x1, 0), crop_shape) for y1, _, x1, _ in chunk], axis=0
        )
        out = resize_logits(_call_model(model, crops, num_classes), (crop_h, crop_w))
        progress.update()
        if total is None:
            total = ops.zeros((batch, padded_h, padded_w, out.shape[-1]), "float32")
        windows = ops.split(out, len(chunk), axis=0) if len(chunk) > 1 else [out]
        for (y1, _, x1, _), window in zip(chunk, windows):
            start_index = (0, y1, x1, 0)
            current = ops.slice(total, start_index, ops.shape(window))
            total = ops.slice_update(total, start_index, current + window)
    total = total / ops.convert_to_tensor(count[None, :, :, None])
    return total[:, :height, :width, :]


def check_finite_images(images, name="images"):
    """Raises a `ValueError` when float `images` hold NaN or infinite values.

    One such pixel would otherwise spread through the model's attention and normalization
    and turn the whole image into one class. NumPy arrays (and lists) are checked on the host;
    a backend tensor by one reduction where it lives. Integer images pass unchecked.

    Example:
    >>> check_finite_images(np.float32([[[[0.0, np.nan, 1.0]]]]))
    ValueError: `images` holds 1 NaN or infinite value (the first at index (0, 0, 0, 1)); ...
    """
    if isinstance(images, np.ndarray | np.generic) or not hasattr(images, "dtype"):
        array = np.asarray(images)
        if not np.issubdtype(array.dtype, np.inexact):
            return
        bad = ~np.isfinite(array)
        if not bad.any():
            return
    else:
        if "float" not in keras.backend.standardize_dtype(images.dtype):
            return
        if bool(ops.convert_to_numpy(ops.all(ops.isfinite(images)))):
            return
        bad = ~np.isfinite(ops.convert_to_numpy(images))
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    count = int(bad.sum())
    raise ValueError(
        f"`{name}` holds {count} NaN or infinite value{'s' if count > 1 else ''} (the first at "
        f"index {first}); pixels must be finite numbers (0-255 for this package's models)."
    )


def _scaled_size(size, scale):
    # Same rounding as mmcv.imrescale, which MMSeg's multi-scale test pipeline uses.
    return tuple(max(int(s * scale + 0.5), 1) for s in size)


def predict_logits(
    model,
    images,
    mode="whole",
    crop_size=None,
    stride=None,
    num_classes=None,
    flip=False,
    scales=(1.0,),
    merge="probs",
    batch_size=None,
    windows_per_call=1,
    progress=False,
    return_numpy=True,
    pad_value=IMAGENET_MEAN,
):
    """Segmentation logits at the input image size, MMSeg-style.

    Args:
        model: callable (a Keras model or any function) mapping a float32 NHWC batch to NHWC
            logits at any resolution; a list/tuple output uses its first element.
        images: (B, H, W, C) or (H, W, C) array/tensor as the model takes it (0-255 pixels,
            uint8 or float, for this package's models).
        mode: `"whole"` runs the model on the full image and resizes its logits to the image
            size; `"slide"` runs it on `crop_size` windows placed as in MMSeg's
            `slide_inference`, resizes each window's logits to the window size and averages
            overlaps. Images smaller than the crop are padded bottom/right with `pad_value` to
            the crop size and the padding is cut from the result.
        crop_size: window size for `"slide"`, int or (height, width).
        stride: window step for `"slide"`, int or (height, width), at most `crop_size`;
            defaults to `crop_size` (no overlap).
        num_classes: if given, the model output channels are checked against it.
        flip: also run on the horizontally flipped image (flipped back before merging).
        scales: image scale factors; each view resizes the image bilinearly by the factor
            (size rounded like `mmcv.imrescale`), infers, and resizes the logits back.
        merge: how several views (scales x flips) are combined: `"probs"` averages softmax
            probabilities (MMSeg's test-time augmentation) and returns their log, so softmax
            and argmax of the output give the merged prediction; `"logits"` averages logits.
            A single view returns the raw logits either way.
        batch_size: process `images` in chunks of this many images (default: all at once).
        windows_per_call: in `"slide"` mode, how many windows go through the model per call
            (each contributes the whole image batch).
        progress: show a `tqdm` progress bar over model calls.
        return_numpy: return a NumPy array instead of a backend tensor.
        pad_value: the pixel (a scalar or one value per channel) that pads images smaller
            than the crop; the ImageNet mean, which the models normalize to 0 as MMSegmentation
            pads its normalized images.

    Returns:
        float32 logits of shape (B, H, W, K), or (H, W, K) for a single unbatched image.

    Raises:
        ValueError: for an empty batch, and for images holding NaN or infinite values
            (`check_finite_images`).

    Example:

    >>> model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(5, 1)])
    >>> x = np.zeros((2, 64, 96, 3), "float32")
    >>> predict_logits(model, x, mode="slide", crop_size=48, stride=32, flip=True).shape
    (2, 64, 96, 5)
    """
    if mode not in _MODES:
        raise ValueError(f"`mode` must be one of {_MODES}; got {mode!r}.")
    if merge not in _MERGES:
        raise ValueError(f"`merge` must be one of {_MERGES}; got {merge!r}.")
    if mode == "slide":
        if crop_size is None:
            raise ValueError('`mode="slide"` needs `crop_size` (an int or a (height, width)).')
        crop_size = _as_pair(crop_size, "crop_size")
        stride = crop_size if stride is None else _as_pair(stride, "stride")
        if stride[0] > crop_size[0] or stride[1] > crop_size[1]:
            raise ValueError(
                f"`stride` {stride} must not exceed `crop_size` {crop_size}: larger steps "
                "leave pixels that no window covers."
            )
    try:
        parsed_scales = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        parsed_scales = ()
    if not parsed_scales or min(parsed_scales) <= 0:
        raise ValueError(
            f"`scales` must be a non-empty sequence of positive numbers; got {scales!r}."
        )
    scales = parsed_scales
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"`batch_size` must be a positive int or None; got {batch_size!r}.")
    if int(windows_per_call) < 1:
        raise ValueError(f"`windows_per_call` must be a positive int; got {windows_per_call!r}.")
    if num_classes is not None and int(num_classes) < 1:
        raise ValueError(f"`num_classes` must be a positive int or None; got {num_classes!r}.")
    windows_per_call = int(windows_per_call)

    check_finite_images(images)
    # Cast after conversion: TensorFlow refuses to convert uint8 arrays straight to float32.
    images = ops.cast(ops.convert_to_tensor(images), "float32")
    unbatched = len(images.shape) == 3
    if unbatched:
        images = images[None]
    if len(images.shape) != 4:
        raise ValueError(
            "`images` must be (batch, height, width, channels) or (height, width, channels); "
            f"got shape {tuple(images.shape)}."
        )
    num_images, height, width, _ = images.shape
    if num_images == 0:
        raise ValueError(
            f"`images` is an empty batch (shape {tuple(images.shape)}); pass at least one image."
        )
    chunk = num_images if batch_size is None else int(batch_size)
    chunk = max(min(chunk, num_images), 1)
    views = [(s, f) for s in scales for f in ((False, True) if flip else (False,))]

    def calls_per_chunk():
        if mode == "whole":
            return len(views)
        total = 0
        for scale, _ in views:
            size = _scaled_size((height, width), scale)
            padded = (max(size[0], crop_size[0]), max(size[1], crop_size[1]))
            total += math.ceil(len(slide_windows(padded, crop_size, stride)) / windows_per_call)
        return total

    bar = _Progress(progress, calls_per_chunk() * math.ceil(num_images / chunk))
    outputs = []
    try:
        with _no_grad():
            for start in range(0, num_images, chunk):
                x = images[start : start + chunk]
                merged = None
                for scale, flipped in views:
                    view = x
                    if scale != 1.0:
                        view = ops.image.resize(
                            view,
                            _scaled_size((height, width), scale),
                            interpolation="bilinear",
                            antialias=False,
                            data_format="channels_last",
                        )
                    if flipped:
                        view = ops.flip(view, axis=2)
                    if mode == "whole":
                        out = _whole(model, view, num_classes, bar)
                    else:
                        out = _slide(
                            model,
                            view,
                            crop_size,
                            stride,
                            num_classes,
                            windows_per_call,
                            bar,
                            pad_value,
                        )
                    if flipped:
                        out = ops.flip(out, axis=2)
                    out = resize_logits(out, (height, width))
                    if len(views) > 1 and merge == "probs":
                        out = ops.softmax(out, axis=-1)
                    merged = out if merged is None else merged + out
                if len(views) > 1:
                    merged = merged / float(len(views))
                    if merge == "probs":
                        # Floor avoids log(0) = -inf where a class has underflowed everywhere.
                        merged = ops.log(ops.maximum(merged, 1e-30))
                outputs.append(ops.convert_to_numpy(merged) if return_numpy else merged)
    finally:
        bar.close()

    if return_numpy:
        result = np.concatenate(outputs, axis=0) if len(outputs) > 1 else outputs[0]
    else:
        result = ops.concatenate(outputs, axis=0) if len(outputs) > 1 else outputs[0]
    return result[0] if unbatched else result


def predict_classes(model, images, **kwargs):
    """Per-pixel class ids (argmax of `predict_logits`) as an int32 NumPy array.

    Takes the same keyword arguments as `predict_logits` (except `return_numpy`).

    Example:

    >>> model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(5, 1)])
    >>> predict_classes(model, np.zeros((1, 32, 32, 3), "float32")).shape
    (1, 32, 32)
    """
    if "return_numpy" in kwargs:
        raise ValueError("`predict_classes` always returns NumPy; drop `return_numpy`.")
    logits = predict_logits(model, images, return_numpy=False, **kwargs)
    return ops.convert_to_numpy(ops.argmax(logits, axis=-1)).astype("int32")
