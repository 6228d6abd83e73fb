"""Runs one data-parallel check in a fresh process (see tests/test_distribution.py).

Devices have to be configured before JAX or TensorFlow initializes, so the tests run this file
as `python tests/distribution_worker.py TASK OUTPUT_JSON [CLI args...]` with `KERAS_BACKEND` set
(and, on JAX, `XLA_FLAGS=--xla_force_host_platform_device_count=2`). It prints nothing the tests
read; the results go to OUTPUT_JSON.

Tasks:
    segmentation: trains a micro segmenter for a few steps with one global batch, once on one
        device and once with `distribution="data_parallel"` on two, starting from the same
        weights; records both runs' losses in OUTPUT_JSON, and their weights and gradient RMS
        (from AdamW's second moments) in OUTPUT.npz.
    classification: the same with a micro classifier and `train_classifier`.
    cli: `keras_hrvit.cli.train.main(args)` with the micro HRViT registered as the presets
        `test_micro` and `test_micro_shapes`; records its exit code.
"""

import json
import os
import sys
import tempfile
import time

import numpy as np

CPU_DEVICES = 2
STEPS = 2
GLOBAL_BATCH = 4
LEARNING_RATE = 1e-4  # segmentation heads get 10x (the paper recipe's head_lr_mult)
MICRO_SEGMENTER = {
    "backbone": "test_micro",
    "head": "segformer",
    "head_channels": 16,
    "num_classes": 5,
    "drop_path_rate": 0.0,
}


def configure_devices():
    """Two CPU devices: XLA_FLAGS on JAX (set by the caller), logical devices on TensorFlow."""
    import tensorflow as tf

    # The tf.data pipelines run on TensorFlow under every backend; only TensorFlow's own
    # training needs its CPU split, and only before TensorFlow initializes.
    if os.environ.get("KERAS_BACKEND") == "tensorflow":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * CPU_DEVICES
        )


def _weights(model):
    return {v.path: np.asarray(v.numpy()) for v in model.weights}


def _segmentation_data(global_batch, steps, size=32, classes=5):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.normal(size=(global_batch * steps, size, size, 3)).astype("float32")
    masks = rng.integers(0, classes, size=(global_batch * steps, size, size)).astype("int32")
    return tf.data.Dataset.from_tensor_slices((images, masks)).batch(
        global_batch, drop_remainder=True
    )


def _classification_data(global_batch, steps, size=32, classes=4):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.normal(size=(global_batch * steps, size, size, 3)).astype("float32")
    labels = np.eye(classes, dtype="float32")[rng.integers(0, classes, global_batch * steps)]
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(
        global_batch, drop_remainder=True
    )


def _build(task):
    from reference import MICRO_CONFIG

    import keras_hrvit

    # No dropout or drop path: their random draws would differ between the two runs.
    backbone = keras_hrvit.HRViTBackbone(**MICRO_CONFIG, drop_path_rate=0.0, name="micro")
    if task == "segmentation":
        return keras_hrvit.HRViTSegmenter(
            backbone, num_classes=5, head="segformer", head_channels=16, dropout=0.0
        )
    return keras_hrvit.HRViTClassifier(
        backbone,
        classes=4,
        classifier_activation=None,
        head_channels=(4, 4, 4, 4),
        dropout=0.0,
        name="micro_classifier",
    )


def _step_losses():
    """A callback collecting each step's loss (Keras logs the running mean of the epoch)."""
    import keras

    class StepLosses(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.means = []

        def on_train_batch_end(self, batch, logs=None):
            self.means.append(float(logs["loss"]))

        def losses(self):
            sums = [mean * (i + 1) for i, mean in enumerate(self.means)]
            return [sums[0]] + [b - a for a, b in zip(sums, sums[1:])]

    return StepLosses()


def _gradient_rms(model):
    """Each trainable weight's gradient RMS over the steps so far, from AdamW's second moments.

    AdamW's update hardly depends on the scale of the gradients; its second moments do, so they
    also show whether the replicas' gradients were combined into the global batch's gradient.
    """
    by_name = {v.name: v for v in model.optimizer.variables}
    return {
        variable.path: np.sqrt(
            np.asarray(by_name[variable.path.replace("/", "_") + "_velocity"].numpy())
        )
        for variable in model.trainable_variables
    }


def _train(task, model, data, output_dir, distribution, steps):
    from reference import fast_compile_kwargs

    losses = _step_losses()
    common = dict(
        output_dir=output_dir,
        epochs=1,
        steps_per_epoch=steps,
        tensorboard=False,
        callbacks=[losses],
        verbose=0,
        distribution=distribution,
        **fast_compile_kwargs(),
    )
    if task == "segmentation":
        from keras_hrvit.tasks.segmentation import train_segmenter

        # The paper's recipe: two learning rates (heads at 10x), poly decay, decay exemptions.
        recipe = dict(recipe="paper", learning_rate=LEARNING_RATE, warmup_steps=0)
        train_segmenter(model, data, **recipe, **common)
    else:
        from keras_hrvit.tasks.classification import train_classifier

        batch_size = int(data.element_spec[0].shape[0])
        # base_lr is for a batch of 1024.
        base_lr = LEARNING_RATE * 1024 / batch_size
        # No gradient clipping: on TensorFlow, Keras clips each replica's share of the gradient
        # before summing them (see keras_hrvit.distribution.check_gradient_clipping).
        train_classifier(
            model,
            data,
            batch_size=batch_size,
            base_lr=base_lr,
            warmup_epochs=0,
            global_clipnorm=None,
            **common,
        )
    return losses.losses()


def run_equivalence(task, global_batch=GLOBAL_BATCH, steps=STEPS):
    import keras

    from keras_hrvit.distribution import distribution_scope, model_distribution

    make_data = _segmentation_data if task == "segmentation" else _classification_data
    result = {"backend": keras.backend.backend()}
    arrays = {}
    with tempfile.TemporaryDirectory() as tmp:
        keras.utils.set_random_seed(0)
        model = _build(task)
        initial = [w.copy() for w in model.get_weights()]
        # A model built outside the distribution cannot be trained data-parallel.
        try:
            _train(task, model, make_data(global_batch, 1), tmp, "data_parallel", 1)
        except ValueError as error:
            result["unbuilt_error"] = str(error)
        start = time.time()
        result["single_loss"] = _train(
            task, model, make_data(global_batch, steps), os.path.join(tmp, "one"), None, steps
        )
        result["single_seconds"] = time.time() - start
        arrays["single"] = _weights(model)
        arrays["single_gradient_rms"] = _gradient_rms(model)

        with distribution_scope("data_parallel") as replicas:
            parallel_model = _build(task)
            parallel_model.set_weights(initial)
            result["built_for"] = model_distribution(parallel_model)
            result["synchronized_bn"] = sorted(
                {
                    bool(layer.synchronized)
                    for layer in parallel_model._flatten_layers()
                    if isinstance(layer, keras.layers.BatchNormalization)
                }
            )
            if keras.backend.backend() == "jax":
                result["replicas"] = replicas.num_model_replicas
            else:
                result["replicas"] = replicas.num_replicas_in_sync
        # train_* enter the model's distribution again (here, after the scope was left).
        start = time.time()
        result["parallel_loss"] = _train(
            task,
            parallel_model,
            make_data(global_batch, steps),
            os.path.join(tmp, "two"),
            "data_parallel",
            steps,
        )
        result["parallel_seconds"] = time.time() - start
        arrays["parallel"] = _weights(parallel_model)
        arrays["parallel_gradient_rms"] = _gradient_rms(parallel_model)
    return result, arrays


def main(argv):
    task, output = argv[0], argv[1]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    configure_devices()
    if task == "cli":
        from reference import MICRO_CONFIG

        from keras_hrvit import presets
        from keras_hrvit.cli import train

        # The micro HRViT as presets, as in tests/test_train_segmentation.py.
        presets.BACKBONE_PRESETS["test_micro"] = dict(MICRO_CONFIG)
        presets.SEGMENTER_PRESETS["test_micro_shapes"] = MICRO_SEGMENTER
        try:
            code = train.main(argv[2:])
        except SystemExit as exit_:
            code = exit_.code
        result = {"exit_code": code}
    else:
        result, arrays = run_equivalence(task)
        # The weights and gradient RMS of both runs, as "single/<weight path>" and so on.
        np.savez(
            os.path.splitext(output)[0] + ".npz",
            **{
                f"{kind}/{path}": a
                for kind, by_path in arrays.items()
                for path, a in by_path.items()
            },
        )
    with open(output, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1:])
