"""`python -m keras_hrvit.predict MODEL IMAGE [IMAGE ...] --out DIR`: the options, over
`keras_hrvit.predict` (`Segmenter`, `segment_file`; usage in `keras_hrvit/predict.py`)."""

import argparse
import os
import sys

from tqdm.auto import tqdm

from keras_hrvit.cli.common import examples_epilog, finite_float
from keras_hrvit.predict import MODES, Segmenter, output_paths, segment_file


def build_parser():
    """The `keras_hrvit.predict` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_hrvit.predict",
        description="Segment images; write class-id PNGs and colored overlays.",
        epilog=examples_epilog(
            "python -m keras_hrvit.predict runs/shapes/model.keras photo.jpg --out predictions",
            "python -m keras_hrvit.predict runs/city/model.keras street.png --out predictions \\\n"
            "    --mode slide --crop-size 1024 --stride 768",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="a .keras segmenter or a SavedModel directory")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--out", required=True, help="output directory (created if needed)")
    parser.add_argument("--mode", choices=MODES, default="whole")
    parser.add_argument("--crop-size", type=int, help="window size for --mode slide")
    parser.add_argument("--stride", type=int, help="window step for --mode slide")
    parser.add_argument("--alpha", type=finite_float, default=0.5, help="overlay opacity")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bar on stderr, one step per image",
    )
    return parser


def main(argv=None):
    """Segments every image; returns 0, or exits with 1 when some images failed.

    Example:
    >>> main(["model.keras", "street.jpg", "--out", "predictions"])
    street.jpg: predictions/street_classes.png, predictions/street_overlay.png
    0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.mode == "slide" and args.crop_size is None:
        parser.error("--mode slide needs --crop-size")
    images = _distinct_images(args.images, args.out, parser)
    try:
        segmenter = Segmenter(args.model, args.mode, args.crop_size, args.stride)
    except (ValueError, OSError) as error:
        parser.exit(2, f"error: {error}\n")
    os.makedirs(args.out, exist_ok=True)
    failures = []
    bar = tqdm(images, desc="predict", unit="image", file=sys.stderr, disable=not args.progress)
    for path in bar:
        # tqdm.write clears the bar and draws it again under the line.
        try:
            written = segment_file(segmenter, path, args.out, args.alpha)
            tqdm.write(f"{path}: {', '.join(written)}", file=sys.stdout)
        except (ValueError, OSError) as error:
            failures.append(str(error))
            tqdm.write(f"error: {error}", file=sys.stderr)
    bar.close()
    if failures:
        parser.exit(1, f"{len(failures)} of {len(images)} images failed.\n")
    return 0


def _distinct_images(paths, out_dir, parser):
    """`paths` without repeats of one file; exits when two files would write the same outputs.

    `street.png` and `street.jpg` (or `a/street.png` and `b/street.png`) would both be written
    as `street_classes.png`, and only the last result kept.
    """
    writers = {}
    distinct = []
    for path in paths:
        names = output_paths(path, out_dir)
        earlier = writers.get(names)
        if earlier is None:
            writers[names] = path
            distinct.append(path)
        elif os.path.realpath(earlier) != os.path.realpath(path):
            parser.exit(
                2,
                f"error: {earlier} and {path} would both be written to {' and '.join(names)}; "
                "rename one, or predict them into different --out folders.\n",
            )
    return distinct
