"""Each of keras_hrvit's PyTorch fused kernels (keras_hrvit/layers/torch_ops.py) against the Keras
composition it replaces, interleaved in one process, on an HRViT backbone.

Each configuration puts one kernel back to Keras's composition ("keras: NAME"), or all of them
("keras: all"); every round times each configuration once, in turn, and the table gives each
one's median against the fused model's ("fused"). Prints a table and writes JSON.

    KERAS_BACKEND=torch python benchmarks/torch_ops.py --size 512 --rounds 7
    KERAS_BACKEND=torch python benchmarks/torch_ops.py --train  # forward and backward
"""

import argparse
import os
import time

import numpy as np

# Keras's composition of each fused kernel, as Keras's PyTorch backend computes it.
KERAS = {
    "linear": lambda x, kernel, bias: _ops().matmul(x, kernel) + bias,
    "batch_norm_inference": lambda x, axis, mean, variance, gamma, beta, epsilon: (
        _ops().batch_normalization(x, mean, variance, axis, beta, gamma, epsilon)
    ),
    "hard_swish": lambda x: x * _ops().relu6(x + 3.0) / 6.0,
    "attention": lambda q, k, v, mask, scale: _ops().dot_product_attention(
        q, k, v, mask=mask, scale=scale
    ),
}


def _ops():
    from keras import ops

    return ops


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="hrvit_b1")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--train", action="store_true", help="time forward and backward")
    parser.add_argument("--out", default="benchmarks/results/torch_ops.json")
    args = parser.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    import torch

    import keras_hrvit
    from keras_hrvit.files import write_json
    from keras_hrvit.layers import torch_ops

    if keras.backend.backend() != "torch":
        raise SystemExit("torch_ops.py measures the PyTorch backend: set KERAS_BACKEND=torch.")
    fused = {name: getattr(torch_ops, name) for name in KERAS}
    configs = {"fused": ()} | {f"keras: {n}": (n,) for n in KERAS} | {"keras: all": tuple(KERAS)}
    model = keras_hrvit.HRViTBackbone.from_preset(args.model, input_shape=(args.size, args.size, 3))
    images = torch.rand(args.batch, args.size, args.size, 3)

    def run(kernels):
        for name in KERAS:
            setattr(torch_ops, name, KERAS[name] if name in kernels else fused[name])
        start = time.perf_counter()
        if args.train:
            features = model(images, training=True)
            sum(f.mean() for f in features).backward()
        else:
            with torch.no_grad():
                model(images, training=False)
        return time.perf_counter() - start

    for kernels in configs.values():  # warm-up
        run(kernels)
    times = {name: [] for name in configs}
    for r in range(args.rounds):
        for name, kernels in configs.items():
            times[name].append(run(kernels))
        print(f"round {r + 1}/{args.rounds}", flush=True)
    base = float(np.median(times["fused"]))
    rows = []
    what = "forward and backward" if args.train else "forward, no grad"
    print(f"\n{args.model} {args.size}x{args.size} batch {args.batch}, {what}, median of rounds")
    for name in configs:
        median = float(np.median(times[name]))
        rows.append({"config": name, "ms": 1000 * median, "vs_fused": median / base,
                     "rounds_ms": [1000 * t for t in times[name]]})  # fmt: skip
        print(f"{name:30} {1000 * median:9.1f} ms  {median / base:6.3f}x the fused model's time")
    record = {
        "model": args.model, "size": args.size, "batch": args.batch, "train": args.train,
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "rows": rows,
    }  # fmt: skip
    write_json(args.out, record)
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
