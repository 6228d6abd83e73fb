"""Speed and memory of HRViT backbones and segmenters, per backend, against a peer in the same run.

Each (backend, configuration) runs in its own subprocess so that peak memory is its own. Prints a
table and writes JSON. Report ratios from one run; absolute times only from a GPU.

    python benchmarks/bench.py --backends tensorflow jax torch --models hrvit_b1 --sizes 512
    python benchmarks/bench.py --peer  # adds KerasHub's SegFormer MiT-B1 backbone (keras-hub)
    python benchmarks/bench.py --original  # adds the original PyTorch code's eager forward
    python benchmarks/bench.py --measure train --tasks segmenter --remat off on --backends torch
    python benchmarks/bench.py --sizes 256 512 768 1024 1024x2048 --window 1024 768 --peer \
        --original --modes default --plot benchmarks/results/growth.png  # how cost grows
"""

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _build(name, task, size, remat=False):
    import keras_hrvit

    shape = (size[0], size[1], 3)
    if name == "mit_b1":
        from peers import MIT_B1, mit_backbone, segformer_backbone

        backbone = mit_backbone(**MIT_B1, image_shape=shape, drop_path_rate=0.1)
        if task == "backbone":
            return backbone
        return segformer_backbone(backbone, projection_filters=256)
    backbone = keras_hrvit.HRViTBackbone.from_preset(name, input_shape=shape, remat=remat)
    if task == "backbone":
        return backbone
    return keras_hrvit.HRViTSegmenter(backbone, num_classes=150)


def _time(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _run_original(args):
    """The original implementation (benchmarks/original_torch.py): eager PyTorch, NCHW, no grad."""
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from original_torch import build_original

    # On the GPU when there is one, as the Keras backends place themselves.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_original(args.model[len("original_") :]).eval().to(device)
    images = torch.rand(args.batch, 3, args.size[0], args.size[1], device=device)
    tiles = [images[:, :, y : y + h, x : x + w] for y, x, h, w in _windows(args)]

    def forward():
        with torch.no_grad():
            outputs = [model(tile) for tile in tiles]
        if device == "cuda":
            torch.cuda.synchronize()  # kernels run asynchronously: time them to the end
        return outputs

    result = {
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "latency_ms": 1000 * _time(forward, args.warmup, args.repeats),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result))


def _windows(args):
    """`(y, x, height, width)` of each window: the whole image, or MMSegmentation's `slide`
    inference crops (`--window CROP STRIDE`: a grid of CROPxCROP windows STRIDE apart, the last
    row and column moved back inside the image)."""
    height, width = args.size
    if args.window == "whole":
        return [(0, 0, height, width)]
    crop, stride = (int(v) for v in args.window.split("/"))
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    windows = []
    for row in range(rows):
        for col in range(cols):
            y, x = max(min(row * stride, height - crop), 0), max(min(col * stride, width - crop), 0)
            windows.append((y, x, min(crop, height), min(crop, width)))
    return windows


def run_one(args):
    """Runs in the subprocess: one backend, model, task, size, mode and precision."""
    if args.model.startswith("original_"):
        return _run_original(args)
    import keras

    if args.precision != "float32":
        keras.mixed_precision.set_global_policy(args.precision)
    size = tuple(args.size)
    windows = _windows(args)
    model_size = windows[0][2:]  # the whole image, or the sliding window's crop
    model = _build(args.model, args.task, model_size, remat=args.remat == "on")
    images = np.random.rand(args.batch, size[0], size[1], 3).astype("float32")
    tiles = [images[:, y : y + h, x : x + w] for y, x, h, w in windows]
    # "default" is what `model.compile()` picks: XLA on JAX, a tf.function graph (no XLA) on a
    # CPU-only TensorFlow, eager PyTorch; "compiled" forces `jit_compile=True` everywhere.
    jit_compile = {"eager": False, "default": "auto", "compiled": True}[args.mode]
    result = {"params": int(model.count_params())}
    if args.measure == "inference":
        if args.mode != "eager":
            model.compile(jit_compile=jit_compile)
            result["jit_compile"] = bool(model.jit_compile)
            fn = lambda: [model.predict_on_batch(tile) for tile in tiles]  # noqa: E731
        else:
            fn = lambda: [  # noqa: E731
                keras.ops.convert_to_numpy(keras.tree.flatten(model(tile, training=False))[0])
                for tile in tiles
            ]
        result["latency_ms"] = 1000 * _time(fn, args.warmup, args.repeats)
    else:
        if len(tiles) > 1:
            raise ValueError("--window measures inference only")
        from keras_hrvit.losses import SegmentationCrossEntropy

        labels = np.random.randint(0, 150, (args.batch,) + size).astype("int32")
        model.compile(
            optimizer=keras.optimizers.AdamW(6e-5),
            loss=SegmentationCrossEntropy(),
            jit_compile=jit_compile,
            run_eagerly=args.mode == "eager" and keras.backend.backend() != "torch",
        )
        result["jit_compile"] = bool(model.jit_compile)
        step = _time(lambda: model.train_on_batch(images, labels), args.warmup, args.repeats)
        result["train_images_per_s"] = args.batch / step
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--models", nargs="+", default=["hrvit_b1"])
    parser.add_argument(
        "--tasks", nargs="+", default=["backbone"], choices=["backbone", "segmenter"]
    )
    parser.add_argument("--sizes", nargs="+", default=["224", "512"], help="N or HxW")
    parser.add_argument(
        "--modes", nargs="+", default=["eager", "default", "compiled"],
        choices=["eager", "default", "compiled"],
    )  # fmt: skip
    parser.add_argument("--precisions", nargs="+", default=["float32"])
    parser.add_argument(
        "--measure", nargs="+", default=["inference"], choices=["inference", "train"]
    )
    parser.add_argument(
        "--remat", nargs="+", default=["off"], choices=["off", "on"],
        help="recompute block activations in the backward pass (HRViT only)",
    )  # fmt: skip
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="run the whole sweep this many times, interleaved, and report each row's median: "
        "ratios then hold even when the machine's speed drifts during the run",
    )  # fmt: skip
    parser.add_argument("--peer", action="store_true", help="also run KerasHub MiT-B1")
    parser.add_argument(
        "--original", action="store_true",
        help="also run the original PyTorch implementation (eager, inference, backbone, float32)",
    )  # fmt: skip
    parser.add_argument(
        "--window", nargs=2, type=int, metavar=("CROP", "STRIDE"),
        help="also time sliding-window inference (MMSegmentation's slide mode) at every size "
        "larger than CROP, e.g. 1024 768 as the Cityscapes configs",
    )  # fmt: skip
    parser.add_argument("--plot", help="PNG of latency and peak memory against image size")
    parser.add_argument("--out", default="benchmarks/results.json")
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--_one", nargs=9, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._one:
        backend, model, task, size, mode, precision, measure, remat, window = args._one
        one = argparse.Namespace(
            window=window,
            model=model,
            task=task,
            size=[int(s) for s in size.split("x")],
            mode=mode,
            precision=precision,
            measure=measure,
            remat=remat,
            batch=args.batch,
            warmup=args.warmup,
            repeats=args.repeats,
        )
        run_one(one)
        return

    configs = _configs(args)
    runs = [[] for _ in configs]
    for r in range(args.rounds):
        if args.rounds > 1:
            print(f"round {r + 1}/{args.rounds}")
        for config, done in zip(configs, runs):
            done.append(_spawn(args, *config))
            _print_row(done[-1])
    rows = [_median_row(done) for done in runs]
    if args.rounds > 1:
        print("\nmedian of the rounds")
        for row in rows:
            _print_row(row)
    ratios = _ratios(rows)
    growth = _growth(rows)
    if growth:
        print("\nlatency growth with the image's pixels (whole image): latency ~ pixels^k")
        for g in growth:
            print(f"{g['backend']:10} {g['model']:11} {g['task']:9} {g['mode']:8} "
                  f"k = {g['exponent']:.2f} over {', '.join(g['sizes'])}")  # fmt: skip
    if args.plot:
        _plot(rows, args.plot)
        print(f"Wrote {args.plot}")
    if ratios:
        print("\nspeed-up (their latency / ours; > 1 is faster), same run")
        for r in ratios:
            print(f"{r['backend']:10} {r['model']:11} {r['size']:9} {r['mode']:8} "
                  f"vs {r['against']:11} {r['speedup']:6.2f}x")  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    # Written under a temporary name, then renamed: a killed run leaves the last JSON whole.
    with open(args.out + ".tmp", "w") as f:
        json.dump(
            {"machine": os.uname().nodename, "cpus": os.cpu_count(), "rows": rows,
             "ratios": ratios, "growth": growth},
            f, indent=2,
        )  # fmt: skip
    os.replace(args.out + ".tmp", args.out)
    print(f"\nWrote {args.out}")


def _configs(args):
    """Every (backend, model, task, size, mode, precision, measure, remat, window) to run."""
    models = list(args.models) + (["mit_b1"] if args.peer else [])
    configs = []
    for measure in args.measure:
        for size in args.sizes:
            hw = size if "x" in size else f"{size}x{size}"
            windows = ["whole"]
            if args.window and measure == "inference":
                crop, stride = args.window
                if max(int(v) for v in hw.split("x")) > crop:
                    windows.append(f"{crop}/{stride}")
            for window in windows:
                if args.original and measure == "inference":
                    # The original code runs one way: eager PyTorch, float32.
                    for model in args.models:
                        original = model.replace("hrvit_", "original_")
                        configs.append(
                            ("torch", original, "backbone", hw, "eager", "float32", measure, "off",
                             window)
                        )  # fmt: skip
                for model, task, backend, mode, precision in itertools.product(
                    models, args.tasks, args.backends, args.modes, args.precisions
                ):
                    for remat in args.remat if model != "mit_b1" else ["off"]:
                        configs.append(
                            (backend, model, task, hw, mode, precision, measure, remat, window)
                        )
    return configs


def _spawn(args, backend, model, task, size, mode, precision, measure, remat, window):
    env = dict(
        os.environ,
        KERAS_BACKEND=backend,
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    command = [
        sys.executable,
        __file__,
        "--batch",
        str(args.batch),
        "--warmup",
        str(args.warmup),
        "--repeats",
        str(args.repeats),
        "--_one",
        backend,
        model,
        task,
        size,
        mode,
        precision,
        measure,
        remat,
        window,
    ]
    row = {
        "backend": backend,
        "model": model,
        "task": task,
        "size": size,
        "mode": mode,
        "precision": precision,
        "measure": measure,
        "remat": remat,
        "window": window,
        "batch": args.batch,
    }
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=args.timeout
        )
    except subprocess.TimeoutExpired:
        return {**row, "error": "timeout"}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return {**row, **json.loads(line[len("RESULT ") :])}
    # Keras appends the call's arguments after the exception: report the exception's line.
    lines = done.stderr.strip().splitlines() or ["failed"]
    errors = [line for line in lines if "Error" in line or "Exception" in line]
    return {**row, "error": (errors or lines)[-1].strip()[:200]}


def _ratios(rows):
    """Each float32 HRViT backbone latency against the original's eager forward (same model and
    size) and against MiT-B1 (same backend, size and mode)."""
    latency = {
        (r["backend"], r["model"], r["task"], _where(r), r["mode"], r["precision"], r["remat"]):
        r["latency_ms"]
        for r in rows if r.get("latency_ms") and r["measure"] == "inference"
    }  # fmt: skip
    ratios = []
    for (backend, model, task, size, mode, precision, remat), ours in latency.items():
        if not model.startswith("hrvit_") or task != "backbone" or precision != "float32":
            continue
        original = ("torch", model.replace("hrvit_", "original_"), task, size, "eager", precision)
        peer = (backend, "mit_b1", task, size, mode, precision)
        for against, key in ((original[1], original), ("mit_b1", peer)):
            if key + ("off",) in latency and remat == "off":
                ratios.append({
                    "backend": backend, "model": model, "size": size, "mode": mode,
                    "against": against, "speedup": latency[key + ("off",)] / ours,
                })  # fmt: skip
    return ratios


def _where(row):
    """The row's image size, and its sliding window if any: `1024x2048 slide 1024/768`."""
    window = row.get("window", "whole")
    return row["size"] if window == "whole" else f"{row['size']} slide {window}"


def _pixels(size):
    height, width = (int(v) for v in size.split("x"))
    return height * width


def _growth(rows):
    """The exponent k of latency ~ pixels^k, a least-squares line in log-log, for each whole-image
    inference configuration measured at three sizes or more."""
    series = {}
    for r in rows:
        if r.get("latency_ms") and r["measure"] == "inference" and r.get("window") == "whole":
            key = (r["backend"], r["model"], r["task"], r["mode"], r["precision"], r["remat"])
            series.setdefault(key, []).append((r["size"], r["latency_ms"]))
    growth = []
    for (backend, model, task, mode, precision, remat), points in series.items():
        if len({_pixels(size) for size, _ in points}) < 3:
            continue
        x = np.log([_pixels(size) for size, _ in points])
        y = np.log([latency for _, latency in points])
        exponent = float(np.polyfit(x, y, 1)[0])
        growth.append({
            "backend": backend, "model": model, "task": task, "mode": mode,
            "precision": precision, "remat": remat, "exponent": exponent,
            "sizes": [size for size, _ in points],
        })  # fmt: skip
    return growth


def _plot(rows, path):
    """Latency and peak memory against megapixels, log-log, one line per backend and model;
    sliding-window points as crosses at the size of the whole image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4.2))
    lines = {}
    for r in rows:
        if r.get("latency_ms") and r["measure"] == "inference":
            key = (r["backend"], r["model"], r["task"], r["mode"], r.get("window") != "whole")
            lines.setdefault(key, []).append(r)
    for (backend, model, task, mode, slide), points in sorted(lines.items()):
        points.sort(key=lambda r: _pixels(r["size"]))
        megapixels = [_pixels(r["size"]) / 1e6 for r in points]
        label = f"{model} {task} ({backend}, {mode})" + (", sliding window" if slide else "")
        style = dict(marker="x" if slide else "o", linestyle="none" if slide else "-")
        speed.plot(megapixels, [r["latency_ms"] for r in points], label=label, **style)
        memory.plot(megapixels, [r["peak_rss_mb"] for r in points], label=label, **style)
    for axis, title in ((speed, "latency (ms)"), (memory, "peak RSS of the process (MB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("image megapixels")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    speed.legend(fontsize=7)
    figure.tight_layout()
    # Written under a temporary name, then renamed: a killed run leaves no half-written PNG.
    temporary = path + ".tmp.png"
    figure.savefig(temporary, dpi=120)
    plt.close(figure)
    os.replace(temporary, path)


def _median_row(runs):
    """One configuration's runs (one per round): the median of each figure, and every value."""
    row = dict(runs[0])
    for key in ("latency_ms", "train_images_per_s", "peak_rss_mb"):
        values = [run[key] for run in runs if key in run]
        if values:
            row[key] = float(np.median(values))
            if len(runs) > 1:
                row[key + "_rounds"] = values
    if len(runs) > 1 and any("error" in run for run in runs):
        row["errors"] = [run["error"] for run in runs if "error" in run]
    return row


def _print_row(row):
    value = row.get("latency_ms") or row.get("train_images_per_s")
    unit = "ms" if "latency_ms" in row else "img/s"
    digits = 1 if unit == "ms" else 3
    shown = f"{value:9.{digits}f} {unit}" if value else f"error: {row.get('error')}"
    print(
        f"{row['backend']:10} {row['model']:11} {row['task']:9} {_where(row):9} {row['mode']:8} "
        f"{row['precision']:14} remat {row['remat']:3} {shown:>14}  "
        f"rss {row.get('peak_rss_mb', 0):7.0f} MB"
    )


if __name__ == "__main__":
    main()
