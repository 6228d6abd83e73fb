"""Segmentation losses (backend-agnostic, `keras.ops` only)."""

import keras
import numpy as np
from keras import ops

from keras_hrvit.inference import resize_logits

_REDUCTIONS = ("sum_over_batch_size", "mean", "none", None)


@keras.saving.register_keras_serializable(package="keras_hrvit")
class SegmentationCrossEntropy(keras.losses.Loss):
    """Pixel-wise sparse cross-entropy with an ignore label, MMSeg `avg_non_ignore` style.

    Predictions (B, h, w, K) -- typically 1/4 of the label size -- are bilinearly resized
    (half-pixel centers, no antialiasing, like MMSeg's `align_corners=False`) to the label size
    (B, H, W) or (B, H, W, 1). Pixels whose label equals `ignore_label` contribute neither loss
    nor gradient, and the loss is

        sum over valid pixels of class_weight[y] * nll  /  number of valid pixels in the batch

    which is MMSeg's `CrossEntropyLoss(avg_non_ignore=True)` (the denominator counts pixels, not
    class weights). Softmax, resize and log are computed in float32 even under mixed precision.
    A batch where every pixel is ignored gives 0.

    How this fits Keras's reduction: `call` returns the per-pixel map already multiplied by
    `(B * H * W) / valid_count`, so the default `"sum_over_batch_size"` mean over all pixels
    equals the mean over valid pixels. Per-sample `sample_weight` (B,) or per-pixel weights
    (B, H, W) scale pixel terms in the numerator only. With `reduction="none"` the raw masked
    per-pixel loss (B, H, W) is returned (0 at ignored pixels), e.g. for hard-pixel mining.

    Args:
        ignore_label: label value to skip, or None to use every pixel.
        from_logits: whether predictions are logits (True) or probabilities (False).
        class_weight: optional sequence of K per-class weights.
        reduction: `"sum_over_batch_size"` (default; same as `"mean"`) or `"none"`.
        name: loss name.
        dtype: dtype of the returned loss (computation is float32 regardless).

    Example:

    >>> import numpy as np
    >>> loss = SegmentationCrossEntropy(ignore_label=255)
    >>> labels = np.full((2, 64, 64), 255, "int32"); labels[:, :32] = 1
    >>> float(loss(labels, np.zeros((2, 16, 16, 19), "float32")))  # log(19)
    2.944...
    """

    def __init__(
        self,
        ignore_label=255,
        from_logits=True,
        class_weight=None,
        reduction="sum_over_batch_size",
        name="segmentation_cross_entropy",
        dtype=None,
    ):
        if reduction not in _REDUCTIONS:
            raise ValueError(
                f"`reduction` must be one of {_REDUCTIONS}; got {reduction!r}. `sum` and "
                "`mean_with_sample_weight` would not give the mean over non-ignored pixels."
            )
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if ignore_label is not None and not isinstance(ignore_label, int | np.integer):
            raise ValueError(f"`ignore_label` must be an int or None; got {ignore_label!r}.")
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.from_logits = bool(from_logits)
        if class_weight is not None:
            try:
                class_weight = [float(w) for w in class_weight]
            except (TypeError, ValueError):
                class_weight = []
            if not class_weight or min(class_weight) < 0:
                raise ValueError(
                    "`class_weight` must be None or a non-empty sequence of K non-negative "
                    f"numbers; got {class_weight!r}."
                )
        self.class_weight = class_weight

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            sample_weight = ops.convert_to_tensor(sample_weight, self.dtype)
            # Keras broadcasts weights against the (B, H, W) pixel map from the right; a
            # per-sample (B,) weight has to be made (B, 1, 1) to line up with the batch axis.
            if len(sample_weight.shape) == 1:
                sample_weight = ops.reshape(sample_weight, (-1, 1, 1))
            elif len(sample_weight.shape) == 4:
                sample_weight = ops.squeeze(sample_weight, axis=-1)
        return super().__call__(y_true, y_pred, sample_weight=sample_weight)

    def call(self, y_true, y_pred):
        labels = y_true
        if len(labels.shape) == 4:
            if labels.shape[-1] != 1:
                raise ValueError(
                    "Labels must be (B, H, W) or (B, H, W, 1) class ids; got shape "
                    f"{tuple(labels.shape)}."
                )
            labels = ops.squeeze(labels, axis=-1)
        if len(labels.shape) != 3 or len(y_pred.shape) != 4:
            raise ValueError(
                "Expected labels (B, H, W) or (B, H, W, 1) and predictions (B, h, w, K); got "
                f"labels {tuple(y_true.shape)} and predictions {tuple(y_pred.shape)}."
            )
        num_classes = y_pred.shape[-1]
        if self.class_weight is not None and num_classes is not None:
            if len(self.class_weight) != num_classes:
                raise ValueError(
                    f"`class_weight` has {len(self.class_weight)} entries but predictions have "
                    f"{num_classes} classes."
                )

        # Mixed precision feeds float16/bfloat16 logits; softmax and log need float32 range.
        scores = ops.cast(y_pred, "float32")
        scores = resize_logits(scores, ops.shape(labels)[1:3])
        if self.from_logits:
            log_probs = ops.log_softmax(scores, axis=-1)
        else:
            # Bilinear resizing keeps probabilities summing to one; clip guards log(0).
            log_probs = ops.log(ops.clip(scores, 1e-7, 1.0))

        labels = ops.cast(labels, "int32")
        if self.ignore_label is None:
            valid = ops.ones_like(labels, dtype="bool")
        else:
            valid = ops.not_equal(labels, self.ignore_label)
        # Ignored pixels (e.g. 255) are out of range for the gather; point them at class 0 and
        # mask them out afterwards.
        safe_labels = ops.where(valid, labels, 0)
        nll = -ops.squeeze(
            ops.take_along_axis(log_probs, ops.expand_dims(safe_labels, -1), axis=-1), axis=-1
        )
        if self.class_weight is not None:
            weights = ops.convert_to_tensor(self.class_weight, "float32")
            nll = nll * ops.take(weights, safe_labels)
        nll = ops.where(valid, nll, 0.0)
        if self.reduction in ("none", None):
            return nll

        num_valid = ops.sum(ops.cast(valid, "float32"))
        num_pixels = ops.cast(ops.size(nll), "float32")
        return nll * (num_pixels / ops.maximum(num_valid, 1.0))

    def get_config(self):
        config = super().get_config()
        config.update(
            ignore_label=self.ignore_label,
            from_logits=self.from_logits,
            class_weight=self.class_weight,
        )
        return config
