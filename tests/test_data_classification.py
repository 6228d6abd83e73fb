"""Classification data: embedded set, loaders, training and evaluation transforms."""

import hashlib
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from keras_hrvit.data import classification as cls
from keras_hrvit.data.classification import (
    EMBEDDED_CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    classification_eval_pipeline,
    classification_train_pipeline,
    generate_embedded_classification,
    load_classification_data,
    load_embedded_classification,
    load_image_folder,
    load_tfds_classification,
    rand_augment,
)

MEAN = np.array(IMAGENET_MEAN, np.float32)
STD = np.array(IMAGENET_STD, np.float32)
# The pipelines hand the models 0-255 pixels (the models normalize them).
LOW, HIGH = 0.0, 255.0
# No crop, flip, RandAugment, erasing or mixing: the train pipeline passes the images through.
PLAIN = dict(
    scale=(1.0, 1.0),
    ratio=(1.0, 1.0),
    hflip=0.0,
    randaugment=False,
    random_erasing=0.0,
    mixup_alpha=0.0,
    cutmix_alpha=0.0,
    label_smoothing=0.0,
    shuffle_buffer_size=0,
)


def _digests(images):
    return {hashlib.sha1(image.tobytes()).hexdigest() for image in images}


def _pixels(images):
    return np.asarray(images)


# ------------------------------------------------------------------------------------------------
# Embedded set
# ------------------------------------------------------------------------------------------------


def test_embedded_set_is_deterministic_disjoint_and_balanced():
    train, train_labels = generate_embedded_classification("train", 48, image_size=32)
    again, again_labels = generate_embedded_classification("train", 48, image_size=32)
    val, val_labels = generate_embedded_classification("validation", 24, image_size=32)

    assert train.shape == (48, 32, 32, 3) and train.dtype == np.uint8
    assert train_labels.dtype == np.int32
    np.testing.assert_array_equal(train, again)
    np.testing.assert_array_equal(train_labels, again_labels)
    assert _digests(train).isdisjoint(_digests(val))
    assert len(_digests(train)) == 48  # no duplicate inside a split either
    for labels in (train_labels, val_labels):
        assert set(labels.tolist()) == set(range(len(EMBEDDED_CLASSES)))
        assert np.bincount(labels).min() == len(labels) // len(EMBEDDED_CLASSES)

    # A shorter set is a prefix of a longer one; another seed is another set.
    prefix, _ = generate_embedded_classification("train", 8, image_size=32)
    np.testing.assert_array_equal(prefix, train[:8])
    other, _ = generate_embedded_classification("train", 8, image_size=32, seed=7)
    assert _digests(other).isdisjoint(_digests(train))
    # Images are not flat: the object and the textured background give real contrast.
    assert train.reshape(48, -1).std(axis=1).min() > 10


def test_load_embedded_classification_dataset():
    ds = load_embedded_classification("validation", num_images=10, image_size=24)
    images, labels = zip(*ds.as_numpy_iterator())
    expected, expected_labels = generate_embedded_classification("validation", 10, 24)
    np.testing.assert_array_equal(np.stack(images), expected)
    np.testing.assert_array_equal(labels, expected_labels)
    assert ds.element_spec[0].dtype == tf.uint8 and ds.element_spec[1].dtype == tf.int32

    ds, names = load_classification_data("embedded", "train", num_images=9, image_size=20)
    assert names == list(EMBEDDED_CLASSES) and ds.cardinality().numpy() == 9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(split="test"), "Unknown split 'test'"),
        (dict(num_images=0), "num_images"),
        (dict(image_size=8), "at least 16"),
        (dict(seed=-1), "non-negative"),
    ],
)
def test_embedded_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_embedded_classification(**kwargs)


# ------------------------------------------------------------------------------------------------
# Training pipeline
# ------------------------------------------------------------------------------------------------


def _constant_batch(size=48, num=8):
    """Image k is flat with gray level 20 + 25 k and class k: a mix is readable from pixels."""
    levels = 20.0 + 25.0 * np.arange(num)
    images = np.broadcast_to(levels[:, None, None, None], (num, size, size, 3)).astype(np.uint8)
    return tf.data.Dataset.from_tensor_slices((images, np.arange(num, dtype=np.int32))), levels


def test_train_pipeline_without_augmentation_is_identity_and_smoothing():
    images, labels = generate_embedded_classification("validation", 8, image_size=32)
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    plain = dict(PLAIN, label_smoothing=0.1)
    out_images, out_labels = next(iter(classification_train_pipeline(ds, 8, 32, 8, **plain)))
    np.testing.assert_allclose(_pixels(out_images), images, atol=1e-3)
    # timm smoothing: 1 - 0.1 + 0.1 / 8 on the true class, 0.1 / 8 elsewhere.
    expected = np.full((8, 8), 0.0125, np.float32)
    expected[np.arange(8), labels] = 0.9125
    np.testing.assert_allclose(out_labels, expected, atol=1e-6)


def test_full_train_recipe_shapes_range_soft_labels_and_reproducibility():
    ds = load_embedded_classification("train", num_images=24, image_size=40)

    pipeline = classification_train_pipeline(ds, 8, image_size=32, batch_size=8, seed=5)
    same_seed = classification_train_pipeline(ds, 8, image_size=32, batch_size=8, seed=5)
    first = [[x.numpy() for x in batch] for batch in pipeline]
    again = [[x.numpy() for x in batch] for batch in same_seed]
    next_epoch = [x.numpy() for x in next(iter(pipeline))]
    assert len(first) == 3  # 24 images, full batches of 8
    for (images, labels), (images_again, labels_again) in zip(first, again):
        np.testing.assert_array_equal(images, images_again)
        np.testing.assert_array_equal(labels, labels_again)
    # A seeded pipeline still draws new augmentations every epoch.
    assert not np.allclose(first[0][0], next_epoch[0])

    images, labels = first[0]
    assert images.shape == (8, 32, 32, 3) and images.dtype == np.float32
    assert labels.shape == (8, 8) and labels.dtype == np.float32
    for images, labels in first:
        assert LOW - 1e-4 <= images.min() and images.max() <= HIGH + 1e-4
        assert images.std() > 0.3
        # Smoothing 0.1 then mixing: soft labels in [0.1 / 8, 1 - 0.1 + 0.1 / 8] that sum to 1.
        np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
        assert labels.min() >= 0.0125 - 1e-6 and labels.max() <= 0.9125 + 1e-6
    all_labels = np.concatenate([labels for _, labels in first])
    assert (np.sort(all_labels, axis=1)[:, -2] > 0.0125 + 1e-3).any()

    logits = np.random.default_rng(0).normal(size=all_labels.shape).astype("float32")
    loss = keras.losses.CategoricalCrossentropy(from_logits=True)(all_labels, logits)
    loss = float(keras.ops.convert_to_numpy(loss))
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert np.isclose(loss, -(all_labels * log_probs).sum(axis=1).mean(), rtol=1e-4)


def _mix_kind(images, labels, levels):
    """Checks one mixed batch of `_constant_batch` images; returns "mixup" or "cutmix"."""
    pixels = _pixels(images)[..., 0]  # all channels carry the same gray level
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
    assert labels.min() >= 0
    # Each image holds at most two sources, and its mean gray level is the label-weighted mix.
    assert ((labels > 1e-6).sum(axis=1) <= 2).all()
    np.testing.assert_allclose(pixels.mean(axis=(1, 2)), labels @ levels, atol=0.08 * 175)
    if np.allclose(pixels.std(axis=(1, 2)), 0.0, atol=1e-3):
        # Mixup blends uniformly over the image, exactly with the label weights.
        np.testing.assert_allclose(pixels.mean(axis=(1, 2)), labels @ levels, atol=0.5)
        return "mixup"
    # CutMix pastes: every pixel keeps one of the two sources' levels.
    for row, image in zip(labels, pixels):
        nearest = np.abs(image[..., None] - levels[row > 1e-6]).min(axis=-1)
        assert nearest.max() < 1e-2
    return "cutmix"


@pytest.mark.parametrize(
    "kwargs, kinds",
    [
        (dict(mixup_alpha=0.8, cutmix_alpha=0.0), {"mixup"}),
        (dict(mixup_alpha=0.0, cutmix_alpha=1.0), {"cutmix"}),
        (dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5), {"mixup", "cutmix"}),
    ],
)
def test_mixup_and_cutmix_mix_pixels_and_labels_alike(kwargs, kinds):
    ds, levels = _constant_batch()
    options = dict(PLAIN, shuffle_buffer_size=8, **kwargs)
    pipeline = classification_train_pipeline(ds.repeat(8), 8, 48, 8, seed=11, **options)
    batches = [[x.numpy() for x in batch] for batch in pipeline]
    assert {_mix_kind(images, labels, levels) for images, labels in batches} == kinds
    labels = np.concatenate([labels for _, labels in batches])
    assert (np.sort(labels, axis=1)[:, -2] > 0.05).any()  # real mixes, not just one-hots


def test_random_erasing_erases_one_box_with_noise():
    images, labels = generate_embedded_classification("train", 8, image_size=48)
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    erased, _ = next(
        iter(classification_train_pipeline(ds, 8, 48, 8, seed=1, **dict(PLAIN, random_erasing=1.0)))
    )
    changed = np.abs(erased.numpy() - images).max(axis=-1) > 1e-2
    for mask in changed:
        rows, cols = np.nonzero(mask)
        assert rows.size > 0
        box = (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
        # One box, area within the layer's scale range (0.02, 1/3) of the image.
        assert mask.sum() > 0.6 * box and 0.01 < box / mask.size < 0.4
    # N(0, 1) noise clipped to [-1, 1] in normalized space, as timm erases.
    values = (erased.numpy()[changed] - MEAN) / STD
    assert values.min() >= -1.0 - 1e-4 and values.max() <= 1.0 + 1e-4 and values.std() > 0.3


def test_train_pipeline_accepts_dicts_grayscale_and_a_keras_layer_as_randaugment():
    gray = np.random.default_rng(0).integers(0, 256, (4, 20, 28, 1), dtype=np.uint8)
    ds = tf.data.Dataset.from_tensor_slices({"image": gray, "label": np.arange(4)})
    # Any callable on one 0-255 image works, e.g. a Keras layer (inverting every image here).
    layer = keras.layers.RandomInvert(factor=(1.0, 1.0), value_range=(0, 255), seed=1)
    options = dict(PLAIN, scale=(0.5, 0.5), randaugment=layer)
    images, labels = next(iter(classification_train_pipeline(ds, 4, 16, 4, **options)))
    assert images.shape == (4, 16, 16, 3) and labels.shape == (4, 4)
    np.testing.assert_array_equal(labels, np.eye(4))
    pixels = _pixels(images)
    np.testing.assert_allclose(pixels[..., 0], pixels[..., 2], atol=1e-3)  # gray became RGB
    crops = [255 - gray[i, :10, :14] for i in range(4)]  # the inverted 50 % crop, never flat
    assert all(pixels[i].std() > 0.5 * crops[i].std() for i in range(4))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_classes=1), "num_classes"),
        (dict(cutmix_alpha=2.0), "cutmix_alpha"),
        (dict(label_smoothing=1.0), "label_smoothing"),
        (dict(scale=(0.5, 0.1)), "scale"),
        (dict(interpolation="area"), "interpolation"),
        (dict(randaugment="rand-m9"), "randaugment"),
    ],
)
def test_train_pipeline_argument_errors(kwargs, match):
    ds = load_embedded_classification("validation", num_images=8, image_size=16)
    kwargs = dict(dict(num_classes=8), **kwargs)
    with pytest.raises(ValueError, match=match):
        classification_train_pipeline(ds, **kwargs)


# ------------------------------------------------------------------------------------------------
# RandAugment operations
# ------------------------------------------------------------------------------------------------


def _op(name, image, magnitude=9.0, sign=1.0):
    index = cls.RANDAUGMENT_OPS.index(name)
    out = cls._randaugment_op(tf.constant(index), tf.constant(image, tf.float32), magnitude, sign)
    return out.numpy()


def test_randaugment_pixel_ops_match_pil():
    rng = np.random.default_rng(0)
    image = rng.integers(30, 200, (24, 20, 3)).astype(np.uint8)
    image[:12] //= 2  # an uneven histogram for equalize and autocontrast
    pil = Image.fromarray(image)
    exact = {
        "AutoContrast": ImageOps.autocontrast(pil),
        "Equalize": ImageOps.equalize(pil),
        "Invert": ImageOps.invert(pil),
        # timm at level 9: posterize to 4 - int(3.6) = 1 bit, solarize above 256 - 230 = 26.
        "PosterizeIncreasing": ImageOps.posterize(pil, 1),
        "SolarizeIncreasing": ImageOps.solarize(pil, 26),
    }
    for name, expected in exact.items():
        np.testing.assert_allclose(_op(name, image), np.asarray(expected), atol=1, err_msg=name)
    add = np.where(image < 128, np.minimum(image.astype(int) + 99, 255), image)
    np.testing.assert_array_equal(_op("SolarizeAdd", image), add)

    # Enhance factor 1 + 0.9 * 0.9 = 1.81 at level 9, sign +1.
    enhance = {
        "ColorIncreasing": ImageEnhance.Color,
        "ContrastIncreasing": ImageEnhance.Contrast,
        "BrightnessIncreasing": ImageEnhance.Brightness,
        "SharpnessIncreasing": ImageEnhance.Sharpness,
    }
    for name, enhancer in enhance.items():
        expected = np.asarray(enhancer(pil).enhance(1.81)).astype(np.float32)
        np.testing.assert_allclose(_op(name, image), expected, atol=2, err_msg=name)


def test_randaugment_geometric_ops_follow_pil_affine_convention():
    image = np.random.default_rng(1).integers(0, 256, (20, 20, 3)).astype(np.float32)
    fill = np.array(cls._RANDAUGMENT_FILL, np.float32)
    # Level 10: translate 45 % of 20 pixels = 9; output (x, y) reads input (x + 9, y).
    out = _op("TranslateXRel", image, magnitude=10.0)
    np.testing.assert_allclose(out[:, :11], image[:, 9:], atol=1e-3)
    np.testing.assert_allclose(out[:, 11:], np.broadcast_to(fill, (20, 9, 3)), atol=1e-3)
    out = _op("TranslateYRel", image, magnitude=10.0, sign=-1.0)
    np.testing.assert_allclose(out[9:], image[:11], atol=1e-3)
    # Level 0 leaves geometry untouched.
    for name in ("Rotate", "ShearX", "ShearY"):
        np.testing.assert_allclose(_op(name, image, magnitude=0.0), image, atol=1e-3)
    # Rotating by 30 degrees keeps the center pixel region, moves the corners to the fill.
    rotated = _op("Rotate", image, magnitude=10.0)
    np.testing.assert_allclose(rotated[0, 0], fill, atol=1e-3)


def test_rand_augment_keeps_shape_range_and_integrality():
    image = tf.constant(np.random.default_rng(2).integers(0, 256, (16, 16, 3)), tf.float32)
    outputs = [rand_augment(image, tf.constant([s, 0])).numpy() for s in range(12)]
    for out in outputs:
        assert out.shape == (16, 16, 3)
        assert out.min() >= 0 and out.max() <= 255
        np.testing.assert_array_equal(out, np.round(out))
    assert sum(not np.array_equal(out, image.numpy()) for out in outputs) >= 6


def test_random_resized_crop_box_stays_inside_and_follows_ranges():
    for s in range(30):
        top, left, h, w = (
            int(v) for v in cls._random_resized_crop_box(60, 90, tf.constant([s, 1]))
        )
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 90
        assert 0.08 * 5400 * 0.8 <= h * w <= 5400
    # Impossible ratios fall back to the whole image center-cropped to the nearest ratio.
    box = cls._random_resized_crop_box(40, 100, tf.constant([0, 0]), (0.99, 1.0), (1.0, 1.0))
    assert [int(v) for v in box] == [0, 30, 40, 40]


# ------------------------------------------------------------------------------------------------
# Evaluation pipeline
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, offset", [((248, 301), (12, 38)), ((310, 248), (43, 12))])
def test_eval_pipeline_center_crop_is_exact(shape, offset):
    # The shorter side already is int(224 / 0.9) = 248, so only the crop acts.
    # torchvision's CenterCrop offset is round((size - 224) / 2), half to even: 38.5 -> 38.
    h, w = shape
    image = (np.arange(h * w * 3).reshape(h, w, 3) % 251).astype(np.uint8)
    ds = tf.data.Dataset.from_tensors((image, np.int32(3)))
    images, labels = next(iter(classification_eval_pipeline(ds, 5, 224, 0.9, batch_size=4)))
    top, left = offset
    expected = image[top : top + 224, left : left + 224].astype(np.float32)
    np.testing.assert_allclose(images[0], expected, atol=1e-5)
    np.testing.assert_array_equal(labels, [[0, 0, 0, 1, 0]])


def test_eval_pipeline_resize_matches_pil_bicubic():
    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 256, (10, 8, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((80, 100), Image.BICUBIC))
    ds = tf.data.Dataset.from_tensors((image, np.int32(0)))
    images, _ = next(iter(classification_eval_pipeline(ds, 2, 32, crop_pct=0.5)))
    # Shorter side 80 -> int(32 / 0.5) = 64, longer 100 -> 80; crop offsets (24, 16).
    resized = np.asarray(Image.fromarray(image).resize((64, 80), Image.BICUBIC), np.float32)
    expected = resized[24:56, 16:48]
    diff = np.abs(_pixels(images[0]) - expected)
    assert diff.mean() < 1.0 and diff.max() < 8


def test_eval_pipeline_argument_errors():
    ds = load_embedded_classification("validation", num_images=8, image_size=16)
    with pytest.raises(ValueError, match="crop_pct"):
        classification_eval_pipeline(ds, 8, crop_pct=1.5)
    with pytest.raises(ValueError, match="unbatched"):
        classification_eval_pipeline(ds.batch(2), 8)


# ------------------------------------------------------------------------------------------------
# Loaders
# ------------------------------------------------------------------------------------------------


def _write_folder(root, rng):
    written = {}
    for name in ("zebra", "apple"):
        os.makedirs(os.path.join(root, name))
        for i in range(2):
            image = rng.integers(0, 256, (12 + i, 10, 3), dtype=np.uint8)
            path = os.path.join(root, name, f"{i}.png")
            Image.fromarray(image).save(path)
            written[path] = image
    return written


def test_image_folder_skips_corrupt_files_with_a_warning(tmp_path):
    root = str(tmp_path / "train")
    written = _write_folder(root, np.random.default_rng(0))
    with open(os.path.join(root, "apple", "broken.jpg"), "wb") as f:
        f.write(b"this is not an image")
    # A JPEG cut short passes the header check and is dropped at decode time instead.
    jpeg = tf.io.encode_jpeg(np.zeros((16, 16, 3), np.uint8)).numpy()
    with open(os.path.join(root, "zebra", "cut.jpg"), "wb") as f:
        f.write(jpeg[: len(jpeg) // 2])
    with open(os.path.join(root, "zebra", "notes.txt"), "w") as f:
        f.write("ignored: not an image extension")

    with pytest.warns(UserWarning, match=r"Skipping 1 file.*broken\.jpg"):
        ds, names = load_image_folder(root)
    assert names == ["apple", "zebra"]
    elements = list(ds.as_numpy_iterator())
    assert len(elements) == 4
    expected = [
        written[os.path.join(root, n, f"{i}.png")] for n in ("apple", "zebra") for i in range(2)
    ]
    for (image, label), target, expected_label in zip(elements, expected, [0, 0, 1, 1]):
        np.testing.assert_array_equal(image, target)
        assert label == expected_label


def test_load_classification_data_reads_split_folders(tmp_path):
    _write_folder(str(tmp_path / "val"), np.random.default_rng(1))
    ds, names = load_classification_data(str(tmp_path), "validation", shuffle=True, seed=0)
    assert names == ["apple", "zebra"]
    assert sorted(int(label) for _, label in ds.as_numpy_iterator()) == [0, 0, 1, 1]
    ds, names = load_classification_data(str(tmp_path / "val"), split=None)
    assert len(list(ds)) == 4
    with pytest.raises(ValueError, match="no 'train' sub-folder"):
        load_classification_data(str(tmp_path), "train")
    with pytest.raises(ValueError, match="neither 'embedded'"):
        load_classification_data(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="num_images"):
        load_classification_data(str(tmp_path), "validation", num_images=3)


def test_tfds_builders_load_through_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=4):
        ds, names = load_classification_data("tfds:mnist", "train", data_dir=str(tmp_path))
        pairs = list(ds.as_numpy_iterator())
        evaluated = classification_eval_pipeline(ds, len(names), image_size=16, batch_size=4)
        images, labels = next(iter(evaluated))
        imagenet, imagenet_names = load_tfds_classification(
            "imagenet2012", "validation", data_dir=str(tmp_path), manual_dir=str(tmp_path)
        )
        image, label = next(iter(imagenet))
    assert names == [str(i) for i in range(10)]
    assert len(pairs) == 4
    for image_np, label_np in pairs:
        assert image_np.shape == (28, 28, 3) and image_np.dtype == np.uint8
        # Grayscale is repeated to RGB.
        np.testing.assert_array_equal(image_np[..., 0], image_np[..., 2])
        assert 0 <= label_np < 10 and label_np.dtype == np.int32
    assert images.shape == (4, 16, 16, 3) and labels.shape == (4, 10)
    assert len(imagenet_names) == 1000 and imagenet_names[0] == "n01440764"
    assert image.shape[-1] == 3 and image.dtype == tf.uint8 and 0 <= int(label) < 1000
    with pytest.raises(ValueError, match="no feature 'img'"):
        with tfds.testing.mock_data(num_examples=1):
            load_tfds_classification("mnist", data_dir=str(tmp_path), image_key="img")


def test_load_classification_data_rejects_bad_sources():
    with pytest.raises(ValueError, match="source"):
        load_classification_data(3)
    with pytest.raises(ValueError, match="manual_dir"):
        load_classification_data("embedded", manual_dir="/tmp")
