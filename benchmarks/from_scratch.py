"""From-scratch training of a tiny HRViT segmenter against KerasHub's SegFormer of the same widths.

Both models train with the same `fit` (same images, batch size, steps and loss) on the texture
mosaics of `texture_mosaics.py` (11 classes, 1,536 training images of 64x64, validation crops
from parts of the photographs training never sees); the validation mIoU is printed after every
epoch. Each
run is one (model, variant, seed); `VARIANTS` changes one thing at a time of the HRViT `base`
run, so that the table says what each change does at equal steps. Results go into a JSON file
after every run (written atomically), and a rerun skips the runs already there, so a killed study
resumes. Needs scikit-image and, for the peer, keras-hub:

    KERAS_BACKEND=tensorflow python benchmarks/from_scratch.py --variants peer base --seeds 0 1 2
    python benchmarks/from_scratch.py --table benchmarks/results/from_scratch.json
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from texture_mosaics import NUM_CLASSES, texture_mosaics  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT = os.path.join(ROOT, "benchmarks", "results", "from_scratch.json")
IMAGENET_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
IMAGENET_STD = np.array([58.395, 57.12, 57.375], np.float32)

BATCH_SIZE = 16
# The setting: a plain constant-rate AdamW on every variable, batch 16.
PLAIN = {"optimizer": "plain", "learning_rate": 2e-3, "weight_decay": 0.01}
# What each run changes of `base`. `model` keys go to HRViTSegmenter.from_preset;
# `attention_norm_init` sets the scale of the attention's zero-initialized BatchNorm;
# `bn_momentum` every BatchNorm's momentum; `decay_exempt` and `head_lr_mult` build the AdamW with
# `keras_hrvit.training.build_adamw`'s parameter groups; `warmup_steps` puts a linear warm-up
# then a linear decay (`WarmupPolyDecay`) on the learning rate; with `optimizer="auto"`,
# `compile` holds the arguments of HRViTSegmenter.compile() (its recipe's keywords);
# `inputs="unit"` feeds pixels scaled to [0, 1] to a model without its in-graph ImageNet
# normalization; `batch_size` changes the batch at equal steps (fewer images seen);
# `head_inputs` feeds the SegFormer head the backbone's branches of those indices only.
VARIANTS = {
    "peer": {"model_family": "segformer", **PLAIN},
    "peer_lr_5e-4": {"model_family": "segformer", **PLAIN, "learning_rate": 5e-4},
    "peer_warmup_poly": {"model_family": "segformer", **PLAIN, "warmup_steps": 96},
    "base": {**PLAIN},
    "lr_1e-3": {**PLAIN, "learning_rate": 1e-3},
    "lr_4e-3": {**PLAIN, "learning_rate": 4e-3},
    "lr_8e-3": {**PLAIN, "learning_rate": 8e-3},
    "no_decay": {**PLAIN, "weight_decay": 0.0},
    "layer_norms_exempt": {**PLAIN, "decay_exempt": "layer_norms"},
    "norms_biases_exempt": {**PLAIN, "decay_exempt": "norms_and_biases"},
    "head_lr_x10": {**PLAIN, "head_lr_mult": 10.0},
    "attention_norm_ones": {**PLAIN, "attention_norm_init": 1.0},
    "bn_momentum_0.99": {**PLAIN, "bn_momentum": 0.99},
    "batch_8": {**PLAIN, "batch_size": 8},
    "inputs_0_1": {**PLAIN, "inputs": "unit", "model": {"include_preprocessing": False}},
    "head_128": {**PLAIN, "model": {"head_channels": 128}},
    # The head's input: the 1/8, 1/16 and 1/32 branches only, without the 1/4 branch.
    "head_without_quarter": {**PLAIN, "head_inputs": (1, 2, 3)},
    "drop_path_0.1": {**PLAIN, "model": {"drop_path_rate": 0.1}},
    # The paper recipe's schedule and decay rule at base's rate: warm-up, then linear decay.
    "warmup_poly": {
        "optimizer": "auto",
        "compile": {
            "recipe": "paper",
            "learning_rate": 2e-3,
            "head_lr_mult": 1.0,
            "warmup_steps": 48,
        },
    },
    # HRViTSegmenter.compile(recipe="paper"): the paper's fine-tuning recipe as it is.
    "paper_recipe": {"optimizer": "auto", "compile": {"recipe": "paper"}},
    # HRViTSegmenter.compile() with no arguments: the package's default recipe.
    "compile_defaults": {"optimizer": "auto", "compile": {}},
}


def build(variant, size):
    import keras

    if variant.get("model_family") == "segformer":
        import keras_hub
        from peers import MIT_TINY, mit_backbone, segformer_backbone

        encoder = mit_backbone(**MIT_TINY, image_shape=(size, size, 3))
        backbone = segformer_backbone(encoder, projection_filters=64)
        return keras_hub.models.SegFormerImageSegmenter(backbone, num_classes=NUM_CLASSES)
    import keras_hrvit

    model_args = {"head_channels": 64, "drop_path_rate": 0.0, **variant.get("model", {})}
    model = keras_hrvit.HRViTSegmenter.from_preset(
        "hrvit_tiny", num_classes=NUM_CLASSES, input_shape=(size, size, 3), **model_args
    )
    if "attention_norm_init" in variant:
        for layer in model.backbone._flatten_layers():
            if isinstance(layer, keras_hrvit.layers.CrossShapedAttention):
                layer.norm.gamma.assign(keras.ops.full_like(layer.norm.gamma, 1.0))
    if "head_inputs" in variant:
        model = head_on_branches(model.backbone, variant["head_inputs"], size)
    if "bn_momentum" in variant:
        for layer in model._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = variant["bn_momentum"]
    return model


def head_on_branches(backbone, branches, size):
    """`backbone` with `base`'s SegFormer head (64 channels) on the branches `branches` only;
    logits resized to the image, as HRViTSegmenter's."""
    import keras

    from keras_hrvit.heads import SegFormerHead
    from keras_hrvit.layers import ResizeLike

    inputs = keras.Input((size, size, 3))
    features = backbone(inputs)
    head = SegFormerHead(NUM_CLASSES, channels=64, num_inputs=len(branches), name="decode_head")
    logits = head([features[i] for i in branches])
    return keras.Model(inputs, ResizeLike(dtype="float32", name="logits")([logits, inputs]))


def compile_model(model, variant, total_steps):
    import keras

    from keras_hrvit.training import WarmupPolyDecay, build_adamw

    if variant["optimizer"] == "auto":
        model.compile(metrics=[], **variant["compile"])
        return
    learning_rate = variant["learning_rate"]
    if "warmup_steps" in variant:
        learning_rate = WarmupPolyDecay(
            learning_rate, total_steps, warmup_steps=variant["warmup_steps"]
        )
    if "decay_exempt" in variant or "head_lr_mult" in variant:
        multiplier = variant.get("head_lr_mult", 1.0)
        optimizer = build_adamw(
            model,
            learning_rate,
            weight_decay=variant["weight_decay"],
            exclude_from_decay=variant.get("decay_exempt", "none"),
            lr_multipliers={"decode_head": multiplier} if multiplier != 1.0 else None,
        )
    else:
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=variant["weight_decay"])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    # No metrics: KerasHub's "auto" adds a pixel accuracy, HRViT's a mean IoU, at a cost per step.
    model.compile(optimizer=optimizer, loss=loss, metrics=[])


def mean_iou(model, images, masks, batch_size=32):
    """The validation mIoU over the classes present in the labels or the predictions."""
    logits = model.predict(images, batch_size=batch_size, verbose=0)
    predicted = np.argmax(logits, -1).ravel()
    confusion = np.bincount(
        masks.ravel().astype(np.int64) * NUM_CLASSES + predicted, minlength=NUM_CLASSES**2
    ).reshape(NUM_CLASSES, NUM_CLASSES)
    intersection = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    return float(np.mean(intersection[union > 0] / union[union > 0]))


def model_inputs(variant, images):
    """The 0-255 `images` as the variant's model takes them."""
    if variant.get("model_family") == "segformer":
        # KerasHub's MiT takes normalized inputs; HRViT normalizes raw pixels in its graph.
        return (images - IMAGENET_MEAN) / IMAGENET_STD
    if variant.get("inputs") == "unit":
        return images / 255.0
    return images


def run(name, seed, epochs, size):
    import keras

    variant = VARIANTS[name]
    keras.utils.set_random_seed(seed)
    images, masks = texture_mosaics("train", size=size)
    val_images, val_masks = texture_mosaics("val", size=size)
    images, val_images = model_inputs(variant, images), model_inputs(variant, val_images)
    model = build(variant, size)
    batch_size = variant.get("batch_size", BATCH_SIZE)
    # Every run takes the steps of `epochs` passes at BATCH_SIZE, whatever its own batch size.
    steps_per_epoch = -(-len(images) // BATCH_SIZE)
    steps = epochs * steps_per_epoch
    compile_model(model, variant, steps)
    record = {"val_miou": [], "loss": [], "parameters": model.count_params()}

    class Evaluate(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            record["val_miou"].append(mean_iou(model, val_images, val_masks))
            record["loss"].append(float(logs["loss"]))
            print(
                f"  {name} seed {seed} epoch {epoch + 1}/{epochs}: loss {logs['loss']:.4f} "
                f"val mIoU {record['val_miou'][-1]:.4f}",
                flush=True,
            )

    start = time.perf_counter()
    data = _batches(images, masks, batch_size, seed)
    fit_steps = None  # one pass over the data per epoch
    if batch_size != BATCH_SIZE:
        data, fit_steps = data.repeat(), steps_per_epoch
    model.fit(
        data,
        epochs=epochs,
        steps_per_epoch=fit_steps,
        verbose=0,
        callbacks=[Evaluate()],
    )
    record["seconds"] = time.perf_counter() - start
    record["steps"] = steps
    keras.backend.clear_session()
    return record


def overfit_one_batch(name, steps=300, size=64):
    """The training loss of `name` fit on one batch of 16 training images: a model whose loss
    does not fall here has a broken training path, not a hard task. Returns the losses."""
    import keras

    variant = VARIANTS[name]
    keras.utils.set_random_seed(0)
    images, masks = texture_mosaics("train", size=size)
    images, masks = model_inputs(variant, images[:16]), masks[:16]
    model = build(variant, size)
    compile_model(model, variant, steps)
    losses = []
    for step in range(steps + 1):
        losses.append(float(model.train_on_batch(images, masks)))
        if step % 50 == 0:
            print(f"  {name} one batch, step {step}: loss {losses[-1]:.4f}", flush=True)
    return losses


def _batches(images, masks, batch_size, seed):
    """One tf.data pipeline for both models (KerasHub's `fit` turns arrays into an unshuffled
    dataset), reshuffled every epoch."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, masks))
    dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(2)


def load(path):
    if not os.path.exists(path):
        return {"runs": {}}
    with open(path) as f:
        return json.load(f)


def table(results):
    """Markdown: each variant's final and best val mIoU, median of its seeds, against `base`."""
    by_variant = {}
    for key, record in results["runs"].items():
        by_variant.setdefault(key.rsplit("/", 1)[0], []).append(record)

    def median(records, field):
        return statistics.median(r[field] for r in records)

    for records in by_variant.values():
        for r in records:
            r["final"], r["best"] = r["val_miou"][-1], max(r["val_miou"])
    bases = {n.split("/")[1]: median(r, "final") for n, r in by_variant.items() if "base/" in n}
    lines = [
        "| variant | change | final val mIoU, median | seeds | vs base | best, median | s/run |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in sorted(by_variant, key=lambda n: list(VARIANTS).index(n.split("/")[0])):
        records = by_variant[name]
        final = median(records, "final")
        change = json.dumps({k: v for k, v in VARIANTS[name.split("/")[0]].items()})
        seeds = ", ".join(f"{r['final']:.3f}" for r in records)
        base = bases.get(name.split("/")[1])
        delta = f"{final - base:+.3f}" if base is not None else ""
        lines.append(
            f"| {name} | `{change}` | {final:.3f} | {seeds} | {delta} | "
            f"{median(records, 'best'):.3f} | {median(records, 'seconds'):.0f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["peer", "base"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="JSON file; runs in it are kept")
    parser.add_argument(
        "--table", nargs="+", metavar="JSON", help="print the table of these results files"
    )
    parser.add_argument(
        "--overfit", choices=list(VARIANTS), help="only fit this run on one batch, 300 steps"
    )
    args = parser.parse_args(argv)
    if args.overfit:
        sys.path.insert(0, ROOT)
        overfit_one_batch(args.overfit, size=args.size)
        return
    if args.table:
        runs = {key: r for path in args.table for key, r in load(path)["runs"].items()}
        print(table({"runs": runs}))
        return
    sys.path.insert(0, ROOT)
    import keras

    from keras_hrvit.files import write_json

    results = load(args.output)
    settings = {"epochs": args.epochs, "size": args.size, "backend": keras.backend.backend()}
    for seed in args.seeds:
        for name in args.variants:
            key = f"{name}/{args.epochs}ep/{seed}"
            if key in results["runs"]:
                continue
            record = run(name, seed, args.epochs, args.size)
            results["runs"][key] = {**record, **settings, "seed": seed}
            write_json(args.output, results)
    print(table(results))


if __name__ == "__main__":
    main()
