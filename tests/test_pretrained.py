"""Fine-tuning from pretrained backbones: `keras_hrvit.weights.load_backbone_weights` and the
training CLIs' `--backbone-weights`, and every `model.keras` the package writes loading after
`import keras_hrvit` alone.

The API tests build micro and tiny models only (no training) and run on every backend. The CLI
tests train a micro classifier and a micro segmenter for one step each through
`keras_hrvit.cli.train`; their train steps cost a minute or more to compile on JAX, so they run on
the default test backend (TensorFlow, eagerly) only.
"""

import contextlib
import io
import os
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from reference import MICRO_CONFIG, fast_compile_flags, state_dict, tiny_backbone, tiny_config

import keras_hrvit
from keras_hrvit import presets
from keras_hrvit.cli import train
from keras_hrvit.cli import train_classification as cls_cli
from keras_hrvit.tasks import segmentation as seg_task
from keras_hrvit.weights import (
    BackboneWeightsError,
    load_backbone_weights,
    load_torch_state_dict,
    transfer_backbone_weights,
)

MICRO_SEGMENTER = {
    "backbone": "test_micro",
    "head": "segformer",
    "head_channels": 16,
    "num_classes": 5,
    "drop_path_rate": 0.0,
}
HEAD_CHANNELS = (4, 4, 4, 4)  # a small classifier head keeps the CLI runs fast
NUM_CLASSES = 8  # the embedded classification set


def _register_presets(monkeypatch):
    monkeypatch.setitem(presets.BACKBONE_PRESETS, "test_micro", dict(MICRO_CONFIG))
    monkeypatch.setitem(presets.SEGMENTER_PRESETS, "test_micro_shapes", MICRO_SEGMENTER)
    # The configuration of the original code's fixture checkpoint.
    monkeypatch.setitem(presets.BACKBONE_PRESETS, "test_tiny", tiny_config()[0])
    original = cls_cli.build_classifier
    monkeypatch.setattr(
        cls_cli,
        "build_classifier",
        lambda *args, **kwargs: original(*args, **{**kwargs, "head_channels": HEAD_CHANNELS}),
    )


@pytest.fixture
def micro_presets(monkeypatch):
    _register_presets(monkeypatch)


def _micro_segmenter(name="micro_seg", **backbone_overrides):
    backbone = keras_hrvit.HRViTBackbone(**{**MICRO_CONFIG, **backbone_overrides}, name=name)
    return keras_hrvit.HRViTSegmenter(backbone, num_classes=3, head_channels=8)


def _micro_classifier():
    backbone = keras_hrvit.HRViTBackbone(**MICRO_CONFIG, name="micro_cls")
    return keras_hrvit.HRViTClassifier(
        backbone, classes=4, classifier_activation=None, head_channels=HEAD_CHANNELS
    )


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def _assert_same(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def _differs(got, want):
    return any(a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(got, want))


def _mmseg_state():
    # MMSegmentation's layout, saved from a DataParallel model.
    weights = {f"module.backbone.{k}": v for k, v in state_dict("sd/").items() if "head." not in k}
    weights.update({f"module.{k}": v for k, v in state_dict("seg/").items()})
    return weights


@pytest.fixture(scope="module")
def tiny_reference():
    """The fixture checkpoint's backbone weights, loaded by `load_torch_state_dict`."""
    backbone = tiny_backbone(name="reference")
    load_torch_state_dict(backbone, state_dict("sd/"), strict=False)
    weights = _weights(backbone)
    keras.backend.clear_session()
    return weights


# --- the API ---------------------------------------------------------------------------------


@pytest.mark.backend
@pytest.mark.parametrize(
    "layout, suffix, ignored",
    [
        ("classification", ".npz", "106 head parameters (head.*)"),
        ("mmseg", ".npz", "15 head parameters (decode_head.*)"),
        ("classification", ".pth", "106 head parameters (head.*)"),
    ],
)
def test_original_checkpoint_fills_the_backbone_only(
    tmp_path, tiny_reference, layout, suffix, ignored
):
    state = state_dict("sd/") if layout == "classification" else _mmseg_state()
    path = tmp_path / f"{layout}{suffix}"
    if suffix == ".pth":
        torch = pytest.importorskip("torch")
        torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}}, path)
    else:
        np.savez(path, **state)
    segmenter = keras_hrvit.HRViTSegmenter(tiny_backbone(), num_classes=3, head_channels=8)
    head = _weights(segmenter.decode_head)

    text = load_backbone_weights(segmenter, path)

    assert f"original checkpoint '{path}'" in text and f"ignored {ignored}" in text, text
    _assert_same(_weights(segmenter.backbone), tiny_reference)
    _assert_same(_weights(segmenter.decode_head), head)


# Weight files hold NumPy arrays, read the same way on every backend: TensorFlow and PyTorch
# check it in CI, not JAX (an eager first call at a new shape costs 15 s of compilation there).
@pytest.mark.backend
@pytest.mark.skipif(keras.backend.backend() == "jax", reason="backend-neutral; XLA time in CI")
def test_keras_file_weights_files_preset_and_model_sources(tmp_path):
    classifier = _micro_classifier()
    want = _weights(classifier.backbone)
    classifier.save(tmp_path / "classifier.keras")
    classifier.save_weights(tmp_path / "classifier.weights.h5")
    classifier.backbone.save_weights(tmp_path / "backbone.weights.h5")
    classifier.save_to_preset(tmp_path / "preset")
    sources = {
        "classifier.keras": ".keras file",
        "classifier.weights.h5": "backbone of the weights file",
        "backbone.weights.h5": "backbone weights file",
        "preset": "preset",
    }
    for name, kind in sources.items():
        segmenter = _micro_segmenter()
        head = _weights(segmenter.decode_head)
        assert _differs(_weights(segmenter.backbone), want)
        text = load_backbone_weights(segmenter, tmp_path / name)
        assert kind in text and "28 layers" in text, text
        _assert_same(_weights(segmenter.backbone), want)
        _assert_same(_weights(segmenter.decode_head), head)
    # An in-memory model, and a bare backbone as the target.
    backbone = keras_hrvit.HRViTBackbone(**MICRO_CONFIG, name="target")
    assert "model 'micro_cls_classifier'" in load_backbone_weights(backbone, classifier)
    _assert_same(_weights(backbone), want)


@pytest.mark.backend
def test_failures_are_one_line_and_leave_the_model_untouched(tmp_path):
    np.savez(tmp_path / "tiny.npz", **state_dict("sd/"))
    (tmp_path / "notes.txt").write_text("x")
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(tmp_path / "dense.keras")
    wider = keras_hrvit.HRViTClassifier(
        keras_hrvit.HRViTBackbone(**{**MICRO_CONFIG, "channels": (16, 16, 32, 48)}),
        classes=4,
        head_channels=HEAD_CHANNELS,
    )
    wider.save(tmp_path / "wider.keras")
    wider.backbone.save_weights(tmp_path / "wider.weights.h5")
    cases = [
        ("notes.txt", BackboneWeightsError, "unknown kind of file ('.txt' suffix)"),
        ("missing.pth", FileNotFoundError, "no such file"),
        ("dense.keras", BackboneWeightsError, "without an HRViT backbone"),
        ("tiny.npz", BackboneWeightsError, "mismatch: layer 'stem'"),
        ("wider.keras", BackboneWeightsError, "Shape mismatch in layer 'm3_fusion'"),
        ("wider.weights.h5", BackboneWeightsError, "mismatch: layer 'm3_fusion'"),
    ]
    segmenter = _micro_segmenter()
    before = _weights(segmenter)
    for name, error, message in cases:
        with pytest.raises(error) as info:
            load_backbone_weights(segmenter, tmp_path / name)
        text = str(info.value)
        assert message in text, text
        assert "\n" not in text and str(tmp_path / name) in text and "allowed" in text, text
        _assert_same(_weights(segmenter), before)
    for handle, message in [
        ("ftp://host/weights", "unknown scheme 'ftp://'"),
        ("hf://no-owner", "must be hf://owner/name"),  # refused before any download
        ("hrvit_b1", "a built-in preset name, which has no pretrained weights"),
    ]:
        with pytest.raises(BackboneWeightsError, match=re.escape(message)):
            load_backbone_weights(segmenter, handle)
    with pytest.raises(TypeError, match="must be an HRViTSegmenter"):
        load_backbone_weights(keras.Sequential([keras.layers.Dense(2)]), tmp_path / "tiny.npz")


# --- the training CLIs -----------------------------------------------------------------------


class _RecordBackbone(keras.callbacks.Callback):
    """Keeps the backbone weights as `fit` starts; optionally stops the run there."""

    weights = None

    def __init__(self, stop=False):
        super().__init__()
        self.stop = stop

    def on_train_begin(self, logs=None):
        _RecordBackbone.weights = _weights(self.model.backbone)
        if self.stop:
            raise _Stop()


class _Stop(Exception):
    pass


def _with_recorder(monkeypatch, stop=False):
    original = seg_task.standard_callbacks
    monkeypatch.setattr(
        seg_task,
        "standard_callbacks",
        lambda *a, **k: original(*a, **k) + [_RecordBackbone(stop)],
    )
    _RecordBackbone.weights = None


def _classification_argv(output_dir):
    return [
        "classification",
        "--model", "test_micro",
        "--image-size", "32",
        "--num-train-images", "8",
        "--batch-size", "4",
        "--epochs", "1",
        "--steps-per-epoch", "1",
        "--warmup-epochs", "0",
        "--val-split", "none",
        "--light-augment",
        "--no-tensorboard",
        "--verbose", "0",
        "--seed", "1",  # the segmentation runs use seed 0: other initial weights
        *fast_compile_flags(),
        "--output-dir", str(output_dir),
    ]  # fmt: skip


def _segmentation_argv(output_dir, model="test_micro_shapes", extra=()):
    return [
        "segmentation",
        "--dataset", "shapes",
        "--image-size", "64",
        "--train-images", "4",
        "--model", model,
        "--crop-size", "64",
        "--batch-size", "2",
        "--epochs", "1",
        "--steps-per-epoch", "1",
        "--no-validation",
        "--no-tensorboard",
        "--verbose", "0",
        *fast_compile_flags(),
        "--output-dir", str(output_dir),
        *extra,
    ]  # fmt: skip


# The CLI is backend-neutral around the train step: the pretrain-then-fine-tune runs are
# PyTorch's in CI (a quarter of TensorFlow's eager time); the CLI's TensorFlow runs are
# test_segmentation_cli_from_an_original_checkpoint's and test_run_faults'.
CLI_RUNS_ON_TORCH = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="PyTorch's CLI runs in CI; CI time"
)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """A classifier pretrained by the CLI, then a segmenter fine-tuned from its model.keras."""
    root = tmp_path_factory.mktemp("cli")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as monkeypatch, contextlib.redirect_stdout(out):
        _register_presets(monkeypatch)
        assert train.main(_classification_argv(root / "cls")) == 0
        keras.backend.clear_session()
        _with_recorder(monkeypatch)
        source = str(root / "cls" / "model.keras")
        argv = _segmentation_argv(root / "seg", extra=["--backbone-weights", source])
        assert train.main(argv) == 0
        recorded = _RecordBackbone.weights
    keras.backend.clear_session()
    return {"root": root, "stdout": out.getvalue(), "recorded": recorded}


@pytest.mark.backend
@CLI_RUNS_ON_TORCH
def test_segmentation_cli_fine_tunes_from_a_cli_trained_classifier(cli_runs):
    root = cli_runs["root"]
    source = root / "cls" / "model.keras"
    loaded = f"Loaded pretrained weights: backbone 'test_micro' <- .keras file '{source}'"
    assert loaded in cli_runs["stdout"]
    classifier = keras.saving.load_model(source, compile=False)
    # The weights `fit` started from are the classifier's backbone.
    _assert_same(cli_runs["recorded"], _weights(classifier.backbone))
    assert os.path.exists(root / "seg" / "model.keras")


@pytest.mark.backend
@CLI_RUNS_ON_TORCH
def test_cli_trained_classifier_loads_and_transfers(cli_runs, micro_presets):
    classifier = keras.saving.load_model(cli_runs["root"] / "cls" / "model.keras")
    assert isinstance(classifier, keras_hrvit.HRViTClassifier)
    assert classifier.classes == NUM_CLASSES and classifier.optimizer.built
    segmenter = keras_hrvit.HRViTSegmenter.from_preset("test_micro", num_classes=3)
    copied = transfer_backbone_weights(classifier, segmenter)
    assert copied[0] == "stem" and len(copied) == 28
    _assert_same(_weights(segmenter.backbone), _weights(classifier.backbone))


def test_segmentation_cli_from_an_original_checkpoint(
    micro_presets, tmp_path, monkeypatch, capsys, tiny_reference
):
    checkpoint = tmp_path / "hrvit_tiny_in1k.npz"
    np.savez(checkpoint, **state_dict("sd/"))
    _with_recorder(monkeypatch, stop=True)  # the weights as `fit` starts are all that matter
    extra = ["--head", "segformer", "--head-channels", "8", "--backbone-weights", str(checkpoint)]
    with pytest.raises(_Stop):
        train.main(_segmentation_argv(tmp_path / "run", model="test_tiny", extra=extra))
    out = capsys.readouterr().out
    assert f"<- original checkpoint '{checkpoint}'" in out
    assert "ignored 106 head parameters (head.*)" in out
    _assert_same(_RecordBackbone.weights, tiny_reference)


def test_resumed_run_does_not_reload_the_backbone(micro_presets, tmp_path, monkeypatch, capsys):
    keras.utils.set_random_seed(1)  # the run builds its model with seed 0
    classifier = _micro_classifier()
    classifier.save(tmp_path / "classifier.keras")

    class StopAfterAnEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise _Stop()  # after the resume state is written: a run to resume

    original = seg_task.standard_callbacks
    with monkeypatch.context() as patch:
        patch.setattr(
            seg_task, "standard_callbacks", lambda *a, **k: original(*a, **k) + [StopAfterAnEpoch()]
        )
        with pytest.raises(_Stop):
            train.main(_segmentation_argv(tmp_path / "run"))
    capsys.readouterr()
    _with_recorder(monkeypatch, stop=True)
    extra = ["--backbone-weights", str(tmp_path / "classifier.keras")]
    with pytest.raises(_Stop):
        train.main(_segmentation_argv(tmp_path / "run", extra=extra))
    assert "not loaded: the resumed run restores its own weights" in capsys.readouterr().out
    assert _differs(_RecordBackbone.weights, _weights(classifier.backbone))


@pytest.mark.backend
@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_bad_backbone_weights_are_parser_errors(micro_presets, tmp_path, capsys, task):
    np.savez(tmp_path / "tiny.npz", **state_dict("sd/"))
    argv = _segmentation_argv if task == "segmentation" else _classification_argv
    for source, message in [
        (tmp_path / "missing.pth", "no such file"),
        (tmp_path / "weights.bin", "unknown kind of file ('.bin' suffix)"),
        (tmp_path / "tiny.npz", "backbone configuration mismatch: layer 'stem'"),  # after build
    ]:
        with pytest.raises(SystemExit) as info:
            train.main(argv(tmp_path / "run") + ["--backbone-weights", str(source)])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"python -m keras_hrvit.train {task}: error: --backbone-weights: ")
        assert message in err and str(source) in err


# --- every model.keras the package writes loads after `import keras_hrvit` alone --------------

_LOAD_SCRIPT = textwrap.dedent(
    """
    import sys

    import keras
    import keras_hrvit

    # Nothing but the package itself: registration must not depend on the CLI modules.
    others = ("keras_hrvit.cli", "keras_hrvit.tasks", "keras_hrvit.convert", "keras_hrvit.train")
    packages = ("keras_hrvit.cli.", "keras_hrvit.tasks.")
    imported = [m for m in sys.modules if m in others or m.startswith(packages)]
    assert not imported, imported
    for path in sys.argv[1:]:
        model = keras.saving.load_model(path)
        optimizer = getattr(model, "optimizer", None)  # Keras sets it in `compile`
        if optimizer is None:  # saved uncompiled
            print(type(model).__name__, None, None, None)
            continue
        steps = int(keras.ops.convert_to_numpy(optimizer.iterations))
        print(type(model).__name__, type(optimizer).__name__, optimizer.built, steps)
    """
)


def _load_in_fresh_process(paths):
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, *map(str, paths)],
        capture_output=True,
        text=True,
        env=dict(os.environ, KERAS_BACKEND=keras.backend.backend()),
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-len(paths) :]


@pytest.mark.backend
@CLI_RUNS_ON_TORCH
def test_cli_and_converted_models_load_after_importing_keras_hrvit_only(cli_runs, tmp_path):
    from keras_hrvit.convert import convert_checkpoint

    root = cli_runs["root"]
    checkpoint = tmp_path / "tiny.npz"
    np.savez(checkpoint, **state_dict("sd/"))
    converted = convert_checkpoint(checkpoint, tmp_path / "tiny.keras", config=tiny_config()[0])
    paths = [
        root / "seg" / "model.keras",
        root / "seg" / "checkpoints" / "last.keras",
        root / "cls" / "model.keras",
        root / "cls" / "checkpoints" / "last.keras",
        converted,
    ]
    # One fresh process for all of them: its start and imports cost 15 s.
    lines = _load_in_fresh_process(paths)
    names = [line.split()[0] for line in lines]
    assert names == ["HRViTSegmenter"] * 2 + ["HRViTClassifier"] * 3
    # Compiled: the optimizer comes back built, with the step count of the one-step runs.
    assert all(line.split()[2:] == ["True", "1"] for line in lines[:4]), lines
