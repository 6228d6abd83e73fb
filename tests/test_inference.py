import keras
import numpy as np
import pytest
from keras import ops

from keras_hrvit.inference import predict_classes, predict_logits, resize_logits, slide_windows

pytestmark = pytest.mark.backend


def pixel_model(num_classes=5):
    return keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(num_classes, 1)])


def quarter_model(num_classes=5):
    return keras.Sequential(
        [
            keras.Input((None, None, 3)),
            keras.layers.AveragePooling2D(4),
            keras.layers.Conv2D(num_classes, 1),
        ]
    )


def test_slide_windows_follow_mmseg_grid():
    boxes = slide_windows((300, 700), 128, 85)
    # h_grids = (300 - 128 + 84) // 85 + 1 = 4, w_grids = (700 - 128 + 84) // 85 + 1 = 8.
    assert len(boxes) == 32
    assert all(y2 - y1 == 128 and x2 - x1 == 128 for y1, y2, x1, x2 in boxes)
    assert max(b[1] for b in boxes) == 300 and max(b[3] for b in boxes) == 700
    assert boxes[-1] == (172, 300, 572, 700)
    assert slide_windows((50, 60), 128, 85) == [(0, 50, 0, 60)]


def test_slide_equals_whole_for_per_pixel_model():
    model = pixel_model()
    images = np.random.default_rng(0).normal(size=(2, 300, 700, 3)).astype("float32")
    whole = predict_logits(model, images, mode="whole")
    slide = predict_logits(
        model, images, mode="slide", crop_size=128, stride=85, windows_per_call=4, num_classes=5
    )
    assert whole.shape == slide.shape == (2, 300, 700, 5)
    np.testing.assert_allclose(slide, whole, atol=1e-5)
    direct = ops.convert_to_numpy(model(images))
    np.testing.assert_allclose(whole, direct, atol=1e-6)

    # An image smaller than the crop is padded, run as one window, and cropped back.
    small = images[:1, :50, :90]
    np.testing.assert_allclose(
        predict_logits(model, small, mode="slide", crop_size=(128, 96), stride=(64, 48)),
        predict_logits(model, small),
        atol=1e-5,
    )


def test_quarter_resolution_model_shapes():
    model = quarter_model()
    images = np.random.default_rng(1).normal(size=(1, 300, 700, 3)).astype("float32")
    slide = predict_logits(model, images, mode="slide", crop_size=128, stride=85)
    whole = predict_logits(model, images[0])
    assert slide.shape == (1, 300, 700, 5)
    assert whole.shape == (300, 700, 5)
    assert np.isfinite(slide).all()
    coarse = ops.convert_to_numpy(model(images))
    expected = ops.convert_to_numpy(resize_logits(coarse, (300, 700)))
    np.testing.assert_allclose(whole, expected[0], atol=1e-6)


def test_flip_and_scales():
    model = pixel_model()
    images = np.random.default_rng(2).normal(size=(2, 40, 56, 3)).astype("float32")
    base = predict_logits(model, images, mode="slide", crop_size=32, stride=24)
    # A per-pixel model is flip-equivariant, so flip averaging changes nothing.
    flipped = predict_logits(
        model, images, mode="slide", crop_size=32, stride=24, flip=True, merge="logits"
    )
    np.testing.assert_allclose(flipped, base, atol=1e-5)
    probs = predict_logits(model, images, flip=True, merge="probs")
    np.testing.assert_allclose(
        ops.convert_to_numpy(ops.softmax(probs)), ops.convert_to_numpy(ops.softmax(base)), atol=1e-5
    )

    # Multi-scale on a constant image: every scale sees the same per-pixel logits. (Few
    # distinct scales: each new shape costs a JAX compile of the resize.)
    constant = np.broadcast_to(images[:, :1, :1], images.shape).copy()
    single = predict_logits(model, constant)
    multi = predict_logits(model, constant, scales=(0.5, 1.0), merge="logits")
    np.testing.assert_allclose(multi, single, atol=1e-5)

    classes = predict_classes(model, images, flip=True, scales=(0.5, 1.0))
    assert classes.shape == (2, 40, 56) and classes.dtype == np.int32
    assert classes.min() >= 0 and classes.max() < 5


def test_plain_callable_progress_and_validation():
    def model(x):
        return (ops.concatenate([x, -x], axis=-1), x)  # (main, aux) outputs

    images = np.random.default_rng(3).normal(size=(3, 20, 30, 3)).astype("float32")
    out = predict_logits(
        model, images, mode="slide", crop_size=16, stride=8, batch_size=2, progress=True
    )
    np.testing.assert_allclose(out, np.concatenate([images, -images], -1), atol=1e-6)
    tensor = predict_logits(model, images, return_numpy=False)
    assert not isinstance(tensor, np.ndarray)

    with pytest.raises(ValueError, match="mode"):
        predict_logits(model, images, mode="tiles")
    with pytest.raises(ValueError, match="crop_size"):
        predict_logits(model, images, mode="slide")
    with pytest.raises(ValueError, match="stride"):
        predict_logits(model, images, mode="slide", crop_size=16, stride=20)
    with pytest.raises(ValueError, match="scales"):
        predict_logits(model, images, scales=())
    with pytest.raises(ValueError, match="num_classes"):
        predict_logits(model, images, num_classes=4)
    with pytest.raises(ValueError, match="images"):
        predict_logits(model, images[0, 0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_refused(bad):
    # Before: one NaN pixel turned the whole image of an HRViT model into class 0.
    model = pixel_model()
    images = np.random.default_rng(4).uniform(0, 255, size=(2, 20, 30, 3)).astype("float32")
    images[1, 5, 7, 2] = bad
    pattern = r"`images` holds 1 NaN or infinite value \(the first at index \(1, 5, 7, 2\)\)"
    with pytest.raises(ValueError, match=pattern):
        predict_classes(model, images)
    with pytest.raises(ValueError, match=pattern):
        predict_logits(model, ops.convert_to_tensor(images), mode="slide", crop_size=16)
    with pytest.raises(ValueError, match=r"holds 1 NaN .*index \(5, 7, 2\)"):
        predict_logits(model, images[1])
    # Integer images cannot hold NaN; finite float images pass.
    assert predict_classes(model, images[:1]).shape == (1, 20, 30)
    assert predict_classes(model, images[:1].astype("uint8")).shape == (1, 20, 30)


def test_an_empty_batch_is_refused():
    # Before: an IndexError from inside predict_logits.
    with pytest.raises(ValueError, match=r"`images` is an empty batch \(shape \(0, 20, 30, 3\)\)"):
        predict_classes(pixel_model(), np.zeros((0, 20, 30, 3), "float32"))
