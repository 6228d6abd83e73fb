"""AdamW with per-variable learning-rate multipliers and weight-decay exemptions.

Keras optimizers have no PyTorch-style parameter groups, so `ParamGroupAdamW` resolves a
multiplier and a decay flag for every variable when it is built, keyed by `variable.path`, and
applies them inside `update_step`. That is the one hook every backend routes through: the JAX
trainer's `stateless_apply`, the torch trainer, and TensorFlow's per-replica
`distribution.extended.update` under `tf.distribute`.
"""

import math
import warnings
from collections.abc import Mapping

import keras
from keras import ops

from keras_hrvit.validation import check_number

# The named weight-decay exemptions (see `decay_exempt_variables`):
# - "layer_norms": HRViT's MMSegmentation configs (ADE20K, Cityscapes). Their
#   `custom_keys={"norm": dict(decay_mult=0.0), ...}` match parameter *names* containing "norm",
#   and in HRViT those are exactly its LayerNorms (`attn_norm`, `ffn_norm`, `patch_embed.i.norm`,
#   `norm.i`); its BatchNorms are named `bn1`, `bn2`, `attn_bn` or by index, so they decay, as
#   do the heads' (whose "head" key, checked first, sets only the learning rate) and all biases.
# - "norms": every normalization layer's scale and offset (MMCV's `norm_decay_mult=0`).
# - "norms_and_biases": timm's rule of the ImageNet recipe, every variable with ndim <= 1.
# - "none": every variable decays.
EXCLUDE_MODES = ("layer_norms", "norms", "norms_and_biases", "none")

# Normalization layers with a learned scale and offset. Not SpectralNormalization: it wraps
# another layer, whose kernel it would claim as its own.
_NORM_LAYER_TYPES = tuple(
    getattr(keras.layers, name)
    for name in (
        "BatchNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "RMSNormalization",
    )
    if hasattr(keras.layers, name)
)
_EXEMPT_LAYER_TYPES = {
    "layer_norms": (keras.layers.LayerNormalization,),
    "norms": _NORM_LAYER_TYPES,
    "norms_and_biases": _NORM_LAYER_TYPES,
}


def _path_matches(path, key):
    # Segment-aware so that the key "head/conv" does not also claim "head/conv_1/kernel".
    key = key.rstrip("/")
    return path == key or path.startswith(key + "/")


def _check_multiplier(where, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"Learning-rate multipliers must be numbers; {where} gave {value!r} "
            f"({type(value).__name__})."
        )
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"Learning-rate multipliers must be finite and >= 0; {where} gave {value}."
        )
    return float(value)


@keras.saving.register_keras_serializable(package="keras_hrvit")
class ParamGroupAdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` with MMSeg-style per-variable `lr_mult` and `decay_mult=0`.

    For a variable with multiplier `m` the update is PyTorch's AdamW run with learning rate
    `lr * m`: decoupled decay `w -= lr * m * weight_decay * w` (skipped for exempt variables),
    then the Adam step with step size `lr * m`. Variables are matched by `variable.path`; a key
    matches the path itself and everything below it (`"head"` matches `"head/conv/kernel"`),
    and the longest matching key wins. Usually built with `build_adamw`, which resolves these
    tables from a model.

    Args:
        learning_rate: Float or `LearningRateSchedule`, the base learning rate.
        weight_decay: Decoupled weight-decay coefficient (PyTorch's AdamW convention).
        lr_multipliers: Mapping from variable-path key to multiplier (>= 0), or None.
        no_decay_paths: Variable-path keys exempt from weight decay, or None.
        **kwargs: Any other `keras.optimizers.AdamW` argument (`beta_1`, `clipnorm`, ...).

    Example:

    >>> opt = ParamGroupAdamW(learning_rate=6e-5, weight_decay=0.01,
    ...                       lr_multipliers={"decode_head": 10.0},
    ...                       no_decay_paths=["backbone/stem/bn1/gamma"])
    """

    def __init__(
        self,
        learning_rate=0.001,
        weight_decay=0.01,
        lr_multipliers=None,
        no_decay_paths=None,
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
        if lr_multipliers is None:
            lr_multipliers = {}
        if not isinstance(lr_multipliers, Mapping):
            raise TypeError(
                "`lr_multipliers` must be a mapping from variable-path key to multiplier, or "
                f"None. Received: {type(lr_multipliers).__name__}"
            )
        items = []
        for key, value in lr_multipliers.items():
            if not isinstance(key, str) or not key.strip("/"):
                raise ValueError(
                    f"`lr_multipliers` keys must be non-empty variable paths. Received: {key!r}"
                )
            items.append((key, _check_multiplier(f"lr_multipliers[{key!r}]", value)))
        if no_decay_paths is None:
            no_decay_paths = ()
        if isinstance(no_decay_paths, str) or not all(
            isinstance(p, str) and p.strip("/") for p in no_decay_paths
        ):
            raise ValueError(
                "`no_decay_paths` must be a list of non-empty variable paths. Received: "
                f"{no_decay_paths!r}"
            )
        # Tuples, not dict/list: the trackers of Keras (and of tf.Module on TensorFlow) would
        # wrap mutable containers, and the wrapped types do not JSON-serialize in get_config.
        self._lr_multiplier_items = tuple(items)
        self._no_decay_keys = tuple(no_decay_paths)
        self._lr_mult_table = ()
        self._decay_table = ()

    @property
    def lr_multipliers(self):
        """The multiplier keys as a dict (a copy)."""
        return dict(self._lr_multiplier_items)

    @property
    def no_decay_paths(self):
        """The decay-exempt keys as a list (a copy)."""
        return list(self._no_decay_keys)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        used = set()
        mults, decays = [], []
        for variable in var_list:
            path = variable.path
            best = None
            for key, value in self._lr_multiplier_items:
                if _path_matches(path, key) and (best is None or len(key) > len(best[0])):
                    best = (key, value)
            if best is not None:
                used.add(best[0])
            mults.append(1.0 if best is None else best[1])
            exempt = [k for k in self._no_decay_keys if _path_matches(path, k)]
            used.update(exempt)
            decays.append(not exempt)
        unused = [k for k, _ in self._lr_multiplier_items if k not in used]
        unused += [k for k in self._no_decay_keys if k not in used]
        if unused:
            warnings.warn(
                f"{type(self).__name__}: these lr_multipliers / no_decay_paths keys match no "
                f"trainable variable and are ignored: {sorted(set(unused))}",
                stacklevel=2,
            )
        # Indexed like the optimizer's own slots (see `_get_variable_index`), because in
        # TensorFlow `update_step` receives the raw (possibly per-replica) tf.Variable, which
        # has no Keras `path`.
        self._lr_mult_table = tuple(mults)
        self._decay_table = tuple(decays)

    def variable_settings(self):
        """`{path: {"lr_mult": float, "decay": bool}}` for every variable (after `build`)."""
        if not self.built:
            raise ValueError(
                "The optimizer is not built yet; call `optimizer.build(model.trainable_variables)`"
                " or train one step first."
            )
        return {
            v.path: {"lr_mult": m, "decay": d}
            for v, m, d in zip(self._trainable_variables, self._lr_mult_table, self._decay_table)
        }

    def _apply_weight_decay(self, variables):
        # Decay is applied per variable inside `update_step` instead, where the multiplier is
        # known and where TensorFlow already runs per replica.
        return

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        multiplier = self._lr_mult_table[index]
        lr = ops.cast(learning_rate, variable.dtype)
        if multiplier != 1.0:
            lr = ops.multiply(lr, ops.cast(multiplier, variable.dtype))
        if self._decay_table[index] and self.weight_decay and self._use_weight_decay(variable):
            # PyTorch AdamW order: decay with the pre-update weights, then the Adam step.
            decay = ops.multiply(lr, ops.cast(self.weight_decay, variable.dtype))
            self.assign_sub(variable, ops.multiply(variable, decay))
        super().update_step(gradient, variable, lr)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # Keras's torch AdamW fuses its update with `torch._foreach_*` calls, but a subclass
        # falls back to the per-variable `update_step` (about ten small kernels per variable,
        # ~30% of a small model's train step on CPU). Fuse per group of equal settings instead.
        if keras.backend.backend() != "torch" or self.amsgrad:
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        from keras_hrvit.training._torch_adamw import grouped_adamw_update

        groups = {}
        for grad, variable in zip(grads, trainable_variables):
            index = self._get_variable_index(variable)
            key = (self._lr_mult_table[index], self._decay_table[index])
            groups.setdefault(key, []).append((grad, variable, index))
        for (multiplier, decay), members in groups.items():
            grouped_adamw_update(self, members, learning_rate, multiplier, decay)

    def get_config(self):
        config = super().get_config()
        config["lr_multipliers"] = dict(self._lr_multiplier_items)
        config["no_decay_paths"] = list(self._no_decay_keys)
        return config


def _check_built(model):
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(f"`model` must be a Keras model or layer. Received: {type(model).__name__}")
    if not model.built or not model.trainable_variables:
        raise ValueError(
            f"`{model.name}` has no trainable variables yet. Build it first (call it on a batch "
            "or `model.build(input_shape)`) so that variable paths are known."
        )


def _owning_layers(model):
    """Maps `id(variable)` to every layer (the model excluded) that holds the variable."""
    owners = {}
    for layer in model._flatten_layers(include_self=False):
        for variable in layer.trainable_weights:
            owners.setdefault(id(variable), []).append(layer)
    return owners


def _exempt_flags(model, exclude_from_decay):
    variables = model.trainable_variables
    if exclude_from_decay is None or exclude_from_decay == "none":
        return variables, [False] * len(variables)
    if callable(exclude_from_decay):
        flags = []
        for v in variables:
            flag = exclude_from_decay(v)
            if not isinstance(flag, bool):
                raise TypeError(
                    "An `exclude_from_decay` callable must return a bool (True = no decay). "
                    f"It returned {flag!r} for {v.path!r}."
                )
            flags.append(flag)
        return variables, flags
    if not isinstance(exclude_from_decay, str) or exclude_from_decay not in EXCLUDE_MODES:
        raise ValueError(
            "`exclude_from_decay` must be one of "
            f"{EXCLUDE_MODES}, None, or a callable(variable) -> bool. "
            f"Received: {exclude_from_decay!r}"
        )
    owners = _owning_layers(model)
    kinds = _EXEMPT_LAYER_TYPES[exclude_from_decay]
    flags = []
    for v in variables:
        flag = any(isinstance(layer, kinds) for layer in owners.get(id(v), ()))
        if exclude_from_decay == "norms_and_biases":
            is_bias = v.name == "bias" or v.name.endswith("_bias")
            # timm's rule: every tensor with ndim <= 1 (biases, norm affine, layer scales).
            flag = flag or is_bias or len(v.shape) <= 1
        flags.append(flag)
    return variables, flags


def decay_exempt_variables(model, exclude_from_decay="norms_and_biases"):
    """Trainable variables of `model` that `build_adamw` exempts from weight decay.

    `exclude_from_decay` (see `EXCLUDE_MODES`): `"layer_norms"`, the scale and offset of
    LayerNormalization layers (HRViT's segmentation recipe: its MMSegmentation configs exempt
    the parameters named `norm`, which are its LayerNorms); `"norms"`, those of every
    normalization layer (BatchNorm, LayerNorm, GroupNorm, RMSNorm); `"norms_and_biases"` (the
    ImageNet recipe, timm's rule), those, every bias and every other variable with ndim <= 1;
    `"none"` / None; or a callable `(variable) -> bool`.

    Example:

    >>> [v.path for v in decay_exempt_variables(model)]
    ['conv/bias', 'bn/gamma', 'bn/beta', 'dense/bias']
    >>> [v.path for v in decay_exempt_variables(model, "norms")]
    ['bn/gamma', 'bn/beta']
    """
    _check_built(model)
    variables, flags = _exempt_flags(model, exclude_from_decay)
    return [v for v, f in zip(variables, flags) if f]


def decay_variables(model, exclude_from_decay="norms_and_biases"):
    """Trainable variables of `model` that `build_adamw` decays (the complement).

    Example:

    >>> [v.path for v in decay_variables(model)]
    ['conv/kernel', 'dense/kernel']
    """
    _check_built(model)
    variables, flags = _exempt_flags(model, exclude_from_decay)
    return [v for v, f in zip(variables, flags) if not f]


def _resolve_multipliers(model, lr_multipliers):
    variables = model.trainable_variables
    if lr_multipliers is None:
        return [1.0] * len(variables)
    if callable(lr_multipliers) and not isinstance(lr_multipliers, Mapping):
        out = []
        for v in variables:
            value = lr_multipliers(v)
            out.append(
                1.0 if value is None else _check_multiplier(f"the callable on {v.path!r}", value)
            )
        return out
    if not isinstance(lr_multipliers, Mapping):
        raise TypeError(
            "`lr_multipliers` must be None, a mapping {layer-name or variable-path prefix: "
            "multiplier}, or a callable(variable) -> multiplier. Received: "
            f"{type(lr_multipliers).__name__}"
        )
    table = {}
    for key, value in lr_multipliers.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"`lr_multipliers` keys must be non-empty strings. Received: {key!r}")
        table[key] = _check_multiplier(f"lr_multipliers[{key!r}]", value)
    owners = _owning_layers(model)
    out, used = [], set()
    for v in variables:
        names = [layer.name for layer in owners.get(id(v), ())]
        hits = [
            k for k in table if v.path.startswith(k) or any(name.startswith(k) for name in names)
        ]
        if hits:
            key = max(hits, key=len)
            used.add(key)
            out.append(table[key])
        else:
            out.append(1.0)
    unused = sorted(set(table) - used)
    if unused:
        # A typo here would silently train e.g. the head at 1x, so fail loudly.
        top = sorted({p.split("/")[0] for p in (v.path for v in variables)})
        raise ValueError(
            f"`lr_multipliers` keys {unused} match no layer name or variable path prefix of "
            f"`{model.name}`. Top-level variable path prefixes: {top}"
        )
    return out


def build_adamw(
    model,
    learning_rate,
    weight_decay,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-8,
    clipnorm=None,
    global_clipnorm=None,
    lr_multipliers=None,
    exclude_from_decay="norms_and_biases",
    **kwargs,
):
    """A `ParamGroupAdamW` for `model` with MMSeg/timm parameter-group rules resolved.

    Args:
        model: A built Keras model (its variable paths are read now).
        learning_rate: Float or `LearningRateSchedule`.
        weight_decay: Decoupled weight decay (PyTorch convention), >= 0.
        beta_1, beta_2: Adam moment decay rates.
        epsilon: Adam epsilon; defaults to PyTorch's 1e-8 rather than Keras's 1e-7.
        clipnorm, global_clipnorm: Optional gradient clipping (at most one of them).
        lr_multipliers: None; a mapping `{prefix: multiplier}` where a prefix matches a layer
            name (any nesting level) or a variable-path prefix, longest match winning; or a
            callable `(variable) -> multiplier or None`.
        exclude_from_decay: `"norms_and_biases"` (default), `"layer_norms"`, `"norms"`,
            `"none"`/None (see `decay_exempt_variables`), or a callable `(variable) -> bool`
            returning True for variables to exempt.
        **kwargs: Further `keras.optimizers.AdamW` arguments.

    Example:

    >>> optimizer = build_adamw(model, WarmupPolyDecay(6e-5, 160000), weight_decay=0.01,
    ...                         lr_multipliers={"decode_head": 10.0})
    >>> model.compile(optimizer=optimizer, loss=...)
    """
    _check_built(model)
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)):
        raise TypeError(f"`weight_decay` must be a number. Received: {weight_decay!r}")
    check_number("weight_decay", weight_decay, 0)
    if clipnorm is not None and global_clipnorm is not None:
        raise ValueError(
            "Pass at most one of `clipnorm` and `global_clipnorm`. Received: "
            f"clipnorm={clipnorm}, global_clipnorm={global_clipnorm}"
        )
    variables, exempt = _exempt_flags(model, exclude_from_decay)
    multipliers = _resolve_multipliers(model, lr_multipliers)

    settings = {}
    for v, mult, no_decay in zip(variables, multipliers, exempt):
        previous = settings.setdefault(v.path, (mult, no_decay))
        if previous != (mult, no_decay):
            raise ValueError(
                f"Two trainable variables share the path {v.path!r} but need different "
                "optimizer settings; give their layers unique names."
            )
    return ParamGroupAdamW(
        learning_rate=learning_rate,
        weight_decay=float(weight_decay),
        beta_1=beta_1,
        beta_2=beta_2,
        epsilon=epsilon,
        clipnorm=clipnorm,
        global_clipnorm=global_clipnorm,
        lr_multipliers={p: m for p, (m, _) in settings.items() if m != 1.0},
        no_decay_paths=[p for p, (_, nd) in settings.items() if nd],
        **kwargs,
    )
