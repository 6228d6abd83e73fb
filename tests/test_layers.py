"""Each layer: shapes, config round trip, and the behaviour the spec states."""

import keras
import numpy as np
import pytest

from keras_hrvit import layers
from keras_hrvit.layers.des import des_factors

pytestmark = pytest.mark.backend


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


LAYER_CASES = [
    (layers.ConvStem, {"channels": 16}, (2, 37, 45, 3), (2, 10, 12, 16)),
    (layers.EffPatchEmbed, {"channels": 8}, (2, 9, 11, 16), (2, 9, 11, 8)),
    (
        layers.CrossShapedAttention,
        {"dim": 16, "window_size": 4, "head_dim": 4},
        (2, 9, 11, 16),
        None,
    ),
    (layers.DES, {"dim": 24}, (2, 5, 7, 24), None),
    (layers.MixCFN, {"dim": 8, "mlp_ratio": 3}, (2, 5, 7, 8), None),
    (layers.HRViTBlock, {"dim": 16, "window_size": 3, "head_dim": 4}, (1, 7, 10, 16), None),
    (layers.DropPath, {"rate": 0.3}, (4, 3, 3, 2), None),
]


@pytest.mark.parametrize("cls, kwargs, in_shape, out_shape", LAYER_CASES)
def test_layer_shape_config_and_serialization(cls, kwargs, in_shape, out_shape):
    layer = cls(**kwargs)
    x = np.random.rand(*in_shape).astype("float32")
    y = layer(x)
    assert tuple(y.shape) == (out_shape or in_shape)
    assert tuple(layer.compute_output_shape(in_shape)) == (out_shape or in_shape)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is cls and clone.get_config() == layer.get_config()
    assert clone.built  # serialization carries the build shape
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(_numpy(clone(x)), _numpy(y), atol=1e-6)


def test_fusion_block_shapes_and_config():
    fusion = layers.FusionBlock([8, 16], [8, 16, 32])
    outputs = fusion([np.random.rand(2, 13, 17, 8), np.random.rand(2, 7, 9, 16)])
    assert [tuple(o.shape) for o in outputs] == [(2, 13, 17, 8), (2, 7, 9, 16), (2, 4, 5, 32)]
    assert layers.FusionBlock.from_config(fusion.get_config()).get_config() == fusion.get_config()
    with pytest.raises(ValueError, match="keeps its width"):
        layers.FusionBlock([8, 16], [8, 24])


def test_fusion_upsampling_is_nearest_then_cropped():
    # With only the up path active, out[0] = GELU(BN(conv(x1))) repeated 2x2 and cropped to 5x7.
    fusion = layers.FusionBlock([1, 1], [1, 1])
    low = np.arange(12, dtype="float32").reshape(1, 3, 4, 1)
    fusion([np.zeros((1, 5, 7, 1), "float32"), low])
    fusion.paths[0][1][0].set_weights([np.ones((1, 1, 1, 1)), np.zeros(1)])
    out = _numpy(fusion([np.zeros((1, 5, 7, 1), "float32"), low])[0])[0, :, :, 0]
    bn_scale = 1 / np.sqrt(1 + 1e-5)
    expected = np.repeat(np.repeat(low[0, :, :, 0], 2, 0), 2, 1)[:5, :7] * bn_scale
    gelu = _numpy(keras.ops.gelu(expected, approximate=False))
    np.testing.assert_allclose(out, gelu, atol=1e-6)


@pytest.mark.parametrize(
    "dim, factors", [(32, (4, 8)), (48, (6, 8)), (240, (15, 16)), (384, (24, 16)), (512, (16, 32))]
)
def test_des_factors_follow_the_spec(dim, factors):
    assert des_factors(dim) == factors


def test_des_is_a_kronecker_projection():
    layer = layers.DES(8)  # k = 2, p = 4
    x = np.random.rand(3, 8).astype("float32")
    y = _numpy(layer(x.reshape(1, 1, 3, 8)))[0, 0]
    wr, br = (_numpy(w) for w in layer.proj_right.weights)
    wl, bl = (_numpy(w) for w in layer.proj_left.weights)
    t = x.reshape(3, 2, 4) @ wr + br
    t = _numpy(keras.ops.gelu(np.swapaxes(t, 1, 2), approximate=False)) @ wl + bl
    np.testing.assert_allclose(y, np.swapaxes(t, 1, 2).reshape(3, 8), atol=1e-5)


def _reference_stripe_attention(q, v, s, heads, scale):
    """Numpy: horizontal stripes of s rows; padded rows take no part."""
    h, w, c = q.shape
    d = c // heads
    out = np.zeros_like(q)
    for top in range(0, h, s):
        rows = slice(top, min(top + s, h))
        qs, vs = q[rows].reshape(-1, c), v[rows].reshape(-1, c)
        for head in range(heads):
            ch = slice(head * d, (head + 1) * d)
            scores = qs[:, ch] @ vs[:, ch].T * scale
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
            out[rows, :, ch] = (weights @ vs[:, ch]).reshape(rows.stop - top, w, d)
    return out


@pytest.mark.parametrize("height, width", [(9, 8), (8, 11), (3, 3)])
def test_cross_shaped_attention_matches_numpy_with_padding(height, width):
    dim, s = 16, 4
    layer = layers.CrossShapedAttention(dim, s, head_dim=4)
    x = np.random.rand(1, height, width, dim).astype("float32")
    layer.build(x.shape)
    # Unit BatchNorm so the output shows the attention itself.
    layer.norm.set_weights([np.ones(dim), np.zeros(dim), np.zeros(dim), np.ones(dim) - 1e-5])
    y = _numpy(layer(x, training=False))[0]

    qv = _numpy(layer.qv(x))[0]
    q, v = qv[..., :dim], qv[..., dim:]
    half, scale = dim // 2, 4**-0.5
    rows = _reference_stripe_attention(q[..., :half], v[..., :half], s, 2, scale)
    cols = _reference_stripe_attention(
        q[..., half:].transpose(1, 0, 2), v[..., half:].transpose(1, 0, 2), s, 2, scale
    ).transpose(1, 0, 2)
    hs = lambda t: t * np.clip(t + 3, 0, 6) / 6  # noqa: E731
    parallel = _numpy(layer.parallel_conv(hs(v)[None]))[0]
    expected = _numpy(layer.proj(hs(np.concatenate([rows, cols], -1) + parallel)[None]))[0]
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_attention_starts_at_zero_as_in_the_original():
    layer = layers.CrossShapedAttention(8, 2, head_dim=4)
    y = layer(np.random.rand(1, 6, 6, 8).astype("float32"), training=False)
    np.testing.assert_array_equal(_numpy(y), 0.0)


def test_drop_path_drops_whole_samples_in_training_only():
    layer = layers.DropPath(0.5, seed=1)
    x = np.ones((64, 3, 3, 2), "float32")
    np.testing.assert_array_equal(_numpy(layer(x)), x)
    y = _numpy(layer(x, training=True))
    per_sample = y.reshape(64, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(1) == per_sample.max(1))
    assert 0 < (per_sample[:, 0] == 0).sum() < 64


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: layers.CrossShapedAttention(15, 7), "must be even"),
        (lambda: layers.CrossShapedAttention(24, 7, head_dim=5), "multiple of `head_dim`"),
        (lambda: layers.DES(36), "divisible by 8"),
        (lambda: layers.MixCFN(8, mlp_ratio=0), "must be positive"),
        (lambda: layers.EffPatchEmbed(0), "positive integer"),
    ],
)
def test_bad_arguments_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "name, kwargs, in_shape",
    [
        ("DepthwiseConv2D", {"kernel_size": 3, "padding": "same"}, (2, 9, 12, 6)),
        ("DepthwiseConv2D", {"kernel_size": 5, "padding": "same", "use_bias": False}, (1, 8, 7, 4)),
        ("DepthwiseConv2D", {"kernel_size": 3, "strides": 2, "padding": "valid"}, (1, 11, 10, 4)),
        ("DepthwiseConv2D", {"kernel_size": 5, "strides": 4, "use_bias": False}, (2, 18, 22, 3)),
        ("DepthwiseConv2D", {"kernel_size": 3, "strides": 2, "padding": "same"}, (1, 10, 9, 5)),
        ("Conv2D", {"filters": 8, "kernel_size": 3, "strides": 2}, (2, 11, 12, 3)),
        ("Conv2D", {"filters": 5, "kernel_size": 1, "use_bias": False}, (1, 6, 7, 4)),
        ("Conv2D", {"filters": 4, "kernel_size": 3, "padding": "same"}, (1, 7, 6, 2)),
        ("Dense", {"units": 7}, (2, 5, 6, 4)),
        ("Dense", {"units": 3, "use_bias": False}, (3, 2, 5)),
        ("Dense", {"units": 5, "activation": "gelu"}, (4, 6)),
    ],
)
def test_fast_layers_match_keras(name, kwargs, in_shape):
    from keras_hrvit.layers import conv, dense

    module = dense if name == "Dense" else conv
    ours, theirs = getattr(module, name)(**kwargs), getattr(keras.layers, name)(**kwargs)
    ours.build(in_shape)
    theirs.build(in_shape)
    rng = np.random.default_rng(0)
    theirs.set_weights([rng.normal(size=w.shape).astype("float32") for w in theirs.get_weights()])
    ours.set_weights(theirs.get_weights())
    x = rng.normal(size=in_shape).astype("float32")
    np.testing.assert_allclose(_numpy(ours(x)), _numpy(theirs(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's graph optimizer")
def test_tensorflow_graph_optimizer_accepts_a_block(capfd):
    """TensorFlow 2.21's Grappler remapper broke on the graph Keras's own DepthwiseConv2D builds
    (its bias through a Reshape and a Squeeze) on the attention's parallel path, then dropped every
    fusion of the graph. It only says so in its C++ log, on stderr."""
    import tensorflow as tf

    block = layers.HRViTBlock(32, window_size=2, head_dim=16)
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 32)).astype("float32")
    capfd.readouterr()
    y = tf.function(lambda t: block(t, training=False))(x)
    np.testing.assert_allclose(y.numpy(), _numpy(block(x, training=False)), rtol=1e-4, atol=1e-4)
    err = capfd.readouterr().err
    assert "remapper failed" not in err and "empty op name" not in err, err


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's XLA context")
@pytest.mark.parametrize("jit_compile, native", [(True, False), (False, True)])
def test_tensorflow_depthwise_under_xla_is_shifted_sums(jit_compile, native):
    """XLA's CPU loop for depthwise convolutions made `jit_compile=True` 3.6x slower than the
    graph: under XLA on a CPU the layer is a sum of shifted slices, else TensorFlow's kernel."""
    import tensorflow as tf

    from keras_hrvit.layers import conv

    ours = conv.DepthwiseConv2D(5, strides=2, padding="same")
    theirs = keras.layers.DepthwiseConv2D(5, strides=2, padding="same")
    ours.build((1, 11, 10, 4))
    theirs.build((1, 11, 10, 4))
    rng = np.random.default_rng(0)
    theirs.set_weights([rng.normal(size=w.shape).astype("float32") for w in theirs.get_weights()])
    ours.set_weights(theirs.get_weights())
    x = rng.normal(size=(1, 11, 10, 4)).astype("float32")
    fn = tf.function(ours, jit_compile=jit_compile)
    graph = fn.get_concrete_function(tf.TensorSpec(x.shape)).graph
    kinds = {op.type for op in graph.get_operations()}
    assert ("DepthwiseConv2dNative" in kinds) == native, sorted(kinds)
    np.testing.assert_allclose(fn(x).numpy(), _numpy(theirs(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch.compile")
def test_torch_compile_trains_the_convolutions():
    """Under torch.compile Dynamo makes the shapes symbolic, and Inductor could not order the
    strides of the channels-first view the eager path hands PyTorch (it raised)."""
    from keras_hrvit.layers import conv

    def model(jit_compile):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((None, None, 3))
        x = conv.Conv2D(8, 3, strides=2, padding="same")(inputs)
        x = conv.DepthwiseConv2D(3, padding="same")(keras.layers.BatchNormalization()(x))
        m = keras.Model(inputs, conv.Conv2D(4, 1)(x))
        m.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=jit_compile)
        return m

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 16, 16, 3)).astype("float32")
    y = rng.normal(size=(4, 8, 8, 4)).astype("float32")
    eager, compiled = model(False), model(True)
    for m in (eager, compiled):
        m.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(eager.get_weights(), compiled.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
