"""Mixed precision and rematerialization train like float32 without remat."""

import keras
import numpy as np
import pytest
from reference import micro_backbone, tiny_backbone

import keras_hrvit
from keras_hrvit.layers import HRViTBlock
from keras_hrvit.layers.conv import DepthwiseConv2D

pytestmark = pytest.mark.backend

STEPS = 20
# A well-conditioned problem: with 4 images and a learning rate of 2e-3, the training-mode
# BatchNorms of the 1x1 and 2x2 maps normalize 4 values per channel and SGD overshoots, so
# float32 rounding differences (another XLA fusion, remat) grew to 10-30% of the loss within 5-10
# steps. With 16 images and 5e-4, the float32 runs with and without remat agree to 1e-5 over
# the 20 steps (bitwise on PyTorch), and bfloat16 follows float32 to 5%.
IMAGES = 16
LEARNING_RATE = 5e-4


def _train(remat=False, policy="float32"):
    """The losses of `STEPS` SGD steps, and the variables before the first and after the second
    (the attention's BatchNorm starts at zero, so its weights get a gradient from the second)."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(3)
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        # The images are drawn normalized already, as when these tolerances were measured.
        model = keras_hrvit.HRViTClassifier(
            micro_backbone(remat=remat, include_preprocessing=False),
            classes=3,
            head_channels=(4, 4, 4, 4),
            classifier_activation=None,
            dropout=0.0,
        )
        # Default compilation: XLA on JAX, graphs without XLA on TensorFlow, eager on PyTorch.
        model.compile(
            keras.optimizers.SGD(LEARNING_RATE),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        rng = np.random.default_rng(0)
        images = rng.random((IMAGES, 32, 32, 3)).astype("float32")
        labels = np.arange(IMAGES) % 3
        before = _values(model)
        losses, after = [], None
        for step in range(STEPS):
            losses.append(model.train_on_batch(images, labels, return_dict=True)["loss"])
            if step == 1:
                after = _values(model)
        return {"losses": np.array(losses), "before": before, "after": after}
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def _values(model):
    return {v.path: keras.ops.convert_to_numpy(v) for v in model.variables}


@pytest.fixture(scope="module")
def reference():
    return _train()


# On JAX this compiles the train step twice more (85 s in CI), so it is `slow` there; CI checks
# JAX's remat with test_remat_block_reuses_drop_path_masks_and_updates_statistics_once.
@(pytest.mark.slow if keras.backend.backend() == "jax" else pytest.mark.backend)
def test_remat_matches_plain_training(reference):
    remat = _train(remat=True)
    # The same computation: the first two updates of every variable (weights and BatchNorm
    # statistics) agree to float32 rounding. JAX and TensorFlow round the rematerialized program
    # differently: by 1e-7 of the whole update (measured).
    _assert_same_updates(remat, reference)
    # And so do the 20 losses (measured: 1e-5 on JAX, 1e-6 on TensorFlow, bitwise on PyTorch).
    np.testing.assert_allclose(remat["losses"], reference["losses"], rtol=1e-3)


def _assert_same_updates(actual, expected):
    updates = {
        path: expected["after"][path].astype("float64") - value
        for path, value in expected["before"].items()
        if np.issubdtype(value.dtype, np.floating)
    }
    largest = max(np.abs(u).max() for u in updates.values())
    assert largest > 0
    for path, before in expected["before"].items():
        if path not in updates:  # integer variables (seed generator states), if any
            np.testing.assert_array_equal(actual["after"][path], expected["after"][path], path)
            continue
        np.testing.assert_array_equal(actual["before"][path], before, path)
        update = actual["after"][path].astype("float64") - before
        # Weights are stored in float32: two runs whose updates differ by rounding may store
        # values one or two ulps apart. Gradients that vanish in exact arithmetic (biases
        # followed by BatchNorm) are rounding noise, hence the floor relative to the largest.
        slack = 2 * np.spacing(np.abs(before)) + 1e-6 * largest
        error = np.abs(update - updates[path]) - 1e-4 * np.abs(updates[path]) - slack
        assert error.max() <= 0, f"{path}: updates differ by up to {error.max():.3g}"


def test_remat_block_reuses_drop_path_masks_and_updates_statistics_once():
    """The backward pass recomputes the block from the state the forward pass saw: the same
    drop-path masks, and the BatchNorm statistics and seeds updated once (without that, the
    recomputation dropped other samples than the forward pass and updated the statistics twice;
    JAX leaked tracers out of jax.checkpoint)."""

    def train(remat):
        keras.backend.clear_session()
        keras.utils.set_random_seed(1)
        inputs = keras.Input((8, 8, 16))
        block = HRViTBlock(
            16, window_size=2, head_dim=8, mlp_ratio=2, drop_path_rate=0.5, remat=remat
        )
        pooled = keras.layers.GlobalAveragePooling2D()(block(inputs))
        model = keras.Model(inputs, keras.layers.Dense(3)(pooled))
        model.compile(
            keras.optimizers.SGD(0.1),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        images = np.random.default_rng(0).standard_normal((8, 8, 8, 16)).astype("float32")
        losses = [float(model.train_on_batch(images, np.arange(8) % 3)) for _ in range(3)]
        return losses, _values(model)

    plain_losses, plain = train(False)
    remat_losses, remat = train(True)
    np.testing.assert_allclose(remat_losses, plain_losses, rtol=1e-5)
    assert remat.keys() == plain.keys()
    assert any("seed_generator" in path for path in plain)
    for path, value in plain.items():
        np.testing.assert_allclose(remat[path], value, rtol=1e-5, atol=1e-6, err_msg=path)


@pytest.mark.skipif(
    keras.backend.backend() == "jax",
    reason="jax.checkpoint recomputes from the traced program, without calling Python again",
)
def test_remat_recomputes_each_block_in_the_backward_pass():
    def forward_calls_per_step(remat):
        backbone = micro_backbone(remat=remat, include_preprocessing=False)
        model = keras_hrvit.HRViTClassifier(
            backbone, classes=3, head_channels=(4, 4, 4, 4), dropout=0.0
        )
        model.compile("sgd", "sparse_categorical_crossentropy", run_eagerly=True)
        block = backbone.get_layer("m1_branch1_block0")
        count = []
        original = block._forward

        def counted(*args, **kwargs):
            count.append(1)
            return original(*args, **kwargs)

        block._forward = counted
        images, labels = np.random.rand(2, 32, 32, 3).astype("float32"), np.array([0, 1])
        model.train_on_batch(images, labels)  # the first step also traces shapes
        count.clear()
        model.train_on_batch(images, labels)
        return len(count)

    # Keras on PyTorch also runs the block for shape inference; remat adds one recomputation.
    plain = forward_calls_per_step(False)
    assert plain >= 1
    assert forward_calls_per_step(True) == plain + 1


# Mixed precision on JAX is covered by test_conformance's mixed-precision tests; these two
# cost 85 s of XLA compilation in CI.
JAX_PRECISION_REASON = "mixed precision on JAX: test_conformance; XLA time in CI"


@pytest.mark.skipif(keras.backend.backend() == "jax", reason=JAX_PRECISION_REASON)
def test_bfloat16_trains_like_float32_without_nans(reference):
    losses = _train(policy="mixed_bfloat16")["losses"]
    expected = reference["losses"]
    assert np.all(np.isfinite(losses))
    # bfloat16 rounds to 2^-9: through the ~30 layers and the head's training-mode BatchNorms
    # the logits differ from float32 by 4-7% (relative norm) and the first, forward-only loss by
    # up to 2.2% (measured over 3 seeds on each backend). Training then follows float32 within
    # 4.4% at every step (measured: TensorFlow 2.3%, PyTorch 2.2%, JAX 4.4%).
    np.testing.assert_allclose(losses[0], expected[0], rtol=0.05)
    np.testing.assert_allclose(losses, expected, rtol=0.1)
    assert losses[-1] < 0.5 * losses[0] and expected[-1] < 0.5 * expected[0]


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_depthwise_conv_rounds_once_under_bfloat16(kernel_size):
    """HRViT's DepthwiseConv2D (on JAX a sum of shifted slices) sums in float32 and rounds
    once. Summed in bfloat16, a 3x3 (5x5) convolution was 2.5x (3.7x) less
    accurate, and the micro classifier's first bfloat16 loss 10% from float32 instead of 3%."""
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 32)).astype("float32")
    ours = DepthwiseConv2D(kernel_size, padding="same", use_bias=False, dtype="mixed_bfloat16")
    theirs = keras.layers.DepthwiseConv2D(
        kernel_size, padding="same", use_bias=False, dtype="mixed_bfloat16"
    )
    ours.build(x.shape)
    theirs.build(x.shape)
    theirs.set_weights(ours.get_weights())

    def bfloat16(a):
        a = keras.ops.cast(keras.ops.cast(a, "bfloat16"), "float32")
        return keras.ops.convert_to_numpy(a).astype("float64")

    # The exact convolution of the bfloat16-rounded inputs.
    inputs, kernel = bfloat16(x), bfloat16(ours.kernel.value)[..., 0]
    pad = kernel_size // 2
    inputs = np.pad(inputs, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    exact = sum(
        inputs[:, i : i + 16, j : j + 16] * kernel[i, j]
        for i in range(kernel_size)
        for j in range(kernel_size)
    )

    def error(layer):
        return np.linalg.norm(bfloat16(layer(x)) - exact) / np.linalg.norm(exact)

    # One rounding to bfloat16 (2^-9): ~1.7e-3. Keras's own layer rounds once on some backends
    # only (TensorFlow 2.21's CPU kernel rounds its partial sums: 3.6e-3 for 3x3).
    assert error(ours) < 2.4e-3 and error(ours) < 1.2 * error(theirs)


@pytest.mark.skipif(keras.backend.backend() == "jax", reason=JAX_PRECISION_REASON)
def test_softmax_and_norms_stay_float32_under_mixed_precision():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        backbone = tiny_backbone()
        block = backbone.get_layer("m2_branch2_block0")
        assert block.attn.norm.dtype_policy.name == "mixed_bfloat16"
        assert block.attn.norm.gamma.dtype == "float32"
        assert block.attn_norm.compute_dtype == "bfloat16"
        outputs = backbone(np.random.rand(1, 40, 40, 3).astype("float32"))
        assert all(np.isfinite(keras.ops.convert_to_numpy(o)).all() for o in outputs)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
