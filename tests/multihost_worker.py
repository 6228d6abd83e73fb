"""One process of the multi-process training check (see tests/test_multihost.py).

Run as `python tests/multihost_worker.py MODE OUTPUT_JSON [INITIAL_NPZ]` with `KERAS_BACKEND`
set. It trains the micro segmenter of tests/distribution_worker.py for `STEPS` AdamW steps on the
same global batches (`GLOBAL_BATCH` images each), with `train_segmenter`:

    single: one process on one device (`distribution=None`), the reference. Also saves the
        initial weights to INITIAL_NPZ.
    worker: one of several processes that train one model together (`distribution=
        "data_parallel"`), starting from the weights in INITIAL_NPZ. The cluster comes from the
        environment, as a user sets it on each host:
        - JAX: `KERAS_DISTRIBUTION_JOB_ADDRESSES` (the coordinator's host:port),
          `KERAS_DISTRIBUTION_NUM_PROCESSES` and `KERAS_DISTRIBUTION_PROCESS_ID`, read by
          `keras.distribution.initialize()` (which calls `jax.distributed.initialize()`); each
          process has one CPU device and gets its share of each global batch from Keras
          (`DataParallel.distribute_dataset`).
        - TensorFlow: `TF_CONFIG`, read by `tf.distribute.MultiWorkerMirroredStrategy`; the
          model is built in `strategy.scope()` and `distribution_scope("data_parallel")` (which
          reuses the strategy and synchronizes BatchNormalization across the workers), and
          `fit` shards each global batch across the workers.

The losses go to OUTPUT_JSON; the final weights and the gradient RMS (from AdamW's second
moments) to OUTPUT.npz as "weights/<path>" and "gradient_rms/<path>". Each process keeps to
one CPU thread where the framework allows it (the machine the tests run on has two cores).
"""

import contextlib
import json
import os
import sys
import tempfile
import time

import numpy as np

TASK = "segmentation"


def _limit_threads(backend):
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def _start_cluster(backend):
    """Joins the cluster described by the environment; returns the TensorFlow strategy."""
    if backend == "jax":
        import keras

        # The JAX coordinator (process 0) and every process's CPU collectives (gloo, JAX's
        # default) start here, from KERAS_DISTRIBUTION_* in the environment.
        keras.distribution.initialize()
        return None
    import tensorflow as tf

    # Before any other TensorFlow work: the strategy starts the collective ops' server on this
    # worker's TF_CONFIG address and waits for the other workers.
    implementation = tf.distribute.experimental.CommunicationImplementation.RING
    return tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=implementation
        )
    )


def _cluster_info(backend, strategy):
    if backend == "jax":
        import jax

        return {
            "process_index": jax.process_index(),
            "process_count": jax.process_count(),
            "local_devices": jax.local_device_count(),
            "devices": jax.device_count(),
        }
    resolver = strategy.cluster_resolver
    return {
        "process_index": int(resolver.task_id),
        "process_count": len(resolver.cluster_spec().as_dict().get("worker", [])),
        "local_devices": len(strategy.extended.worker_devices),
        "devices": int(strategy.num_replicas_in_sync),
    }


def run(mode, initial_path):
    import keras
    from distribution_worker import (
        GLOBAL_BATCH,
        STEPS,
        _build,
        _gradient_rms,
        _segmentation_data,
        _train,
        _weights,
    )

    from keras_hrvit.distribution import distribution_scope, model_distribution

    backend = keras.backend.backend()
    _limit_threads(backend)
    strategy = _start_cluster(backend) if mode == "worker" else None
    result = {"backend": backend, "mode": mode}
    keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        if mode == "single":
            model = _build(TASK)
            np.savez(initial_path, *model.get_weights())
            distribution = None
        else:
            result.update(_cluster_info(backend, strategy))
            with open(initial_path, "rb") as f, np.load(f) as npz:
                initial = [npz[f"arr_{i}"] for i in range(len(npz.files))]
            scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
            with scope, distribution_scope("data_parallel") as replicas:
                model = _build(TASK)
                model.set_weights(initial)
                result["replicas"] = int(
                    replicas.num_model_replicas
                    if backend == "jax"
                    else replicas.num_replicas_in_sync
                )
                result["synchronized_bn"] = sorted(
                    {
                        bool(layer.synchronized)
                        for layer in model._flatten_layers()
                        if isinstance(layer, keras.layers.BatchNormalization)
                    }
                )
            result["built_for"] = model_distribution(model)
            distribution = "data_parallel"
        start = time.time()
        # Every process writes its own checkpoints and history, as the README says to.
        result["loss"] = _train(
            TASK,
            model,
            _segmentation_data(GLOBAL_BATCH, STEPS),
            os.path.join(tmp, "run"),
            distribution,
            STEPS,
        )
        result["seconds"] = time.time() - start
        arrays = {"weights": _weights(model), "gradient_rms": _gradient_rms(model)}
    return result, arrays


def main(argv):
    mode, output, initial_path = argv
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    result, arrays = run(mode, initial_path)
    np.savez(
        os.path.splitext(output)[0] + ".npz",
        **{f"{kind}/{path}": a for kind, by_path in arrays.items() for path, a in by_path.items()},
    )
    with open(output, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1:])
