"""The segmentation data layer: shapes dataset, augmentation pipelines and dataset loaders."""

import os
import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_hrvit.data import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    IGNORE_LABEL,
    IMAGENET_MEAN,
    SHAPES_CLASSES,
    generate_shapes,
    load_ade20k,
    load_cityscapes,
    load_folder,
    load_shapes,
    loaders,
    segmentation_eval_pipeline,
    segmentation_train_pipeline,
)
from keras_hrvit.data.segmentation import bad_example_message

# --- shapes dataset ------------------------------------------------------------------------------


MEAN_PIXEL = np.array(IMAGENET_MEAN, np.float32)


def _as_uint8(images):
    return np.clip(np.rint(np.asarray(images)), 0, 255).astype(np.uint8)


def test_shapes_deterministic_disjoint_and_complete():
    images, masks = generate_shapes(24, image_size=64, seed=3)
    assert images.shape == (24, 64, 64, 3) and images.dtype == np.uint8
    assert masks.shape == (24, 64, 64) and masks.dtype == np.uint8

    again_images, again_masks = generate_shapes(24, image_size=64, seed=3)
    np.testing.assert_array_equal(images, again_images)
    np.testing.assert_array_equal(masks, again_masks)
    # Image i depends only on its index, so a split can be drawn in chunks.
    tail_images, tail_masks = generate_shapes(4, image_size=64, seed=3, start_index=20)
    np.testing.assert_array_equal(tail_images, images[20:])
    np.testing.assert_array_equal(tail_masks, masks[20:])

    val_images, _ = generate_shapes(24, image_size=64, seed=3, split="validation")
    other_seed, _ = generate_shapes(24, image_size=64, seed=4)
    train_set = {im.tobytes() for im in images}
    assert not train_set & {im.tobytes() for im in val_images}
    assert not train_set & {im.tobytes() for im in other_seed}

    assert set(np.unique(masks)) == set(range(len(SHAPES_CLASSES)))
    assert SHAPES_CLASSES[0] == "background" and 4 <= len(SHAPES_CLASSES) <= 6
    assert all(len(np.unique(m)) >= 2 for m in masks)
    foreground = (masks > 0).mean()
    assert 0.1 < foreground < 0.5, foreground


def test_shapes_shape_classes_are_outlines():
    # A lone circle fills about pi/4 of its bounding box and a ring clearly less.
    _, masks = generate_shapes(60, image_size=96, seed=0, min_shapes=1, max_shapes=1)
    fill = {c: [] for c in range(1, len(SHAPES_CLASSES))}
    for mask in masks:
        (c,) = set(np.unique(mask)) - {0}
        ys, xs = np.nonzero(mask == c)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        fill[c].append(len(ys) / box)
        assert 0.15 * 96 - 2 <= max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
    assert all(fill.values())
    assert 0.72 < np.mean(fill[1]) < 0.85  # circle
    assert np.mean(fill[4]) < 0.7  # ring
    assert np.mean(fill[3]) < 0.6  # triangle


def _hue_and_saturation(pixels):
    rgb = pixels.astype(np.float64) / 255.0
    high, low = rgb.max(-1), rgb.min(-1)
    chroma = np.maximum(high - low, 1e-9)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = np.where(
        high == r,
        ((g - b) / chroma) % 6,
        np.where(high == g, (b - r) / chroma + 2, (r - g) / chroma + 4),
    )
    return hue / 6.0, chroma / np.maximum(high, 1e-9)


def test_shapes_colors_follow_the_class_by_default():
    images, masks = generate_shapes(40, image_size=64, seed=1)
    # Per shape pixel: distance (in turns) from its class's hue family centre; noise adds a little.
    hue, saturation = _hue_and_saturation(images)
    centre = np.array([np.nan, 0.0, 0.25, 0.5, 0.75])[masks]
    distance = np.abs((hue - centre + 0.5) % 1.0 - 0.5)
    shape = masks > 0
    assert np.median(distance[shape]) < 0.03
    assert np.mean(distance[shape] < 0.125) > 0.97  # nearer its own family than any other
    # Backgrounds are greyish, shapes saturated.
    assert np.median(saturation[~shape]) < 0.2 < 0.6 < np.median(saturation[shape])

    random_images, random_masks = generate_shapes(40, image_size=64, seed=1, colors="random")
    hue, _ = _hue_and_saturation(random_images)
    centre = np.array([np.nan, 0.0, 0.25, 0.5, 0.75])[random_masks]
    distance = np.abs((hue - centre + 0.5) % 1.0 - 0.5)
    shape = random_masks > 0
    assert np.mean(distance[shape] < 0.125) < 0.5
    with pytest.raises(ValueError, match="colors"):
        generate_shapes(2, image_size=32, colors="rainbow")


def test_load_shapes_matches_generator():
    ds = load_shapes("validation", num_images=5, image_size=48, seed=7)
    assert ds.element_spec[0].dtype == tf.uint8 and ds.element_spec[1].dtype == tf.uint8
    pairs = list(ds.as_numpy_iterator())
    images, masks = generate_shapes(5, image_size=48, seed=7, split="validation")
    assert len(pairs) == 5
    np.testing.assert_array_equal(np.stack([p[0] for p in pairs]), images)
    np.testing.assert_array_equal(np.stack([p[1] for p in pairs]), masks)
    with pytest.raises(ValueError, match="split"):
        load_shapes("val")
    with pytest.raises(ValueError, match="image_size"):
        generate_shapes(2, image_size=8)


# --- training pipeline ---------------------------------------------------------------------------


def _colour_coded_dataset(num, height=72, width=104, block=8, seed=0):
    """Blocks whose mask class follows from their colour: 0 grey, 1 red, 2 green, 3 blue."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(num):
        classes = rng.integers(0, 4, size=(height // block, width // block))
        mask = np.kron(classes, np.ones((block, block), np.int64)).astype(np.uint8)
        image = np.empty((height, width, 3), np.uint8)
        for by in range(classes.shape[0]):
            for bx in range(classes.shape[1]):
                c = classes[by, bx]
                if c == 0:
                    colour = np.full(3, rng.integers(40, 200))
                else:
                    colour = rng.integers(10, 40, size=3)
                    colour[c - 1] = rng.integers(190, 231)
                image[by * block : (by + 1) * block, bx * block : (bx + 1) * block] = colour
        images.append(image)
        masks.append(mask)
    return tf.data.Dataset.from_tensor_slices((np.stack(images), np.stack(masks)))


def _class_from_colour(image):
    image = image.astype(np.int32)
    spread = image.max(-1) - image.min(-1)
    return np.where(spread < 12, 0, image.argmax(-1) + 1)


def _interior(mask):
    """Pixels whose 3x3 neighbourhood has a single label (away from interpolation borders).

    Crop edges never count: the pixels just outside a crop were blended in but are not shown.
    """
    padded = np.pad(mask.astype(np.int64), 1, constant_values=-1)
    same = np.ones(mask.shape, bool)
    for dy in range(3):
        for dx in range(3):
            same &= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]] == mask
    return same


def test_train_pipeline_keeps_image_and_mask_aligned():
    ds = _colour_coded_dataset(24)
    train = segmentation_train_pipeline(
        ds, crop_size=(64, 64), base_scale=(104, 72), batch_size=12, seed=0
    )
    checked = padded = flipped_or_scaled = 0
    for images, masks in train:
        assert images.dtype == tf.float32 and images.shape == (12, 64, 64, 3)
        assert masks.dtype == tf.int32 and masks.shape == (12, 64, 64)
        for image, mask in zip(images.numpy(), masks.numpy()):
            # 255 only in a bottom/right padding band, where the image is the mean pixel (0 once
            # the model normalizes it).
            valid = mask != IGNORE_LABEL
            rows, cols = valid.any(1), valid.any(0)
            vh, vw = rows.sum(), cols.sum()
            assert rows[:vh].all() and cols[:vw].all()
            assert valid[:vh, :vw].all() and not valid[vh:].any() and not valid[:, vw:].any()
            np.testing.assert_allclose(
                image[~valid], np.broadcast_to(MEAN_PIXEL, image[~valid].shape), atol=1e-4
            )
            padded += vh < 64 or vw < 64
            flipped_or_scaled += vh < 64 or vw < 64 or not np.all(mask[:8, :8] == mask[0, 0])

            inside = _interior(mask) & valid
            predicted = _class_from_colour(_as_uint8(image))
            agreement = np.mean(predicted[inside] == mask[inside])
            assert agreement > 0.995, agreement
            checked += inside.sum()
    assert checked > 30000 and padded > 0 and flipped_or_scaled > 0


def test_train_pipeline_rescale_follows_base_scale():
    # Without cropping effects (a huge crop) the valid area is the keep-ratio rescaled image.
    ds = _colour_coded_dataset(12)
    train = segmentation_train_pipeline(
        ds,
        crop_size=256,
        base_scale=(52, 36),
        ratio_range=(0.5, 2.0),
        batch_size=12,
        photometric=False,
        seed=1,
    )
    _, masks = next(iter(train))
    sizes = set()
    for mask in masks.numpy():
        valid = mask != IGNORE_LABEL
        vh, vw = int(valid.any(1).sum()), int(valid.any(0).sum())
        assert 17 <= vh <= 72 and 25 <= vw <= 104
        assert abs(vw / vh - 104 / 72) < 0.08
        sizes.add((vh, vw))
    assert len(sizes) > 4


def test_train_pipeline_is_reproducible_with_a_seed_and_reads_dicts():
    ds = load_shapes("train", num_images=8, image_size=48)
    as_dicts = ds.map(lambda i, m: {"image": i, "segmentation_mask": m[..., None]})

    def pipeline(data):
        return segmentation_train_pipeline(
            data, crop_size=32, base_scale=(48, 48), batch_size=8, seed=5
        )

    first = pipeline(ds)
    a_images, a_masks = next(iter(first))
    b_images, b_masks = next(iter(pipeline(as_dicts)))
    np.testing.assert_array_equal(a_images.numpy(), b_images.numpy())
    np.testing.assert_array_equal(a_masks.numpy(), b_masks.numpy())
    # Each epoch draws new augmentations, still from the same seed.
    c_images, _ = next(iter(first))
    assert c_images.shape == (8, 32, 32, 3)
    assert not np.array_equal(a_images.numpy(), c_images.numpy())


def test_crop_rule_keeps_dominant_class_below_ratio_when_achievable():
    mask = np.ones((100, 100), np.uint8)
    mask[38:62, 38:62] = 2
    mask[:5, :5] = IGNORE_LABEL  # ignored pixels count for neither class
    image = np.zeros((100, 100, 3), np.uint8)
    ds = tf.data.Dataset.from_tensors((image, mask)).repeat(200)

    def rule_holds(cat_max_ratio):
        train = segmentation_train_pipeline(
            ds,
            crop_size=40,
            ratio_range=None,
            batch_size=100,
            cat_max_ratio=cat_max_ratio,
            flip_prob=0.0,
            photometric=False,
            shuffle_buffer=None,
            seed=3,
        )
        held = []
        for _, masks in train:
            for crop in masks.numpy():
                counts = np.bincount(crop[crop != IGNORE_LABEL].ravel(), minlength=3)
                held.append((counts > 0).sum() > 1 and counts.max() / counts.sum() < 0.75)
        assert len(held) == 200
        return np.mean(held)

    with_rule, without_rule = rule_holds(0.75), rule_holds(1.0)
    # One random window satisfies the rule 23% of the time, one of ten tries 92%.
    assert with_rule > 0.85 and without_rule < 0.35, (with_rule, without_rule)

    # When no window can satisfy the rule, the pipeline still returns crops.
    uniform = tf.data.Dataset.from_tensors((image, np.ones((100, 100), np.uint8))).repeat(4)
    train = segmentation_train_pipeline(
        uniform, crop_size=40, ratio_range=None, batch_size=4, shuffle_buffer=None
    )
    _, masks = next(iter(train))
    assert np.all(masks.numpy() == 1)


def test_pipeline_argument_validation():
    ds = load_shapes("train", num_images=2, image_size=32)
    with pytest.raises(ValueError, match="crop_size"):
        segmentation_train_pipeline(ds, crop_size=0)
    with pytest.raises(ValueError, match="ratio_range"):
        segmentation_train_pipeline(ds, crop_size=32, ratio_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="cat_max_ratio"):
        segmentation_train_pipeline(ds, crop_size=32, cat_max_ratio=0.0)
    with pytest.raises(ValueError, match="'mask'"):
        segmentation_eval_pipeline(ds.map(lambda i, m: {"image": i, "label": m}))
    with pytest.raises(TypeError, match="tf.data.Dataset"):
        segmentation_eval_pipeline([1, 2])
    with pytest.raises(ValueError, match="Masks must be"):
        segmentation_eval_pipeline(ds.map(lambda i, m: (i, m[None, None])))


# --- evaluation pipeline -------------------------------------------------------------------------


def test_eval_pipeline_resizes_and_pads():
    ds = _colour_coded_dataset(3, height=40, width=64)
    raw = list(ds.as_numpy_iterator())

    images, masks = next(iter(segmentation_eval_pipeline(ds, batch_size=3)))
    assert images.shape == (3, 40, 64, 3) and masks.dtype == tf.int32
    np.testing.assert_array_equal(_as_uint8(images), np.stack([r[0] for r in raw]))
    np.testing.assert_array_equal(masks.numpy(), np.stack([r[1] for r in raw]))

    # Fit into (128, 96): factor min(128 / 64, 96 / 40) = 2; masks stay at label resolution.
    images, masks = next(iter(segmentation_eval_pipeline(ds, scale=(96, 128))))
    assert images.shape == (1, 80, 128, 3) and masks.shape == (1, 40, 64)

    images, masks = next(
        iter(segmentation_eval_pipeline(ds, scale=(128, 96), resize_mask=True, pad_to_multiple=32))
    )
    assert images.shape == (1, 96, 128, 3) and masks.shape == (1, 96, 128)
    mask = masks.numpy()[0]
    assert np.all(mask[80:] == IGNORE_LABEL)
    np.testing.assert_allclose(images.numpy()[0, 80:], np.broadcast_to(MEAN_PIXEL, (16, 128, 3)))
    np.testing.assert_array_equal(mask[:80:2, ::2], raw[0][1])  # nearest, exact 2x upscale

    # Different sizes in one batch are padded with the mean pixel / ignore.
    mixed = ds.take(1).concatenate(_colour_coded_dataset(1, height=32, width=48))
    images, masks = next(iter(segmentation_eval_pipeline(mixed, batch_size=2)))
    assert images.shape == (2, 40, 64, 3)
    assert np.all(masks.numpy()[1, 32:] == IGNORE_LABEL)
    assert np.all(masks.numpy()[1, :, 48:] == IGNORE_LABEL)
    assert np.all(masks.numpy()[1, :32, :48] != IGNORE_LABEL)
    np.testing.assert_allclose(images.numpy()[1, 32:], np.broadcast_to(MEAN_PIXEL, (8, 64, 3)))


# --- loaders -------------------------------------------------------------------------------------


def write_ade20k_tree(root, sizes, seed=0, size=(48, 64)):
    """A tiny `ADEChallengeData2016` folder in the release's layout and names: `sizes` maps
    "training" / "validation" to a number of JPEG images, each with a single-channel PNG
    annotation of 8x8 blocks of labels 0-150, both ends included (every label drawn in its own
    colour). Returns `{split: [annotation arrays]}` in file order."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = {}
    for split, count in sizes.items():
        prefix = "train" if split == "training" else "val"
        for index in range(count):
            labels = rng.integers(0, 151, (size[0] // 8, size[1] // 8))
            labels.flat[:2] = (0, 150)  # "other" and the last class in every annotation
            labels = np.kron(labels, np.ones((8, 8), np.int64)).astype(np.uint8)
            colours = rng.integers(0, 256, (151, 3)).astype(np.uint8)
            name = f"ADE_{prefix}_{index + 1:08d}"
            for folder, array, extension in (
                ("images", colours[labels], ".jpg"),
                ("annotations", labels, ".png"),
            ):
                directory = os.path.join(root, folder, split)
                os.makedirs(directory, exist_ok=True)
                Image.fromarray(array).save(os.path.join(directory, name + extension))
            written.setdefault(split, []).append(labels)
    return written


def test_load_ade20k_reads_the_challenge_folder_and_reduces_zero_label(tmp_path):
    assert len(ADE20K_CLASSES) == 150 and ADE20K_CLASSES[0] == "wall"
    root = str(tmp_path / "ADEChallengeData2016")
    written = write_ade20k_tree(root, {"training": 3, "validation": 2})
    # A folder smaller than the release is read, with a warning naming it and the counts.
    with pytest.warns(UserWarning) as record:
        ours = list(load_ade20k("val", data_dir=root).as_numpy_iterator())
    assert str(record[0].message).startswith(
        f"ADE20K folder {root} holds 2 validation images and 2 annotations, fewer than the "
        "release's 2,000"
    )
    assert len(ours) == 2
    for index, ((image, mask), labels) in enumerate(zip(ours, written["validation"])):
        path = os.path.join(root, "images", "validation", f"ADE_val_{index + 1:08d}.jpg")
        np.testing.assert_array_equal(image, tf.io.decode_jpeg(tf.io.read_file(path)).numpy())
        assert mask.dtype == np.uint8 and mask.shape == labels.shape == (48, 64)
        np.testing.assert_array_equal(mask == IGNORE_LABEL, labels == 0)
        np.testing.assert_array_equal(mask[labels > 0], labels[labels > 0] - 1)
        assert {149, 255} <= set(np.unique(mask))  # from 150 and 0

    # The folder holding ADEChallengeData2016 works too; every split name; the raw labels.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for split in ("train", "training"):
            masks = [m for _, m in load_ade20k(split, data_dir=str(tmp_path)).as_numpy_iterator()]
            assert len(masks) == 3
        plain = load_ade20k("validation", data_dir=str(tmp_path), reduce_zero_label=False)
        for (_, mask), labels in zip(plain.as_numpy_iterator(), written["validation"]):
            np.testing.assert_array_equal(mask, labels)
    for split in ("test", "train[:10%]", None):
        with pytest.raises(ValueError, match=r"^`split` must be 'train' \(or 'training'\) or "):
            load_ade20k(split, data_dir=root)


def _write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if array.ndim == 2:
        array = array[..., None]
    tf.io.write_file(path, tf.io.encode_png(array))


def test_load_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    root = tmp_path / "cityscapes"
    rng = np.random.default_rng(0)
    label_ids = np.arange(36, dtype=np.uint8).reshape(6, 6)  # ids 0-33 plus two invalid ones
    expected = np.full(36, 255, np.uint8)
    for label_id, train_id in zip(
        [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33], range(19)
    ):
        expected[label_id] = train_id
    image = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    stem = "aachen_000000_000019"
    _write_png(str(root / "leftImg8bit/val/aachen" / f"{stem}_leftImg8bit.png"), image)
    _write_png(str(root / "gtFine/val/aachen" / f"{stem}_gtFine_labelIds.png"), label_ids)
    # Where labelTrainIds exist they win over labelIds.
    train_ids = rng.choice(np.r_[0:19, 255], size=(6, 6)).astype(np.uint8)
    stem2 = "bochum_000000_000313"
    _write_png(str(root / "leftImg8bit/val/bochum" / f"{stem2}_leftImg8bit.png"), image)
    _write_png(str(root / "gtFine/val/bochum" / f"{stem2}_gtFine_labelIds.png"), label_ids)
    _write_png(str(root / "gtFine/val/bochum" / f"{stem2}_gtFine_labelTrainIds.png"), train_ids)
    # An image without annotation is skipped with a warning.
    _write_png(str(root / "leftImg8bit/val/bochum" / "bochum_000000_000999_leftImg8bit.png"), image)

    with pytest.warns(UserWarning, match="without a gtFine label"):
        ds = load_cityscapes(str(root), split="validation")
    pairs = list(ds.as_numpy_iterator())
    assert len(pairs) == 2 and len(CITYSCAPES_CLASSES) == 19
    np.testing.assert_array_equal(pairs[0][0], image)
    np.testing.assert_array_equal(pairs[0][1], expected.reshape(6, 6))
    np.testing.assert_array_equal(pairs[1][1], train_ids)
    with pytest.raises(FileNotFoundError, match="leftImg8bit/train"):
        load_cityscapes(str(root), split="train")
    with pytest.raises(ValueError, match="split"):
        load_cityscapes(str(root), split="training")


def test_load_folder_skips_corrupt_images_with_a_warning(tmp_path):
    images_dir, masks_dir = tmp_path / "images", tmp_path / "masks"
    rng = np.random.default_rng(0)
    good = {}
    for name in ("a", "b", "c"):
        image = rng.integers(0, 256, size=(10, 14, 3), dtype=np.uint8)
        mask = rng.integers(0, 5, size=(10, 14), dtype=np.uint8)
        _write_png(str(images_dir / f"{name}.png"), image)
        _write_png(str(masks_dir / f"{name}_mask.png"), mask)
        good[name] = (image, mask)
    # A file that is not an image at all, caught up front with a Python warning.
    (images_dir / "broken.jpg").write_bytes(b"this is not a jpeg")
    _write_png(str(masks_dir / "broken_mask.png"), np.zeros((10, 14), np.uint8))
    # A PNG cut short: passes the header check, fails to decode, dropped inside tf.data.
    data = tf.io.encode_png(good["c"][0]).numpy()
    (images_dir / "c.png").write_bytes(data[: len(data) // 2])
    # An image without a mask.
    _write_png(str(images_dir / "lonely.png"), good["a"][0])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_folder(str(images_dir), str(masks_dir), mask_suffix="_mask")
    messages = " ".join(str(w.message) for w in caught)
    assert "broken.jpg" in messages and "lonely.png" in messages
    pairs = list(ds.as_numpy_iterator())
    assert len(pairs) == 2
    for (image, mask), name in zip(pairs, ("a", "b")):
        np.testing.assert_array_equal(image, good[name][0])
        np.testing.assert_array_equal(mask, good[name][1])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reduced = list(
            load_folder(str(images_dir), str(masks_dir), "_mask", reduce_zero_label=True)
        )
    expected = np.where(good["a"][1] == 0, 255, good["a"][1] - 1)
    np.testing.assert_array_equal(reduced[0][1].numpy(), expected)
    with pytest.raises(FileNotFoundError, match="masks_dir"):
        load_folder(str(images_dir), str(tmp_path / "nowhere"))


# --- bad data: one clear line, before any backend sees it ----------------------------------------


def _labelled(labels, dtype=np.uint8, size=(12, 16)):
    """One example whose mask repeats `labels` over a `size` image."""
    mask = np.resize(np.asarray(labels, dtype), size)
    return tf.data.Dataset.from_tensors((np.zeros(size + (3,), np.uint8), mask))


def _run_pipeline(kind, ds, **kwargs):
    if kind == "train":
        ds = segmentation_train_pipeline(ds, crop_size=16, batch_size=1, shuffle_buffer=0, **kwargs)
    else:
        ds = segmentation_eval_pipeline(ds, **kwargs)
    return next(iter(ds))[1].numpy()


@pytest.mark.parametrize("kind", ["train", "eval"])
def test_pipelines_refuse_labels_outside_num_classes(kind):
    def refused(message, ds, **kwargs):
        with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
            _run_pipeline(kind, ds, **kwargs)

    # Labels below num_classes and the ignore label pass; so does the padding (train).
    masks = _run_pipeline(kind, _labelled([0, 4, 255]), num_classes=5)
    assert set(np.unique(masks)) <= {0, 4, 255}
    refused(
        "mask has label 9, but num_classes is 5 (labels 0-4, and 255 ignored)",
        _labelled([0, 9, 255]),
        num_classes=5,
    )
    # The pipeline's own ignore label, which also pads the crops.
    masks = _run_pipeline(kind, _labelled([0, 250]), num_classes=5, ignore_label=250)
    assert set(np.unique(masks)) <= {0, 250}
    refused(
        "mask has label 255, but num_classes is 5 (labels 0-4, and 250 ignored)",
        _labelled([0, 250, 255]),
        num_classes=5,
        ignore_label=250,
    )
    # Wider masks are checked as they come: 300 would wrap to 44 in uint8.
    refused(
        "mask has label 300, but num_classes is 50", _labelled([0, 300], np.int32), num_classes=50
    )
    refused("mask has label -1, but num_classes is 5", _labelled([0, -1], np.int64), num_classes=5)
    refused(
        "mask has label 1, but num_classes is 1 (label 0, and 255 ignored)",
        _labelled([1], np.uint8),
        num_classes=1,
    )
    # Without num_classes nothing is checked (callers that do not know it).
    assert 9 in _run_pipeline(kind, _labelled([0, 9]))
    with pytest.raises(ValueError, match="`num_classes` must be an integer >= 1"):
        _run_pipeline(kind, _labelled([0]), num_classes=0)


def _unknown_shapes(image, mask):
    """A dataset whose shapes are only known when it runs, as when files are decoded."""
    return tf.data.Dataset.from_generator(
        lambda: iter([(image, mask)]),
        output_signature=(
            tf.TensorSpec((None, None, 3), tf.uint8),
            tf.TensorSpec((None,) * mask.ndim, tf.uint8),
        ),
    )


@pytest.mark.parametrize("kind", ["train", "eval"])
def test_pipelines_refuse_images_and_masks_of_different_sizes(kind):
    image, mask = np.zeros((64, 96, 3), np.uint8), np.zeros((16, 16), np.uint8)
    for ds in (
        tf.data.Dataset.from_tensors((image, mask)),
        _unknown_shapes(image, mask),
        _unknown_shapes(image, mask[..., None]).map(lambda i, m: {"image": i, "mask": m}),
    ):
        with pytest.raises(
            tf.errors.InvalidArgumentError, match="image is 64x96 but its mask is 16x16"
        ):
            _run_pipeline(kind, ds)


def test_bad_labels_stop_fit_with_the_message():
    # Keras wraps the tf.data error; the line must still be there to read.
    inputs = keras.Input((None, None, 3), name="images")
    model = keras.Model(inputs, keras.layers.Conv2D(5, 1)(inputs))
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255),
    )
    train = segmentation_train_pipeline(
        _labelled([0, 9, 255]).repeat(4), crop_size=16, batch_size=2, num_classes=5
    )
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        model.fit(train, epochs=1, shuffle=False, verbose=0)
    line = "mask has label 9, but num_classes is 5 (labels 0-4, and 255 ignored)"
    assert line in str(info.value)
    # What a command line prints instead of the graph details around it.
    assert bad_example_message(info.value) == line
    assert bad_example_message(ValueError("assertion failed: [x < y]")) is None


def _folder_pairs(root, sizes, encode="png"):
    """`root/images/NAME.{png,jpg}` and `root/masks/NAME.png` of the given (image, mask) sizes."""
    for index, (image_size, mask_size) in enumerate(sizes):
        image = np.full(image_size + (3,), 100, np.uint8)
        path = str(root / "images" / f"im{index}.{'jpg' if encode == 'jpeg' else 'png'}")
        if encode == "jpeg":
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tf.io.write_file(path, tf.io.encode_jpeg(image))
        else:
            _write_png(path, image)
        _write_png(str(root / "masks" / f"im{index}.png"), np.ones(mask_size, np.uint8))
    return str(root / "images"), str(root / "masks")


def test_load_folder_refuses_an_empty_folder(tmp_path):
    os.makedirs(tmp_path / "images")
    os.makedirs(tmp_path / "masks")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    with pytest.raises(
        FileNotFoundError, match=r"No image with a mask found in .*images: 0 image file\(s\) there"
    ):
        load_folder(str(tmp_path / "images"), str(tmp_path / "masks"))


def test_load_folder_refuses_a_folder_of_mismatched_pairs(tmp_path):
    images_dir, masks_dir = _folder_pairs(tmp_path, [((64, 96), (16, 16)), ((20, 30), (30, 20))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError) as info:
            load_folder(images_dir, masks_dir)
    message = str(info.value)
    assert "\n" not in message and images_dir in message
    assert "None of the 2 image/mask pairs" in message
    assert "2 with image and mask sizes that differ" in message
    assert "image is 64x96 but its mask" in message and "is 16x16" in message


def test_load_folder_refuses_a_folder_of_unreadable_pairs(tmp_path):
    images_dir, masks_dir = _folder_pairs(tmp_path, [((8, 8), (8, 8))])
    (tmp_path / "images" / "im0.png").write_bytes(b"not a png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"None of the 1 image/mask pair in .*: 1 unreadable"):
            load_folder(images_dir, masks_dir)


def test_load_folder_refuses_a_folder_of_undecodable_pairs_when_read(tmp_path):
    # The headers pass, decoding fails: only reading the files tells, so iterating refuses.
    images_dir, masks_dir = _folder_pairs(tmp_path, [((8, 8), (8, 8))] * 2)
    for name in ("im0.png", "im1.png"):
        data = (tmp_path / "images" / name).read_bytes()
        (tmp_path / "images" / name).write_bytes(data[: len(data) // 2])
    ds = load_folder(images_dir, masks_dir)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        list(ds)
    assert bad_example_message(info.value) == (
        f"None of the 2 image/mask pairs in {images_dir} and {masks_dir} could be decoded with "
        "matching image and mask sizes (the TensorFlow log names each error)"
    )


def test_load_folder_skips_mismatched_jpeg_pairs_with_a_warning(tmp_path):
    images_dir, masks_dir = _folder_pairs(
        tmp_path, [((24, 40), (24, 40)), ((24, 40), (40, 24))], encode="jpeg"
    )
    with pytest.warns(UserWarning, match=r"im1\.jpg: image is 24x40 but its mask .* is 40x24"):
        ds = load_folder(images_dir, masks_dir)
    pairs = list(ds.as_numpy_iterator())
    assert len(pairs) == 1 and pairs[0][0].shape == (24, 40, 3) and pairs[0][1].shape == (24, 40)


def test_load_cityscapes_refuses_empty_or_all_bad_data(tmp_path):
    root = tmp_path / "cityscapes"
    stem = "aachen_000000_000019"
    _write_png(
        str(root / "leftImg8bit/val/aachen" / f"{stem}_leftImg8bit.png"),
        np.zeros((8, 12, 3), np.uint8),
    )
    _write_png(
        str(root / "gtFine/val/aachen" / f"{stem}_gtFine_labelIds.png"), np.zeros((12, 8), np.uint8)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"None of the 1 image/mask pair in .*cityscapes"):
            load_cityscapes(str(root), split="val")
    os.makedirs(root / "leftImg8bit/train")
    os.makedirs(root / "gtFine/train")
    with pytest.raises(FileNotFoundError, match=r"No labelled images found under .*train: 0"):
        load_cityscapes(str(root), split="train")


def test_load_ade20k_refuses_a_data_dir_without_it(tmp_path, monkeypatch):
    missing = str(tmp_path / "data")
    with pytest.raises(FileNotFoundError) as info:
        load_ade20k("validation", data_dir=missing, download=False)
    assert str(info.value) == (
        f"ADE20K (ADEChallengeData2016 with images/ and annotations/) not found in {missing}: "
        f"pass download=True, or download {loaders.ADE20K_URL} and extract it there."
    )
    # Without `data_dir`, Keras's cache.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "home" / "datasets"))):
        load_ade20k("train", download=False)
    assert not os.path.exists(missing)


def test_load_ade20k_downloads_through_keras_get_file(tmp_path, monkeypatch):
    import shutil

    # The "download" is a zip of a tiny tree, fetched by the real get_file from a file:// URL.
    source = tmp_path / "source"
    written = write_ade20k_tree(str(source / "ADEChallengeData2016"), {"validation": 2}, seed=1)
    archive = shutil.make_archive(
        str(tmp_path / "release"), "zip", root_dir=source, base_dir="ADEChallengeData2016"
    )
    real_get_file, calls = keras.utils.get_file, []

    def get_file(fname, origin, **kwargs):
        calls.append((fname, origin, kwargs))
        return real_get_file(fname, "file://" + archive, **kwargs)

    monkeypatch.setattr(keras.utils, "get_file", get_file)
    cache = tmp_path / "cache"  # not there yet
    extraction = cache / "ADEChallengeData2016_extracted"
    root = extraction / "ADEChallengeData2016"
    # The release has 2,000 validation images: an extraction with fewer is refused.
    with pytest.raises(ValueError) as info:
        load_ade20k("validation", data_dir=str(cache))
    assert str(info.value) == (
        f"ADE20K folder {root} is incomplete: 2 validation images and 2 annotations, where the "
        f"release has 2,000 of each (an interrupted download or extraction); delete {extraction} "
        f"(and {cache / 'ADEChallengeData2016.zip'} if extracting it again fails) and call "
        "load_ade20k again."
    )
    assert calls == [
        (
            "ADEChallengeData2016.zip",
            loaders.ADE20K_URL,
            {"cache_dir": str(cache), "cache_subdir": "", "extract": True},
        )
    ]
    assert (cache / "ADEChallengeData2016.zip").is_file()
    assert sorted(os.listdir(root / "annotations" / "validation")) == [
        "ADE_val_00000001.png",
        "ADE_val_00000002.png",
    ]

    # With the release's counts met, the extracted folder is read as it is, without a download.
    monkeypatch.setattr(loaders, "ADE20K_SPLIT_SIZES", {"training": 20210, "validation": 2})
    pairs = list(load_ade20k("val", data_dir=str(cache)).as_numpy_iterator())
    assert len(calls) == 1 and len(pairs) == 2
    for (_, mask), labels in zip(pairs, written["validation"]):
        np.testing.assert_array_equal(mask, np.where(labels == 0, 255, labels - 1))

    # Without `data_dir`, into Keras's cache.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    assert len(list(load_ade20k("validation"))) == 2
    assert calls[-1][2]["cache_dir"] == str(tmp_path / "home" / "datasets")
    assert (tmp_path / "home" / "datasets" / "ADEChallengeData2016_extracted").is_dir()
