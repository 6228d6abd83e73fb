"""A small real-image segmentation benchmark that installs with pip: mosaics of photographs.

Each 64x64 image is split into two to five Voronoi regions, each filled with a crop of one of 11
photographs shipped with scikit-image (brick, grass, gravel, the cameraman, coins, the moon, a
scanned page, a cell, a retina, the Hubble deep field, an immunohistochemistry slide), taken in
grey at a random scale (crops of 24-96 px), then tinted, brightened and contrasted at random, so
that neither colour nor brightness gives the class away. The mask labels every pixel with the
photograph it shows: 11 classes, telling textures apart from their local structure, with region
shapes and layouts as context.

The split is fixed: validation images take their crops from the bottom quarter of each
photograph, which training never sees (training from the top three quarters).

    images, masks = texture_mosaics("train")  # (1536, 64, 64, 3) uint8, (1536, 64, 64) uint8
"""

import numpy as np

SOURCES = (
    "brick",
    "grass",
    "gravel",
    "camera",
    "coins",
    "moon",
    "page",
    "cell",
    "retina",
    "hubble_deep_field",
    "immunohistochemistry",
)
NUM_CLASSES = len(SOURCES)
SPLITS = {"train": 1536, "val": 256}


def texture_mosaics(split, size=64, count=None, seed=None):
    """`(images, masks)` of `split` ("train" or "val"): uint8, `(N, size, size, 3)` and
    `(N, size, size)`.

    `count` defaults to the split's size (1536 / 256) and `seed` to the split's own fixed seed, so
    every call returns the same arrays.
    """
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {', '.join(SPLITS)}; got {split!r}.")
    if size < 32:
        raise ValueError(f"`size` must be at least 32 pixels; got {size}.")
    count = SPLITS[split] if count is None else count
    rng = np.random.default_rng(list(SPLITS).index(split) if seed is None else seed)
    sources = _sources(split)
    images = np.empty((count, size, size, 3), np.uint8)
    masks = np.empty((count, size, size), np.uint8)
    for i in range(count):
        images[i], masks[i] = _mosaic(rng, size, sources)
    return images, masks


def _sources(split):
    """Each photograph in grey, 0-1: its top three quarters for training, the rest for
    validation."""
    import skimage.data

    sources = []
    for name in SOURCES:
        image = getattr(skimage.data, name)().astype(np.float32) / 255.0
        if image.ndim == 3:
            image = image[..., :3].mean(-1)
        cut = 3 * image.shape[0] // 4
        sources.append(image[:cut] if split == "train" else image[cut:])
    return sources


def _mosaic(rng, size, sources):
    seeds = rng.uniform(0, size, (int(rng.integers(2, 6)), 2))
    rows, cols = np.mgrid[:size, :size]
    distances = (rows[..., None] - seeds[:, 0]) ** 2 + (cols[..., None] - seeds[:, 1]) ** 2
    region = np.argmin(distances, axis=-1)
    classes = rng.choice(NUM_CLASSES, len(seeds), replace=False)
    image = np.zeros((size, size, 3), np.float32)
    for index, label in enumerate(classes):
        inside = region == index
        image[inside] = _texture(rng, sources[label], size)[inside]
    mask = classes[region].astype(np.uint8)
    noise = rng.normal(0, 0.02, image.shape)
    return np.clip((image + noise) * 255, 0, 255).round().astype(np.uint8), mask


def _texture(rng, source, size):
    """A random crop of `source` at `size`, in a random tint, brightness and contrast."""
    from skimage.transform import resize

    crop = int(rng.integers(24, min(96, *source.shape) + 1))
    top = rng.integers(source.shape[0] - crop + 1)
    left = rng.integers(source.shape[1] - crop + 1)
    patch = resize(source[top : top + crop, left : left + crop], (size, size), anti_aliasing=True)
    patch = (patch - patch.mean()) * rng.uniform(0.5, 1.5) + rng.uniform(0.3, 0.7)
    return patch[..., None] * rng.uniform(0.6, 1.0, 3) + rng.uniform(0, 0.2, 3)
