"""Segmentation metrics: a streaming Keras mean IoU and a NumPy confusion-matrix report."""

import keras
import numpy as np
from keras import ops

from keras_hrvit.inference import resize_logits


def _check_num_classes(num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise ValueError(f"`num_classes` must be an int >= 1; got {num_classes!r}.")
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be an int >= 1; got {num_classes!r}.")
    return int(num_classes)


@keras.saving.register_keras_serializable(package="keras_hrvit")
class SegmentationMeanIoU(keras.metrics.MeanIoU):
    """Streaming mean IoU over a dataset that accepts low-resolution logits.

    Predictions (B, h, w, K) logits or probabilities are bilinearly resized (half-pixel
    centers) to the label size and argmaxed before the confusion matrix is updated; labels
    (B, H, W) or (B, H, W, 1) equal to `ignore_label` never enter it. Like MMSeg, the mean is
    over classes that occur in the labels or the predictions (Keras skips classes with a zero
    union). Counts are kept in an int32 Keras variable, which holds up to ~2e9 pixels per cell.

    Args:
        num_classes: number of classes K.
        ignore_label: label value to skip, or None.
        sparse_y_pred: set True when `y_pred` already holds class ids at the label size.
        name: metric name.
        dtype: dtype of the confusion-matrix variable (default int32).

    Example:

    >>> import numpy as np
    >>> m = SegmentationMeanIoU(num_classes=3)
    >>> labels = np.array([[[0, 1], [2, 255]]]); logits = np.eye(3)[[[[0, 1], [1, 0]]]]
    >>> _ = m.update_state(labels, logits.astype("float32"))
    >>> round(float(m.result()), 4)  # IoUs 1.0, 0.5, 0.0
    0.5
    """

    def __init__(
        self, num_classes, ignore_label=255, sparse_y_pred=False, name="mean_iou", dtype=None
    ):
        num_classes = _check_num_classes(num_classes)
        if ignore_label is not None and not isinstance(ignore_label, int | np.integer):
            raise ValueError(f"`ignore_label` must be an int or None; got {ignore_label!r}.")
        # The parent always receives class ids; resizing and argmax happen here.
        super().__init__(
            num_classes=num_classes,
            name=name,
            dtype=dtype,
            ignore_class=None if ignore_label is None else int(ignore_label),
            sparse_y_true=True,
            sparse_y_pred=True,
        )
        self.ignore_label = self.ignore_class
        self.dense_y_pred = not sparse_y_pred

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.convert_to_tensor(y_true)
        if len(y_true.shape) == 4 and y_true.shape[-1] == 1:
            y_true = ops.squeeze(y_true, axis=-1)
        if len(y_true.shape) != 3:
            raise ValueError(
                f"Labels must be (B, H, W) or (B, H, W, 1); got shape {tuple(y_true.shape)}."
            )
        y_pred = ops.convert_to_tensor(y_pred)
        if self.dense_y_pred:
            if len(y_pred.shape) != 4:
                raise ValueError(
                    "Predictions must be (B, h, w, K) scores when `sparse_y_pred=False`; got "
                    f"shape {tuple(y_pred.shape)}."
                )
            scores = resize_logits(ops.cast(y_pred, "float32"), ops.shape(y_true)[1:3])
            y_pred = ops.argmax(scores, axis=-1)
        if sample_weight is not None:
            return super().update_state(y_true, y_pred, sample_weight=sample_weight)
        # Keras's confusion matrix scatters pixel by pixel, about 1.7 s for 16 64x64 masks on
        # the torch backend; a one-hot product counts the same pairs with one matmul.
        k = self.num_classes
        y_true = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        y_pred = ops.reshape(ops.cast(y_pred, "int32"), (-1,))
        valid = ops.logical_and(y_true >= 0, y_true < k)
        if self.ignore_class is not None:
            valid = ops.logical_and(valid, y_true != self.ignore_class)
        # Out-of-range ids would make one_hot fail on torch: route them to 0 with weight 0.
        weight = ops.cast(valid, "float32")[:, None]
        true_hot = ops.one_hot(ops.where(valid, y_true, 0), k, dtype="float32") * weight
        pred_hot = ops.one_hot(ops.clip(y_pred, 0, k - 1), k, dtype="float32")
        # float32 sums are exact up to 2**24 pixels per cell and batch; round before casting.
        counts = ops.round(ops.matmul(ops.transpose(true_hot), pred_hot))
        return self.total_cm.assign(self.total_cm + ops.cast(counts, self.total_cm.dtype))

    def get_config(self):
        return {
            "num_classes": self.num_classes,
            "ignore_label": self.ignore_label,
            "sparse_y_pred": not self.dense_y_pred,
            "name": self.name,
            "dtype": self._dtype,
        }


class ConfusionMatrix:
    """NumPy (int64) confusion-matrix accumulator for evaluation reports, MMSeg semantics.

    Rows are ground-truth classes, columns predictions. Pixels labelled `ignore_label`, and
    labels outside [0, num_classes), are dropped (as MMSeg's histogram does). Per-class IoU is
    `tp / (gt + pred - tp)` and per-class accuracy `tp / gt`; a class with a zero denominator is
    NaN and left out of the means (`nanmean`), so mIoU covers classes present in the labels or
    the predictions. All values are fractions in [0, 1] (MMSeg prints percentages).

    Args:
        num_classes: number of classes K.
        ignore_label: label value to skip, or None.
        class_names: optional K names used as keys of the per-class report.

    Example:

    >>> cm = ConfusionMatrix(num_classes=3)
    >>> _ = cm.update(np.array([[0, 0, 1], [1, 2, 255]]), np.array([[0, 1, 1], [1, 0, 2]]))
    >>> cm.per_class_iou().round(3).tolist(), round(cm.pixel_accuracy(), 3)
    ([0.333, 0.667, 0.0], 0.6)
    """

    def __init__(self, num_classes, ignore_label=255, class_names=None):
        self.num_classes = _check_num_classes(num_classes)
        if ignore_label is not None and not isinstance(ignore_label, int | np.integer):
            raise ValueError(f"`ignore_label` must be an int or None; got {ignore_label!r}.")
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        if class_names is not None:
            class_names = [str(n) for n in class_names]
            if len(class_names) != self.num_classes:
                raise ValueError(
                    f"`class_names` has {len(class_names)} entries; expected "
                    f"num_classes={self.num_classes}."
                )
        self.class_names = class_names
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def reset(self):
        """Zeroes the accumulated counts."""
        self.matrix[...] = 0

    def update(self, y_true, y_pred):
        """Adds a batch: `y_pred` is class ids shaped like the labels, or (..., h, w, K) scores.

        Scores are bilinearly resized to the label size (with `keras.ops`) and argmaxed.
        Labels may carry a trailing channel of 1. Returns `self`.
        """
        labels = np.asarray(ops.convert_to_numpy(y_true))
        if labels.ndim >= 3 and labels.shape[-1] == 1:
            labels = labels[..., 0]
        preds = y_pred if hasattr(y_pred, "shape") else np.asarray(y_pred)
        pred_ndim = len(preds.shape)
        if pred_ndim == labels.ndim + 1:
            scores = ops.cast(ops.convert_to_tensor(preds), "float32")
            if pred_ndim == 3:
                scores = scores[None]
            scores = resize_logits(scores, labels.shape[-2:])
            preds = ops.convert_to_numpy(ops.argmax(scores, axis=-1)).reshape(labels.shape)
        else:
            preds = np.asarray(ops.convert_to_numpy(preds))
        if preds.shape != labels.shape:
            raise ValueError(
                f"Predicted class ids {preds.shape} must match labels {labels.shape} (or pass "
                "(..., h, w, num_classes) scores)."
            )
        labels = labels.astype(np.int64).ravel()
        preds = preds.astype(np.int64).ravel()
        keep = (labels >= 0) & (labels < self.num_classes)
        if self.ignore_label is not None:
            keep &= labels != self.ignore_label
        if preds[keep].size and (preds[keep].min() < 0 or preds[keep].max() >= self.num_classes):
            raise ValueError(
                f"Predicted class ids must lie in [0, {self.num_classes}); got range "
                f"[{preds[keep].min()}, {preds[keep].max()}]."
            )
        k = self.num_classes
        self.matrix += np.bincount(labels[keep] * k + preds[keep], minlength=k * k).reshape(k, k)
        return self

    def _ratio(self, numerator, denominator):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(denominator > 0, numerator / np.maximum(denominator, 1), np.nan)

    def per_class_iou(self):
        """IoU per class, NaN where the class is absent from both labels and predictions."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        return self._ratio(tp, union)

    def per_class_accuracy(self):
        """Recall per class (tp / ground-truth pixels), NaN where the class has no pixels."""
        tp = np.diag(self.matrix).astype(np.float64)
        return self._ratio(tp, self.matrix.sum(1))

    def mean_iou(self):
        """Mean of the non-NaN per-class IoUs (NaN if nothing was counted)."""
        return _nanmean(self.per_class_iou())

    def mean_accuracy(self):
        """Mean of the non-NaN per-class accuracies."""
        return _nanmean(self.per_class_accuracy())

    def pixel_accuracy(self):
        """Fraction of counted pixels predicted correctly (MMSeg's aAcc)."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def result(self):
        """JSON-ready dict: aAcc, mIoU, mAcc, num_pixels and per-class IoU/Acc (NaN -> None)."""
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        ious, accs = self.per_class_iou(), self.per_class_accuracy()
        return {
            "aAcc": _json_float(self.pixel_accuracy()),
            "mIoU": _json_float(self.mean_iou()),
            "mAcc": _json_float(self.mean_accuracy()),
            "num_pixels": int(self.matrix.sum()),
            "per_class": {
                name: {"IoU": _json_float(iou), "Acc": _json_float(acc)}
                for name, iou, acc in zip(names, ious, accs)
            },
        }


def _nanmean(values):
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def _json_float(value):
    value = float(value)
    return None if np.isnan(value) else value
