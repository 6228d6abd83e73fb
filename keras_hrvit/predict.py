"""Segment image files with a `.keras` segmenter or an exported SavedModel.

    python -m keras_hrvit.predict MODEL IMAGE [IMAGE ...] --out DIR
        [--mode whole|slide --crop-size S --stride T]

(options in `keras_hrvit/cli/predict.py`; `keras_hrvit.cli.predict.main` runs it from Python)

For each image, writes `<stem>_classes.png` (uint8 class ids) and `<stem>_overlay.png` (class
colors blended on the image); two images of one stem (`street.png`, `street.jpg`) are refused
before anything runs, as one result would replace the other. MODEL is a `.keras` file or a
SavedModel directory from `keras_hrvit.export` (whole-image inference only); both take the raw
uint8 image. Outputs are written to temporary files and renamed
(`keras_hrvit.files.atomic_write`), so an image that fails leaves no partial output.
"""

import os

import numpy as np
from PIL import Image

from keras_hrvit.export import min_image_size
from keras_hrvit.files import atomic_write
from keras_hrvit.validation import check_choice, check_number
from keras_hrvit.visualize import colorize

MODES = ("whole", "slide")


def overlay(image, classes, alpha=0.5):
    """The image with each pixel's class color (`visualize.colorize`) blended in by `alpha`.

    Example:
    >>> overlay(np.zeros((4, 4, 3), "uint8"), np.ones((4, 4), "int32")).shape
    (4, 4, 3)
    """
    check_number("alpha", alpha, 0, 1)
    if image.shape[:2] != classes.shape:
        raise ValueError(f"Image {image.shape[:2]} and class map {classes.shape} sizes differ.")
    colors = colorize(classes).astype("float32")
    blended = (1.0 - alpha) * image.astype("float32") + alpha * colors
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def read_image(path):
    """An RGB uint8 `(H, W, 3)` array, or a `ValueError` naming the unreadable file."""
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"Image {path!r} does not exist.") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(
            f"Cannot read image {path!r} (corrupt, truncated or not an image): {error}"
        ) from None


class Segmenter:
    """Class maps of uint8 RGB images from a `.keras` model or a SavedModel directory.

    Example:
    >>> classes = Segmenter("model.keras")(read_image("street.jpg"))   # (H, W) int32
    """

    def __init__(self, path, mode="whole", crop_size=None, stride=None):
        path = os.fspath(path)
        check_choice("mode", mode, MODES)
        if mode == "slide" and crop_size is None:
            raise ValueError("`mode='slide'` needs `crop_size`.")
        self.mode, self.crop_size, self.stride = mode, crop_size, stride
        self.path = path
        if os.path.isdir(path):
            if mode != "whole":
                raise ValueError(
                    "A SavedModel serves class maps of whole images; sliding-window inference "
                    "needs the `.keras` model."
                )
            import tensorflow as tf

            self._tf = tf
            try:
                # Keep the loaded object: `serve` alone loses its variables to the GC.
                self._loaded = tf.saved_model.load(path)
                self._serve = self._loaded.serve
            except (OSError, ValueError, AttributeError) as error:
                raise ValueError(
                    f"{path!r} is not a SavedModel with a `serve` endpoint: {error}"
                ) from None
            self._model = None
        elif path.endswith(".keras") and os.path.isfile(path):
            from keras_hrvit.weights.files import check_model_task, load_model_file

            self._model = load_model_file(path)
            check_model_task(self._model, path, "segmentation", "predict")
            self._min_size = min_image_size(self._model)
            if mode == "slide" and min(np.broadcast_to(crop_size, 2)) < self._min_size:
                raise ValueError(
                    f"crop_size {crop_size} is too small for {path!r}: its windows must be at "
                    f"least {self._min_size}x{self._min_size} pixels."
                )
            output = self._model.outputs[0] if self._model.outputs else None
            if output is not None and len(output.shape) != 4:
                raise ValueError(
                    f"{path!r} is not a segmentation model (its output has shape "
                    f"{tuple(output.shape)}, not (batch, height, width, classes))."
                )
        else:
            raise ValueError(f"MODEL must be a `.keras` file or a SavedModel directory: {path!r}.")

    def __call__(self, image):
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"Expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}.")
        if self._model is None:
            try:
                classes = self._serve(self._tf.constant(image[None])).numpy()[0]
            except self._tf.errors.InvalidArgumentError as error:
                # The SavedModel's own checks (an image under the model's minimum size).
                raise ValueError(f"{self.path!r} refused the image: {_assertion(error)}") from None
            if classes.shape != image.shape[:2]:
                raise ValueError(
                    f"{self.path!r} does not serve class maps (it answers a {image.shape} "
                    f"image with shape {classes.shape}): predict needs a segmentation export."
                )
        else:
            from keras_hrvit.inference import predict_classes

            # Sliding windows pad a small image to the crop size; a whole image goes as it is.
            if self.mode == "whole" and min(image.shape[:2]) < self._min_size:
                raise ValueError(
                    f"Image of {image.shape[0]}x{image.shape[1]} pixels is too small for "
                    f"{self.path!r}: it needs at least {self._min_size}x{self._min_size} (or "
                    "--mode slide with a larger --crop-size)."
                )

            classes = predict_classes(
                self._model,
                image[None],
                mode=self.mode,
                crop_size=self.crop_size,
                stride=self.stride,
            )[0]
        if classes.min() < 0 or classes.max() > 255:
            raise ValueError("Class ids outside 0..255 do not fit a uint8 PNG.")
        return classes.astype(np.uint8)


def segment_file(segmenter, image_path, out_dir, alpha=0.5):
    """Writes `<stem>_classes.png` and `<stem>_overlay.png` of one image; returns both paths."""
    image = read_image(image_path)
    classes = segmenter(image)
    colored = overlay(image, classes, alpha)
    classes_path, overlay_path = output_paths(image_path, out_dir)

    def write_both(classes_tmp):
        # Both PNGs are encoded before either name appears: the overlay is moved into place
        # while the class map still waits under its temporary name, moved right after.
        _save_png(classes, classes_tmp)
        atomic_write(overlay_path, lambda tmp: _save_png(colored, tmp), ".png")

    atomic_write(classes_path, write_both, ".png")
    return [classes_path, overlay_path]


def output_paths(image_path, out_dir):
    """`(classes_path, overlay_path)`: where `segment_file` writes the results of an image.

    Example:
    >>> output_paths("photos/street.jpg", "out")
    ('out/street_classes.png', 'out/street_overlay.png')
    """
    stem = os.path.splitext(os.path.basename(image_path))[0]
    return (
        os.path.join(out_dir, f"{stem}_classes.png"),
        os.path.join(out_dir, f"{stem}_overlay.png"),
    )


def _save_png(array, path):
    Image.fromarray(array).save(path, format="PNG")


def _assertion(error):
    """The message of a failed `tf.debugging.Assert` (TensorFlow wraps it in node names)."""
    message = getattr(error, "message", str(error))
    for line in message.splitlines():
        if "assertion failed:" in line:
            return line.split("assertion failed:", 1)[1].strip().strip("[]")
    return message.strip().splitlines()[0] if message.strip() else type(error).__name__


if __name__ == "__main__":
    from keras_hrvit.cli.predict import main

    raise SystemExit(main())
