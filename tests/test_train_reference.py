"""Training mode computes what the original PyTorch code computes (fixtures/README.md).

The tiny classifier of `hrvit_tiny_reference.npz`, in training mode (drop path and dropout 0):
one forward on a batch of two, the gradient of `sum(logits * cotangent)` for every parameter,
and the BatchNorm running statistics after that forward, against the original's. Then the
pieces of training mode that the step does not show: PyTorch's running-variance update on its
own (masks, mixed precision) and the decode heads' channel-wise dropout.
"""

import functools
import inspect
import os

import keras
import numpy as np
import pytest
from keras import ops
from reference import nhwc, state_dict, tiny_backbone, tiny_config

import keras_hrvit
from keras_hrvit.heads.segformer import SegFormerHead
from keras_hrvit.heads.upernet import FCNHead, UPerNetHead
from keras_hrvit.layers.batch_norm import TorchBatchNormalization
from keras_hrvit.weights.torch_names import torch_variable_map

pytestmark = pytest.mark.backend

TRAIN_FIXTURE = os.path.join(
    os.path.dirname(__file__), "fixtures", "hrvit_tiny_train_reference.npz"
)
# Relative to each tensor's largest value (measured: up to 2.4e-5, torch's first feature map).
OUTPUT_RTOL = 1e-4
# The original's own float32 gradients are within their measured error (`grad_f32_err`) of the
# exact, float64 ones, or within 1% of the tensor's largest gradient (fixtures/README.md); 3 times
# that error leaves room for another order of summation. Measured: the worst tensor uses 0.49 of
# its tolerance on TensorFlow, 0.41 on JAX, 0.34 on torch.
GRAD_ERROR_FACTOR = 3.0
GRAD_RELATIVE_FLOOR = 0.01
# Gradients that vanish in exact arithmetic (the bias of a layer followed by a normalization,
# whose output ignores it) are float32 rounding noise everywhere, the original's included: their
# size depends on the order of summation (measured: up to 4.9 times the original's on TensorFlow).
VANISHING_GRAD_FACTOR = 10.0
# Relative to each tensor's largest value (measured: 4.3e-6, running means). Updating the running
# variance with the biased batch variance, as `keras.layers.BatchNormalization` does, is 1.6e-3
# off.
BUFFER_RTOL = 1e-5


@functools.lru_cache(maxsize=1)
def train_reference():
    return dict(np.load(TRAIN_FIXTURE))


def _tiny_classifier():
    overrides = {"drop_path_rate": 0.0}
    # The fixture's inputs are already normalized: no in-graph ImageNet normalization.
    if "include_preprocessing" in inspect.signature(keras_hrvit.HRViTBackbone.__init__).parameters:
        overrides["include_preprocessing"] = False
    backbone = tiny_backbone(**overrides)
    _, raw = tiny_config()
    model = keras_hrvit.HRViTClassifier(
        backbone,
        classes=10,
        head_channels=raw["head_channels"],
        classifier_activation=None,
        dropout=0.0,
    )
    result = keras_hrvit.weights.load_torch_state_dict(model, state_dict("sd/"))
    assert result.missing == [] and result.unexpected == []
    return backbone, model


def _gradient_step(model, images, cotangent):
    """`(logits, gradients, non_trainable)` of one training forward of `model` and the backward
    pass of `sum(logits * cotangent)`, as numpy arrays (the model's variables do not change)."""
    backend = keras.backend.backend()
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    images, cotangent = ops.convert_to_tensor(images), ops.convert_to_tensor(cotangent)

    def forward(trainable, non_trainable, images, cotangent):
        logits, new_non_trainable = model.stateless_call(
            trainable, non_trainable, images, training=True
        )
        return ops.sum(logits * cotangent), (logits, new_non_trainable)

    if backend == "jax":
        import jax

        step = jax.jit(jax.grad(forward, has_aux=True))
        grads, aux = step(trainable, non_trainable, images, cotangent)
    elif backend == "tensorflow":
        import tensorflow as tf

        trainable = [tf.convert_to_tensor(t) for t in trainable]
        with tf.GradientTape() as tape:
            tape.watch(trainable)
            loss, aux = forward(trainable, non_trainable, images, cotangent)
        grads = tape.gradient(loss, trainable)
    elif backend == "torch":
        import torch

        trainable = [t.detach().clone().requires_grad_(True) for t in trainable]
        loss, aux = forward(trainable, non_trainable, images, cotangent)
        grads = torch.autograd.grad(loss, trainable)
    else:
        pytest.skip(f"No gradient helper for the {backend} backend.")
    logits, new_non_trainable = aux
    to_numpy = ops.convert_to_numpy
    return (
        to_numpy(logits),
        [to_numpy(g) for g in grads],
        [to_numpy(v) for v in new_non_trainable],
    )


def _training_forward(model, images):
    """The outputs of `model` in training mode, as numpy arrays (its variables do not change)."""

    def forward(trainable, non_trainable, images):
        return model.stateless_call(trainable, non_trainable, images, training=True)[0]

    if keras.backend.backend() == "jax":
        import jax

        forward = jax.jit(forward)  # compiling the forward costs less than running it op by op
    outputs = forward(
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        ops.convert_to_tensor(images),
    )
    return [ops.convert_to_numpy(o) for o in outputs]


@pytest.fixture(scope="module")
def step():
    keras.utils.set_random_seed(0)
    backbone, model = _tiny_classifier()
    ref = train_reference()
    images = nhwc(ref["train/in"])
    logits, grads, non_trainable = _gradient_step(model, images, ref["train/cotangent"])
    # The four maps from a forward of the backbone alone, with the same weights and statistics
    # (the classifier's graph need not expose them): deterministic without dropout.
    features = _training_forward(backbone, images)
    variables = torch_variable_map(model)
    grads = dict(zip(map(id, model.trainable_variables), grads))
    buffers = dict(zip(map(id, model.non_trainable_variables), non_trainable))
    return {
        "logits": logits,
        "features": features,
        # Original name -> (value, the function that turns the original's array into Keras's).
        "grads": {n: (grads[id(v)], f) for n, (v, f) in variables.items() if id(v) in grads},
        "buffers": {n: (buffers[id(v)], f) for n, (v, f) in variables.items() if id(v) in buffers},
        "variables": variables,
        "trainable_ids": set(grads),
    }


def test_training_outputs_match_reference(step):
    ref = train_reference()
    expected = [nhwc(ref[f"train/feat/{i}"]) for i in range(4)] + [ref["train/logits"]]
    names = [f"feature {i}" for i in range(4)] + ["logits"]
    for name, value, reference_value in zip(names, step["features"] + [step["logits"]], expected):
        atol = OUTPUT_RTOL * float(np.abs(reference_value).max())
        np.testing.assert_allclose(value, reference_value, rtol=0, atol=atol, err_msg=name)


def _gradient_tolerance(exact, f32_error):
    largest = float(np.abs(exact).max())
    if largest <= f32_error:
        return VANISHING_GRAD_FACTOR * f32_error
    return max(GRAD_ERROR_FACTOR * f32_error, GRAD_RELATIVE_FLOOR * largest)


def test_every_parameter_gradient_matches_reference(step):
    ref = train_reference()
    expected = {k[len("train/grad/") :] for k in ref if k.startswith("train/grad/")}
    assert set(step["grads"]) == expected
    mapped = {id(step["variables"][name][0]) for name in expected}
    assert mapped == step["trainable_ids"], "trainable variables without an original parameter"
    failures = []
    for name in sorted(expected):
        grad, to_keras = step["grads"][name]
        exact = to_keras(ref[f"train/grad/{name}"])
        tolerance = _gradient_tolerance(exact, float(ref[f"train/grad_f32_err/{name}"]))
        error = float(np.abs(grad - exact).max())
        if not error <= tolerance:
            failures.append(f"{name}: {error:.3g} > {tolerance:.3g}")
    assert not failures, "\n".join(failures)


def test_batch_norm_running_statistics_match_reference(step):
    ref = train_reference()
    expected = {k[len("train/buffer/") :] for k in ref if k.startswith("train/buffer/")}
    assert set(step["buffers"]) == expected
    failures = []
    for name in sorted(expected):
        value, to_keras = step["buffers"][name]
        reference_value = to_keras(ref[f"train/buffer/{name}"])
        scale = float(np.abs(reference_value).max())
        error = float(np.abs(value - reference_value).max())
        if not error <= BUFFER_RTOL * scale:
            failures.append(f"{name}: {error:.3g} > {BUFFER_RTOL} * {scale:.3g}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("dtype", ["float32", "mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_batch_norm_layer_tracks_unbiased_variance(dtype, masked):
    rng = np.random.default_rng(0)
    # Multiples of 1/4 below 8 are exact in float16 and bfloat16: the statistics can be exact.
    x = (rng.integers(-32, 32, size=(3, 5, 4)) / 4.0).astype("float32")
    mask = rng.random((3, 5)) < 0.6 if masked else None
    layer = TorchBatchNormalization(momentum=0.9, epsilon=1e-5, dtype=dtype)
    plain = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, dtype=dtype)
    outputs = layer(x, training=True, mask=mask)
    plain_outputs = plain(x, training=True, mask=mask)

    values = x[mask] if masked else x.reshape(-1, 4)
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer.moving_variance), 0.9 + 0.1 * values.var(0, ddof=1), rtol=1e-6
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer.moving_mean), 0.1 * values.mean(0), rtol=1e-6, atol=1e-7
    )
    assert layer.moving_variance.dtype == "float32"
    assert keras.backend.standardize_dtype(outputs.dtype) == layer.compute_dtype
    # The batch is normalized as Keras does, and inference is Keras's.
    np.testing.assert_array_equal(
        ops.convert_to_numpy(ops.cast(outputs, "float32")),
        ops.convert_to_numpy(ops.cast(plain_outputs, "float32")),
    )
    plain.set_weights(layer.get_weights())
    np.testing.assert_array_equal(
        ops.convert_to_numpy(ops.cast(layer(x, training=False), "float32")),
        ops.convert_to_numpy(ops.cast(plain(x, training=False), "float32")),
    )
    assert [w.name for w in layer.weights] == ["gamma", "beta", "moving_mean", "moving_variance"]


def test_batch_norm_layer_serializes_and_validates():
    layer = TorchBatchNormalization(momentum=0.9, epsilon=1e-5, center=False, name="bn")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is TorchBatchNormalization
    assert restored.get_config() == layer.get_config()
    for bad in ({"momentum": 1.5}, {"momentum": "0.9"}, {"epsilon": 0.0}, {"renorm": True}):
        with pytest.raises(ValueError):
            TorchBatchNormalization(**bad)


@pytest.mark.parametrize("head_class", [SegFormerHead, UPerNetHead, FCNHead])
def test_decode_heads_drop_whole_channels(head_class):
    # MMSegmentation's decode heads use `nn.Dropout2d` before the classifier.
    head = head_class(num_classes=3, channels=8, dropout=0.5)
    dropped = ops.convert_to_numpy(head.dropout_layer(ops.ones((4, 5, 6, 8)), training=True))
    assert np.all(dropped == dropped[:, :1, :1, :]), "a channel is dropped in some pixels only"
    assert set(np.unique(dropped)) == {0.0, 2.0}
