"""A small segmentation dataset drawn on the fly: coloured shapes on textured backgrounds.

It ships with the package and needs no download, so examples and tests can train and evaluate a
segmentation model end to end. A shape's class shows in its outline and, by default, in its colour:
each class draws its colours from its own hue family on greyish textured backgrounds, which a small
model learns in minutes on a CPU. With `colors="random"` only the outline tells classes apart, a
much harder task for a model trained from scratch. Sizes, positions and backgrounds are
random either way.
"""

import colorsys

import numpy as np
import tensorflow as tf

from keras_hrvit.validation import check_number

SHAPES_CLASSES = ("background", "circle", "rectangle", "triangle", "ring")

_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
_DEFAULT_NUM_IMAGES = {"train": 1000, "validation": 200, "test": 200}

# Sizes as fractions of the image side (diameter, longer side or circumscribed diameter). Rings
# and triangles start larger so that their thin parts stay several pixels wide at stride 4.
_SIZE_RANGES = {
    1: (0.18, 0.45),
    2: (0.18, 0.45),
    3: (0.25, 0.50),
    4: (0.25, 0.45),
}
# An earlier shape must keep this much of its area visible once later shapes cover parts of it.
_MIN_VISIBLE_FRACTION = 0.6
_PLACEMENT_TRIES = 20
_COLOR_MODES = ("by_class", "random")
# Hue (in turns) at the centre of each class's colour family in `colors="by_class"`: red, yellow
# green, cyan blue, purple. Families are a quarter turn apart and span +-0.025, so the training
# pipeline's hue jitter (at most +-0.1) never moves a colour past the midpoint to the next family.
_CLASS_HUES = {1: 0.0, 2: 0.25, 3: 0.5, 4: 0.75}
_HUE_SPREAD = 0.025
# Backgrounds keep this fraction of their saturation in `colors="by_class"`, so that no
# background looks like a class's colour family.
_BACKGROUND_SATURATION = 0.25


def _check_split(split):
    if split not in _SPLIT_IDS:
        raise ValueError(f"`split` must be one of {sorted(_SPLIT_IDS)}, got {split!r}.")


def _check_arguments(num_images, image_size, seed, min_shapes, max_shapes, colors):
    if colors not in _COLOR_MODES:
        raise ValueError(f"`colors` must be one of {_COLOR_MODES}, got {colors!r}.")
    check_number("num_images", num_images, 0, integer=True)
    check_number("image_size", image_size, 32, integer=True)
    check_number("seed", seed, 0, integer=True)
    if not (1 <= min_shapes <= max_shapes):
        raise ValueError(
            "Expected 1 <= `min_shapes` <= `max_shapes`, "
            f"got min_shapes={min_shapes}, max_shapes={max_shapes}."
        )


def _smooth_noise(rng, size, cells):
    """Bilinearly upsampled random grid in [-1, 1], shape (size, size, 3)."""
    grid = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1, 3))
    t = (np.arange(size) + 0.5) * (cells / size)
    i0 = np.minimum(t.astype(np.int64), cells - 1)
    f = (t - i0)[:, None]
    rows = grid[i0] * (1 - f[:, :, None]) + grid[i0 + 1] * f[:, :, None]
    return rows[:, i0] * (1 - f[None, :, :]) + rows[:, i0 + 1] * f[None, :, :]


def _background(rng, size, yy, xx):
    kind = rng.integers(3)
    base = rng.uniform(30, 225, size=3)
    if kind == 0:
        noise = _smooth_noise(rng, size, int(rng.integers(2, 7)))
        image = base + rng.uniform(25, 60) * noise
    elif kind == 1:
        other = rng.uniform(0, 255, size=3)
        angle = rng.uniform(0, 2 * np.pi)
        proj = (xx * np.cos(angle) + yy * np.sin(angle)) / size
        t = (proj - proj.min()) / max(proj.max() - proj.min(), 1e-6)
        image = base * (1 - t[..., None]) + other * t[..., None]
    else:
        # Low-contrast stripes: a texture, not an object; shapes must stand out against them.
        delta = rng.uniform(-45, 45, size=3)
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(6, 24)
        phase = 2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period
        image = base + delta * np.sin(phase)[..., None]
    return image.astype(np.float32)


def _rasterize(rng, class_id, size, yy, xx):
    """Boolean mask of one randomly sized, placed and rotated shape fully inside the image."""
    low, high = _SIZE_RANGES[class_id]
    extent = rng.uniform(low, high) * size
    if class_id in (1, 4):
        radius = extent / 2
        cx, cy = rng.uniform(radius, size - radius, size=2)
        dist2 = (xx - cx) ** 2 + (yy - cy) ** 2
        if class_id == 1:
            return dist2 <= radius**2
        inner = radius * rng.uniform(0.4, 0.6)
        return (dist2 <= radius**2) & (dist2 >= inner**2)
    if class_id == 2:
        width = extent
        height = extent * rng.uniform(0.55, 1.0)
        if rng.random() < 0.5:
            width, height = height, width
        angle = rng.uniform(-np.pi / 6, np.pi / 6)
        cos, sin = np.cos(angle), np.sin(angle)
        half_x = (abs(width * cos) + abs(height * sin)) / 2
        half_y = (abs(width * sin) + abs(height * cos)) / 2
        cx = rng.uniform(half_x, size - half_x)
        cy = rng.uniform(half_y, size - half_y)
        u = (xx - cx) * cos + (yy - cy) * sin
        v = -(xx - cx) * sin + (yy - cy) * cos
        return (np.abs(u) <= width / 2) & (np.abs(v) <= height / 2)
    radius = extent / 2
    cx, cy = rng.uniform(radius, size - radius, size=2)
    angles = rng.uniform(0, 2 * np.pi) + np.array([0.0, 2.0, 4.0]) * np.pi / 3
    vx, vy = cx + radius * np.cos(angles), cy + radius * np.sin(angles)
    inside = np.ones_like(xx, dtype=bool)
    # Vertices go counter-clockwise, so the interior is on the left of every edge.
    for k in range(3):
        ax, ay, bx, by = vx[k], vy[k], vx[(k + 1) % 3], vy[(k + 1) % 3]
        inside &= (bx - ax) * (yy - ay) - (by - ay) * (xx - ax) >= 0
    return inside


def _random_color(rng, class_id, colors):
    if colors == "random":
        return rng.uniform(0, 255, size=3)
    hue = (_CLASS_HUES[class_id] + rng.uniform(-_HUE_SPREAD, _HUE_SPREAD)) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0))
    return 255.0 * np.asarray(rgb)


def _contrasting_color(rng, image, region, class_id, colors):
    local = image[region].mean(axis=0)
    color = _random_color(rng, class_id, colors)
    for _ in range(20):
        if np.abs(color - local).sum() >= 150:
            break
        color = _random_color(rng, class_id, colors)
    return color


def _desaturate(image, keep):
    gray = image.mean(axis=-1, keepdims=True)
    return gray + keep * (image - gray)


def _draw_example(rng, size, yy, xx, min_shapes, max_shapes, colors):
    image = _background(rng, size, yy, xx)
    if colors == "by_class":
        image = _desaturate(image, _BACKGROUND_SATURATION)
    mask = np.zeros((size, size), np.uint8)
    owner = np.zeros((size, size), np.int32)  # which drawn shape is on top, 0 for none
    areas, visible = [0], [0]
    for _ in range(int(rng.integers(min_shapes, max_shapes + 1))):
        class_id = int(rng.integers(1, len(SHAPES_CLASSES)))
        for _ in range(_PLACEMENT_TRIES):
            region = _rasterize(rng, class_id, size, yy, xx)
            hidden = np.bincount(owner[region], minlength=len(areas))
            kept = np.asarray(visible) - hidden
            if np.all(kept[1:] >= _MIN_VISIBLE_FRACTION * np.asarray(areas[1:])):
                break
        else:
            continue
        color = _contrasting_color(rng, image, region, class_id, colors)
        image[region] = color.astype(np.float32)
        mask[region] = class_id
        visible = list(kept)
        areas.append(int(region.sum()))
        visible.append(areas[-1])
        owner[region] = len(areas) - 1
    image += rng.uniform(2.0, 8.0) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def generate_shapes(
    num_images,
    image_size=128,
    seed=0,
    split="train",
    min_shapes=2,
    max_shapes=4,
    start_index=0,
    colors="by_class",
):
    """Draws shapes images and their masks with NumPy.

    Image `i` depends only on `(seed, split, start_index + i)`, so a split is the same however
    many images are drawn at once, and different splits never share images.

    Args:
        num_images: how many images to draw.
        image_size: side of the square images, in pixels (at least 32).
        seed: non-negative base seed.
        split: `"train"`, `"validation"` or `"test"`; mixed into the seed.
        min_shapes, max_shapes: range of the number of shapes per image; later shapes are drawn
            on top, and placements that would hide more than 40% of an earlier shape are redrawn.
        start_index: index of the first image, to draw a split in chunks.
        colors: `"by_class"` (each class has its own hue family and backgrounds are greyish) or
            `"random"` (any colour on any background: only outlines tell classes apart).

    Returns:
        `(images, masks)`: uint8 arrays of shape `(num_images, image_size, image_size, 3)` and
        `(num_images, image_size, image_size)`; mask values index `SHAPES_CLASSES`.

    Example:
    >>> images, masks = generate_shapes(4, image_size=64)
    >>> images.shape, masks.shape, int(masks.max()) < len(SHAPES_CLASSES)
    ((4, 64, 64, 3), (4, 64, 64), True)
    """
    _check_split(split)
    _check_arguments(num_images, image_size, seed, min_shapes, max_shapes, colors)
    check_number("start_index", start_index, 0, integer=True)
    size = int(image_size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    images = np.empty((num_images, size, size, 3), np.uint8)
    masks = np.empty((num_images, size, size), np.uint8)
    for i in range(num_images):
        rng = np.random.default_rng([int(seed), _SPLIT_IDS[split], int(start_index) + i])
        images[i], masks[i] = _draw_example(rng, size, yy, xx, min_shapes, max_shapes, colors)
    return images, masks


def load_shapes(
    split="train",
    num_images=None,
    image_size=128,
    seed=0,
    min_shapes=2,
    max_shapes=4,
    colors="by_class",
):
    """The shapes segmentation dataset as a `tf.data.Dataset` of `(image, mask)` pairs.

    Images are uint8 `(image_size, image_size, 3)`, masks uint8 `(image_size, image_size)` with
    values in `range(len(SHAPES_CLASSES))` (0 is the background). The whole split is drawn up
    front (about `4 * image_size**2` bytes per image) and is the same on every call.

    Args:
        split: `"train"` (1000 images by default), `"validation"` or `"test"` (200 each).
        num_images: number of images; `None` for the split's default.
        image_size: side of the square images, in pixels.
        seed: non-negative base seed; the split is mixed in, so splits never overlap.
        min_shapes, max_shapes: range of the number of shapes per image.
        colors: `"by_class"` or `"random"`, as in `generate_shapes`.

    Example:
    >>> ds = load_shapes("validation", num_images=8, image_size=64)
    >>> image, mask = next(iter(ds))
    >>> image.dtype.name, image.shape, mask.shape
    ('uint8', TensorShape([64, 64, 3]), TensorShape([64, 64]))
    """
    _check_split(split)
    if num_images is None:
        num_images = _DEFAULT_NUM_IMAGES[split]
    images, masks = generate_shapes(
        num_images,
        image_size=image_size,
        seed=seed,
        split=split,
        min_shapes=min_shapes,
        max_shapes=max_shapes,
        colors=colors,
    )
    return tf.data.Dataset.from_tensor_slices((images, masks))
