import importlib.util
import json
import math
import os

import keras
import numpy as np
import pytest

from keras_hrvit.training import (
    AtomicModelCheckpoint,
    ParamGroupAdamW,
    TrainingCurves,
    WarmupCosineDecay,
    WarmupPolyDecay,
    build_adamw,
    decay_exempt_variables,
    decay_variables,
    standard_callbacks,
)
from keras_hrvit.training.optimizers import EXCLUDE_MODES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HAS_TENSORBOARD = all(importlib.util.find_spec(m) for m in ("tensorflow", "tensorboard"))


def _lr(schedule, step):
    return float(keras.ops.convert_to_numpy(schedule(step)))


def _mlp(seed=1):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    x = keras.layers.Dense(8, name="body")(inputs)
    x = keras.layers.LayerNormalization(name="ln")(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    return keras.Model(inputs, outputs, name="mlp")


def _data(n=16):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 4)).astype("float32"), rng.normal(size=(n, 2)).astype("float32")


def _values(model):
    return {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables}


# --- schedules -----------------------------------------------------------------------------


def test_warmup_poly_matches_mmcv_formula():
    s = WarmupPolyDecay(1e-2, total_steps=100, warmup_steps=10, warmup_ratio=0.1)
    # step 0: regular 1e-2, k = 0.9 -> 1e-2 * 0.1
    assert _lr(s, 0) == pytest.approx(1e-3, rel=1e-5)
    # step 5: regular 9.5e-3, k = 0.5 * 0.9 = 0.45 -> 9.5e-3 * 0.55
    assert _lr(s, 5) == pytest.approx(5.225e-3, rel=1e-5)
    # end of warm-up: plain poly, 1e-2 * (1 - 10/100)
    assert _lr(s, 10) == pytest.approx(9e-3, rel=1e-5)
    assert _lr(s, 55) == pytest.approx(4.5e-3, rel=1e-5)
    assert _lr(s, 100) == pytest.approx(0.0, abs=1e-12)
    assert _lr(s, 150) == pytest.approx(0.0, abs=1e-12)

    s = WarmupPolyDecay(1e-2, total_steps=100, warmup_steps=0, power=0.9, min_lr=1e-4)
    assert _lr(s, 0) == pytest.approx(1e-2, rel=1e-6)
    assert _lr(s, 50) == pytest.approx(9.9e-3 * 0.5**0.9 + 1e-4, rel=1e-5)
    assert _lr(s, 1000) == pytest.approx(1e-4, rel=1e-5)


def test_warmup_cosine_matches_timm_formula():
    s = WarmupCosineDecay(1e-3, total_steps=100, warmup_steps=10, warmup_start_lr=1e-5, min_lr=1e-5)
    assert _lr(s, 0) == pytest.approx(1e-5, rel=1e-5)
    assert _lr(s, 5) == pytest.approx(1e-5 + 5 * 9.9e-4 / 10, rel=1e-5)
    # timm's default warmup_prefix=False: the cosine clock includes the warm-up steps.
    expected_10 = 1e-5 + 0.5 * 9.9e-4 * (1 + math.cos(math.pi * 0.1))
    assert _lr(s, 10) == pytest.approx(expected_10, rel=1e-5)
    assert _lr(s, 50) == pytest.approx(5.05e-4, rel=1e-5)
    assert _lr(s, 100) == pytest.approx(1e-5, rel=1e-5)
    assert _lr(s, 500) == pytest.approx(1e-5, rel=1e-5)

    s = WarmupCosineDecay(1e-3, total_steps=100, warmup_steps=10, warmup_prefix=True)
    assert _lr(s, 10) == pytest.approx(1e-3, rel=1e-5)
    assert _lr(s, 55) == pytest.approx(5e-4, rel=1e-5)


def test_schedules_serialize_and_validate():
    for s in (
        WarmupPolyDecay(6e-5, 160000, warmup_steps=1500, power=0.9, min_lr=1e-6),
        WarmupCosineDecay(1e-3, 1000, warmup_steps=50, warmup_start_lr=1e-6, min_lr=1e-5),
    ):
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(s))
        assert type(restored) is type(s)
        assert restored.get_config() == s.get_config()
        for step in (0, 25, 700, 5000):
            assert _lr(restored, step) == pytest.approx(_lr(s, step), rel=1e-6)
    # A Keras variable as the step, the way optimizers call schedules.
    step = keras.Variable(5, dtype="int32", trainable=False)
    assert _lr(WarmupPolyDecay(1e-2, 100, 10, 0.1), step) == pytest.approx(5.225e-3, rel=1e-5)

    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupPolyDecay(1e-3, total_steps=10, warmup_steps=20)
    with pytest.raises(ValueError, match="min_lr"):
        WarmupCosineDecay(1e-3, total_steps=10, min_lr=1e-2)
    with pytest.raises(TypeError, match="total_steps"):
        WarmupPolyDecay(1e-3, total_steps=10.5)


# --- optimizer -----------------------------------------------------------------------------


def test_decay_exemptions_are_norms_and_biases():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(6, name="fc")(x)
    x = keras.layers.LayerNormalization(name="ln")(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    model = keras.Model(inputs, outputs)

    exempt = [v.path for v in decay_exempt_variables(model)]
    assert exempt == [
        "conv/bias",
        "bn/gamma",
        "bn/beta",
        "fc/bias",
        "ln/gamma",
        "ln/beta",
        "head/bias",
    ]
    assert [v.path for v in decay_variables(model)] == ["conv/kernel", "fc/kernel", "head/kernel"]
    assert [v.path for v in decay_exempt_variables(model, exclude_from_decay="none")] == []
    assert [v.path for v in decay_exempt_variables(model, "norms")] == [
        "bn/gamma",
        "bn/beta",
        "ln/gamma",
        "ln/beta",
    ]
    assert [v.path for v in decay_exempt_variables(model, "layer_norms")] == ["ln/gamma", "ln/beta"]

    opt = build_adamw(model, 1e-3, weight_decay=0.05, lr_multipliers={"head": 10.0})
    assert sorted(opt.no_decay_paths) == sorted(exempt)
    assert opt.lr_multipliers == {"head/kernel": 10.0, "head/bias": 10.0}
    opt.build(model.trainable_variables)
    settings = opt.variable_settings()
    assert settings["head/kernel"] == {"lr_mult": 10.0, "decay": True}
    assert settings["bn/gamma"] == {"lr_mult": 1.0, "decay": False}

    with pytest.raises(ValueError, match="match no layer"):
        build_adamw(model, 1e-3, weight_decay=0.05, lr_multipliers={"decode_head": 10.0})
    with pytest.raises(ValueError, match="exclude_from_decay"):
        build_adamw(model, 1e-3, weight_decay=0.05, exclude_from_decay="biases")
    with pytest.raises(TypeError, match="multipliers must be numbers"):
        build_adamw(model, 1e-3, weight_decay=0.05, lr_multipliers=lambda v: True)


# MMSegmentation's `paramwise_cfg.custom_keys` of HRViT's released ADE20K / Cityscapes configs,
# in the order its DefaultOptimizerConstructor tries them (longest first, then alphabetical): the
# first key that is a substring of a parameter's name sets its lr_mult and decay_mult.
_MMSEG_CUSTOM_KEYS = (
    ("relative_position_bias_table", {"decay_mult": 0.0}),
    ("absolute_pos_embed", {"decay_mult": 0.0}),
    ("head", {"lr_mult": 10.0}),
    ("norm", {"decay_mult": 0.0}),
)


def _original_groups(model):
    """`{path: (lr_mult, decays)}` of MMSegmentation's rule applied to the original's names."""
    from keras_hrvit.weights.torch_names import torch_variable_map

    groups = {}
    for name, (variable, _) in torch_variable_map(model).items():
        if not variable.trainable:
            continue
        setting = next((cfg for key, cfg in _MMSEG_CUSTOM_KEYS if key in name), {})
        groups[variable.path] = (setting.get("lr_mult", 1.0), setting.get("decay_mult", 1.0) > 0)
    return groups


@pytest.mark.parametrize("head", ["segformer", "upernet"])
def test_segmenter_decay_exemptions_match_the_original_configs(head):
    from reference import MICRO_CONFIG, micro_backbone

    from keras_hrvit import HRViTSegmenter

    auxiliary = head == "upernet"
    model = HRViTSegmenter(
        micro_backbone(), num_classes=3, head=head, head_channels=8, auxiliary_head=auxiliary
    )
    paths = {v.path for v in model.trainable_variables}
    original = _original_groups(model)
    assert set(original) == paths  # every trainable variable has an original name
    exempt = {mode: {v.path for v in decay_exempt_variables(model, mode)} for mode in EXCLUDE_MODES}

    # The recipe's default: exactly the parameters the original exempts, the LayerNorms' scale
    # and offset: two per block (attn_norm, ffn_norm), per patch embedding and per stage norm.
    assert exempt["layer_norms"] == {p for p, (_, decays) in original.items() if not decays}
    modules = MICRO_CONFIG["blocks"]
    assert len(exempt["layer_norms"]) == sum(4 * sum(m) + 4 * len(m) for m in modules) == 56
    assert all(p.endswith(("/gamma", "/beta")) for p in exempt["layer_norms"])
    # The BatchNorms decay there (the original names them bn1, bn2, attn_bn or by index), and
    # so do the heads' and every bias.
    for path in (
        "stem/bn1/gamma",
        "m0_branch0_block0/attn/norm/gamma",
        "m0_branch0_block0/attn/norm/beta",
        "m0_branch0_block0/attn/qv/bias",
        "stem/conv1/bias",
    ):
        assert path in paths and path not in exempt["layer_norms"], path
    assert not any(p.startswith(("decode_head/", "auxiliary_head/")) for p in exempt["layer_norms"])
    assert {p for p, (mult, _) in original.items() if mult == 10.0} == {
        p for p in paths if p.startswith(("decode_head/", "auxiliary_head/"))
    }

    # The other choices, by name: every normalization layer's scale and offset; those and every
    # bias (timm's ndim <= 1); nothing.
    batch_norms = {p for p in paths if p.endswith(("/gamma", "/beta"))} - exempt["layer_norms"]
    assert exempt["norms"] == exempt["layer_norms"] | batch_norms and batch_norms
    biases = {p for p in paths if p.endswith("/bias")}
    assert exempt["norms_and_biases"] == exempt["norms"] | biases
    assert {v.path for v in model.trainable_variables if len(v.shape) <= 1} == (
        exempt["norms_and_biases"]
    )
    assert exempt["none"] == set()
    counts = {mode: len(exempt[mode]) for mode in EXCLUDE_MODES}
    if head == "segformer":
        assert len(paths) == 283
        assert counts == {"layer_norms": 56, "norms": 118, "norms_and_biases": 195, "none": 0}

    # `compile()` applies the paper recipe's choice, or the one named.
    model.compile(recipe="paper", total_steps=10)
    settings = model.optimizer.variable_settings()
    assert {p: (s["lr_mult"], s["decay"]) for p, s in settings.items()} == original
    model.compile(total_steps=10, decay_exempt="norms_and_biases")
    assert set(model.optimizer.no_decay_paths) == exempt["norms_and_biases"]
    with pytest.raises(ValueError) as info:
        model.compile(decay_exempt="biases")
    assert str(info.value) == (
        "`decay_exempt` must be one of 'layer_norms', 'norms', 'norms_and_biases', 'none'; got "
        "'biases'."
    )


def test_classifier_recipe_exempts_norms_and_biases_by_default():
    from reference import micro_backbone

    from keras_hrvit import HRViTClassifier

    model = HRViTClassifier(micro_backbone(), classes=3, head_channels=(2, 2, 2, 2))
    model.compile(total_steps=10)
    one_dimensional = {v.path for v in model.trainable_variables if len(v.shape) <= 1}
    assert set(model.optimizer.no_decay_paths) == one_dimensional
    model.compile(total_steps=10, decay_exempt="layer_norms")
    exempt = {v.path for v in decay_exempt_variables(model, "layer_norms")}
    assert set(model.optimizer.no_decay_paths) == exempt and exempt < one_dimensional


def test_multiplier_scales_first_adam_step_and_decay():
    model = _mlp()
    variables = model.trainable_variables
    for v in variables:
        v.assign(keras.ops.ones(v.shape))
    opt = build_adamw(
        model,
        learning_rate=1e-3,
        weight_decay=0.1,
        lr_multipliers=lambda v: 10.0 if v.path.startswith("head") else None,
    )
    # Zero gradients isolate the decoupled decay: w -= lr * mult * wd * w, biases/norms exempt.
    opt.apply([keras.ops.zeros(v.shape) for v in variables], variables)
    after = _values(model)
    np.testing.assert_allclose(after["body/kernel"], 1 - 1e-3 * 0.1, rtol=1e-6)
    np.testing.assert_allclose(after["head/kernel"], 1 - 1e-2 * 0.1, rtol=1e-6)
    for path in ("body/bias", "ln/gamma", "ln/beta", "head/bias"):
        np.testing.assert_allclose(after[path], 1.0, rtol=0)

    # One compiled `fit` step (jit/tf.function/torch path): Adam's first step is ~lr * sign(g).
    model = _mlp()
    model.compile(
        optimizer=build_adamw(model, 1e-3, weight_decay=0.0, lr_multipliers={"head": 10.0}),
        loss="mse",
    )
    before = _values(model)
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    after = _values(model)
    for path in before:
        expected = 1e-2 if path.startswith("head") else 1e-3
        np.testing.assert_allclose(np.abs(after[path] - before[path]), expected, rtol=1e-3)


@pytest.mark.backend
def test_param_group_adamw_matches_pytorch_adamw_over_steps():
    """Five steps against PyTorch's AdamW formula, per group (lr x mult, decay or none)."""
    model = _mlp()
    variables = model.trainable_variables
    lr, wd, b1, b2, eps = 1e-2, 0.1, 0.9, 0.999, 1e-8
    opt = build_adamw(model, lr, weight_decay=wd, lr_multipliers={"head": 10.0})
    rng = np.random.default_rng(3)
    weights = {v.path: keras.ops.convert_to_numpy(v).astype("float64") for v in variables}
    m = {p: np.zeros_like(w) for p, w in weights.items()}
    v2 = {p: np.zeros_like(w) for p, w in weights.items()}
    exempt = {v.path for v in decay_exempt_variables(model)}
    for step in range(1, 6):
        grads = {v.path: rng.normal(size=v.shape).astype("float32") for v in variables}
        opt.apply([keras.ops.convert_to_tensor(grads[v.path]) for v in variables], variables)
        for path, w in weights.items():
            step_lr = lr * (10.0 if path.startswith("head") else 1.0)
            if path not in exempt:
                w *= 1 - step_lr * wd
            m[path] = b1 * m[path] + (1 - b1) * grads[path]
            v2[path] = b2 * v2[path] + (1 - b2) * grads[path] ** 2
            m_hat, v_hat = m[path] / (1 - b1**step), v2[path] / (1 - b2**step)
            w -= step_lr * m_hat / (np.sqrt(v_hat) + eps)
    for v in variables:
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(v), weights[v.path], rtol=1e-5, atol=2e-5, err_msg=v.path
        )


def test_param_group_adamw_config_round_trip():
    opt = ParamGroupAdamW(
        learning_rate=WarmupPolyDecay(1e-3, 100, 10),
        weight_decay=0.01,
        lr_multipliers={"head": 10.0},
        no_decay_paths=["ln/gamma"],
        global_clipnorm=1.0,
    )
    config = keras.saving.serialize_keras_object(opt)
    json.dumps(config)
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, ParamGroupAdamW)
    assert restored.lr_multipliers == {"head": 10.0}
    assert restored.no_decay_paths == ["ln/gamma"]
    assert isinstance(restored._learning_rate, WarmupPolyDecay)
    with pytest.raises(ValueError, match="finite and >= 0"):
        ParamGroupAdamW(lr_multipliers={"head": -1.0})


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute only")
def test_multiplier_under_tf_distribute():
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = _mlp()
        model.compile(
            optimizer=build_adamw(model, 1e-3, weight_decay=0.0, lr_multipliers={"head": 10.0}),
            loss="mse",
        )
    before = _values(model)
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    after = _values(model)
    for path in before:
        expected = 1e-2 if path.startswith("head") else 1e-3
        np.testing.assert_allclose(np.abs(after[path] - before[path]), expected, rtol=1e-3)


# --- callbacks -----------------------------------------------------------------------------


def _compiled_mlp(total_steps=10):
    model = _mlp()
    schedule = WarmupPolyDecay(1e-2, total_steps=total_steps, warmup_steps=3, warmup_ratio=0.1)
    model.compile(
        optimizer=build_adamw(model, schedule, weight_decay=0.01, lr_multipliers={"head": 10.0}),
        loss="mse",
        metrics=["mae"],
    )
    return model


def test_atomic_checkpoint_saves_loadable_files_and_survives_failed_save(tmp_path, monkeypatch):
    model = _compiled_mlp()
    x, y = _data()
    ckpt = AtomicModelCheckpoint(tmp_path, monitor="val_loss")
    model.fit(x, y, validation_data=(x, y), batch_size=8, epochs=2, verbose=0, callbacks=[ckpt])
    assert sorted(os.listdir(tmp_path)) == ["best.json", "best.keras", "last.json", "last.keras"]
    best_state = json.loads((tmp_path / "best.json").read_text())
    assert best_state["monitor"] == "val_loss"
    ckpt.on_train_begin()  # what a resumed run sees: the stored best is kept...
    assert ckpt.best == pytest.approx(best_state["best"])
    ckpt.on_epoch_begin(0)  # ...but a run starting from epoch 0 competes afresh
    assert ckpt.best is None

    loaded = keras.saving.load_model(tmp_path / "last.keras")
    assert isinstance(loaded.optimizer, ParamGroupAdamW)
    assert isinstance(loaded.optimizer._learning_rate, WarmupPolyDecay)
    assert loaded.optimizer.lr_multipliers == model.optimizer.lr_multipliers
    assert int(loaded.optimizer.iterations) == 4
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)  # the restored optimizer keeps working

    # A save that dies halfway must leave the previous file untouched and no temp file behind.
    previous = (tmp_path / "last.keras").read_bytes()

    def broken_save(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.on_epoch_end(5, {"loss": 1.0, "val_loss": 1e9})
    assert (tmp_path / "last.keras").read_bytes() == previous
    assert sorted(os.listdir(tmp_path)) == ["best.json", "best.keras", "last.json", "last.keras"]

    with pytest.raises(ValueError, match="mode"):
        AtomicModelCheckpoint(tmp_path, mode="lowest")


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise RuntimeError("simulated crash")


class _Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs, self.iterations, self.lrs = [], [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)
        self.iterations.append(int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)))
        self.lrs.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))


def test_interrupted_fit_resumes_with_backup_and_schedule(tmp_path):
    x, y = _data()
    # 2 steps per epoch, 8 in total; no validation so each fit compiles one function only.
    fit_kwargs = dict(batch_size=8, epochs=4, shuffle=False, verbose=0)
    reference = _compiled_mlp()
    reference.fit(x, y, **fit_kwargs)

    crashed = _compiled_mlp()
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.fit(
            x,
            y,
            callbacks=standard_callbacks(tmp_path, monitor="loss") + [_Interrupt()],
            **fit_kwargs,
        )
    assert os.path.exists(tmp_path / "backup")

    resumed = _compiled_mlp()
    recorder = _Recorder()
    callbacks = standard_callbacks(tmp_path, monitor="loss") + [recorder]
    assert [type(c).__name__ for c in callbacks[:-1]] == [
        "TerminateOnNaN",
        "AtomicModelCheckpoint",
        "TrainingCurves",
        "AtomicCSVLogger",
    ] + (["TensorBoard"] if HAS_TENSORBOARD else []) + ["AtomicBackupAndRestore"]
    history = resumed.fit(x, y, callbacks=callbacks, **fit_kwargs)
    assert recorder.epochs == [2, 3]
    assert recorder.iterations == [4, 6]
    schedule = resumed.optimizer._learning_rate
    assert recorder.lrs == pytest.approx([_lr(schedule, 4), _lr(schedule, 6)], rel=1e-6)
    assert len(history.history["loss"]) == 2
    for path, value in _values(reference).items():
        np.testing.assert_allclose(_values(resumed)[path], value, rtol=1e-4, atol=1e-6)

    records = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert {"loss", "mae", "learning_rate"} <= set(records[-1])
    assert records[-1]["learning_rate"] == pytest.approx(_lr(schedule, 8), abs=1e-9)
    assert not os.path.exists(tmp_path / "backup")  # removed after a completed run
    checkpoints = sorted(os.listdir(tmp_path / "checkpoints"))
    assert checkpoints == ["best.json", "best.keras", "last.json", "last.keras"]
    if HAS_TENSORBOARD:
        assert os.listdir(tmp_path / "logs")


def test_training_curves_writes_png_and_json(tmp_path):
    model = _compiled_mlp()
    x, y = _data()
    curves = TrainingCurves(tmp_path / "run")
    model.fit(x, y, validation_split=0.25, batch_size=4, epochs=2, verbose=0, callbacks=[curves])
    png = (tmp_path / "run" / "training_curves.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "run" / "training_curves.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    records = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [r["epoch"] for r in records] == [1, 2]
    assert sorted(os.listdir(tmp_path / "run")) == ["history.json", "training_curves.png"]
