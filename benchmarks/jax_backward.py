"""Where JAX's training step goes on a CPU: each of HRViT's layers, jitted, forward alone against
forward and backward, on one branch's feature map.

A forward and backward usually costs about three forwards; a layer far above that is where XLA's
CPU backward loses. The depthwise convolution is timed alone as well, with its input gradient and
its kernel gradient apart. Prints a table and writes JSON.

    python benchmarks/jax_backward.py --size 128 --window 1   # b1's 1/4 branch at 512x512
    python benchmarks/jax_backward.py --size 32 --window 7    # its 1/16 branch
"""

import argparse
import os
import time

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")


def _median_ms(fn, args, repeats):
    import jax

    jax.block_until_ready(fn(*args))  # compiles
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def _layers(args):
    import keras

    from keras_hrvit import layers
    from keras_hrvit.layers.common import NORM_EPSILON
    from keras_hrvit.layers.conv import DepthwiseConv2D

    c = args.channels
    hidden = int(c * args.mlp_ratio)
    return {
        "HRViTBlock": (layers.HRViTBlock(c, args.window, args.head_dim, args.mlp_ratio), c),
        "CrossShapedAttention": (layers.CrossShapedAttention(c, args.window, args.head_dim), c),
        "MixCFN": (layers.MixCFN(c, args.mlp_ratio), c),
        "DES": (layers.DES(c), c),
        "LayerNormalization": (keras.layers.LayerNormalization(epsilon=NORM_EPSILON), c),
        f"DepthwiseConv2D 5x5, {hidden // 2} ch": (
            DepthwiseConv2D(5, padding="same"),
            hidden - hidden // 2,
        ),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128, help="the feature map's height and width")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--window", type=int, default=1)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--mlp-ratio", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/jax_backward.json")
    args = parser.parse_args()
    import jax
    import jax.numpy as jnp
    import keras

    from keras_hrvit.files import write_json

    if keras.backend.backend() != "jax":
        raise SystemExit("jax_backward.py measures JAX: set KERAS_BACKEND=jax.")
    rng = np.random.default_rng(0)
    rows = []
    print(f"JAX, batch {args.batch}, {args.size}x{args.size} maps, median of {args.repeats}")
    for name, (layer, channels) in _layers(args).items():
        x = jnp.asarray(rng.random((args.batch, args.size, args.size, channels), "float32"))
        layer.build(x.shape)
        trainable = [v.value for v in layer.trainable_variables]
        frozen = [v.value for v in layer.non_trainable_variables]

        def forward(trainable, x, layer=layer, frozen=frozen):
            # As in a train step: BatchNorm normalizes with the batch's statistics.
            kwargs = {"training": True} if layer._call_has_training_arg else {}
            return layer.stateless_call(trainable, frozen, x, **kwargs)[0]

        def loss(trainable, x, forward=forward):
            return jnp.sum(forward(trainable, x) ** 2)

        timed = {
            "forward": (jax.jit(forward), (trainable, x)),
            "forward and backward": (jax.jit(jax.grad(loss, argnums=(0, 1))), (trainable, x)),
        }
        if name.startswith("DepthwiseConv2D"):
            timed["input gradient"] = (jax.jit(jax.grad(loss, argnums=1)), (trainable, x))
            timed["kernel gradient"] = (jax.jit(jax.grad(loss, argnums=0)), (trainable, x))
        row = {"layer": name, "channels": channels}
        row.update({what: _median_ms(fn, a, args.repeats) for what, (fn, a) in timed.items()})
        row["backward_ratio"] = row["forward and backward"] / row["forward"]
        rows.append(row)
        extra = "".join(
            f"  {what} {row[what]:7.1f} ms" for what in ("input gradient", "kernel gradient")
            if what in row
        )  # fmt: skip
        print(
            f"{name:32} forward {row['forward']:7.1f} ms  forward and backward "
            f"{row['forward and backward']:7.1f} ms ({row['backward_ratio']:4.1f}x){extra}",
            flush=True,
        )
    record = {"args": vars(args), "jax": jax.__version__, "cpus": os.cpu_count(), "rows": rows}
    write_json(args.out, record)
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
