"""Colored segmentation masks and image | ground truth | prediction panels, with Pillow.

Example:

>>> import numpy as np
>>> image = np.zeros((64, 64, 3), "uint8"); mask = np.zeros((64, 64), "int32")
>>> panel = segmentation_panel(image, mask, mask, class_names=["background"])
>>> panel.size[0] > 3 * 64
True
"""

import os

import numpy as np
from PIL import Image, ImageDraw

IGNORE_LABEL = 255
_MIN_TILE = 192
_GAP = 4
_TITLE_HEIGHT = 18
_LEGEND_ROW = 16


def palette(num_colors=256):
    """The fixed PASCAL VOC color map: `(num_colors, 3)` uint8, class 0 black, 255 off-white.

    Colors depend only on the class index, so every run, split and dataset draws a class the
    same way; label 255 (ignore) gets VOC's "void" color.

    Example:

    >>> palette(3).tolist()
    [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    """
    if isinstance(num_colors, bool) or not isinstance(num_colors, int | np.integer):
        raise ValueError(f"`num_colors` must be an int in [1, 256]; got {num_colors!r}.")
    if not 1 <= num_colors <= 256:
        raise ValueError(f"`num_colors` must be an int in [1, 256]; got {num_colors!r}.")
    colors = np.zeros((256, 3), np.uint8)
    for index in range(256):
        value, r, g, b = index, 0, 0, 0
        # VOC spreads the index bits over the high bits of the three channels.
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colors[index] = (r, g, b)
    return colors[:num_colors]


_PALETTE = palette()


def colorize(mask):
    """Class ids `(H, W)` (0-255, 255 = ignore) to an RGB uint8 image `(H, W, 3)`.

    Example:

    >>> colorize(np.array([[0, 1], [2, 255]])).shape
    (2, 2, 3)
    """
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"`mask` must be (H, W) class ids; got shape {mask.shape}.")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"Class ids must lie in [0, 255]; got range [{mask.min()}, {mask.max()}].")
    return _PALETTE[mask.astype(np.int64)]


def _as_uint8_image(image):
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"`image` must be (H, W, 3); got shape {image.shape}.")
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image


def _blend(image, mask, alpha):
    colors = colorize(mask).astype(np.float32)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colors
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def segmentation_panel(image, mask, prediction, class_names=None, alpha=0.6, min_tile=_MIN_TILE):
    """A PIL image: `image | ground truth | prediction` with titles and a legend.

    Masks are drawn with the fixed `palette`, blended over the image with opacity `alpha` (1.0
    for flat colors). Small tiles are enlarged (nearest neighbour) to at least `min_tile` pixels
    on their shorter side. The legend lists the classes present in either mask.

    Args:
        image: `(H, W, 3)` RGB, uint8 or float 0-255 (see `keras_hrvit.data.denormalize`).
        mask: `(H, W)` ground-truth class ids (255 = ignore).
        prediction: `(H, W)` predicted class ids.
        class_names: optional names indexed by class id, for the legend.
        alpha: mask opacity in [0, 1].
        min_tile: smallest tile side in pixels after enlarging.

    Example:

    >>> image = np.zeros((64, 64, 3), "uint8"); mask = np.zeros((64, 64), "int32")
    >>> segmentation_panel(image, mask, mask).size
    (592, 234)
    """
    image = _as_uint8_image(image)
    mask = np.asarray(mask)
    prediction = np.asarray(prediction)
    if mask.shape != image.shape[:2] or prediction.shape != image.shape[:2]:
        raise ValueError(
            f"`image` {image.shape[:2]}, `mask` {mask.shape} and `prediction` "
            f"{prediction.shape} must have the same height and width."
        )
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1]; got {alpha!r}.")
    tiles = [image, _blend(image, mask, alpha), _blend(image, prediction, alpha)]
    height, width = image.shape[:2]
    zoom = max(1, int(np.ceil(min_tile / max(1, min(height, width)))))
    tile_h, tile_w = height * zoom, width * zoom

    present = sorted(
        int(c) for c in np.union1d(np.unique(mask), np.unique(prediction)) if c != IGNORE_LABEL
    )
    panel_w = 3 * tile_w + 4 * _GAP
    per_row = max(1, panel_w // 130)
    legend_rows = int(np.ceil(len(present) / per_row))
    panel_h = _TITLE_HEIGHT + tile_h + 2 * _GAP + legend_rows * _LEGEND_ROW
    panel = Image.new("RGB", (panel_w, panel_h), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for i, (tile, title) in enumerate(zip(tiles, ("image", "ground truth", "prediction"))):
        x = _GAP + i * (tile_w + _GAP)
        enlarged = Image.fromarray(tile).resize((tile_w, tile_h), Image.NEAREST)
        panel.paste(enlarged, (x, _TITLE_HEIGHT))
        draw.text((x + 2, 3), title, fill=(0, 0, 0))
    y0 = _TITLE_HEIGHT + tile_h + _GAP
    for k, class_id in enumerate(present):
        x = _GAP + (k % per_row) * 130
        y = y0 + (k // per_row) * _LEGEND_ROW
        color = tuple(int(c) for c in _PALETTE[class_id])
        draw.rectangle((x, y + 2, x + 10, y + 12), fill=color, outline=(0, 0, 0))
        name = str(class_id)
        if class_names is not None and class_id < len(class_names):
            name = f"{class_id} {class_names[class_id]}"
        draw.text((x + 14, y + 1), name[:18], fill=(0, 0, 0))
    return panel


def save_segmentation_panel(path, image, mask, prediction, class_names=None, alpha=0.6):
    """Writes `segmentation_panel(...)` as a PNG at `path` (folders are created).

    Example:

    >>> save_segmentation_panel("out/0000.png", image, mask, prediction, SHAPES_CLASSES)
    """
    panel = segmentation_panel(image, mask, prediction, class_names=class_names, alpha=alpha)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    panel.save(path, format="PNG")
    return path


__all__ = ["colorize", "palette", "save_segmentation_panel", "segmentation_panel"]
