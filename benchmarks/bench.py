"""Speed and memory of HRViT backbones and segmenters, per backend, against a peer in the same run.

Each (backend, configuration) runs in its own subprocess so that peak memory is its own; with
`--interleave` each backend's models run in one process, alternating call by call. Prints a table
and writes JSON. Report ratios from one run; absolute times only from a GPU.

    python benchmarks/bench.py --backends tensorflow jax torch --models hrvit_b1 --sizes 512
    python benchmarks/bench.py --peer  # adds KerasHub's SegFormer MiT-B1 backbone (keras-hub)
    python benchmarks/bench.py --original  # adds the original PyTorch code's eager forward
    python benchmarks/bench.py --measure train --tasks segmenter --sizes 512 --batch 2 --original
    python benchmarks/bench.py --models hrvit_tiny --measure train --tasks segmenter --sizes 96 \
        --batch 16 --peer  # the demo's scale against a MiT of the same widths
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


# The peer of each HRViT: KerasHub's SegFormer on the MiT of about the same widths
# (benchmarks/peers.py), and the width of each model's SegFormer head.
PEERS = {"hrvit_b1": "mit_b1", "hrvit_tiny": "mit_tiny"}
HEAD_CHANNELS = {"b1": 256, "b2": 256, "b3": 768, "tiny": 64}
NUM_CLASSES = 150  # ADE20K's
# The models original_torch.py builds.
ORIGINALS = ("hrvit_b1", "hrvit_b2", "hrvit_b3")


def _head_channels(name):
    return HEAD_CHANNELS[name.split("_")[-1]]


def _build(name, task, size, remat=False):
    shape = (size[0], size[1], 3)
    if name.startswith("mit_"):
        import keras_hub
        from peers import MIT_B1, MIT_TINY, mit_backbone, segformer_backbone

        widths = {"mit_b1": MIT_B1, "mit_tiny": MIT_TINY}[name]
        backbone = mit_backbone(**widths, image_shape=shape, drop_path_rate=0.1)
        if task == "backbone":
            return backbone
        return keras_hub.models.SegFormerImageSegmenter(
            segformer_backbone(backbone, projection_filters=_head_channels(name)),
            num_classes=NUM_CLASSES,
        )
    import keras_hrvit

    # Stochastic depth 0.1 as the original's segmentation configs and SegFormer's MiT above.
    backbone = keras_hrvit.HRViTBackbone.from_preset(
        name, input_shape=shape, remat=remat, drop_path_rate=0.1
    )
    if task == "backbone":
        return backbone
    return keras_hrvit.HRViTSegmenter(
        backbone, num_classes=NUM_CLASSES, head_channels=_head_channels(name)
    )


def _prepare_original(args):
    """The original implementation (benchmarks/original_torch.py): eager PyTorch, NCHW, float32;
    a no-grad forward, or a train step of the backbone with `SegFormerHead` under AdamW."""
    import torch
    from original_torch import OriginalSegmenter, build_original

    # On the GPU when there is one, as the Keras backends place themselves.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    variant = args.model[len("original_") :]
    model = build_original(variant, drop_path_rate=0.1)
    if args.task == "segmenter":
        model = OriginalSegmenter(model, NUM_CLASSES, channels=_head_channels(variant))
    model = model.to(device)
    images = torch.rand(args.batch, 3, args.size[0], args.size[1], device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    info = {"params": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    if args.measure == "inference":
        model.eval()
        tiles = [images[:, :, y : y + h, x : x + w] for y, x, h, w in _windows(args)]

        def forward():
            with torch.no_grad():
                outputs = [model(tile) for tile in tiles]
            sync()  # kernels run asynchronously: time them to the end
            return outputs

        return forward, info
    if args.task != "segmenter":
        raise ValueError("--measure train needs --tasks segmenter")
    model.train()
    labels = torch.randint(0, NUM_CLASSES, (args.batch,) + tuple(args.size), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-5, weight_decay=0.01)

    def step():
        loss = torch.nn.functional.cross_entropy(model(images), labels, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sync()

    return step, info


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


def _prepare(args):
    """Builds one configuration; returns the function to time (one inference over every window,
    or one train step) and what is known before timing."""
    if args.model.startswith("original_"):
        return _prepare_original(args)
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
    info = {"params": int(model.count_params())}
    if args.measure == "inference":
        if args.mode == "eager":
            return lambda: [  # noqa: E731
                keras.ops.convert_to_numpy(keras.tree.flatten(model(tile, training=False))[0])
                for tile in tiles
            ], info
        model.compile(jit_compile=jit_compile)
        info["jit_compile"] = bool(model.jit_compile)
        return lambda: [model.predict_on_batch(tile) for tile in tiles], info  # noqa: E731
    if len(tiles) > 1:
        raise ValueError("--window measures inference only")
    from keras_hrvit.losses import SegmentationCrossEntropy

    labels = np.random.randint(0, NUM_CLASSES, (args.batch,) + size).astype("int32")
    model.compile(
        optimizer=keras.optimizers.AdamW(6e-5),
        loss=SegmentationCrossEntropy(),
        metrics=[],  # the bare step, as the original's; the tasks' "auto" adds their metrics
        jit_compile=jit_compile,
        run_eagerly=args.mode == "eager" and keras.backend.backend() != "torch",
    )
    info["jit_compile"] = bool(model.jit_compile)
    return lambda: model.train_on_batch(images, labels), info  # noqa: E731


def run_group(configs, warmup, repeats):
    """Runs in the subprocess: builds every configuration, warms each up, then times them in
    turn, one call each per repeat, and prints one RESULT line per configuration in order."""
    prepared = [_prepare(config) for config in configs]
    for fn, _ in prepared:
        for _ in range(warmup):
            fn()
    times = [[] for _ in prepared]
    for _ in range(repeats):
        for (fn, _), elapsed in zip(prepared, times):
            start = time.perf_counter()
            fn()
            elapsed.append(time.perf_counter() - start)
    for config, (_, info), elapsed in zip(configs, prepared, times):
        seconds = float(np.median(elapsed))
        if config.measure == "inference":
            info["latency_ms"] = 1000 * seconds
        else:
            info["train_images_per_s"] = config.batch / seconds
        if len(configs) == 1:  # a process's peak is one model's only when it ran alone
            info["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            torch = sys.modules.get("torch")  # imported by the original and the PyTorch backend
            if torch is not None and torch.cuda.is_available():
                info["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        print("RESULT " + json.dumps(info), flush=True)


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
    parser.add_argument(
        "--peer", action="store_true",
        help="also run KerasHub's SegFormer on the MiT of each model's widths (MiT-B1 for "
        "hrvit_b1, the MiT of benchmarks/peers.py's MIT_TINY for hrvit_tiny)",
    )  # fmt: skip
    parser.add_argument(
        "--original", action="store_true",
        help="also run the original PyTorch implementation (eager, float32): its no-grad "
        "forward, or its train step with a SegFormer head under AdamW",
    )  # fmt: skip
    parser.add_argument(
        "--interleave", action="store_true",
        help="run each backend's models (and the original) in one process, alternating call by "
        "call, instead of each model in its own process; peak memory is then not reported",
    )  # fmt: skip
    parser.add_argument(
        "--window", nargs=2, type=int, metavar=("CROP", "STRIDE"),
        help="also time sliding-window inference (MMSegmentation's slide mode) at every size "
        "larger than CROP, e.g. 1024 768 as the Cityscapes configs",
    )  # fmt: skip
    parser.add_argument("--plot", help="PNG of latency and peak memory against image size")
    parser.add_argument("--out", default="benchmarks/results.json")
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--_group", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._group:
        group = [
            argparse.Namespace(**{**row, "size": [int(s) for s in row["size"].split("x")]})
            for row in json.loads(args._group)
        ]
        run_group(group, args.warmup, args.repeats)
        return

    groups = _groups(args)
    runs = [[] for group in groups for _ in group]  # each configuration's rows, one per round
    for r in range(args.rounds):
        if args.rounds > 1:
            print(f"round {r + 1}/{args.rounds}")
        done = 0
        for group in groups:
            for row in _spawn(args, group):
                runs[done].append(row)
                done += 1
                _print_row(row)
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
        print("\nspeed-up (their time / ours; > 1 is faster), same run")
        for r in ratios:
            where = "same process" if r["same_process"] else "own processes"
            print(f"{r['backend']:10} {r['model']:11} {r['task']:9} {r['measure']:9} "
                  f"{r['size']:9} {r['mode']:8} vs {r['against']:12} {r['speedup']:6.2f}x "
                  f"({where})")  # fmt: skip
    from keras_hrvit.files import write_json  # a killed run leaves the last JSON whole

    write_json(args.out, {"machine": os.uname().nodename, "cpus": os.cpu_count(), "rows": rows,
                          "ratios": ratios, "growth": growth})  # fmt: skip
    print(f"\nWrote {args.out}")


def _configs(args):
    """Every configuration to run, as a row: backend, model, task, size, mode, precision,
    measure, remat, window and batch."""
    configs = []
    for measure, size in itertools.product(args.measure, args.sizes):
        hw = size if "x" in size else f"{size}x{size}"
        windows = ["whole"]
        if args.window and measure == "inference":
            crop, stride = args.window
            if max(int(v) for v in hw.split("x")) > crop:
                windows.append(f"{crop}/{stride}")
        for window, task in itertools.product(windows, args.tasks):
            if measure == "train" and task != "segmenter":
                continue  # a train step needs the segmentation loss
            base = {"size": hw, "measure": measure, "window": window, "task": task,
                    "batch": args.batch}  # fmt: skip
            if args.original:
                # The original code runs one way: eager PyTorch, float32.
                for model in set(args.models) & set(ORIGINALS):
                    configs.append({
                        **base, "backend": "torch", "model": model.replace("hrvit_", "original_"),
                        "mode": "eager", "precision": "float32", "remat": "off",
                    })  # fmt: skip
            peers = [PEERS[m] for m in args.models if m in PEERS] if args.peer else []
            for model, backend, mode, precision in itertools.product(
                args.models + peers, args.backends, args.modes, args.precisions
            ):
                for remat in args.remat if model.startswith("hrvit_") else ["off"]:
                    configs.append({
                        **base, "backend": backend, "model": model, "mode": mode,
                        "precision": precision, "remat": remat,
                    })  # fmt: skip
    return configs


def _groups(args):
    """The configurations, grouped by the process that runs them: each alone, or under
    `--interleave` every model of one backend, size, task, mode, precision, measure and window
    together with the original of the same size, task, measure and window."""
    configs = _configs(args)
    for config in configs:
        config.update(interleaved=args.interleave, process=config["backend"])
    if not args.interleave:
        return [[config] for config in configs]
    originals = [c for c in configs if c["model"].startswith("original_")]
    groups = {}
    for config in configs:
        if config["model"].startswith("original_"):
            continue
        key = tuple(config[k] for k in ("backend", "size", "task", "mode", "precision", "measure",
                                        "window"))  # fmt: skip
        if key not in groups:
            same = ("size", "task", "measure", "window")
            groups[key] = [
                {**o, "process": config["backend"]}
                for o in originals
                if all(o[k] == config[k] for k in same)
            ]
        groups[key].append(config)
    return list(groups.values())


def _spawn(args, group):
    """Runs one group of configurations in a subprocess; returns their rows."""
    env = dict(
        os.environ,
        KERAS_BACKEND=group[0]["process"],
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    command = [
        sys.executable, __file__, "--warmup", str(args.warmup), "--repeats", str(args.repeats),
        "--_group", json.dumps(group),
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=args.timeout
        )
    except subprocess.TimeoutExpired:
        return [{**row, "error": "timeout"} for row in group]
    results = [
        json.loads(line[len("RESULT ") :])
        for line in done.stdout.splitlines()
        if line.startswith("RESULT ")
    ]
    if len(results) == len(group):
        return [{**row, **result} for row, result in zip(group, results)]
    # Keras appends the call's arguments after the exception: report the exception's line.
    lines = done.stderr.strip().splitlines() or ["failed"]
    errors = [line for line in lines if "Error" in line or "Exception" in line]
    return [{**row, "error": (errors or lines)[-1].strip()[:200]} for row in group]


def _seconds(row):
    """A row's time: one inference over its windows, or one image of a train step."""
    if row.get("latency_ms"):
        return row["latency_ms"] / 1000
    if row.get("train_images_per_s"):
        return 1 / row["train_images_per_s"]
    return None


def _key(row, **changes):
    row = {**row, **changes}
    return tuple(
        row[k] for k in ("process", "backend", "model", "task", "measure", "size", "window",
                         "mode", "precision", "remat", "batch")
    )  # fmt: skip


def _ratios(rows):
    """Each float32 HRViT row's time against the original's (same size, task and measure; from
    the same process under --interleave) and against its peer MiT's (same backend and mode)."""
    times = {_key(r): _seconds(r) for r in rows if _seconds(r)}
    ratios = []
    for r in rows:
        ours = _seconds(r)
        if not (ours and r["model"].startswith("hrvit_") and r["precision"] == "float32"):
            continue
        if r["remat"] != "off":
            continue
        original = r["model"].replace("hrvit_", "original_")
        candidates = [
            (original, _key(r, backend="torch", model=original, mode="eager")),
            (original, _key(r, process="torch", backend="torch", model=original, mode="eager")),
        ]
        if r["model"] in PEERS:
            candidates.append((PEERS[r["model"]], _key(r, model=PEERS[r["model"]])))
        found = set()
        for against, key in candidates:
            if key in times and against not in found:
                found.add(against)
                ratios.append({
                    "backend": r["backend"], "model": r["model"], "task": r["task"],
                    "measure": r["measure"], "size": _where(r), "mode": r["mode"],
                    "against": against, "speedup": times[key] / ours,
                    "same_process": r.get("interleaved", False) and key[0] == r["process"],
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
            series.setdefault((r["process"],) + key, []).append((r["size"], r["latency_ms"]))
    growth = []
    for (process, backend, model, task, mode, precision, remat), points in series.items():
        if len({_pixels(size) for size, _ in points}) < 3:
            continue
        x = np.log([_pixels(size) for size, _ in points])
        y = np.log([latency for _, latency in points])
        exponent = float(np.polyfit(x, y, 1)[0])
        growth.append({
            "process": process, "backend": backend, "model": model, "task": task, "mode": mode,
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
            key = (r["process"], r["backend"], r["model"], r["task"], r["mode"])
            lines.setdefault(key + (r.get("window") != "whole",), []).append(r)
    for (process, backend, model, task, mode, slide), points in sorted(lines.items()):
        points.sort(key=lambda r: _pixels(r["size"]))
        megapixels = [_pixels(r["size"]) / 1e6 for r in points]
        label = f"{model} {task} ({backend}, {mode})" + (", sliding window" if slide else "")
        if process != backend:
            label += f" in the {process} process"
        style = dict(marker="x" if slide else "o", linestyle="none" if slide else "-")
        speed.plot(megapixels, [r["latency_ms"] for r in points], label=label, **style)
        if all("peak_rss_mb" in r for r in points):  # not measured under --interleave
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
    memory = f"rss {row['peak_rss_mb']:7.0f} MB" if "peak_rss_mb" in row else ""
    process = f"  (in the {row['process']} process)" if row["process"] != row["backend"] else ""
    print(
        f"{row['backend']:10} {row['model']:11} {row['task']:9} {row['measure']:9} "
        f"{_where(row):9} {row['mode']:8} {row['precision']:14} remat {row['remat']:3} "
        f"{shown:>14}  {memory}{process}"
    )


if __name__ == "__main__":
    main()
