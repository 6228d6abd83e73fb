"""Data-parallel training with the frameworks' own APIs.

`distribution_scope("data_parallel")` replicates the model on every local accelerator (or every
CPU device when there is none) and splits each global batch across them:

- JAX: `keras.distribution.DataParallel(devices=keras.distribution.list_devices())` is made the
  current Keras distribution; Keras then lays the variables out replicated and shards every
  batch of a `tf.data` pipeline over the devices (`Distribution.distribute_dataset`, then one
  shard per device), and XLA inserts the gradient and BatchNormalization all-reduces.
- TensorFlow: `tf.distribute.MirroredStrategy` over the local GPUs (else the logical CPU
  devices), entered together with `keras_hrvit.layers.common.synchronized_batch_norm()`, so
  the BatchNormalization layers of a model built inside use cross-replica statistics. `fit`
  splits each global batch across the replicas.
- PyTorch: not supported (Keras has no data-parallel distribution for `model.fit` there).

Build the model inside the scope. `train_segmenter` and `train_classifier` take
`distribution="data_parallel"`, check that the model was built for it and train it under the
same distribution (inside the scope or after it):

>>> from keras_hrvit.tasks.segmentation import build_segmenter, train_segmenter
>>> with distribution_scope("data_parallel"):
...     model = build_segmenter("hrvit_b1_ade20k")
...     train_segmenter(model, train_ds, val_ds, output_dir="runs/dp", epochs=10,
...                     steps_per_epoch=1000, distribution="data_parallel")

The batch size of the pipelines is the global batch; on JAX it must be a multiple of the
number of devices (each gets an equal share), on TensorFlow uneven splits are allowed.

A TensorFlow strategy already entered by the caller (for example a
`tf.distribute.MultiWorkerMirroredStrategy` configured with `TF_CONFIG`) and a JAX
`keras.distribution.DataParallel` already set (for example over a multi-host device mesh after
`keras.distribution.initialize()`) are used as they are.
"""

import contextlib
import warnings

import keras

from keras_hrvit.layers.common import synchronized_batch_norm

DISTRIBUTIONS = ("none", "data_parallel")
SUPPORTED_BACKENDS = ("jax", "tensorflow")

_CPU_HINTS = {
    "jax": (
        "set XLA_FLAGS=--xla_force_host_platform_device_count=2 in the environment before "
        "Python starts"
    ),
    "tensorflow": (
        "split the CPU into logical devices before TensorFlow initializes (in Python, before "
        "keras_hrvit.cli.train.main or any TensorFlow op): "
        "tf.config.set_logical_device_configuration(tf.config.list_physical_devices('CPU')[0], "
        "[tf.config.LogicalDeviceConfiguration()] * 2)"
    ),
}


def _normalize(distribution):
    if distribution is None:
        return "none"
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"Unknown distribution {distribution!r}; expected one of {', '.join(DISTRIBUTIONS)}."
        )
    return distribution


def _check_backend():
    backend = keras.backend.backend()
    if backend not in SUPPORTED_BACKENDS:
        raise ValueError(
            f"Data-parallel training (distribution 'data_parallel') is supported on the JAX and "
            f"TensorFlow backends, not on {backend!r}: Keras has no data-parallel distribution "
            "for `model.fit` on PyTorch. Run with KERAS_BACKEND=jax or "
            "KERAS_BACKEND=tensorflow, or train on one device (distribution 'none')."
        )
    return backend


def data_parallel_devices():
    """The devices `distribution_scope("data_parallel")` replicates the model on.

    JAX: `keras.distribution.list_devices()` (GPUs or TPUs if any, else CPUs; global devices
    after `keras.distribution.initialize()`). TensorFlow: the logical GPUs, or the logical CPU
    devices when there is no GPU.
    """
    backend = _check_backend()
    if backend == "jax":
        return list(keras.distribution.list_devices())
    import tensorflow as tf

    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return [device.name for device in devices]


_BACKEND_NAMES = {"jax": "JAX", "tensorflow": "TensorFlow"}


def _too_few_devices(backend, devices):
    return ValueError(
        f"Data-parallel training needs at least 2 devices, but {_BACKEND_NAMES[backend]} sees "
        f"{len(devices)} ({', '.join(map(str, devices)) or 'none'}). Run on a machine with "
        "several GPUs (and check CUDA_VISIBLE_DEVICES), or, to try it on CPU, "
        f"{_CPU_HINTS[backend]}."
    )


def check_distribution(distribution):
    """Returns `"none"` or `"data_parallel"`, or raises a ValueError that says what is missing.

    `None` means `"none"`. For `"data_parallel"` the backend must be JAX or TensorFlow and at
    least two devices must be visible (see `data_parallel_devices`), unless the caller has
    already set a distribution (a JAX `keras.distribution.DataParallel`, or an entered
    `tf.distribute` strategy) with several replicas.
    """
    distribution = _normalize(distribution)
    if distribution == "none":
        return distribution
    backend = _check_backend()
    active = _active(backend)
    if active is not None:
        replicas = _num_replicas(backend, active)
        if replicas < 2:
            raise _too_few_devices(backend, [f"{replicas} replica(s) of the active strategy"])
        return distribution
    devices = data_parallel_devices()
    if len(devices) < 2:
        raise _too_few_devices(backend, devices)
    return distribution


def _active(backend):
    """The data-parallel distribution or strategy the caller has already entered, if any."""
    if backend == "jax":
        current = keras.distribution.distribution()
        if current is None:
            return None
        if not isinstance(current, keras.distribution.DataParallel):
            raise ValueError(
                f"A {type(current).__name__} distribution is set; 'data_parallel' needs none or "
                "a keras.distribution.DataParallel."
            )
        return current
    import tensorflow as tf

    return tf.distribute.get_strategy() if tf.distribute.has_strategy() else None


def _num_replicas(backend, distribution):
    if backend == "jax":
        return distribution.num_model_replicas
    return distribution.num_replicas_in_sync


@contextlib.contextmanager
def distribution_scope(distribution="none"):
    """Context for building, compiling and fitting a model under `distribution`.

    Yields None for `"none"`; for `"data_parallel"`, the `keras.distribution.DataParallel`
    (JAX) or the `tf.distribute.MirroredStrategy` (TensorFlow) in use. On TensorFlow, HRViT
    layers built inside get synchronized BatchNormalization. Re-entering it inside itself (or
    inside a distribution the caller set) reuses the active one.

    Example:
    >>> with distribution_scope("data_parallel") as strategy:
    ...     model = build_segmenter("hrvit_b1", num_classes=19)
    """
    distribution = check_distribution(distribution)
    if distribution == "none":
        yield None
        return
    backend = keras.backend.backend()
    active = _active(backend)
    if backend == "jax":
        if active is not None:
            yield active
            return
        data_parallel = keras.distribution.DataParallel(devices=data_parallel_devices())
        with data_parallel.scope():
            yield data_parallel
        return
    import tensorflow as tf

    strategy = active
    if strategy is None:
        strategy = tf.distribute.MirroredStrategy(devices=data_parallel_devices())
    with strategy.scope(), synchronized_batch_norm():
        yield strategy


def model_distribution(model):
    """`"data_parallel"` if `model`'s variables are replicated on several devices, else `"none"`.

    On TensorFlow the variables of a model built under a multi-replica `tf.distribute`
    strategy are `tf.distribute.DistributedValues` (their strategy's replicas, on all workers,
    are counted); on JAX those of a model built under a
    `keras.distribution` distribution are `jax.Array`s laid out on several devices.
    """
    variables = model.weights
    if not variables:
        return "none"
    value = variables[0].value
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if isinstance(value, tf.distribute.DistributedValues):
            # `value.values` holds this worker's copies only (one per worker under a
            # MultiWorkerMirroredStrategy with one device each); count every worker's replicas.
            strategy = getattr(value, "distribute_strategy", None)
            replicas = strategy.num_replicas_in_sync if strategy else len(value.values)
            return "data_parallel" if replicas > 1 else "none"
        return "none"
    if backend == "jax":
        sharding = getattr(value, "sharding", None)
        devices = getattr(sharding, "device_set", ())
        return "data_parallel" if len(devices) > 1 else "none"
    return "none"


@contextlib.contextmanager
def training_scope(model, distribution="none"):
    """The scope `train_segmenter` and `train_classifier` compile and fit `model` in.

    Checks that `model` was built for `distribution` (see `model_distribution`), then enters
    the model's own strategy (TensorFlow) or the data-parallel distribution (JAX) for the
    optimizer, `compile` and `fit`.
    """
    distribution = check_distribution(distribution)
    built_for = model_distribution(model)
    if distribution == "data_parallel" and built_for != "data_parallel":
        raise ValueError(
            "distribution='data_parallel' needs a model built for it: build (or load) the "
            "model inside `keras_hrvit.distribution.distribution_scope('data_parallel')` and "
            "train it there."
        )
    if distribution == "none" and built_for == "data_parallel":
        raise ValueError(
            "The model's variables are replicated on several devices (it was built under a "
            "data-parallel distribution); pass distribution='data_parallel' to train it."
        )
    if distribution == "none":
        yield None
        return
    if keras.backend.backend() == "tensorflow":
        # Keras remembers the strategy a model was built under; reuse it (mixing strategies
        # is an error) even when the caller has left its scope.
        with (
            model.distribute_strategy.scope(),
            distribution_scope(distribution) as strategy,
            _multi_worker_fit(model, strategy),
        ):
            yield strategy
        return
    with distribution_scope(distribution) as data_parallel:
        yield data_parallel


@contextlib.contextmanager
def _multi_worker_fit(model, strategy):
    """Lets Keras 3's `fit` and `evaluate` run under a `MultiWorkerMirroredStrategy`.

    Keras 3 (3.15) and TensorFlow (2.21) fail there in two places (keras-team/keras issue
    20585, tensorflow/tensorflow issue 72388), which this scope works around; nothing changes
    under other strategies:

    - Before the first step, the trainer gets one batch's shapes with
      `strategy.reduce("MEAN", batch, axis=None)`, which cannot reduce a nested batch such as
      `(images, labels)` across workers ("Attempt to convert a value (PerReplica:...) with an
      unsupported type"). Here the model takes the shapes from this worker's share instead.
    - After each step, the trainer averages the logs (scalars) over the workers with
      `strategy.reduce("MEAN", value, axis=0)` ("Invalid reduction dimension 0 for input with 0
      dimensions"). Here they are averaged with `axis=None`, as over the local replicas.
    """
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        yield
        return
    _patch_multi_worker_log_reduction()

    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, data in iterator:
                data_batch = tf.nest.map_structure(local, next(data))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    # Bypasses Keras's attribute tracking: the override is no part of the model.
    object.__setattr__(model, "_maybe_symbolic_build", symbolic_build)
    try:
        yield
    finally:
        object.__delattr__(model, "_maybe_symbolic_build")


def _patch_multi_worker_log_reduction():
    """Makes Keras's TensorFlow trainer average logs over workers with `axis=None` (once).

    Replaces `keras.src.backend.tensorflow.trainer.reduce_per_replica` by a wrapper that
    differs from it only for a multi-worker `MultiWorkerMirroredStrategy` and the "auto" or
    "mean" reduction (the one `fit` and `evaluate` use for their logs); a Keras without these
    internals is left alone.
    """
    from keras.src.backend.tensorflow import trainer

    original = getattr(trainer, "reduce_per_replica", None)
    multi_worker = getattr(trainer, "_collective_all_reduce_multi_worker", None)
    if original is None or multi_worker is None or getattr(original, "_hrvit_patched", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and multi_worker(strategy):
            return keras.tree.map_structure(
                lambda value: strategy.reduce("MEAN", value, axis=None), values
            )
        return original(values, strategy, reduction)

    reduce_per_replica._hrvit_patched = True
    trainer.reduce_per_replica = reduce_per_replica


def check_gradient_clipping(optimizer, distribution):
    """Warns when TensorFlow data-parallel training will clip gradients per replica.

    Keras 3 applies an optimizer's `clipnorm`, `global_clipnorm` and `clipvalue` to each
    replica's gradients before they are summed across replicas under `tf.distribute`, so the
    clipping bounds each replica's share instead of the global gradient and the update differs
    from one-device training whenever clipping is active. On JAX the whole step, clipping
    included, runs on the global gradient. Returns True if it warned.
    """
    if distribution is None or keras.backend.backend() != "tensorflow":
        return False
    if distribution.num_replicas_in_sync < 2:
        return False
    clipping = {
        name: getattr(optimizer, name, None)
        for name in ("clipnorm", "global_clipnorm", "clipvalue")
        if getattr(optimizer, name, None)
    }
    if not clipping:
        return False
    settings = ", ".join(f"{name}={value}" for name, value in clipping.items())
    warnings.warn(
        f"Gradient clipping ({settings}) under TensorFlow data-parallel training: Keras clips "
        f"each of the {distribution.num_replicas_in_sync} replicas' gradients before summing "
        "them, not the global gradient, so the run differs from one-device training whenever "
        "clipping is active. For the same clipping as on one device, use the JAX backend or "
        "turn clipping off.",
        stacklevel=3,
    )
    return True


def shardable_batches(ds, distribution, name="dataset"):
    """`ds` with every batch splittable over the devices of `distribution`.

    Only JAX needs this: `keras.distribution.DataParallel` gives each device an equal share of
    every batch, so a batch size that is not a multiple of the number of devices fails. A fixed
    batch size that does not divide raises a ValueError here; a dataset whose batch size is not
    fixed (an evaluation pipeline ending in a partial batch) gets its indivisible batches
    skipped, with a warning. TensorFlow's `MirroredStrategy` splits any batch, and `ds` is
    returned as it is (also when `distribution` is None).
    """
    if distribution is None or keras.backend.backend() != "jax":
        return ds
    import tensorflow as tf

    if not isinstance(ds, tf.data.Dataset):
        return ds
    replicas = int(distribution.num_model_replicas)
    first = tf.nest.flatten(ds.element_spec)[0]
    batch = first.shape[0] if first.shape.rank else None
    if batch is not None:
        if batch % replicas:
            raise ValueError(
                f"`{name}` yields batches of {batch}, which data-parallel training on JAX "
                f"cannot split evenly over {replicas} devices; use a global batch size that is "
                f"a multiple of {replicas}."
            )
        return ds
    warnings.warn(
        f"`{name}` has no fixed batch size; data-parallel training on JAX skips its batches "
        f"whose size is not a multiple of the {replicas} devices (such as a final partial "
        "batch).",
        stacklevel=3,
    )

    def divisible(*element):
        return tf.shape(tf.nest.flatten(element)[0])[0] % replicas == 0

    return ds.filter(divisible)


__all__ = [
    "DISTRIBUTIONS",
    "check_distribution",
    "check_gradient_clipping",
    "data_parallel_devices",
    "distribution_scope",
    "model_distribution",
    "shardable_batches",
    "training_scope",
]
