"""Runs a tutorial of `examples/` offline in its smoke form.

`run_tutorial("oxford_pets_segmentation.py", tmp_path)` runs the file in a PyTorch process
(training starts at once there; TensorFlow would trace the graph for minutes) with
`HRVIT_TUTORIAL_SMOKE=1` and matplotlib drawing to files, inside TensorFlow Datasets'
`mock_data`. Plain `mock_data` draws each image feature independently, so an image and its mask
differ in size; here every example's images share one size and its masks hold labels in the
range the real dataset uses (`MASK_LABELS`), so segmentation pipelines see consistent pairs.

Run by hand: `python tests/tutorials.py examples/oxford_pets_segmentation.py`.
"""

import os
import runpy
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
SMOKE_VARIABLE = "HRVIT_TUTORIAL_SMOKE"

# Label values of the mask feature of each mocked tfds dataset, (lowest, highest).
MASK_LABELS = {
    "oxford_iiit_pet": (1, 3),  # trimaps: 1 pet, 2 background, 3 border
}
MOCK_EXAMPLES = 4
MOCK_SIZE = (48, 64)  # height, width: not square, so a transposed axis shows


def run_tutorial(name, cwd, env=None, timeout=600):
    """Runs `examples/<name>` in smoke form in `cwd`; returns the completed process."""
    environment = dict(os.environ, KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="2")
    # One intra-op thread: tiny models on a shared 2-core machine ran 4-10x slower with two
    # (PyTorch's threads contend with tf.data's and with the other test worker).
    environment.setdefault("OMP_NUM_THREADS", "1")
    environment["PYTHONPATH"] = ROOT + os.pathsep + environment.get("PYTHONPATH", "")
    environment.update(env or {})
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), os.path.join(EXAMPLES, name)],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"{name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    )
    return result


def _consistent_examples(builder, split):
    """`MOCK_EXAMPLES` examples of `builder`'s features, images and masks of one size."""
    import numpy as np
    import tensorflow_datasets as tfds

    features = builder.info.features
    rng = np.random.default_rng(abs(hash((builder.name, str(split)))) % 2**32)
    low, high = MASK_LABELS.get(builder.name, (0, 1))
    examples = []
    for _ in range(MOCK_EXAMPLES):
        height, width = MOCK_SIZE
        # Blocks of one label, each drawn in its own colour: a learnable, consistent pair.
        labels = rng.integers(low, high + 1, size=(height // 8, width // 8))
        labels = np.kron(labels, np.ones((8, 8), dtype=labels.dtype)).astype(np.uint8)
        colours = rng.integers(0, 256, size=(high + 1, 3))
        example = {}
        for key, feature in features.items():
            if isinstance(feature, tfds.features.Image):
                channels = feature.shape[-1]
                if channels == 3 and key == "image":
                    noise = rng.integers(0, 20, size=(height, width, 3))
                    example[key] = np.clip(colours[labels] + noise, 0, 255).astype(np.uint8)
                else:  # a mask, one or three channels of labels
                    example[key] = np.repeat(labels[..., None], channels, axis=-1)
            elif isinstance(feature, tfds.features.ClassLabel):
                example[key] = np.int64(rng.integers(0, feature.num_classes))
            elif isinstance(feature, tfds.features.BBoxFeature):
                example[key] = np.array([0.1, 0.1, 0.9, 0.9], np.float32)
            elif isinstance(feature, tfds.features.Text):
                example[key] = b"mock"
            else:
                raise NotImplementedError(f"mock feature {key}: {feature}")
        examples.append(example)
    return examples


def _mock_as_dataset(builder, split, decoders=None, read_config=None, **kwargs):
    import tensorflow as tf

    examples = _consistent_examples(builder, split)
    features = builder.info.features
    # The features' own shapes, e.g. (None, None, 3) for images, as the real dataset has.
    signature = {
        key: tf.TensorSpec(features[key].shape, features[key].tf_dtype) for key in examples[0]
    }

    def generate():
        yield from examples

    ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
    return ds.apply(tf.data.experimental.assert_cardinality(len(examples)))


def main(path):
    import matplotlib

    matplotlib.use("Agg")
    import tensorflow_datasets as tfds

    os.environ[SMOKE_VARIABLE] = "1"
    sys.argv = [path]
    with tfds.testing.mock_data(as_dataset_fn=_mock_as_dataset):
        runpy.run_path(path, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1])
