"""
Title: ADE20K semantic segmentation with HRViT and the paper's recipe
Author: keras_hrvit contributors
Date created: 2026/12/03
Last modified: 2026/12/03
Description: Train HRViT-b1 on ADE20K with the paper's optimizer groups and schedule.
Accelerator: GPU
"""

"""
## Introduction

HRViT (Gu et al., CVPR 2022) reports its semantic segmentation results on ADE20K, a set
of 20,210 training and 2,000 validation scene photos labelled with 150 classes. This
tutorial trains HRViT-b1 with a SegFormer head on ADE20K the way the paper does, and
shows each part of the recipe rather than hiding it:

- the data pipeline of MMSegmentation, which the paper used: random rescaling to 0.5-2.0
  times 2048x512, 512x512 crops, flips and photometric distortion;
- AdamW with parameter groups: no weight decay on the LayerNorms, and the decode head at
  10 times the learning rate;
- a linear warm-up followed by a poly decay of the learning rate;
- training that resumes where it stopped after an interruption;
- evaluation on whole images and with sliding windows, a per-class IoU table and
  overlays.

The paper trains for 160k iterations at batch 16 on 8 GPUs. The full run of this
tutorial keeps the batch of 16 and the recipe, on one GPU, but trains for 40k
iterations, a quarter of the paper's schedule (set `EPOCHS = 160` below for all of it):

```shell
python examples/ade20k_recipe.py
```

It takes about 4 hours on one recent datacenter GPU with enough CPU cores to feed it.
That is an estimate, not a measurement: it assumes about 0.3 s per training step of 16
crops (HRViT-b1 needs 14.6 GFLOPs per 512x512 image in the forward pass), plus some
minutes for each of the two evaluations of the 2,000 validation images. The paper's
160k iterations take four times as long. The first run also downloads ADE20K (about 1
GB).

With `HRVIT_TUTORIAL_SMOKE=1` the same code runs in a minute or so on a CPU: a tiny
model, 32x32 crops, two training steps and a few images (point `ADE20K_DIR` at a folder
in the layout described below, however small, to run it offline). Its numbers say
nothing about the recipe; they only show that every step runs.
"""

"""
## Setup

The data pipelines run in `tf.data`, whatever the Keras backend, so TensorFlow is needed
alongside the backend you train with (set `KERAS_BACKEND` to `jax`, `torch` or
`tensorflow`).
"""

import os

import keras
import matplotlib.pyplot as plt
import numpy as np

import keras_hrvit
from keras_hrvit.data import (
    ADE20K_CLASSES,
    load_ade20k,
    segmentation_eval_pipeline,
    segmentation_train_pipeline,
)
from keras_hrvit.inference import predict_classes
from keras_hrvit.tasks.segmentation import (
    evaluate_segmenter,
    fixed_size_validation_pipeline,
)
from keras_hrvit.training import (
    AtomicBackupAndRestore,
    decay_exempt_variables,
    decay_variables,
)
from keras_hrvit.visualize import save_segmentation_panel, segmentation_panel
from keras_hrvit.weights import load_backbone_weights

SMOKE = os.environ.get("HRVIT_TUTORIAL_SMOKE") == "1"
# An extracted ADEChallengeData2016 folder (or one holding it); without it, load_ade20k
# downloads the release into Keras's cache.
ADE20K_DIR = os.environ.get("ADE20K_DIR")
# Pretrained backbone weights: an original checkpoint, a .keras classifier, ...
BACKBONE_WEIGHTS = os.environ.get("HRVIT_BACKBONE_WEIGHTS")

if SMOKE:
    # The full run's sizes divided by 16, so that every step runs in seconds on a CPU.
    CROP_SIZE = (32, 32)
    SCALE = (128, 32)
    STRIDE = (21, 21)
    BATCH_SIZE = 2
    EPOCHS, STEPS_PER_EPOCH = 1, 2
    MONITOR_IMAGES = 2
    EVAL_IMAGES = 2
    NUM_OVERLAYS = 1
else:
    CROP_SIZE = (512, 512)
    SCALE = (2048, 512)  # (long side, short side) that images are fitted into
    STRIDE = (341, 341)  # MMSegmentation's sliding-window step for 512x512 windows
    BATCH_SIZE = 16
    # 40k iterations; 160 epochs for the paper's 160k.
    EPOCHS, STEPS_PER_EPOCH = 40, 1000
    MONITOR_IMAGES = 200
    EVAL_IMAGES = None  # all 2,000
    NUM_OVERLAYS = 4
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
NUM_CLASSES = len(ADE20K_CLASSES)

keras.utils.set_random_seed(0)


def show(figure, filename):
    """Saves a figure as a PNG in the working directory; shows it outside smoke runs."""
    figure.savefig(filename, dpi=100, bbox_inches="tight")
    if not SMOKE:
        plt.show()
    plt.close(figure)


"""
## The data: ADE20K with label 0 ignored

The paper uses the release of the MIT Scene Parsing Benchmark, `ADEChallengeData2016`:
JPEG images in `images/training` and `images/validation`, and PNG annotations of the
same names in `annotations/`, whose pixel values are class indices. Values 1 to 150 are
the classes, and 0 means "other", pixels that belong to none of them. `load_ade20k`
reads that folder and, following MMSegmentation's `reduce_zero_label`, turns 0 into 255,
the label that the loss and the metrics skip, and moves the classes down to 0-149, so
that label `i` is `ADE20K_CLASSES[i]`.

With the environment variable `ADE20K_DIR` set to the folder (or a folder holding it),
that is what it reads. Otherwise the first run downloads the official archive into
Keras's cache (`~/.keras/datasets`) with `keras.utils.get_file`, and every run checks
that the extracted folder holds all 20,210 training and 2,000 validation images.
(TensorFlow Datasets' `scene_parse150` is no substitute: its annotations are those of
the 2017 instance segmentation track, not the 150 classes.)
"""

train_pairs = load_ade20k("train", data_dir=ADE20K_DIR, shuffle_files=True)
val_pairs = load_ade20k("validation", data_dir=ADE20K_DIR)

image, mask = next(iter(val_pairs))
labels = [int(label) for label in np.unique(mask) if label != 255]
print(f"First validation image: {tuple(image.shape)}, mask {tuple(mask.shape)}")
print("Classes in its mask:", ", ".join(ADE20K_CLASSES[i] for i in labels[:12]))
print(f"Ignored ('other') pixels: {float(np.mean(mask.numpy() == 255)):.1%}")

"""
## The paper's data pipeline

`segmentation_train_pipeline` reproduces MMSegmentation's ADE20K training pipeline. Each
image is resized, keeping its aspect ratio, to fit in 2048x512 times a random ratio
between 0.5 and 2.0, so its short side lands between 256 and 1024 pixels. A 512x512 crop
is then cut out and redrawn (up to 10 times) while one class covers more than 75% of it
(`cat_max_ratio`), which keeps crops of pure sky or wall rare. A horizontal flip and a
photometric distortion (brightness, contrast, saturation, hue) follow, and crops smaller
than 512x512 are padded, with 255 in the mask.

The pipeline hands the model raw 0-255 pixels: HRViT models normalize their input with
the ImageNet statistics inside the graph. `num_classes` makes the pipeline stop with a
clear error on a mask label outside 0-149 and 255, instead of a silently wrong loss.

Training is counted in steps, so the pairs are repeated and `fit` takes
`STEPS_PER_EPOCH` batches per epoch: an "epoch" here is the unit of logging and
checkpointing, not one pass over the data (ADE20K gives about 1,263 batches of 16 per
pass).
"""

train_ds = segmentation_train_pipeline(
    train_pairs.repeat(),
    crop_size=CROP_SIZE,
    base_scale=SCALE,
    ratio_range=(0.5, 2.0),
    batch_size=BATCH_SIZE,
    cat_max_ratio=0.75,
    num_classes=NUM_CLASSES,
    seed=0,
)
images, masks = next(iter(train_ds))
print(f"Training batch: images {tuple(images.shape)}, masks {tuple(masks.shape)}")

"""
While training, a few hundred validation images are scored after each epoch to follow
progress. `fixed_size_validation_pipeline` resizes and pads them to the crop size so
that every batch has one shape (a compiled test step then runs without retracing). This
is for monitoring only: the paper's protocol, at full resolution, comes after training.
"""

monitor_ds = fixed_size_validation_pipeline(
    val_pairs.take(MONITOR_IMAGES), CROP_SIZE, batch_size=8, num_classes=NUM_CLASSES
)

"""
## The model

`HRViTSegmenter.from_preset("hrvit_b1_ade20k")` builds the paper's ADE20K model: the
HRViT-b1 backbone with a drop path rate of 0.1 and a SegFormer head of 256 channels
predicting 150 classes, about 8.2 million parameters. Its outputs are per-pixel logits
at the input size.

No pretrained HRViT weights were ever published, so the preset starts from random
weights. The paper initializes the backbone from ImageNet-1k pretraining, and its ADE20K
numbers depend on it: from scratch, 40k iterations reach a much lower mIoU. If you have
pretrained weights (a checkpoint of the original PyTorch code, or a classifier trained
with this package), set `HRVIT_BACKBONE_WEIGHTS` to its path: `load_backbone_weights`
fills the backbone and leaves the new head as it is.

If a batch of 16 crops does not fit in your GPU's memory, build the backbone with
`HRViTBackbone.from_preset("hrvit_b1", drop_path_rate=0.1, remat=True)` and pass it to
`HRViTSegmenter(backbone, num_classes=150)`: the transformer blocks then recompute their
activations in the backward pass instead of storing them.
"""

if SMOKE:
    backbone = keras_hrvit.HRViTBackbone.from_preset("hrvit_tiny")
    model = keras_hrvit.HRViTSegmenter(backbone, NUM_CLASSES, head_channels=32)
else:
    model = keras_hrvit.HRViTSegmenter.from_preset("hrvit_b1_ade20k")
if BACKBONE_WEIGHTS:
    print(load_backbone_weights(model, BACKBONE_WEIGHTS))
print(f"{model.name}: {model.count_params():,} parameters")

"""
## The recipe: `compile(recipe="paper")`

Called without an optimizer, `compile()` sets up one of the segmenter's two recipes. Its
default, `"scratch"`, is for random weights (AdamW at a constant 2e-3). This tutorial
fine-tunes an ImageNet-pretrained backbone as the paper did, so it names the paper's
recipe: AdamW at a base
learning rate of 6e-5 with weight decay 0.01, the decode head at 10 times that rate, a
linear warm-up over 1,500 steps and a poly decay to 0 over the run; the cross-entropy
loss ignoring label 255, and the mean IoU as metric. Given the run's length (`epochs`
and `steps_per_epoch`, the same numbers as for `fit`), the schedule spans exactly this
run. Without them it would span the first `fit`; they are passed here so that the
schedule can be plotted before training.
"""

model.compile(recipe="paper", epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH)

"""
Keras optimizers have no PyTorch-style parameter groups, so the package's AdamW keeps a
learning-rate multiplier and a weight-decay flag for every variable. The decode head is
new, trained from scratch even when the backbone is pretrained, hence its higher
learning rate.

Which variables skip weight decay follows the released configurations exactly: they
exempt the parameters whose names contain `norm`, and in HRViT those are the scales and
offsets of its LayerNorms (before the attention and the feed-forward network of each
block, after each patch embedding, at the end of each stage). Its BatchNorms have other
names (`bn1`, `attn_bn`, ...), so they decay, and so do all biases, unlike in the
ImageNet recipe, which exempts every normalization layer and bias. The recipe names its
rule, `model.recipes["paper"]["decay_exempt"]` (`"layer_norms"`), and
`compile(decay_exempt="norms_and_biases")` picks the ImageNet one instead.

Grouping every trainable variable by the optimizer's own settings shows the groups that
result; the decode head has no LayerNorm, so all of it decays:
"""

settings = model.optimizer.variable_settings()
groups = {}
for variable in model.trainable_variables:
    setting = settings[variable.path]
    key = (setting["lr_mult"], setting["decay"])
    count, size = groups.get(key, (0, 0))
    groups[key] = (count + 1, size + int(np.prod(variable.shape)))

print(f"{'learning rate':<16}{'weight decay':<14}{'variables':>10}{'parameters':>14}")
for (lr_mult, decay), (count, size) in sorted(groups.items()):
    rate = f"{lr_mult:g} x base"
    print(f"{rate:<16}{'yes' if decay else 'no':<14}{count:>10}{size:>14,}")
head_layers = sorted(
    {path.rsplit("/", 1)[0] for path in model.optimizer.lr_multipliers}
)
print("Layers at 10x the learning rate:", ", ".join(head_layers))

"""
`decay_exempt_variables` and `decay_variables` list the two halves of the model by a
named rule, the same function the optimizer applies. Here are the one-dimensional
variables of the first transformer block under the recipe's rule, and the number of
exempt variables under each rule:
"""

rule = model.recipes["paper"]["decay_exempt"]
exempt = {variable.path for variable in decay_exempt_variables(model, rule)}
print(f"{len(decay_variables(model, rule))} variables decay, {len(exempt)} are exempt")
for variable in model.trainable_variables:
    if variable.path.startswith("m0_branch0_block0/") and len(variable.shape) == 1:
        verdict = "exempt" if variable.path in exempt else "decays"
        print(f"  {variable.path:<42}{verdict}")
for choice in ("layer_norms", "norms", "norms_and_biases"):
    print(f"{choice}: {len(decay_exempt_variables(model, choice))} exempt")

"""
The schedule is stored in the optimizer's config; evaluating it over every step of the
run draws the learning rate of the backbone, and ten times it, the head's.
"""

schedule = keras.saving.deserialize_keras_object(
    model.optimizer.get_config()["learning_rate"]
)
print(schedule.get_config())
steps = np.arange(TOTAL_STEPS + 1)
rates = keras.ops.convert_to_numpy(schedule(steps))
warmup = schedule.warmup_steps
print(f"learning rate at step 0: {rates[0]:.2e}, at step {warmup}: {rates[warmup]:.2e}")

figure, axes = plt.subplots(1, 2, figsize=(11, 3.5))
zoom = min(TOTAL_STEPS, 2 * warmup) + 1
for ax, end, title in ((axes[0], len(steps), "whole run"), (axes[1], zoom, "warm-up")):
    ax.plot(steps[:end], rates[:end], label="backbone")
    ax.plot(steps[:end], 10 * rates[:end], label="decode head (10x)")
    ax.set(title=title, xlabel="step", ylabel="learning rate")
    ax.legend()
show(figure, "ade20k_learning_rate.png")

"""
## Training that survives interruptions

A long run on a shared or preemptible machine will be interrupted.
`AtomicBackupAndRestore` is Keras's `BackupAndRestore`, which saves the weights and the
optimizer state at the end of each epoch and, when the same script is run again, resumes
`fit` at the last finished epoch; this version writes each backup whole or not at all,
so a kill in the middle of a save leaves the previous one usable. The optimizer's step
counter is restored too, so the learning-rate schedule resumes where it stopped. The
backup is deleted once training finishes.
"""

history = model.fit(
    train_ds,
    epochs=EPOCHS,
    steps_per_epoch=STEPS_PER_EPOCH,
    validation_data=monitor_ds,
    callbacks=[AtomicBackupAndRestore("ade20k_backup")],
    verbose=2 if SMOKE else 1,
)
model.save_to_preset("hrvit_b1_ade20k_trained")

figure, axes = plt.subplots(1, 2, figsize=(11, 3.5))
axes[0].plot(history.history["loss"])
axes[0].set(title="training loss", xlabel="epoch")
axes[1].plot(history.history["val_mean_iou"])
axes[1].set(title=f"mIoU of {MONITOR_IMAGES} resized validation images", xlabel="epoch")
show(figure, "ade20k_training.png")

"""
## Evaluation: whole image and sliding window

The paper's test protocol resizes each validation image to fit in 2048x512 (its short
side becomes 512 for most photos), predicts, resizes the logits back to the annotation's
original size and scores there. `segmentation_eval_pipeline(..., scale=SCALE)` resizes
the images and keeps the masks as they are; `evaluate_segmenter` brings the predictions
to the masks' size and accumulates one confusion matrix over the whole set, as
MMSegmentation does.

There are two ways to run the model on a resized image:

- **whole**: the full image in one call. The model sees the whole scene, but at a size
  it was not trained at (it trained on 512x512 crops).
- **slide**: 512x512 windows with a stride of 341 pixels, as in MMSegmentation's
  sliding-window test mode; overlapping logits are averaged. Each window has the
  training size, at the price of about twice as many model calls for a typical 512x683
  image, and less context per window.

The paper's ADE20K configurations test on whole images (its Cityscapes ones slide
windows), so the whole-image mIoU is the one to compare with its table.
"""

eval_pairs = val_pairs if EVAL_IMAGES is None else val_pairs.take(EVAL_IMAGES)
eval_ds = segmentation_eval_pipeline(
    eval_pairs, scale=SCALE, batch_size=1, num_classes=NUM_CLASSES
)
reports = {}
for mode in ("whole", "slide"):
    reports[mode] = evaluate_segmenter(
        model,
        eval_ds,
        class_names=ADE20K_CLASSES,
        mode=mode,
        crop_size=CROP_SIZE if mode == "slide" else None,
        stride=STRIDE if mode == "slide" else None,
        progress=not SMOKE,
    )
    report = reports[mode]
    print(
        f"{mode:>5}: mIoU {report['mIoU']:.4f}, mAcc {report['mAcc']:.4f}, "
        f"aAcc {report['aAcc']:.4f} ({report['num_images']} images, "
        f"{report['seconds']:.0f} s)"
    )

"""
## Per-class IoU

A mean over 150 classes hides a lot: large "stuff" classes such as wall, sky and floor
are usually segmented well, while small, rare objects score far lower. The table lists
the best and worst classes of the whole-image evaluation, with the sliding-window IoU
beside it. Classes that appear neither in the annotations nor in the predictions have no
IoU and are left out of the mean, and of this table.
"""


def per_class(mode, name, key="IoU"):
    """A table cell: the class's IoU or accuracy, a dash where it has none."""
    value = reports[mode]["per_class"][name][key]
    text = "-" if value is None else f"{value:.3f}"
    return f"{text:>10}"


scored = [
    name
    for name in ADE20K_CLASSES
    if reports["whole"]["per_class"][name]["IoU"] is not None
]
scored.sort(key=lambda name: reports["whole"]["per_class"][name]["IoU"], reverse=True)
shown = scored[:10] + [None] + scored[-10:] if len(scored) > 20 else scored
print(f"{'class':<22}{'IoU whole':>10}{'IoU slide':>10}{'accuracy':>10}")
for name in shown:
    if name is None:
        print("...")
        continue
    print(
        f"{name:<22}{per_class('whole', name)}{per_class('slide', name)}"
        f"{per_class('whole', name, 'Acc')}"
    )

"""
## Overlays

Numbers are easier to trust next to pictures. `predict_classes` runs the same
sliding-window inference on a few validation images (resized to the test scale, masks
included, so image, annotation and prediction line up), and `segmentation_panel` draws
image | ground truth | prediction with a legend of the classes present. Each panel is
also saved as a PNG in the working directory; light beige areas in the ground truth are
the ignored "other" pixels (label 255).
"""

overlay_ds = segmentation_eval_pipeline(
    val_pairs.take(NUM_OVERLAYS), scale=SCALE, batch_size=1, resize_mask=True
)
panels = []
for index, (images, masks) in enumerate(overlay_ds):
    images, masks = images.numpy(), masks.numpy()
    predictions = predict_classes(
        model, images, mode="slide", crop_size=CROP_SIZE, stride=STRIDE
    )
    image = np.clip(np.rint(images[0]), 0, 255).astype("uint8")
    mask, prediction = masks[0], predictions[0]
    save_segmentation_panel(
        f"ade20k_overlay_{index}.png", image, mask, prediction, ADE20K_CLASSES
    )
    panels.append(segmentation_panel(image, mask, prediction, ADE20K_CLASSES))

figure, axes = plt.subplots(
    len(panels), 1, figsize=(12, 4 * len(panels)), squeeze=False
)
for ax, panel in zip(axes[:, 0], panels):
    ax.imshow(panel)
    ax.axis("off")
show(figure, "ade20k_overlays.png")

"""
## Conclusion

The recipe follows HRViT's MMSegmentation configuration: AdamW with the decode head at
10 times the learning rate and no weight decay on the LayerNorms, a short linear warm-up
into a poly decay, and multi-scale crops with photometric
distortion. To get close to the paper's numbers (HRViT-b1 with this head: 45.88 mIoU on
ADE20K), start from an ImageNet-pretrained backbone and train the full 160k iterations.

The trained model is saved in `hrvit_b1_ade20k_trained/`;
`keras_hrvit.HRViTSegmenter.from_preset("hrvit_b1_ade20k_trained")` loads it back, and
`python -m keras_hrvit.export` turns it into a TensorFlow SavedModel that serves class
maps for `uint8` images of any size.
"""
