"""The base of HRViT's task models: config, presets, and named training recipes in `compile()`."""

import inspect

import keras

from keras_hrvit.models.backbone import HRViTBackbone
from keras_hrvit.validation import check_choice, check_positive_int


def _parameters(function):
    """The named parameters of `function` (no `self`, `*args` or `**kwargs`)."""
    return tuple(
        name
        for name, parameter in inspect.signature(function).parameters.items()
        if name != "self"
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    )


# keras.Model's own constructor arguments, which every task takes besides its own. Keras's
# functional constructor drops any other keyword argument without a word, so tasks check.
MODEL_ARGUMENTS = ("name", "trainable", "dtype")
# HRViTBackbone's constructor arguments (`remat`, `drop_path_rate`, `input_shape`, `dtype`, ...):
# a task's `from_preset` builds its backbone with them.
BACKBONE_ARGUMENTS = _parameters(HRViTBackbone.__init__)


class HRViTTask(keras.Model):
    """A functional model on a nested `HRViTBackbone`, as KerasHub's `Task`.

    Subclasses build their graph, call `super().__init__(inputs=..., outputs=...)`, list their
    constructor arguments in `config_args`, and supply the recipes `compile()` sets up
    (`recipes`, `default_recipe`, `_auto_schedule`, `_auto_optimizer`, `_auto_loss`,
    `_auto_metrics`). This class owns the config round trip, `from_preset` (built-in names,
    preset folders, `hf://` and `kaggle://` handles) and `save_to_preset`.
    """

    # Constructor arguments besides `backbone`, read back from attributes of the same name.
    config_args = ()
    # Built-in preset names -> constructor arguments (subclasses).
    presets = {}
    # Named recipes: name -> the keyword arguments of `compile()`'s default optimizer and their
    # values (subclasses; every recipe of a class has the same keys).
    recipes = {}
    # The recipe `compile()` sets up when none is named.
    default_recipe = None

    def get_config(self):
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
        }
        config.update({key: getattr(self, key) for key in self.config_args})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("backbone"), dict):
            backbone = dict(config["backbone"])
            # Backbone arguments beside the task's own (`from_preset(folder, remat=True)`) are
            # the serialized backbone's to build with.
            moved = {key: config.pop(key) for key in BACKBONE_ARGUMENTS if key in config}
            if moved:
                backbone["config"] = {**backbone["config"], **moved}
            config["backbone"] = keras.saving.deserialize_keras_object(backbone)
        return cls(**config)

    # --- presets ------------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, preset, load_weights=True, **overrides):
        """A model from a built-in preset name, a preset folder, or an `hf://` / `kaggle://` handle.

        Folders and hub handles hold a model saved by `save_to_preset` (KerasHub's layout:
        `config.json`, `model.weights.h5`, `metadata.json`); the weights' SHA-256 is checked
        before they are loaded. Built-in names build the architecture with random weights (no
        pretrained HRViT weights were published). `overrides` replace constructor arguments of
        the task, or of its backbone (`BACKBONE_ARGUMENTS`: `remat`, `drop_path_rate`,
        `input_shape`, `include_preprocessing`, `dtype`, ...); any other name is refused.

        Example:
        >>> HRViTSegmenter.from_preset("hrvit_b1_ade20k", remat=True).backbone.remat
        True
        """
        from keras_hrvit import preset_io

        cls._check_preset_overrides(overrides)
        folder = preset_io.resolve_preset(preset)
        if folder is not None:
            return preset_io.load_preset_model(
                folder,
                load_weights=load_weights,
                expected_class=cls,
                config_overrides=overrides or None,
            )
        return cls._from_builtin_preset(preset, **overrides)

    @classmethod
    def _check_preset_overrides(cls, overrides):
        accepted = dict.fromkeys(
            ("load_weights", *_parameters(cls.__init__), *BACKBONE_ARGUMENTS, *MODEL_ARGUMENTS)
        )
        unknown = sorted(key for key in overrides if key not in accepted)
        if unknown:
            raise TypeError(
                f"{cls.__name__}.from_preset got unknown keyword argument(s) "
                f"{', '.join(unknown)}; it accepts {', '.join(accepted)}."
            )

    @classmethod
    def _from_builtin_preset(cls, preset, **overrides):
        raise ValueError(
            f"Unknown preset {preset!r}: not a folder with a config.json, an hf:// or kaggle:// "
            f"handle, or a built-in name ({', '.join(sorted(cls.presets))})."
        )

    def save_to_preset(self, preset_dir):
        """Writes the model as a preset folder that `from_preset(preset_dir)` loads.

        Example:
        >>> segmenter.save_to_preset("my_segmenter")
        >>> HRViTSegmenter.from_preset("my_segmenter")
        """
        from keras_hrvit import preset_io

        preset_io.save_to_preset(self, preset_dir)

    # --- the recipe in compile() --------------------------------------------------------------

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        metrics="auto",
        *,
        recipe=None,
        epochs=None,
        steps_per_epoch=None,
        total_steps=None,
        **kwargs,
    ):
        """Configures training; with no arguments, the task's default recipe.

        `recipe` names one of the class's `recipes` (default: `default_recipe`; the subclass's
        docstring says when to use which). `optimizer="auto"` builds that recipe's AdamW,
        parameter groups and learning-rate schedule, run over `total_steps` optimizer steps, or
        `epochs * steps_per_epoch` (pass the same numbers to `fit`). Given neither, the schedule
        spans the first `fit` call (its epochs times its steps per epoch), or the recipe's own
        length when `fit` cannot tell its length (a dataset of unknown size without
        `steps_per_epoch`). Keyword arguments named in the recipe (e.g. `learning_rate`,
        `weight_decay`, `decay_exempt`, `warmup_steps`) change one of its values; the rest go to
        `keras.Model.compile`. `decay_exempt` names the variables without weight decay:
        `"layer_norms"` (the paper's segmentation recipe's), `"norms"`, `"norms_and_biases"`
        (the ImageNet recipe's) or `"none"` (see `keras_hrvit.training.decay_exempt_variables`).

        Example:
        >>> model.compile(epochs=10, steps_per_epoch=100, decay_exempt="norms_and_biases")
        `loss="auto"` and `metrics="auto"` are the task's own (see the class docstring).
        """
        name = self.default_recipe if recipe is None else recipe
        defaults = self.recipes[check_choice("recipe", name, tuple(self.recipes))]
        changes = {key: kwargs.pop(key) for key in list(kwargs) if key in defaults}
        settings = {**defaults, **changes}
        for key in _RUN_LENGTH_KEYS:
            settings.pop(key, None)
        # The recipe in effect, for `fit`, `_auto_loss` and `_standardize_targets`.
        self._recipe_settings = dict(settings, recipe=name, auto_loss=_is_auto(loss))
        self._schedule_from_fit = False
        if optimizer == "auto":
            total_steps = _total_steps(epochs, steps_per_epoch, total_steps)
            self._schedule_from_fit = total_steps is None
            total_steps = total_steps or self._default_total_steps(defaults)
            optimizer = self._auto_optimizer(self._auto_schedule(total_steps, settings), settings)
        else:
            run_length = {
                "epochs": epochs,
                "steps_per_epoch": steps_per_epoch,
                "total_steps": total_steps,
            }
            given = sorted(changes) + [n for n, v in run_length.items() if v is not None]
            given = ["recipe"] + given if recipe is not None else given
            if given:
                raise ValueError(
                    f"{', '.join(given)} configure the default optimizer; pass them with "
                    "`optimizer='auto'` (or leave them out with your own optimizer)."
                )
        if _is_auto(loss):
            loss = self._auto_loss()
            kwargs.setdefault("loss_weights", self._auto_loss_weights())
        else:
            loss = self._check_loss(loss)
        metrics = self._auto_metrics() if _is_auto(metrics) else metrics
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        if isinstance(optimizer, keras.optimizers.Optimizer) and not optimizer.built:
            # Under TensorFlow, slots created inside the first traced step make tf.function
            # trace the whole train step a second time.
            optimizer.build(self.trainable_variables)

    def fit(self, *args, **kwargs):
        if getattr(self, "_schedule_from_fit", False):
            total_steps = _fit_length(*args, **kwargs)
            if total_steps is not None:
                # The default schedule spans this run: the optimizer has no steps yet, so
                # nothing has read the placeholder schedule's values.
                self.optimizer._learning_rate = self._auto_schedule(
                    total_steps, self._recipe_settings
                )
            self._schedule_from_fit = False
        return super().fit(*args, **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config is not None and hasattr(self, "_recipe_settings"):
            config["recipe_settings"] = self._recipe_settings
        return config

    def compile_from_config(self, config):
        # The saved config holds the concrete optimizer, losses and metrics `compile()` chose:
        # compile with them as they are, not with the recipe again.
        config = dict(config)
        recipe_settings = config.pop("recipe_settings", None)
        config = keras.saving.deserialize_keras_object(config)
        keras.Model.compile(self, **config)
        if recipe_settings is not None:
            self._recipe_settings = recipe_settings
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def _check_loss(self, loss):
        return loss

    def _auto_loss_weights(self):
        return None

    # Targets as the task's losses want them (e.g. one mask for every segmentation output).
    def _standardize_targets(self, y):
        return y

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return super().compute_loss(
            x=x,
            y=self._standardize_targets(y),
            y_pred=y_pred,
            sample_weight=sample_weight,
            training=training,
        )

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(x, self._standardize_targets(y), y_pred, sample_weight)


# Recipe entries that give the default length of the run rather than optimizer settings.
_RUN_LENGTH_KEYS = ("total_steps", "epochs", "steps_per_epoch")


def _is_auto(value):
    return isinstance(value, str) and value == "auto"


def _fit_length(*args, **kwargs):
    """Optimizer steps of a `fit(*args, **kwargs)` call, or None when it cannot be told."""
    import inspect
    import math

    bound = inspect.signature(keras.Model.fit).bind(None, *args, **kwargs).arguments
    epochs = bound.get("epochs", 1) - bound.get("initial_epoch", 0)
    steps = bound.get("steps_per_epoch")
    x = bound.get("x")
    if steps is None:
        if hasattr(x, "cardinality"):  # tf.data
            steps = int(x.cardinality())
            steps = steps if steps > 0 else None
        elif isinstance(x, keras.utils.PyDataset):
            steps = len(x)
        elif hasattr(x, "shape") and x.shape:
            kept = int(x.shape[0] * (1.0 - bound.get("validation_split", 0.0)))
            steps = math.ceil(kept / (bound.get("batch_size") or 32))
    if steps is None or epochs < 1:
        return None
    return int(epochs) * int(steps)


def _total_steps(epochs, steps_per_epoch, total_steps):
    if total_steps is not None:
        if epochs is not None or steps_per_epoch is not None:
            raise ValueError("Pass `total_steps` or `epochs` with `steps_per_epoch`, not both.")
        return check_positive_int("total_steps", total_steps)
    if (epochs is None) != (steps_per_epoch is None):
        missing = "steps_per_epoch" if steps_per_epoch is None else "epochs"
        raise ValueError(
            f"The learning-rate schedule needs the length of the run: pass `{missing}` too "
            "(or `total_steps`), the same numbers as to `fit`."
        )
    if epochs is None:
        return None
    return check_positive_int("epochs", epochs) * check_positive_int(
        "steps_per_epoch", steps_per_epoch
    )


def check_task_kwargs(cls, kwargs):
    """Refuses keyword arguments of a task constructor that are neither its own nor
    keras.Model's (`MODEL_ARGUMENTS`), which Keras would drop without a word.

    Example:
    >>> check_task_kwargs(HRViTSegmenter, {"name": "seg"})  # fine
    >>> check_task_kwargs(HRViTSegmenter, {"remat": True})  # TypeError naming both lists
    """
    unknown = sorted(key for key in kwargs if key not in MODEL_ARGUMENTS)
    if unknown:
        accepted = dict.fromkeys((*_parameters(cls.__init__), *MODEL_ARGUMENTS))
        raise TypeError(
            f"{cls.__name__} got unknown keyword argument(s) {', '.join(unknown)}; it accepts "
            f"{', '.join(accepted)}."
        )


def build_backbone_argument(backbone, dtype=None, **preset_overrides):
    """An `HRViTBackbone` from an instance or a backbone preset name.

    A preset name is built with `dtype` and `preset_overrides`; an instance is taken as it is,
    and a `dtype` given with it must be its policy (the heads follow the backbone's policy).

    Example:
    >>> build_backbone_argument("hrvit_tiny", dtype="mixed_bfloat16").dtype_policy.name
    'mixed_bfloat16'
    """
    if isinstance(backbone, str):
        if dtype is not None:
            preset_overrides["dtype"] = dtype
        return HRViTBackbone.from_preset(backbone, **preset_overrides)
    if not isinstance(backbone, HRViTBackbone):
        raise TypeError(
            f"`backbone` must be an HRViTBackbone or a backbone preset name; got "
            f"{type(backbone).__name__}."
        )
    if dtype is not None:
        wanted = keras.dtype_policies.get(dtype).name
        if wanted != backbone.dtype_policy.name:
            raise ValueError(
                f"`dtype` {wanted!r} is not the policy of the given backbone "
                f"({backbone.dtype_policy.name!r}); the heads follow the backbone's policy, so "
                f"build the backbone with dtype={wanted!r}."
            )
    return backbone


__all__ = [
    "BACKBONE_ARGUMENTS",
    "MODEL_ARGUMENTS",
    "HRViTTask",
    "build_backbone_argument",
    "check_task_kwargs",
]
