"""The plain-PyTorch re-implementation of the original HRViT (benchmarks/original_torch.py)
against the tensors the original code produced (tests/fixtures/hrvit_tiny_reference.npz)."""

import importlib.util
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from reference import SIZES, reference, state_dict, tiny_backbone  # noqa: E402

_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "original_torch.py")


def _module():
    spec = importlib.util.spec_from_file_location("original_torch", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def original():
    return _module()


@pytest.fixture(scope="module")
def tiny(original):
    model = original.build_from_config(str(reference()["config/tiny"]))
    weights = original.backbone_state_dict(state_dict("sd/"))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    return model.eval()


@pytest.mark.parametrize("size", SIZES)
def test_matches_original_features(tiny, size):
    ref = reference()
    with torch.no_grad():
        features = tiny(torch.from_numpy(ref[f"in/{size}"]))
    assert len(features) == 4
    for i, feature in enumerate(features):
        expected = ref[f"feat/{size}/{i}"]
        assert feature.shape == expected.shape
        np.testing.assert_allclose(feature.numpy(), expected, rtol=0, atol=1e-4)


def test_loads_every_backbone_parameter(original, tiny):
    weights = original.backbone_state_dict(state_dict("sd/"))
    assert set(weights) == set(tiny.state_dict()) - {
        k for k in tiny.state_dict() if k.endswith("num_batches_tracked")
    }


def _trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("variant, count", [("b1", 7_758_008), ("b2", 20_310_944)])
def test_parameter_counts(original, variant, count):
    assert _trainable(original.build_original(variant)) == count


def test_segmenter_has_our_segmenters_parameters_and_output(original, tiny):
    """bench.py times the original's train step with this SegFormer head against ours: the two
    segmenters must be the same network size and give full-resolution logits."""
    import keras_hrvit

    segmenter = original.OriginalSegmenter(tiny, num_classes=5, channels=24).train()
    logits = segmenter(torch.zeros(2, 3, 64, 96))
    assert tuple(logits.shape) == (2, 5, 64, 96)
    ours = keras_hrvit.HRViTSegmenter(tiny_backbone(), num_classes=5, head_channels=24)
    assert _trainable(segmenter) == sum(int(np.prod(v.shape)) for v in ours.trainable_variables)
