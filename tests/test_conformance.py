"""Every layer, head and model passes the checks Keras and KerasHub run on their own layers.

Keras's `run_layer_test` and KerasHub's `run_layer_test` / `run_backbone_test` /
`run_precision_test` / `run_quantization_test` check, for each layer: a config and
serialization round trip of an unbuilt instance, that `build` creates every variable, that
`compute_output_spec` agrees with a real call, a compiled training step, the dtypes under
mixed-precision policies, and int8 quantization of the dense sublayers. These tests make the
same checks, on tiny inputs, for every serializable class of the package.
"""

import dataclasses
import gc
import json
import warnings

import keras
import numpy as np
import pytest
from reference import MICRO_CONFIG, fast_compile_kwargs

import keras_hrvit
from keras_hrvit import heads, layers
from keras_hrvit.layers import conv, dense

pytestmark = pytest.mark.backend

POLICIES = ("mixed_float16", "mixed_bfloat16")
# Four feature maps as HRViT's branches give them: 1/4, 1/8, 1/16 and 1/32 of a 64x64 image.
# Not smaller: a training-mode BatchNorm over two values per channel (two 1x1 maps) outputs
# +-1 whatever its input, and passes back no gradient.
FEATURES = [(2, 16, 16, 4), (2, 8, 8, 8), (2, 4, 4, 8), (2, 2, 2, 16)]
IMAGES = (2, 32, 32, 3)  # the smallest images HRViT takes
MODEL_IMAGES = (2, 64, 64, 3)  # the coarsest branch 2x2, as FEATURES
# One feature map for every layer that takes one: JAX compiles each operation once per shape.
# 5 rows and 7 columns: both stripe directions of the attention are padded and masked.
MAP = (2, 5, 7, 8)


def micro_backbone(**kwargs):
    return keras_hrvit.HRViTBackbone(**MICRO_CONFIG, **kwargs)


@dataclasses.dataclass(frozen=True)
class Case:
    """A layer or model to check: how to make it, and what to feed it."""

    id: str
    make: object  # (**kwargs) -> a new, unbuilt instance; kwargs is `dtype=` or nothing
    shapes: object  # input shape, or a list of input shapes
    images: bool = False  # inputs are 0-255 pixels rather than normal noise
    model: bool = False
    quantizable: bool = False  # holds Dense layers that `quantize("int8")` converts

    def inputs(self):
        rng = np.random.default_rng(0)

        def draw(shape):
            if self.images:
                return rng.uniform(0, 255, shape).astype("float32")
            return rng.standard_normal(shape).astype("float32")

        return (
            [draw(s) for s in self.shapes] if isinstance(self.shapes, list) else draw(self.shapes)
        )


def _layer(cls, **config):
    return lambda **kwargs: cls(**config, **kwargs)


LAYER_CASES = [
    Case("ConvStem", _layer(layers.ConvStem, channels=8), IMAGES),
    Case("EffPatchEmbed", _layer(layers.EffPatchEmbed, channels=8), MAP),
    Case(
        "FusionBlock",
        _layer(layers.FusionBlock, in_channels=[4, 8], out_channels=[4, 8, 16]),
        FEATURES[:2],
    ),
    Case(
        "CrossShapedAttention",
        _layer(layers.CrossShapedAttention, dim=8, window_size=2, head_dim=4),
        MAP,
        quantizable=True,
    ),
    Case("DES", _layer(layers.DES, dim=8), MAP, quantizable=True),
    Case("MixCFN", _layer(layers.MixCFN, dim=8, mlp_ratio=2), MAP, quantizable=True),
    Case(
        "HRViTBlock",
        _layer(
            layers.HRViTBlock, dim=8, window_size=2, head_dim=4, mlp_ratio=2, drop_path_rate=0.1
        ),
        MAP,
        quantizable=True,
    ),
    Case("DropPath", _layer(layers.DropPath, rate=0.5), MAP),
    Case("Conv2D", _layer(conv.Conv2D, filters=8, kernel_size=3, strides=2), MAP),
    Case(
        "DepthwiseConv2D",
        _layer(conv.DepthwiseConv2D, kernel_size=3, padding="same"),
        MAP,
    ),
    Case("Dense", _layer(dense.Dense, units=8), MAP, quantizable=True),
    Case("ImageNormalization", _layer(layers.ImageNormalization), IMAGES, images=True),
    Case("ResizeLike", _layer(layers.ResizeLike), [MAP, (2, 9, 6, 1)]),
    Case("TorchBatchNormalization", _layer(layers.TorchBatchNormalization), MAP),
]

HEAD_CASES = [
    Case("SegFormerHead", _layer(heads.SegFormerHead, num_classes=3, channels=8), FEATURES),
    Case(
        "UPerNetHead",
        _layer(heads.UPerNetHead, num_classes=3, channels=8, pool_scales=(1, 2)),
        FEATURES,
    ),
    Case("FCNHead", _layer(heads.FCNHead, num_classes=3, channels=8), MAP),
    Case("ConvBNReLU", _layer(heads.ConvBNReLU, filters=8, kernel_size=3), MAP),
    Case(
        "HRNetClassifierHead",
        _layer(heads.HRNetClassifierHead, head_channels=(2, 2, 2, 2)),
        FEATURES,
    ),
    # 8 channels in, 16 out: with its projection shortcut.
    Case("Bottleneck", _layer(heads.Bottleneck, channels=4), MAP),
]

MODEL_CASES = [
    Case(
        "HRViTBackbone",
        lambda **kwargs: micro_backbone(**kwargs),
        MODEL_IMAGES,
        images=True,
        model=True,
        quantizable=True,
    ),
    Case(
        "HRViTSegmenter",
        lambda backbone=None: keras_hrvit.HRViTSegmenter(
            backbone or micro_backbone(), num_classes=3, head_channels=8
        ),
        MODEL_IMAGES,
        images=True,
        model=True,
        quantizable=True,
    ),
    Case(
        "HRViTClassifier",
        lambda backbone=None: keras_hrvit.HRViTClassifier(
            backbone or micro_backbone(), classes=3, head_channels=(2, 2, 2, 2)
        ),
        MODEL_IMAGES,
        images=True,
        model=True,
        quantizable=True,
    ),
]

CASES = LAYER_CASES + HEAD_CASES + MODEL_CASES
ALL = [pytest.param(case, id=case.id) for case in CASES]
LAYERS = [pytest.param(case, id=case.id) for case in CASES if not case.model]
QUANTIZABLE = [pytest.param(case, id=case.id) for case in CASES if case.quantizable]


def test_every_registered_layer_has_a_case():
    registered = {
        obj.__name__
        for obj in keras.saving.get_custom_objects().values()
        if isinstance(obj, type)
        and issubclass(obj, keras.layers.Layer)
        and obj.__module__.startswith("keras_hrvit.")
    }
    assert registered == {case.id for case in CASES}


@pytest.fixture(autouse=True)
def _seed_and_clear():
    """conftest's fixture of the same name, without its garbage collection after each test.

    A full collection takes about 0.5 s in a process that has imported TensorFlow or JAX: a
    minute over this file's hundred small tests. Python still collects as usual.
    """
    keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield
    keras.backend.clear_session(free_memory=False)


# --- helpers ----------------------------------------------------------------------------------


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _flat(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _shapes(x):
    return [tuple(t.shape) for t in _flat(x)]


def _dtypes(x):
    return [keras.backend.standardize_dtype(t.dtype) for t in _flat(x)]


def _symbolic(x, batch=True):
    def spec(t):
        shape = tuple(t.shape) if batch else (None,) + tuple(t.shape[1:])
        return keras.KerasTensor(shape, dtype="float32")

    return [spec(t) for t in x] if isinstance(x, list) else spec(x)


def _make(case, **kwargs):
    if case.model:
        assert not kwargs, "models take their dtype policy from the global policy"
        return case.make()
    return case.make(**kwargs)


def _as_model(case, instance):
    """The instance itself for models; a functional model around a layer."""
    if case.model:
        return instance
    x = case.inputs()
    inputs = (
        [keras.Input(batch_shape=t.shape) for t in x]
        if isinstance(x, list)
        else keras.Input(batch_shape=x.shape)
    )
    return keras.Model(inputs, instance(inputs))


def _tagged(value):
    """A config with tuples told apart from lists, for an exact comparison."""
    if isinstance(value, tuple):
        return {"__tuple__": [_tagged(v) for v in value]}
    if isinstance(value, list):
        return [_tagged(v) for v in value]
    if isinstance(value, dict):
        return {k: _tagged(v) for k, v in value.items()}
    return value


def _json(value):
    return json.dumps(value, sort_keys=True)


def _wake_zero_weights(model):
    """Gives every all-zero trainable weight nonzero values.

    The attention's BatchNorm starts with zero gamma and beta (as in the original), which makes
    the attention path output zero and pass no gradient to its weights; zero biases are harmless
    but the same treatment keeps the rule simple.
    """
    rng = np.random.default_rng(1)
    for variable in model.trainable_variables:
        value = _numpy(variable)
        if not np.any(value):
            variable.assign(rng.uniform(0.5, 1.5, value.shape).astype(value.dtype))


def _batch_norms(model):
    return [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


@pytest.fixture
def global_policy():
    """Sets the global dtype policy for a test and restores it afterwards."""
    previous = keras.config.dtype_policy()

    def set_policy(name):
        keras.config.set_dtype_policy(name)

    try:
        yield set_policy
    finally:
        keras.config.set_dtype_policy(previous)


# --- 1. serialization -------------------------------------------------------------------------


@pytest.mark.parametrize("case", ALL)
def test_serialization_round_trip(case):
    instance = _make(case)  # a fresh layer is unbuilt: its config alone describes it
    config = instance.get_config()
    json.dumps(config)  # plain JSON values only

    revived = type(instance).from_config(config)
    assert type(revived) is type(instance)
    assert _tagged(revived.get_config()) == _tagged(config)
    assert set(dir(revived)) == set(dir(instance))

    # Through JSON, as `model.save` writes it (tuples come back as lists).
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(instance)))
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is type(instance)
    assert _json(revived.get_config()) == _json(config)
    assert set(dir(revived)) - {"__annotations__"} == set(dir(instance)) - {"__annotations__"}


# --- 2. training ------------------------------------------------------------------------------


# The backbone trains inside both task models, every variable of it checked there: a train step
# of its own would compile the same graph a third time (30-40 s of XLA on JAX).
# On JAX the segmenter's step stands for both task models (and tests/test_train_reference.py
# checks JAX's gradients against the original): the classifier's compiles for 45 s in CI.
_JAX_SKIPS_CLASSIFIER_STEP = pytest.mark.skipif(
    keras.backend.backend() == "jax", reason="the segmenter's step covers JAX; XLA time in CI"
)
TRAINABLE = [
    pytest.param(
        case,
        id=case.id,
        marks=[_JAX_SKIPS_CLASSIFIER_STEP] if case.id == "HRViTClassifier" else [],
    )
    for case in CASES
    if case.id != "HRViTBackbone"
]


@pytest.mark.filterwarnings("ignore:The model does not have any trainable weights")
@pytest.mark.parametrize("case", TRAINABLE)
def test_training_step_updates_weights_and_statistics(case):
    model = _as_model(case, _make(case))
    x = case.inputs()
    outputs = _flat(model.compute_output_spec(_symbolic(x)))
    rng = np.random.default_rng(2)
    y = [rng.standard_normal(o.shape).astype("float32") for o in outputs]
    y = y if len(y) > 1 else y[0]
    _wake_zero_weights(model)
    # SGD with learning rate 1: each trainable weight moves by exactly minus its gradient.
    # Layers compile as Keras's own tests compile them ("auto": XLA on TensorFlow and JAX);
    # the models as the other training tests do (TensorFlow traces their train step for a
    # minute or more, so they run eagerly there).
    compile_kwargs = fast_compile_kwargs() if case.model else {"jit_compile": "auto"}
    model.compile(keras.optimizers.SGD(1.0), "mse", metrics=[], **compile_kwargs)
    before = {v.path: _numpy(v) for v in model.variables}
    model.train_on_batch(x, y)
    after = {v.path: _numpy(v) for v in model.variables}

    unchanged = []
    for variable in model.trainable_variables:
        update = after[variable.path] - before[variable.path]
        assert np.all(np.isfinite(update)), f"{variable.path}: gradient not finite"
        if not np.any(update):
            unchanged.append(variable.path)
    # A per-channel constant (a bias, a BatchNorm's beta) followed, through linear layers, by a
    # training-mode BatchNorm has no gradient: the batch mean removes it. Every other weight
    # must learn.
    assert [p for p in unchanged if not p.endswith(("/bias", "/beta"))] == [], unchanged
    assert len(unchanged) < len(model.trainable_variables) or not model.trainable_variables

    for variable in model.non_trainable_variables:
        assert np.all(np.isfinite(after[variable.path].astype("float64"))), variable.path
    for bn in _batch_norms(model):
        for variable in (bn.moving_mean, bn.moving_variance):
            moved = after[variable.path] - before[variable.path]
            assert np.all(moved != 0), f"{variable.path} was not updated"


# --- 3. mixed precision -----------------------------------------------------------------------


def _deliberately_float32(layer):
    """Sublayers that stay float32 under any policy: the models' input normalization, the
    segmenter's logits (`ResizeLike`), the classifier's softmax."""
    return (
        isinstance(layer, (layers.ImageNormalization, layers.ResizeLike))
        or layer.name == "probabilities"
    )


@pytest.mark.parametrize("case", LAYERS)
def test_layer_dtypes_under_mixed_precision(case):
    x = case.inputs()
    for policy in POLICIES:
        layer = case.make(dtype=policy)
        compute = keras.mixed_precision.Policy(policy).compute_dtype
        spec = layer.compute_output_spec(_symbolic(x))
        output = layer(x)
        assert _dtypes(output) == [compute] * len(_flat(output)), policy
        assert _dtypes(spec) == _dtypes(output), policy
        assert _shapes(spec) == _shapes(output), policy
        assert all(np.all(np.isfinite(_numpy(t).astype("float32"))) for t in _flat(output))
        for variable in layer.variables:
            if keras.backend.is_float_dtype(variable.dtype):
                dtype = keras.backend.standardize_dtype(variable.dtype)
                assert dtype == "float32", (policy, variable.path)
        for sublayer in layer._flatten_layers():
            assert sublayer.dtype_policy.name == policy, (policy, sublayer.name)


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param(
            policy,
            # JAX users train in bfloat16; float16 compiles the three models again (45 s).
            marks=pytest.mark.skipif(
                keras.backend.backend() == "jax" and policy == "mixed_float16",
                reason="mixed_bfloat16 covers JAX; XLA time in CI",
            ),
        )
        for policy in POLICIES
    ],
)
def test_models_under_mixed_precision(policy, global_policy):
    # Functional models take their policy from the global one (Keras ignores a `dtype=` given
    # to a functional model); the three models share one backbone, which JAX then compiles
    # once per policy.
    global_policy(policy)
    compute = keras.mixed_precision.Policy(policy).compute_dtype
    backbone = MODEL_CASES[0].make()
    models = [backbone] + [case.make(backbone=backbone) for case in MODEL_CASES[1:]]
    assert [type(m).__name__ for m in models] == [case.id for case in MODEL_CASES]
    x = MODEL_CASES[0].inputs()
    for model in models:
        output = model(x)
        # The backbone's features are in the compute dtype; the task models' logits and
        # probabilities are float32, as KerasHub's tasks give them.
        task = isinstance(model, keras_hrvit.models.task.HRViTTask)
        expected = "float32" if task else compute
        assert _dtypes(output) == [expected] * len(_flat(output)), model.name
        assert all(np.all(np.isfinite(_numpy(t).astype("float32"))) for t in _flat(output))
        spec = model.compute_output_spec(_symbolic(x))
        assert _dtypes(spec) == _dtypes(output) and _shapes(spec) == _shapes(output)
        for variable in model.variables:
            if keras.backend.is_float_dtype(variable.dtype):
                assert keras.backend.standardize_dtype(variable.dtype) == "float32", variable.path
        for sublayer in model._flatten_layers():
            if isinstance(sublayer, keras.layers.InputLayer):
                continue
            expected = "float32" if _deliberately_float32(sublayer) else policy
            assert sublayer.dtype_policy.name == expected, (model.name, sublayer.name)


def test_backbone_takes_a_dtype_policy_as_keras_hub_backbones_do():
    backbone = MODEL_CASES[0].make(dtype="mixed_bfloat16")
    policies = {
        layer.dtype_policy.name
        for layer in backbone._flatten_layers()
        if not isinstance(layer, keras.layers.InputLayer) and not _deliberately_float32(layer)
    }
    assert policies == {"mixed_bfloat16"}
    revived = type(backbone).from_config(backbone.get_config())
    assert revived.get_layer("stem").dtype_policy.name == "mixed_bfloat16"
    # Without `dtype=` the config names none: a revived model follows the global policy.
    assert "dtype" not in MODEL_CASES[0].make().get_config()
    # The task heads follow their backbone's policy, whatever the global one.
    for case in MODEL_CASES[1:]:
        task = case.make(backbone=backbone)
        for layer in task._flatten_layers(include_self=False):
            if not isinstance(layer, keras.layers.InputLayer) and not _deliberately_float32(layer):
                assert layer.dtype_policy.name == "mixed_bfloat16", (task.name, layer.name)


# Slow on JAX only (21 s of eager compilation in CI there): JAX's int8 path stays in CI through
# test_int8_quantization_keeps_the_outputs, the config round trip is backend-neutral.
@(pytest.mark.slow if keras.backend.backend() == "jax" else pytest.mark.backend)
def test_quantized_backbone_revives_from_its_config(monkeypatch):
    # KerasHub's way: the config carries a DTypePolicyMap of the quantized layers, so that
    # `from_config` builds them int8, ready for the int8 weights.
    monkeypatch.setattr(gc, "collect", lambda *args: 0)  # see test_int8_quantization_...
    backbone = MODEL_CASES[0].make()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a `quantize` method")
        warnings.filterwarnings("ignore", message=".*__array__ implementation")
        backbone.quantize("int8")
    x = MODEL_CASES[0].inputs()
    expected = _flat(backbone(x, training=False))
    revived = type(backbone).from_config(backbone.get_config())
    quantized = [layer.path for layer in backbone._flatten_layers() if layer.quantization_mode]
    assert quantized and quantized == [
        layer.path for layer in revived._flatten_layers() if layer.quantization_mode == "int8"
    ]
    revived.set_weights(backbone.get_weights())
    for r, e in zip(_flat(revived(x, training=False)), expected):
        np.testing.assert_array_equal(_numpy(r), _numpy(e))


# --- 4. output specs --------------------------------------------------------------------------


@pytest.mark.parametrize("case", ALL)
def test_output_spec_matches_the_output(case):
    instance = _make(case)
    x = case.inputs()
    if not case.model:
        # `build` creates every variable: a call adds none (Keras's build asserts).
        shapes = [t.shape for t in x] if isinstance(x, list) else x.shape
        instance.build(shapes)
        count = len(instance.variables)
    # Every sublayer is built once the layer is (for models: once constructed on symbolic
    # inputs, which never runs the `call` of a layer that computes its output shape).
    assert [layer.name for layer in instance._flatten_layers() if not layer.built] == []
    if not case.model:
        shape = instance.compute_output_shape(shapes)
        shape = shape if isinstance(shape, list) else [shape]
    spec = instance.compute_output_spec(_symbolic(x))
    output = instance(x)
    assert _shapes(spec) == _shapes(output)
    assert _dtypes(spec) == _dtypes(output)
    if not case.model:
        assert len(instance.variables) == count
        assert [tuple(s) for s in shape] == _shapes(output)
        # A symbolic call with an unknown batch size, as in a functional model.
        other = case.make()
        symbolic = other(_symbolic(x, batch=False))
        assert [(None,) + s[1:] for s in _shapes(output)] == _shapes(symbolic)
        assert _dtypes(symbolic) == _dtypes(output)
        assert len(other.variables) == count
    if keras.backend.backend() == "torch":
        # Every variable (weights, statistics, seed states) is a parameter of the torch module.
        assert len(instance.torch_params) == len(instance.variables)


# --- 5. int8 quantization ---------------------------------------------------------------------


def _relative_error(actual, expected):
    actual, expected = _numpy(actual).astype("float64"), _numpy(expected).astype("float64")
    return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


@pytest.mark.parametrize("case", QUANTIZABLE)
def test_int8_quantization_keeps_the_outputs(case, monkeypatch):
    # Keras collects garbage after replacing each float kernel: 0.6 s per dense layer in a
    # test process, most of this test's time. Nothing here needs the memory back.
    monkeypatch.setattr(gc, "collect", lambda *args: 0)
    # Quantized as built, before any call (as after loading weights); a twin with the same
    # weights gives the float outputs.
    instance = _make(case)
    model = _as_model(case, instance)
    _wake_zero_weights(model)
    twin = _as_model(case, _make(case))
    twin.set_weights(model.get_weights())
    x = case.inputs()
    expected = _flat(twin(x, training=False))
    with warnings.catch_warnings():
        # Keras warns for each layer it cannot quantize (convolutions, normalizations).
        warnings.filterwarnings("ignore", message=".*does not have a `quantize` method")
        warnings.filterwarnings("ignore", message=".*__array__ implementation")
        model.quantize("int8")
    denses = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Dense)]
    assert denses
    assert {layer.quantization_mode for layer in denses} == {"int8"}
    assert all(layer.dtype_policy.name.startswith("int8_from_") for layer in denses)
    actual = _flat(model(x, training=False))
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        # Per-channel int8 weights and per-token int8 activations: at most 1.1% (measured).
        assert _relative_error(a, e) < 0.05
    if not case.model:
        # Compiled too (XLA on JAX; the models' compiled programs cost 30 s each on JAX).
        compiled = _flat(model.predict(x, verbose=0))
        for c, a in zip(compiled, actual):
            np.testing.assert_allclose(c, _numpy(a), rtol=1e-5, atol=1e-5)
        # KerasHub's way back to a quantized layer: a DTypePolicyMap giving the int8 policy of
        # each quantized sublayer (by path) builds them int8, ready for the int8 weights.
        policies = keras.dtype_policies.DTypePolicyMap("float32")
        for layer in instance._flatten_layers():
            if layer.quantization_mode is not None:
                policies[layer.path] = layer.dtype_policy
        revived = case.make(dtype=policies, name=instance.name)
        config = revived.get_config()
        assert _json(type(revived).from_config(config).get_config()) == _json(config)
        revived_model = _as_model(case, revived)
        revived_model.set_weights(model.get_weights())
        for r, a in zip(_flat(revived_model(x, training=False)), actual):
            np.testing.assert_array_equal(_numpy(r), _numpy(a))


def test_dense_quantizes_on_its_own():
    layer = dense.Dense(6)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype("float32")
    expected = layer(x)
    layer.quantize("int8")
    assert layer.quantization_mode == "int8"
    assert keras.backend.standardize_dtype(layer._kernel.dtype) == "int8"
    actual = layer(x)
    assert _relative_error(actual, expected) < 0.05
    # The config names the int8 policy: a layer made from it takes the int8 weights.
    revived = dense.Dense.from_config(layer.get_config())
    revived.build(x.shape)
    assert revived.quantization_mode == "int8"
    revived.set_weights(layer.get_weights())
    np.testing.assert_array_equal(_numpy(revived(x)), _numpy(actual))
    # A further subclass is refused, as Keras refuses subclasses of its Dense.
    sub = type("SubDense", (dense.Dense,), {})(6)
    sub.build(x.shape)
    with pytest.raises(NotImplementedError, match="`quantize`"):
        sub.quantize("int8")
