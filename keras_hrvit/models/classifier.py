"""ImageNet-style classifiers: `HRViTClassifier`, and `HRViTB1/B2/B3` as in keras.applications."""

import os

import keras

from keras_hrvit.heads.classification import HRNetClassifierHead
from keras_hrvit.models.backbone import HRViTBackbone
from keras_hrvit.models.task import (
    BACKBONE_ARGUMENTS,
    HRViTTask,
    build_backbone_argument,
    check_task_kwargs,
)
from keras_hrvit.presets import (
    BACKBONE_PRESETS,
    CLASSIFICATION_RECIPE,
    CLASSIFIER_HEAD_CHANNELS,
    TINY_CLASSIFIER_HEAD_CHANNELS,
)
from keras_hrvit.validation import check_choice, check_number, check_positive_int


@keras.saving.register_keras_serializable(package="keras_hrvit")
class HRViTClassifier(HRViTTask):
    """HRViT classifier: backbone, the HRNetV2 head of the paper's pretraining, dropout, dense.

    Takes RGB images as people have them (`uint8` or float, 0-255; the backbone normalizes
    them). Calling the model and `predict` give the same thing: class probabilities with the
    default `classifier_activation="softmax"`, logits with `None`. With `classes=None` there is
    no top: the model gives the head's 2048-d pooled features.

    `compile()` with no arguments sets the paper's ImageNet recipe, the classifier's one recipe
    (`"paper"`, `CLASSIFICATION_RECIPE` in `keras_hrvit.presets`): AdamW without weight decay on
    normalization weights and biases (timm's rule, `decay_exempt="norms_and_biases"`),
    `learning_rate * batch_size / 1024` when `batch_size` is given, linear warm-up for 1/15 of
    the run then cosine decay, global gradient clipping 1.0; cross-entropy with label smoothing
    0.1 on class ids, one-hot or soft (MixUp / CutMix) labels; top-1 accuracy.

    Args:
        backbone: an `HRViTBackbone` or a backbone preset name (built with `drop_path_rate`
            and `dtype`).
        classes: number of classes of the top layer, or None for pooled features.
        classifier_activation: activation of the top layer (`None` for logits).
        head_channels: bottleneck widths of the head, one per branch.
        dropout: dropout before the top layer.
        drop_path_rate: stochastic depth of a backbone built from a preset name (default
            0.1); an `HRViTBackbone` instance has its own.
        input_tensor: optional Keras tensor to build the model on, as in keras.applications.
        **kwargs: keras.Model's `name`, `trainable` and `dtype` (the backbone's policy, or the
            one to build a backbone preset name with); anything else is refused.

    Example:
    >>> model = HRViTClassifier("hrvit_b1", classes=10, classifier_activation=None)
    >>> model(np.zeros((1, 224, 224, 3), "uint8")).shape
    (1, 10)
    """

    config_args = ("classes", "classifier_activation", "head_channels", "dropout")
    presets = BACKBONE_PRESETS
    recipes = {"paper": {**CLASSIFICATION_RECIPE, "batch_size": None}}
    default_recipe = "paper"

    def __init__(
        self,
        backbone,
        classes=1000,
        classifier_activation="softmax",
        head_channels=CLASSIFIER_HEAD_CHANNELS,
        dropout=0.1,
        drop_path_rate=None,
        input_tensor=None,
        **kwargs,
    ):
        check_task_kwargs(type(self), kwargs)
        if drop_path_rate is not None and not isinstance(backbone, str):
            raise ValueError(
                f"`drop_path_rate` builds a backbone from a preset name; the HRViTBackbone given "
                f"has its own ({getattr(backbone, 'drop_path_rate', None)}): build it with the "
                "rate instead."
            )
        backbone = build_backbone_argument(
            backbone,
            dtype=kwargs.pop("dtype", None),
            drop_path_rate=0.1 if drop_path_rate is None else drop_path_rate,
        )
        if classes is not None:
            check_positive_int("classes", classes)
        check_number("dropout", dropout, 0, 1)
        head_channels = [check_positive_int("head_channels", int(c)) for c in head_channels]
        if len(head_channels) != len(backbone.channels):
            raise ValueError(
                f"`head_channels` needs one width per branch ({len(backbone.channels)}); got "
                f"{head_channels}."
            )
        keras.activations.get(classifier_activation)  # refuses unknown names
        if input_tensor is None:
            inputs = keras.Input(shape=backbone.image_shape, name="images")
            x = inputs
        else:
            inputs = keras.utils.get_source_inputs(input_tensor)
            x = input_tensor
        policy = backbone.dtype_policy  # the head follows the backbone, as in KerasHub's tasks
        x = HRNetClassifierHead(head_channels, name="head", dtype=policy)(backbone(x))
        if classes is not None:
            x = keras.layers.Dropout(dropout, name="head_dropout", dtype=policy)(x)
            x = keras.layers.Dense(classes, name="predictions", dtype=policy)(x)
            if classifier_activation is not None:
                x = keras.layers.Activation(
                    classifier_activation, dtype="float32", name="probabilities"
                )(x)
        kwargs.setdefault("name", f"{backbone.name}_classifier")
        super().__init__(inputs=inputs, outputs=x, **kwargs)
        self.backbone = backbone
        self.classes = classes
        self.classifier_activation = classifier_activation
        self.head_channels = head_channels
        # `drop_path_rate` is the backbone's to serialize; `input_tensor` only shapes the graph.
        self.dropout = dropout

    @classmethod
    def _from_builtin_preset(cls, preset, **overrides):
        """A backbone preset name (`hrvit_b1`, ...) with the default head; backbone arguments
        among `overrides` build the backbone."""
        if preset not in BACKBONE_PRESETS:
            return super()._from_builtin_preset(preset)
        backbone_args = {key: overrides.pop(key) for key in BACKBONE_ARGUMENTS if key in overrides}
        backbone_args.setdefault("drop_path_rate", 0.1)
        backbone = HRViTBackbone.from_preset(preset, name=preset, **backbone_args)
        if "head_channels" not in overrides and preset == "hrvit_tiny":
            overrides["head_channels"] = TINY_CLASSIFIER_HEAD_CHANNELS
        return cls(backbone, **overrides)

    # --- training defaults --------------------------------------------------------------------

    def _default_total_steps(self, recipe):
        return recipe["epochs"] * recipe["steps_per_epoch"]

    def _auto_schedule(self, total_steps, settings):
        from keras_hrvit.training import WarmupCosineDecay

        learning_rate = check_number("learning_rate", settings["learning_rate"], 0, strict=True)
        warmup_fraction = check_number("warmup_fraction", settings["warmup_fraction"], 0, 1)
        if settings["batch_size"] is not None:
            batch_size = check_positive_int("batch_size", settings["batch_size"])
            learning_rate = learning_rate * batch_size / settings["reference_batch_size"]
        warmup_steps = int(round(total_steps * warmup_fraction))
        return WarmupCosineDecay(
            float(learning_rate),
            total_steps=int(total_steps),
            warmup_steps=min(warmup_steps, int(total_steps)),
            # A small batch can scale the peak below DeiT's absolute floors.
            warmup_start_lr=min(settings["warmup_start_lr"], learning_rate),
            min_lr=min(settings["min_lr"], learning_rate),
        )

    def _auto_optimizer(self, schedule, settings):
        from keras_hrvit.training import build_adamw
        from keras_hrvit.training.optimizers import EXCLUDE_MODES

        weight_decay = check_number("weight_decay", settings["weight_decay"], 0)
        decay_exempt = check_choice("decay_exempt", settings["decay_exempt"], EXCLUDE_MODES)
        check_number("label_smoothing", settings["label_smoothing"], 0, 1)
        global_clipnorm = settings["global_clipnorm"]
        if global_clipnorm is not None:
            check_number("global_clipnorm", global_clipnorm, 0, strict=True)
        return build_adamw(
            self,
            schedule,
            weight_decay=float(weight_decay),
            global_clipnorm=global_clipnorm,
            exclude_from_decay=decay_exempt,
        )

    def _auto_loss(self):
        if self.classes is None:
            raise ValueError("A classifier without a top (`classes=None`) has no default loss.")
        # Smoothing is applied to class ids in `_standardize_targets`: soft labels from the
        # pipelines (MixUp / CutMix) carry theirs already.
        return keras.losses.CategoricalCrossentropy(from_logits=self.classifier_activation is None)

    def _auto_metrics(self):
        metrics = [keras.metrics.CategoricalAccuracy(name="top1_accuracy")]
        if (self.classes or 0) > 5:
            metrics.append(keras.metrics.TopKCategoricalAccuracy(5, name="top5_accuracy"))
        return metrics

    def _standardize_targets(self, y):
        # With the default loss, class ids become smoothed one-hot vectors, so it takes ids,
        # one-hot and soft labels alike; a loss of the user's own gets the labels as given.
        settings = getattr(self, "_recipe_settings", {})
        if not settings.get("auto_loss") or y is None or isinstance(y, (list, tuple, dict)):
            return y
        if len(y.shape) == 1 or (len(y.shape) == 2 and y.shape[-1] == 1 and self.classes > 1):
            ids = keras.ops.reshape(keras.ops.cast(y, "int32"), (-1,))
            smoothing = settings["label_smoothing"]
            y = keras.ops.one_hot(ids, self.classes) * (1.0 - smoothing) + smoothing / self.classes
        return y


def _resolve_weights(weights):
    """A local weights file or preset folder for `weights`, checked before anything is built."""
    from keras_hrvit import preset_io

    if weights is None:
        return None
    if isinstance(weights, (str, os.PathLike)):
        folder = preset_io.resolve_preset(os.fspath(weights))
        if folder is not None:
            return folder
        path = os.fspath(weights)
        if path.endswith((".weights.h5", ".keras")):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Weights file {path!r} does not exist.")
            return path
    raise ValueError(
        "`weights` must be None, a `.weights.h5` / `.keras` file, a preset folder or an hf:// / "
        f"kaggle:// handle (no pretrained HRViT weights were published); got {weights!r}."
    )


def _load_weights(model, weights):
    """Loads a weights file or a preset folder's verified weights into `model`."""
    from keras_hrvit import preset_io
    from keras_hrvit.weights.files import load_weights_into

    if os.path.isdir(weights):
        _, metadata = preset_io.load_preset_config(weights)
        weights = preset_io.verify_preset_weights(weights, metadata)
    load_weights_into(model, weights)


def _variant(preset):
    def build(
        include_top=True,
        weights=None,
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=1000,
        classifier_activation="softmax",
        head_channels=CLASSIFIER_HEAD_CHANNELS,
        dropout=0.1,
        drop_path_rate=0.1,
        include_preprocessing=True,
        name=None,
    ):
        if include_top and pooling not in (None, "avg"):
            raise ValueError(
                f"With `include_top=True` the head pools by average; got {pooling=!r}."
            )
        if pooling not in (None, "avg"):
            raise ValueError(f"`pooling` must be None or 'avg', got {pooling!r}.")
        weights = _resolve_weights(weights)
        if input_shape is None and input_tensor is not None:
            input_shape = tuple(input_tensor.shape[1:])
        backbone = HRViTBackbone.from_preset(
            preset,
            drop_path_rate=drop_path_rate,
            input_shape=tuple(input_shape) if input_shape else (None, None, 3),
            include_preprocessing=include_preprocessing,
            name=f"{preset}_backbone" if include_top or pooling else (name or preset),
        )
        if include_top or pooling:
            model = HRViTClassifier(
                backbone,
                classes=classes if include_top else None,
                classifier_activation=classifier_activation,
                head_channels=head_channels,
                dropout=dropout,
                input_tensor=input_tensor,
                name=name or preset,
            )
        else:
            model = backbone
        if weights is not None:
            _load_weights(model, weights)
        return model

    build.__name__ = preset.replace("hrvit_b", "HRViTB")
    build.__doc__ = (
        f"HRViT-{preset[-2:].upper()} classifier (`{preset}`), as keras.applications' models.\n\n"
        "Returns an `HRViTClassifier` (see it for the arguments), or with `include_top=False` "
        "the `HRViTBackbone` (four feature maps), or with `pooling='avg'` the pooled head "
        "features. `weights`: None, a `.weights.h5` / `.keras` file, a preset folder or an "
        "`hf://` / `kaggle://` handle. Images are uint8 or float 0-255.\n\n"
        f"Example:\n>>> model = keras_hrvit.{build.__name__}(weights=None, classes=10)\n"
    )
    return build


HRViTB1 = _variant("hrvit_b1")
HRViTB2 = _variant("hrvit_b2")
HRViTB3 = _variant("hrvit_b3")
