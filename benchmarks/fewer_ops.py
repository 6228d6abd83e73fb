"""Candidate rewrites of HRViT into fewer, larger operations, each against the model as it is,
interleaved in one process, on one backend (KERAS_BACKEND).

Each candidate replaces one layer's `call` with an equivalent computation in fewer operations:

- "stripes batched": on a square map the two stripe directions of the cross-shaped attention have
  the same stripes, so both run as one attention over the two stacked along the batch (half the
  attention kernels, each twice as large).
- "one 5x5 depthwise": the MixCFN's 3x3 and 5x5 depthwise convolutions on the two halves of its
  hidden channels run as one 5x5 convolution whose first half carries the 3x3 kernel padded with
  zeros (no slicing of the input, no concatenation of the outputs; more multiply-adds).

Every round times each configuration once, in turn; the table gives each one's median against
the model as it is, and the largest difference of its output from that model's. Prints a table
and writes JSON. Neither rewrite is in the package: benchmarks/README.md has the figures.

    KERAS_BACKEND=tensorflow python benchmarks/fewer_ops.py --size 512 --rounds 9
"""

import argparse
import os
import time

import numpy as np


def stripes_batched(self, x, training=None):
    """CrossShapedAttention.call with both stripe directions in one attention (square maps)."""
    from keras import ops

    from keras_hrvit.layers.common import hard_swish

    qv = self.qv(x)
    q, v = qv[..., : self.dim], qv[..., self.dim :]
    parallel = self.parallel_conv(hard_swish(v))
    half = self.dim // 2
    height, width = x.shape[1:3]
    if height != width:
        raise ValueError("the batched stripes need a square map")
    out = self._stripe_attention(
        ops.concatenate([q[..., :half], ops.transpose(q[..., half:], (0, 2, 1, 3))], axis=0),
        ops.concatenate([v[..., :half], ops.transpose(v[..., half:], (0, 2, 1, 3))], axis=0),
    )
    rows, cols = ops.split(out, 2, axis=0)
    y = ops.concatenate([rows, ops.transpose(cols, (0, 2, 1, 3))], axis=-1)
    return self.norm(self.proj(hard_swish(y + parallel)), training=training)


def one_depthwise(self, x):
    """MixCFN.call with its two depthwise convolutions as one 5x5 convolution."""
    import keras
    from keras import ops

    from keras_hrvit.layers import conv
    from keras_hrvit.layers.common import gelu

    x = self.fc1(x)
    kernel = ops.concatenate(
        [ops.pad(self.conv_3.kernel, ((1, 1), (1, 1), (0, 0), (0, 0))), self.conv_5.kernel],
        axis=2,
    )
    if conv._xla_for_cpu():
        y = conv._shifted_sum_depthwise(x, kernel, (1, 1), "same")
    elif keras.backend.backend() == "torch" and conv._torch_eager():
        y = conv._channels_first_view(ops.depthwise_conv, x, kernel, (1, 1), "same", (1, 1))
    else:
        y = ops.depthwise_conv(x, kernel, 1, "same")
    y = y + ops.concatenate([self.conv_3.bias, self.conv_5.bias], axis=0)
    return self.fc2(gelu(y))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="hrvit_b1")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", default="benchmarks/results/fewer_ops.json")
    args = parser.parse_args()
    import keras

    import keras_hrvit
    from keras_hrvit.files import write_json
    from keras_hrvit.layers import CrossShapedAttention, MixCFN

    candidates = {
        "as is": {},
        "stripes batched": {(CrossShapedAttention, "call"): stripes_batched},
        "one 5x5 depthwise": {(MixCFN, "call"): one_depthwise},
    }
    originals = {key: getattr(*key) for patch in candidates.values() for key in patch}
    shape = (args.size, args.size, 3)
    base = keras_hrvit.HRViTBackbone.from_preset(args.model, input_shape=shape)
    images = np.random.default_rng(0).random((args.batch,) + shape).astype("float32")

    def patched(patch, fn):
        # On PyTorch the layers run eagerly and read the patch at every call; on TensorFlow and
        # JAX the function is traced (with the patch) at its first call.
        for key, original in originals.items():
            setattr(*key, patch.get(key, original))
        try:
            return fn()
        finally:
            for key, original in originals.items():
                setattr(*key, original)

    runs = {}
    for name, patch in candidates.items():
        model = keras_hrvit.HRViTBackbone.from_preset(args.model, input_shape=shape)
        model.set_weights(base.get_weights())
        model.compile()  # Keras's default path, as bench.py's "default" mode
        runs[name] = (patch, model)
    outputs = {}
    for name, (patch, model) in runs.items():  # warm-up, and the traced functions
        for _ in range(2):
            outputs[name] = patched(patch, lambda m=model: m.predict_on_batch(images))
    reference = keras.tree.flatten(outputs["as is"])
    times = {name: [] for name in runs}
    for r in range(args.rounds):
        for name, (patch, model) in runs.items():
            start = time.perf_counter()
            patched(patch, lambda m=model: m.predict_on_batch(images))
            times[name].append(time.perf_counter() - start)
        print(f"round {r + 1}/{args.rounds}", flush=True)
    backend = keras.backend.backend()
    print(f"\n{backend}, {args.model} {args.size}x{args.size} batch {args.batch}, median of rounds")
    rows = []
    as_is = float(np.median(times["as is"]))
    for name in runs:
        median = float(np.median(times[name]))
        diff = max(
            float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            for a, b in zip(keras.tree.flatten(outputs[name]), reference)
        )
        rounds_ms = [1000 * t for t in times[name]]
        rows.append({"config": name, "ms": 1000 * median, "vs_as_is": median / as_is,
                     "max_abs_diff": diff, "rounds_ms": rounds_ms})  # fmt: skip
        print(f"{name:20} {1000 * median:9.1f} ms  {median / as_is:6.3f}x  max |diff| {diff:.1e}")
    record = {
        "backend": backend, "model": args.model, "size": args.size, "batch": args.batch,
        "cpus": os.cpu_count(), "rows": rows,
    }  # fmt: skip
    write_json(args.out, record)
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
