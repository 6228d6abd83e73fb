"""Segment image files with a `.keras` segmenter or an exported SavedModel.

    python -m keras_hrvit.predict MODEL IMAGE [IMAGE ...] --out DIR
        [--mode whole|slide --crop-size S --stride T]

For each image, writes `<stem>_classes.png` (uint8 class ids) and `<stem>_overlay.png` (class
colors blended on the image). MODEL is a `.keras` file or a SavedModel directory from
`keras_hrvit.export` (whole-image inference only); both take the raw uint8 image. Outputs
are written to temporary files and renamed (`keras_hrvit.files.atomic_write`), so an image that
fails leaves no partial output.
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image

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
            import keras

            self._model = keras.saving.load_model(path, compile=False)
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
            classes = self._serve(self._tf.constant(image[None])).numpy()[0]
        else:
            from keras_hrvit.inference import predict_classes

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
    stem = os.path.splitext(os.path.basename(image_path))[0]
    classes_path = os.path.join(out_dir, f"{stem}_classes.png")
    overlay_path = os.path.join(out_dir, f"{stem}_overlay.png")

    def write_both(classes_tmp):
        # Both PNGs are encoded before either name appears: the overlay is moved into place
        # while the class map still waits under its temporary name, moved right after.
        _save_png(classes, classes_tmp)
        atomic_write(overlay_path, lambda tmp: _save_png(colored, tmp), ".png")

    atomic_write(classes_path, write_both, ".png")
    return [classes_path, overlay_path]


def _save_png(array, path):
    Image.fromarray(array).save(path, format="PNG")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_hrvit.predict",
        description="Segment images; write class-id PNGs and colored overlays.",
    )
    parser.add_argument("model", help="a .keras segmenter or a SavedModel directory")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--out", required=True, help="output directory (created if needed)")
    parser.add_argument("--mode", choices=MODES, default="whole")
    parser.add_argument("--crop-size", type=int, help="window size for --mode slide")
    parser.add_argument("--stride", type=int, help="window step for --mode slide")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    args = parser.parse_args(argv)
    if args.mode == "slide" and args.crop_size is None:
        parser.error("--mode slide needs --crop-size")
    try:
        segmenter = Segmenter(args.model, args.mode, args.crop_size, args.stride)
    except (ValueError, OSError) as error:
        parser.exit(2, f"error: {error}\n")
    os.makedirs(args.out, exist_ok=True)
    failures = []
    for path in args.images:
        try:
            written = segment_file(segmenter, path, args.out, args.alpha)
            print(f"{path}: {', '.join(written)}")
        except (ValueError, OSError) as error:
            failures.append(str(error))
            print(f"error: {error}", file=sys.stderr)
    if failures:
        parser.exit(1, f"{len(failures)} of {len(args.images)} images failed.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
