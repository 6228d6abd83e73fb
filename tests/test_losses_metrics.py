import json

import keras
import numpy as np
import pytest
from keras import ops

from keras_hrvit.losses import SegmentationCrossEntropy
from keras_hrvit.metrics import ConfusionMatrix, SegmentationMeanIoU

pytestmark = pytest.mark.backend


def np_resize_bilinear(x, size):
    """Half-pixel-center bilinear resize (PyTorch align_corners=False) of (B, h, w, K)."""
    out = x
    for axis, new in ((1, size[0]), (2, size[1])):
        old = out.shape[axis]
        src = np.clip((np.arange(new) + 0.5) * old / new - 0.5, 0, old - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, old - 1)
        frac = (src - lo).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        out = np.take(out, lo, axis=axis) * (1 - frac) + np.take(out, hi, axis=axis) * frac
    return out


def np_cross_entropy(logits, labels, ignore=255, class_weight=None):
    logits = logits.astype(np.float64)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    valid = labels != ignore
    safe = np.where(valid, labels, 0)
    nll = -np.take_along_axis(log_probs, safe[..., None], -1)[..., 0]
    if class_weight is not None:
        nll = nll * np.asarray(class_weight)[safe]
    return (nll * valid).sum() / max(valid.sum(), 1)


def np_confusion(labels, preds, num_classes, ignore=255):
    keep = labels != ignore
    idx = labels[keep] * num_classes + preds[keep]
    return np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def grad_of(fn, x):
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(fn)(x))
    if backend == "tensorflow":
        import tensorflow as tf

        var = tf.Variable(x)
        with tf.GradientTape() as tape:
            value = fn(var)
        return tape.gradient(value, var).numpy()
    import torch

    var = torch.tensor(x, requires_grad=True)
    fn(var).backward()
    return var.grad.numpy()


def make_batch(rng, shape=(2, 8, 12), num_classes=4, ignore_frac=0.3):
    labels = rng.integers(0, num_classes, shape)
    labels[rng.random(shape) < ignore_frac] = 255
    return labels.astype("int32")


def test_loss_matches_numpy_and_ignores_255():
    rng = np.random.default_rng(0)
    labels = make_batch(rng)
    logits = rng.normal(size=(2, 8, 12, 4)).astype("float32") * 3
    loss = SegmentationCrossEntropy()
    value = float(loss(labels, logits))
    np.testing.assert_allclose(value, np_cross_entropy(logits, labels), rtol=1e-5)

    # Changing logits where the label is ignored changes nothing.
    noisy = logits.copy()
    noisy[labels == 255] += rng.normal(size=(int((labels == 255).sum()), 4)).astype("f") * 50
    np.testing.assert_allclose(float(loss(labels, noisy)), value, rtol=1e-6)

    grad = grad_of(lambda x: loss(labels, x), logits)
    assert np.all(grad[labels == 255] == 0)
    assert np.abs(grad[labels != 255]).sum() > 0

    # Labels with a trailing channel of 1 give the same value.
    np.testing.assert_allclose(float(loss(labels[..., None], logits)), value, rtol=1e-6)


def test_loss_quarter_resolution_logits_and_class_weight():
    rng = np.random.default_rng(1)
    labels = make_batch(rng, shape=(2, 16, 24), num_classes=3)
    logits = rng.normal(size=(2, 4, 6, 3)).astype("float32")
    full = np_resize_bilinear(logits.astype(np.float64), (16, 24))
    np.testing.assert_allclose(
        float(SegmentationCrossEntropy()(labels, logits)),
        np_cross_entropy(full, labels),
        rtol=1e-5,
    )
    weights = [0.5, 2.0, 1.0]
    np.testing.assert_allclose(
        float(SegmentationCrossEntropy(class_weight=weights)(labels, logits)),
        np_cross_entropy(full, labels, class_weight=weights),
        rtol=1e-5,
    )


def test_loss_reductions_weights_precision_and_config():
    rng = np.random.default_rng(2)
    labels = make_batch(rng)
    logits = rng.normal(size=(2, 8, 12, 4)).astype("float32")
    ref = np_cross_entropy(logits, labels)

    per_pixel = ops.convert_to_numpy(SegmentationCrossEntropy(reduction="none")(labels, logits))
    assert per_pixel.shape == (2, 8, 12)
    assert np.all(per_pixel[labels == 255] == 0)
    np.testing.assert_allclose(per_pixel.sum() / (labels != 255).sum(), ref, rtol=1e-5)

    # A per-sample weight of (1, 0) keeps only the first image's pixels in the numerator.
    weighted = float(SegmentationCrossEntropy()(labels, logits, sample_weight=np.array([1.0, 0.0])))
    first = np_cross_entropy(logits[:1], labels[:1]) * (labels[0] != 255).sum()
    np.testing.assert_allclose(weighted, first / (labels != 255).sum(), rtol=1e-5)

    # Half-precision logits are upcast before the softmax.
    half = float(SegmentationCrossEntropy()(labels, logits.astype("float16")))
    np.testing.assert_allclose(half, np_cross_entropy(logits.astype("float16"), labels), rtol=1e-4)

    all_ignored = np.full_like(labels, 255)
    assert float(SegmentationCrossEntropy()(all_ignored, logits)) == 0.0

    loss = SegmentationCrossEntropy(ignore_label=0, class_weight=[1, 2, 3, 4], name="ce")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(restored, SegmentationCrossEntropy)
    assert restored.get_config() == loss.get_config()

    with pytest.raises(ValueError, match="reduction"):
        SegmentationCrossEntropy(reduction="sum")
    with pytest.raises(ValueError, match="class_weight"):
        SegmentationCrossEntropy(class_weight=[1.0, -1.0])
    with pytest.raises(ValueError, match="class_weight"):
        SegmentationCrossEntropy(class_weight=[1.0, 1.0])(labels, logits)


def test_mean_iou_matches_confusion_reference_and_ignores_255():
    rng = np.random.default_rng(3)
    num_classes = 5
    metric = SegmentationMeanIoU(num_classes=num_classes)
    cm = ConfusionMatrix(num_classes=num_classes)
    total = np.zeros((num_classes, num_classes), np.int64)
    for _ in range(2):
        labels = make_batch(rng, shape=(2, 16, 20), num_classes=num_classes)
        logits = rng.normal(size=(2, 4, 5, num_classes)).astype("float32")
        metric.update_state(labels[..., None], logits)
        cm.update(labels, logits)
        preds = np_resize_bilinear(logits.astype(np.float64), (16, 20)).argmax(-1)
        total += np_confusion(labels, preds, num_classes)
    np.testing.assert_array_equal(cm.matrix, total)
    np.testing.assert_array_equal(ops.convert_to_numpy(metric.total_cm), total)
    np.testing.assert_allclose(float(metric.result()), cm.mean_iou(), rtol=1e-5)

    # Predictions at ignored pixels do not matter.
    labels = np.full((1, 4, 4), 255, "int32")
    labels[0, :2] = 1
    good = np.zeros((1, 4, 4, 3), "float32")
    good[..., 1] = 1
    bad = good.copy()
    bad[0, 2:] = [5.0, 0.0, 0.0]
    metric = SegmentationMeanIoU(num_classes=3)
    metric.update_state(labels, bad)
    assert float(metric.result()) == pytest.approx(1.0)
    metric.reset_state()
    assert float(ops.sum(metric.total_cm)) == 0

    config = SegmentationMeanIoU(num_classes=3, ignore_label=0, name="miou").get_config()
    assert SegmentationMeanIoU.from_config(config).get_config() == config


def test_confusion_matrix_hand_example():
    labels = np.array([[0, 0, 1], [1, 2, 255]])
    preds = np.array([[0, 1, 1], [1, 0, 2]])
    cm = ConfusionMatrix(num_classes=4, class_names=["a", "b", "c", "d"]).update(labels, preds)
    np.testing.assert_array_equal(cm.matrix[:3, :3], [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    iou = cm.per_class_iou()
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 0.0])
    assert np.isnan(iou[3])  # class "d" absent from labels and predictions
    assert cm.mean_iou() == pytest.approx(1 / 3)
    assert cm.pixel_accuracy() == pytest.approx(3 / 5)
    np.testing.assert_allclose(cm.per_class_accuracy()[:3], [0.5, 1.0, 0.0])
    assert cm.mean_accuracy() == pytest.approx(0.5)

    report = json.loads(json.dumps(cm.result()))
    assert report["num_pixels"] == 5
    assert report["per_class"]["d"] == {"IoU": None, "Acc": None}
    assert report["mIoU"] == pytest.approx(1 / 3)

    cm.reset()
    assert cm.matrix.sum() == 0
    with pytest.raises(ValueError, match="match labels"):
        cm.update(labels, preds[:, :2])
    with pytest.raises(ValueError, match="class_names"):
        ConfusionMatrix(num_classes=2, class_names=["x"])


def test_compile_fit_with_quarter_resolution_head():
    rng = np.random.default_rng(4)
    model = keras.Sequential(
        [keras.Input((16, 16, 3)), keras.layers.AveragePooling2D(4), keras.layers.Conv2D(3, 1)]
    )
    model.compile(
        optimizer="sgd",
        loss=SegmentationCrossEntropy(),
        metrics=[SegmentationMeanIoU(num_classes=3)],
    )
    x = rng.normal(size=(4, 16, 16, 3)).astype("float32")
    y = make_batch(rng, shape=(4, 16, 16), num_classes=3)
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    logs = model.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)
    assert 0.0 <= logs["mean_iou"] <= 1.0


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TF graph-mode shapes")
def test_tf_graph_with_unknown_spatial_dims():
    # Symbolic label sizes take the gather-based resize fallback in resize_logits.
    import tensorflow as tf

    rng = np.random.default_rng(5)
    labels = make_batch(rng, shape=(2, 16, 20), num_classes=3)
    logits = rng.normal(size=(2, 4, 5, 3)).astype("float32")
    loss = SegmentationCrossEntropy()
    metric = SegmentationMeanIoU(num_classes=3)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None], tf.int32),
            tf.TensorSpec([None, None, None, 3], tf.float32),
        ]
    )
    def step(y, p):
        metric.update_state(y, p)
        return loss(y, p)

    full = np_resize_bilinear(logits.astype(np.float64), (16, 20))
    np.testing.assert_allclose(float(step(labels, logits)), np_cross_entropy(full, labels), 1e-5)
    reference = ConfusionMatrix(num_classes=3).update(labels, full.argmax(-1))
    np.testing.assert_allclose(float(metric.result()), reference.mean_iou(), rtol=1e-5)
