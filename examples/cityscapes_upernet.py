"""
Title: Cityscapes with UperNet and an auxiliary head
Author: keras_hrvit contributors
Date created: 2026/12/03
Last modified: 2026/12/03
Description: HRViT with UperNet on Cityscapes, scored by the dataset's own evaluator.
Accelerator: GPU
"""

"""
## Introduction

This tutorial trains an HRViT-b1 segmenter with an UperNet decode head and
MMSegmentation's auxiliary FCN head on
[Cityscapes](https://www.cityscapes-dataset.com), with the HRViT paper's Cityscapes
data recipe (1024x1024 crops, sliding-window testing). You will see:

- a model with two outputs, trained by one `fit` with loss weights 1.0 and 0.4;
- sliding-window evaluation at the full 1024x2048 resolution;
- overlays in the Cityscapes colours;
- predictions written as `labelIds` PNGs, scored by the dataset's own evaluator
  (`cityscapesscripts`), whose per-class IoU is printed next to this package's.

The full run is

```
CITYSCAPES_DATASET=/data/cityscapes python examples/cityscapes_upernet.py
```

where `/data/cityscapes` is the standard folder layout from the Cityscapes website
(`leftImg8bit_trainvaltest.zip` and `gtFine_trainvaltest.zip` unpacked side by side):
`leftImg8bit/{train,val}/<city>/*_leftImg8bit.png` and
`gtFine/{train,val}/<city>/*_gtFine_labelIds.png`. It needs
`pip install cityscapesscripts` and a GPU with plenty of memory: 4 crops of
1024x1024 per step take roughly 40 GB (an estimate; with less, lower `BATCH_SIZE`). It
takes about 8 hours on one A100-class GPU (an estimate from the model's operation
count, not a measured time): 40,000 training steps, then about 20 minutes of
evaluation on the 500 validation images. Outputs go to `cityscapes_upernet_output/`.
An interrupted run resumes its training where it stopped when started again.
"""

"""
## Setup

Keras picks its backend from `KERAS_BACKEND`; JAX is the default here. The dataset
folder comes from `CITYSCAPES_DATASET`, the variable `cityscapesscripts` reads too.
`HRVIT_TUTORIAL_SMOKE=1` runs the whole tutorial in seconds with a tiny model on small
images (the test suite does this on a generated folder).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from keras_hrvit import HRViTBackbone, HRViTSegmenter
from keras_hrvit.data import (
    CITYSCAPES_CLASSES,
    load_cityscapes,
    segmentation_train_pipeline,
)
from keras_hrvit.data.cityscapes import (
    CITYSCAPES_PALETTE,
    cityscapes_frames,
    cityscapes_overlay,
    evaluate_with_cityscapesscripts,
    read_cityscapes_frame,
    write_cityscapes_prediction,
)
from keras_hrvit.files import atomic_write
from keras_hrvit.inference import predict_classes
from keras_hrvit.losses import SegmentationCrossEntropy
from keras_hrvit.metrics import ConfusionMatrix, SegmentationMeanIoU
from keras_hrvit.training import AtomicBackupAndRestore, save_model
from keras_hrvit.weights import load_backbone_weights

SMOKE = os.environ.get("HRVIT_TUTORIAL_SMOKE") == "1"
DATA_DIR = os.environ.get("CITYSCAPES_DATASET")
if not DATA_DIR or not os.path.isdir(os.path.join(DATA_DIR, "gtFine")):
    raise SystemExit(
        f"CITYSCAPES_DATASET={DATA_DIR!r} must name the Cityscapes folder that holds "
        "leftImg8bit/ and gtFine/ (from https://www.cityscapes-dataset.com)."
    )
OUTPUT_DIR = "cityscapes_upernet_output"
NUM_CLASSES = len(CITYSCAPES_CLASSES)  # the 19 train ids

if SMOKE:
    BACKBONE, HEAD_CHANNELS, DROP_PATH_RATE = "hrvit_tiny", 16, 0.0
    BASE_SCALE, CROP_SIZE, BATCH_SIZE = (128, 64), 64, 2
    EPOCHS, STEPS_PER_EPOCH = 1, 2
    WINDOW, STRIDE, WINDOWS_PER_CALL = 64, 48, 1
else:
    # The paper's Cityscapes settings: HRViT-b1 with drop path 0.15, images rescaled
    # around 2048x1024 and cropped to 1024x1024, sliding windows of 1024x1024 with a
    # stride of 768 at test time; UperNet at its usual width, 512. The schedule is
    # shorter than the paper's 160k steps of 8 crops: 40k steps of 4.
    BACKBONE, HEAD_CHANNELS, DROP_PATH_RATE = "hrvit_b1", 512, 0.15
    BASE_SCALE, CROP_SIZE, BATCH_SIZE = (2048, 1024), 1024, 4
    EPOCHS, STEPS_PER_EPOCH = 20, 2000
    # A 1024x2048 image holds 3 windows: one call of the model takes all of them.
    WINDOW, STRIDE, WINDOWS_PER_CALL = 1024, 768, 3

"""
## The data

`load_cityscapes` reads the folder and maps the 34 label ids to the 19 train ids
(every other id becomes 255, which the loss and the metrics ignore).
`segmentation_train_pipeline` applies the paper's augmentation: a random rescale by
0.5-2.0 around 2048x1024, a 1024x1024 crop in which no class covers more than 75%, a
horizontal flip and photometric distortion. File order is shuffled on every pass, so a
small shuffle buffer suffices; a large one would hold many full-size images in memory.
"""

train_pairs = load_cityscapes(DATA_DIR, "train", shuffle_files=True, seed=0)
train_ds = segmentation_train_pipeline(
    train_pairs,
    crop_size=CROP_SIZE,
    base_scale=BASE_SCALE,
    ratio_range=(0.5, 2.0),
    batch_size=BATCH_SIZE,
    shuffle_buffer=8,
    num_classes=NUM_CLASSES,
    seed=0,
).repeat()

"""
## A segmenter with two heads

`HRViTSegmenter(..., head="upernet", auxiliary_head=True)` puts UperNet on the four
HRViT branches and an FCN head on the third branch (1/16 resolution). Both return
logits at the input size, so the model has two outputs. The auxiliary head only helps
training: inference uses the first output.

The backbone starts from random weights: no pretrained HRViT weights were published.
To fine-tune ImageNet weights instead (the paper's setting), set
`HRVIT_BACKBONE_WEIGHTS` to a checkpoint of the original code (`.pth`), a classifier
`.keras` file from this package, or a `.weights.h5` of an `hrvit_b1` backbone;
`load_backbone_weights` checks it against the backbone before writing anything.
"""

backbone = HRViTBackbone.from_preset(BACKBONE, drop_path_rate=DROP_PATH_RATE)
model = HRViTSegmenter(
    backbone,
    num_classes=NUM_CLASSES,
    head="upernet",
    head_channels=HEAD_CHANNELS,
    auxiliary_head=True,
)
if os.environ.get("HRVIT_BACKBONE_WEIGHTS"):
    print(load_backbone_weights(model, os.environ["HRVIT_BACKBONE_WEIGHTS"]))
print("Backend:", keras.backend.backend())
print("Outputs:", model.output_names)

"""
## Compiling with two losses

`model.compile()` with no arguments would set all of this up; here it is spelled out.
Each output gets a cross-entropy that ignores label 255, weighted 1.0 for the decode
head and 0.4 for the auxiliary head (MMSegmentation's weights), and one mask trains
both. The mean IoU is tracked on the decode head only. The optimizer is the paper's
recipe, named by `recipe="paper"` since it fine-tunes a pretrained backbone: AdamW, the
heads at 10x the learning rate, warm-up then poly decay over `epochs * steps_per_epoch`.
(The default recipe, `"scratch"`, is for random weights.)
"""

model.compile(
    loss=[SegmentationCrossEntropy(), SegmentationCrossEntropy()],
    loss_weights=[1.0, 0.4],
    metrics=[[SegmentationMeanIoU(NUM_CLASSES, name="mean_iou")], []],
    recipe="paper",
    epochs=EPOCHS,
    steps_per_epoch=STEPS_PER_EPOCH,
)

"""
## Training

`AtomicBackupAndRestore` is Keras's `BackupAndRestore` made safe against kills in the
middle of a save: after each epoch it stores the weights and optimizer state, and a
run started again continues from the last finished epoch. The logs show the total loss
and each head's.
"""

backup = AtomicBackupAndRestore(os.path.join(OUTPUT_DIR, "backup"))
history = model.fit(
    train_ds,
    epochs=EPOCHS,
    steps_per_epoch=STEPS_PER_EPOCH,
    callbacks=[backup],
    verbose=2,
)
save_model(model, os.path.join(OUTPUT_DIR, "model.keras"))

"""
## Sliding-window evaluation at full resolution

Cityscapes images are 1024x2048. `predict_classes` in `"slide"` mode runs the model on
1024x1024 windows, 768 pixels apart, and averages the logits where windows overlap, as
MMSegmentation does. The evaluator pairs each prediction with its ground truth by file
name, so the evaluation walks the validation frames by name (`cityscapes_frames`, in
`load_cityscapes`'s order) rather than through an anonymous dataset.

Each prediction goes into a confusion matrix against the ground truth and is written
as a `labelIds` PNG under `results/<city>/`: train ids mapped back to the dataset's
label ids, the file format the official evaluator reads.
"""

results_dir = os.path.join(OUTPUT_DIR, "results")
confusion = ConfusionMatrix(NUM_CLASSES, class_names=CITYSCAPES_CLASSES)
frames = cityscapes_frames(DATA_DIR, "val")
examples = []
for index, frame in enumerate(frames):
    image, mask = read_cityscapes_frame(frame)
    prediction = predict_classes(
        model,
        image[None],
        mode="slide",
        crop_size=WINDOW,
        stride=STRIDE,
        num_classes=NUM_CLASSES,
        windows_per_call=WINDOWS_PER_CALL,
    )[0]
    confusion.update(mask, prediction)
    write_cityscapes_prediction(results_dir, frame, prediction)
    if len(examples) < 2:
        examples.append((frame.name, image, mask, prediction))
    if (index + 1) % 50 == 0:
        print(
            f"{index + 1}/{len(frames)} images, mIoU so far {confusion.mean_iou():.4f}"
        )

"""
## Overlays in the Cityscapes colours

The dataset's palette (`CITYSCAPES_PALETTE`, from `cityscapesscripts`) draws each
class as the Cityscapes pages do; pixels without a class (255) show the photo alone.
"""

figure, axes = plt.subplots(len(examples), 3, figsize=(15, 2.6 * len(examples)))
axes = np.atleast_2d(axes)
for row, (name, image, mask, prediction) in zip(axes, examples):
    panels = (
        image,
        cityscapes_overlay(image, mask),
        cityscapes_overlay(image, prediction),
    )
    for axis, panel, title in zip(row, panels, ("image", "ground truth", "prediction")):
        axis.imshow(panel)
        axis.set_title(f"{name}: {title}" if title == "image" else title, fontsize=9)
        axis.axis("off")
shown = sorted(
    {int(c) for _, _, mask, pred in examples for c in np.unique([mask, pred])} - {255}
)
handles = [
    Patch(color=CITYSCAPES_PALETTE[c] / 255.0, label=CITYSCAPES_CLASSES[c])
    for c in shown
]
figure.legend(
    handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=8
)
figure.tight_layout(rect=(0, 0.08, 1, 1))
# The overlays stay outside results/: the evaluator would take them for predictions.
atomic_write(os.path.join(OUTPUT_DIR, "overlays.png"), figure.savefig, ".png")
if not SMOKE:
    plt.show()

"""
## The official evaluator

`evaluate_with_cityscapesscripts` runs `cityscapesscripts`'
`evalPixelLevelSemanticLabeling` in this process on the PNGs just written, reading the
ground truth from `gtFine/val` itself. Its per-class IoU ignores the same pixels
(label ids without a train id) and counts the same errors as this package's confusion
matrix, so the two columns agree; the check below stops the tutorial if they do not.
"""

official = evaluate_with_cityscapesscripts(
    DATA_DIR,
    results_dir,
    split="val",
    export_file=os.path.join(OUTPUT_DIR, "resultPixelLevelSemanticLabeling.json"),
)
ours = confusion.per_class_iou()
print(f"{'class':<14} {'keras_hrvit':>11} {'cityscapesscripts':>17}")
for name, mine, theirs in zip(CITYSCAPES_CLASSES, ours, official["per_class_iou"]):
    print(f"{name:<14} {mine:>11.4f} {theirs:>17.4f}")
print(f"{'mIoU':<14} {confusion.mean_iou():>11.4f} {official['mean_iou']:>17.4f}")
np.testing.assert_allclose(ours, official["per_class_iou"], rtol=0, atol=1e-9)

"""
## Where to go next

- Test-set predictions for the Cityscapes benchmark server: run the evaluation loop on
  `cityscapes_frames(DATA_DIR, "test")` into a results folder of their own, without
  the confusion matrix (the test split has no public labels), and zip that folder.
- Flip and multi-scale testing, MMSegmentation's test-time augmentation, is one
  argument away: `predict_classes(..., flip=True, scales=(0.75, 1.0, 1.25, 1.5))`.
- The command line trains the same model:

```
python -m keras_hrvit.train segmentation --dataset cityscapes \
    --data-dir /data/cityscapes --model hrvit_b1_cityscapes \
    --head upernet --head-channels 512 --output-dir run
```
"""
