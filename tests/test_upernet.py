"""The UperNet decode head and the FCN auxiliary head (MMSegmentation's UPerHead / FCNHead)."""

import math

import keras
import numpy as np
import pytest

from keras_hrvit.heads.upernet import ConvBNReLU, FCNHead, UPerNetHead, adaptive_average_pool
from keras_hrvit.models.backbone import HRViTBackbone
from keras_hrvit.weights.torch_names import torch_variable_map

pytestmark = pytest.mark.backend

# Branch sizes of HRViT for a 97x131 image: the stem and every downsampling round up.
AWKWARD_SIZES = [(25, 33), (13, 17), (7, 9), (4, 5)]
TINY_WIDTHS = (4, 6, 8, 10)


def _features(sizes, widths=TINY_WIDTHS, batch=1, seed=0):
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((batch, h, w, c)).astype("float32") for (h, w), c in zip(sizes, widths)
    ]


def _tiny_model(num_classes=5, channels=8, pool_scales=(1, 2, 3, 6)):
    inputs = [keras.Input((None, None, c)) for c in TINY_WIDTHS]
    decode = UPerNetHead(
        num_classes, channels=channels, pool_scales=pool_scales, name="decode_head"
    )
    aux = FCNHead(num_classes, channels=channels, name="auxiliary_head")
    return keras.Model(inputs, [decode(inputs), aux(inputs)])


def _numpy_adaptive_pool(x, out_h, out_w):
    """PyTorch's AdaptiveAvgPool2d on NHWC: bin i spans [floor(i*H/s), ceil((i+1)*H/s))."""
    h, w = x.shape[1:3]
    out = np.zeros((x.shape[0], out_h, out_w, x.shape[3]), x.dtype)
    for i in range(out_h):
        r0, r1 = (i * h) // out_h, math.ceil((i + 1) * h / out_h)
        for j in range(out_w):
            c0, c1 = (j * w) // out_w, math.ceil((j + 1) * w / out_w)
            out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize(
    "h, w, out", [(7, 7, (6, 6)), (4, 5, (6, 6)), (13, 17, (3, 2)), (1, 1, (2, 2)), (9, 6, 4)]
)
def test_adaptive_pool_matches_pytorch_bins(h, w, out):
    x = np.random.default_rng(1).standard_normal((2, h, w, 3)).astype("float32")
    out_h, out_w = (out, out) if isinstance(out, int) else out
    got = keras.ops.convert_to_numpy(adaptive_average_pool(keras.ops.convert_to_tensor(x), out))
    np.testing.assert_allclose(got, _numpy_adaptive_pool(x, out_h, out_w), rtol=1e-5, atol=1e-6)


def test_adaptive_pool_dynamic_spatial_size():
    inputs = keras.Input((None, None, 3))
    pooled = keras.layers.Lambda(lambda t: adaptive_average_pool(t, 6))(inputs)
    model = keras.Model(inputs, pooled)
    call = model
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # A fully dynamic signature, as in an exported model; Keras's own layer needs static sizes.
        call = tf.function(model, input_signature=[tf.TensorSpec((None, None, None, 3))])
    for h, w in [(7, 9), (4, 5)]:
        x = np.random.default_rng(h).standard_normal((1, h, w, 3)).astype("float32")
        got = keras.ops.convert_to_numpy(call(x))
        np.testing.assert_allclose(got, _numpy_adaptive_pool(x, 6, 6), rtol=1e-5, atol=1e-6)


def test_output_shapes_on_awkward_sizes():
    features = _features(AWKWARD_SIZES, batch=2)
    decode = UPerNetHead(5, channels=8)
    aux = FCNHead(5, channels=8)
    logits = keras.ops.convert_to_numpy(decode(features))
    aux_logits = keras.ops.convert_to_numpy(aux(features[2]))
    assert logits.shape == (2, 25, 33, 5)
    assert aux_logits.shape == (2, 7, 9, 5)
    assert np.isfinite(logits).all() and np.isfinite(aux_logits).all()
    train_logits = keras.ops.convert_to_numpy(decode(features, training=True))
    assert train_logits.shape == (2, 25, 33, 5) and np.isfinite(train_logits).all()


def test_dynamic_functional_model_matches_eager():
    model = _tiny_model()
    call = model
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        spec = [tf.TensorSpec((None, None, None, c)) for c in TINY_WIDTHS]
        call = tf.function(lambda xs: model(xs, training=False), input_signature=[spec])
    decode, aux = model.get_layer("decode_head"), model.get_layer("auxiliary_head")
    for seed, sizes in enumerate([AWKWARD_SIZES, [(16, 12), (8, 6), (4, 3), (2, 2)]]):
        features = _features(sizes, seed=seed)
        got = [keras.ops.convert_to_numpy(t) for t in call(features)]
        want = [decode(features), aux(features[2])]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, keras.ops.convert_to_numpy(w), rtol=1e-5, atol=1e-5)


def test_fcn_head_list_and_single_input_agree():
    features = _features(AWKWARD_SIZES)
    head = FCNHead(3, channels=8, in_index=1)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(head(features)), keras.ops.convert_to_numpy(head(features[1]))
    )


def _trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def _check_parameter_counts(preset, without_aux, with_aux):
    backbone = HRViTBackbone.from_preset(preset)
    x = keras.Input((None, None, 3))
    features = backbone(x)
    y = UPerNetHead(150, name="decode_head")(features)
    a = FCNHead(150, name="auxiliary_head")(features[2])
    assert _trainable_count(keras.Model(x, y)) == without_aux
    assert _trainable_count(keras.Model(x, [y, a])) == with_aux


# Parameter counts do not depend on the backend: built once, on TensorFlow (on JAX the build
# of b1 with UperNet cost 22 s in CI).
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="backend-independent counts")
def test_parameter_counts_b1():
    _check_parameter_counts("hrvit_b1", 35_618_126, 35_952_100)


@pytest.mark.slow
def test_parameter_counts_b2():
    _check_parameter_counts("hrvit_b2", 49_104_950, 49_696_972)


def _expected_torch_names(num_pools=4, num_inputs=4, aux_convs=1):
    bn = ("weight", "bias", "running_mean", "running_var")

    def conv_module(prefix):
        return [f"{prefix}.conv.weight"] + [f"{prefix}.bn.{s}" for s in bn]

    names = []
    for i in range(num_pools):
        names += conv_module(f"decode_head.psp_modules.{i}.1")
    names += conv_module("decode_head.bottleneck")
    for i in range(num_inputs - 1):
        names += conv_module(f"decode_head.lateral_convs.{i}")
        names += conv_module(f"decode_head.fpn_convs.{i}")
    names += conv_module("decode_head.fpn_bottleneck")
    for i in range(aux_convs):
        names += conv_module(f"auxiliary_head.convs.{i}")
    for head in ("decode_head", "auxiliary_head"):
        names += [f"{head}.conv_seg.weight", f"{head}.conv_seg.bias"]
    return set(names)


def test_torch_name_map_covers_every_variable():
    model = _tiny_model()
    mapping = torch_variable_map(model)
    assert set(mapping) == _expected_torch_names()
    # Seed generators of the dropouts are state, not weights; every weight maps exactly once.
    mapped = {id(variable) for variable, _ in mapping.values()}
    assert len(mapped) == len(mapping) == len(model.weights)
    assert mapped == {id(v) for v in model.weights}


def _load_random_torch_state(model, seed=0):
    """Fills `model` from a random state dict in PyTorch layouts; returns that state dict."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, (variable, to_keras) in torch_variable_map(model).items():
        shape = tuple(variable.shape)
        if len(shape) == 4:  # Conv2D kernel: (kh, kw, in, out) here, (out, in, kh, kw) there.
            fan_in = shape[0] * shape[1] * shape[2]
            value = rng.standard_normal((shape[3], shape[2], shape[0], shape[1])) / np.sqrt(fan_in)
        elif name.endswith(("running_var", "bn.weight")):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = 0.1 * rng.standard_normal(shape)
        state[name] = value.astype("float32")
        converted = to_keras(state[name])
        assert converted.shape == shape, name
        variable.assign(converted)
    return state


def _torch_reference(state, features, pool_scales, aux_index=2):
    """MMSegmentation's UPerHead.forward and FCNHead.forward in plain PyTorch, in eval mode."""
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    sd = {k: torch.from_numpy(v) for k, v in state.items()}

    def conv_module(x, name, padding):
        x = functional.conv2d(x, sd[f"{name}.conv.weight"], padding=padding)
        x = functional.batch_norm(
            x,
            sd[f"{name}.bn.running_mean"],
            sd[f"{name}.bn.running_var"],
            sd[f"{name}.bn.weight"],
            sd[f"{name}.bn.bias"],
            training=False,
            eps=1e-5,
        )
        return functional.relu(x)

    def resize(x, size):
        return functional.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def conv_seg(x, head):
        return functional.conv2d(x, sd[f"{head}.conv_seg.weight"], sd[f"{head}.conv_seg.bias"])

    inputs = [torch.from_numpy(np.transpose(f, (0, 3, 1, 2)).copy()) for f in features]
    top = inputs[-1]
    psp = [top] + [
        resize(
            conv_module(
                functional.adaptive_avg_pool2d(top, s), f"decode_head.psp_modules.{i}.1", 0
            ),
            top.shape[2:],
        )
        for i, s in enumerate(pool_scales)
    ]
    laterals = [
        conv_module(f, f"decode_head.lateral_convs.{i}", 0) for i, f in enumerate(inputs[:-1])
    ]
    laterals.append(conv_module(torch.cat(psp, 1), "decode_head.bottleneck", 1))
    for i in range(len(laterals) - 1, 0, -1):
        laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:])
    outs = [conv_module(x, f"decode_head.fpn_convs.{i}", 1) for i, x in enumerate(laterals[:-1])]
    outs.append(laterals[-1])
    outs = [outs[0]] + [resize(x, outs[0].shape[2:]) for x in outs[1:]]
    decode = conv_seg(
        conv_module(torch.cat(outs, 1), "decode_head.fpn_bottleneck", 1), "decode_head"
    )
    aux = conv_seg(conv_module(inputs[aux_index], "auxiliary_head.convs.0", 1), "auxiliary_head")
    return [np.transpose(t.numpy(), (0, 2, 3, 1)) for t in (decode, aux)]


def test_matches_pytorch_reference_with_converted_weights():
    pool_scales = (1, 2, 3, 6)
    model = _tiny_model(pool_scales=pool_scales)
    state = _load_random_torch_state(model)
    # The top branch (2x3) is smaller than the largest pool, so bins overlap and the pooled 6x6
    # map is resized down: both must follow PyTorch.
    features = _features([(13, 17), (7, 9), (4, 5), (2, 3)], batch=2, seed=3)
    want = _torch_reference(state, features, pool_scales)
    got = [keras.ops.convert_to_numpy(t) for t in model(features, training=False)]
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_save_load_round_trip(tmp_path):
    model = _tiny_model()
    _load_random_torch_state(model, seed=1)
    features = _features(AWKWARD_SIZES, seed=2)
    path = str(tmp_path / "upernet.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for layer in ("decode_head", "auxiliary_head"):
        assert type(loaded.get_layer(layer)) is type(model.get_layer(layer))
        assert loaded.get_layer(layer).get_config() == model.get_layer(layer).get_config()
    for a, b in zip(model(features), loaded(features)):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


@pytest.mark.parametrize(
    "make",
    [
        lambda: UPerNetHead(3, channels=4, pool_scales=[1, 3], dropout=0.2, num_inputs=3),
        lambda: FCNHead(3, channels=4, dropout=0.0, num_convs=2, in_index=-1),
        lambda: ConvBNReLU(4, 3),
    ],
    ids=["UPerNetHead", "FCNHead", "ConvBNReLU"],
)
def test_config_round_trip(make):
    layer = make()
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: UPerNetHead(0), "num_classes"),
        (lambda: UPerNetHead(3, channels=2.5), "channels"),
        (lambda: UPerNetHead(3, pool_scales=()), "pool_scales"),
        (lambda: UPerNetHead(3, pool_scales=(1, 0)), "pool_scales"),
        (lambda: UPerNetHead(3, dropout=1.0), "dropout"),
        (lambda: FCNHead(3, num_convs=0), "num_convs"),
        (lambda: FCNHead(3, in_index="2"), "in_index"),
        (lambda: ConvBNReLU(4, 2), "odd"),
    ],
)
def test_invalid_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_wrong_number_of_features():
    with pytest.raises(ValueError, match="expects 4 feature maps"):
        UPerNetHead(3, channels=4)(_features(AWKWARD_SIZES[:3]))
