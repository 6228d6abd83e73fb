"""
Title: Semantic segmentation of Oxford-IIIT Pets with HRViT
Author: keras_hrvit contributors
Date created: 2026/12/03
Last modified: 2026/12/03
Description: Train an HRViT segmenter on pet photos with tf.data, compile() and fit.
Accelerator: GPU
"""

"""
## Introduction

HRViT is a vision transformer that keeps a high-resolution branch through the whole
network, which suits dense prediction tasks such as semantic segmentation. This
tutorial trains an `HRViTSegmenter` to separate pets from their background, with the
tools any Keras user knows: a `tf.data` pipeline, `compile()`, `fit()` with standard
callbacks, and an evaluation with mean IoU.

The [Oxford-IIIT Pets](https://www.robots.ox.ac.uk/~vgg/data/pets/) dataset has 7,349
photos of cats and dogs, each with a *trimap*: every pixel is pet, background, or the
outline between them. We learn those three classes.

Run the whole tutorial with:

```
python examples/oxford_pets_segmentation.py
```

TensorFlow Datasets downloads the data (about 800 MB) on the first run. The full run
trains an HRViT-b1 segmenter from scratch for 30 epochs at 256x256: about 60 minutes on
one GPU (an estimate, not a measurement), many hours on a CPU. Any Keras backend works:
set `KERAS_BACKEND` to `jax`, `tensorflow` or `torch` before starting.
"""

"""
## Setup
"""

import os

import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_hrvit
from keras_hrvit.data import segmentation_eval_pipeline, segmentation_train_pipeline
from keras_hrvit.metrics import ConfusionMatrix
from keras_hrvit.training import AtomicBackupAndRestore, AtomicCSVLogger
from keras_hrvit.visualize import colorize

CLASS_NAMES = ("pet", "background", "outline")

# The test suite runs this file with HRVIT_TUTORIAL_SMOKE=1: a tiny model, a few steps.
SMOKE = os.environ.get("HRVIT_TUTORIAL_SMOKE") == "1"
if SMOKE:
    BACKBONE, HEAD_CHANNELS, IMAGE_SIZE, BATCH_SIZE, EPOCHS = "hrvit_tiny", 16, 32, 2, 1
else:
    BACKBONE, HEAD_CHANNELS, IMAGE_SIZE, BATCH_SIZE, EPOCHS = (
        "hrvit_b1",
        256,
        256,
        16,
        30,
    )
RUN_DIR = "pets_run"

keras.utils.set_random_seed(42)

"""
## Loading the data

`tfds.load` gives dictionaries with the photo and its trimap. The trimap's values are
1 (pet), 2 (background) and 3 (outline); Keras losses want class indices that start at
0, so we subtract one. The package's pipelines take `(image, mask)` pairs: `uint8`
images of any size, and masks of the same height and width.
"""

train_examples = tfds.load("oxford_iiit_pet", split="train", shuffle_files=True)
test_examples = tfds.load("oxford_iiit_pet", split="test")


def to_pair(example):
    mask = example["segmentation_mask"][..., 0] - 1
    return example["image"], mask


train_pairs = train_examples.map(to_pair)
test_pairs = test_examples.map(to_pair)

"""
## Augmentation

`segmentation_train_pipeline` applies HRViT's training transforms (those of
MMSegmentation): a random rescale, a random crop that avoids crops of a single class,
a horizontal flip and photometric distortion, then batching. Images stay in 0-255: the
model normalizes them itself, so the same model later serves raw photos.

Evaluation images keep their aspect ratio; they are resized to fit `IMAGE_SIZE` on the
short side, and images of different sizes in one batch are padded. Padding in the
masks is 255, the label every loss and metric of the package ignores.
"""

scale = (2 * IMAGE_SIZE, IMAGE_SIZE)  # (long side, short side) before the random ratio
train_ds = segmentation_train_pipeline(
    train_pairs,
    crop_size=IMAGE_SIZE,
    base_scale=scale,
    ratio_range=(0.75, 1.5),
    batch_size=BATCH_SIZE,
    seed=42,
    num_classes=len(CLASS_NAMES),
)
val_ds = segmentation_eval_pipeline(
    test_pairs,
    scale=scale,
    batch_size=BATCH_SIZE,
    resize_mask=True,
    num_classes=len(CLASS_NAMES),
)

images, masks = next(iter(train_ds))
plt.figure(figsize=(8, 4))
for i in range(2):
    plt.subplot(2, 2, 2 * i + 1)
    plt.imshow(images[i].numpy().astype("uint8"))
    plt.axis("off")
    plt.subplot(2, 2, 2 * i + 2)
    plt.imshow(colorize(masks[i].numpy()))
    plt.axis("off")
plt.savefig("pets_training_crops.png")
plt.show()

"""
## Building the model

An `HRViTSegmenter` is a backbone plus a decode head. The backbone returns four feature
maps, at 1/4, 1/8, 1/16 and 1/32 of the input; the SegFormer head fuses them into
per-pixel logits at the input's size. No pretrained HRViT weights were published, so
the backbone starts from random weights here (the "Pretrain, then transfer" tutorial
shows how to pretrain one).
"""

backbone = keras_hrvit.HRViTBackbone.from_preset(BACKBONE)
model = keras_hrvit.HRViTSegmenter(
    backbone, num_classes=len(CLASS_NAMES), head_channels=HEAD_CHANNELS
)
print(f"{model.count_params():,} parameters")

"""
## Compiling

`compile()` with no arguments sets the segmenter's recipe for random weights, as here:
AdamW at a constant learning rate of 2e-3 with weight decay 0.01, a cross-entropy that
ignores label 255, and mean IoU as the metric. (`compile(recipe="paper")` is the paper's
recipe instead, made to fine-tune a pretrained backbone: a small learning rate with
warm-up and decay, the head at 10 times the backbone's rate.)
"""

model.compile()

"""
## Training

Three standard callbacks keep the run safe and visible:

- `AtomicBackupAndRestore` is Keras's `BackupAndRestore` that writes each file under a
  temporary name first: if the run is interrupted, running the script again resumes
  from the last finished epoch, and a kill in the middle of a write loses nothing.
- `AtomicCSVLogger` is Keras's `CSVLogger` made to go with it: one row of metrics per
  epoch, and a resumed run continues the file instead of starting it again.
- `TensorBoard` writes logs for `tensorboard --logdir pets_run/logs`.
"""

callbacks = [
    AtomicBackupAndRestore(os.path.join(RUN_DIR, "backup")),
    AtomicCSVLogger(os.path.join(RUN_DIR, "history.csv")),
    keras.callbacks.TensorBoard(os.path.join(RUN_DIR, "logs")),
]
history = model.fit(
    train_ds,
    validation_data=val_ds,
    epochs=EPOCHS,
    callbacks=callbacks,
    verbose=2 if SMOKE else 1,
)

plt.figure(figsize=(8, 3))
plt.subplot(1, 2, 1)
plt.plot(history.history["loss"], label="train")
plt.plot(history.history["val_loss"], label="validation")
plt.title("loss")
plt.legend()
plt.subplot(1, 2, 2)
plt.plot(history.history["val_mean_iou"])
plt.title("validation mean IoU")
plt.savefig("pets_training_curves.png")
plt.show()

"""
## Evaluation

`model.evaluate` reports the loss and mean IoU of the validation set. For the IoU of
each class we accumulate a confusion matrix over the predictions; `ConfusionMatrix`
follows MMSegmentation's definitions, so its figures compare with published ones.
"""

results = model.evaluate(val_ds, return_dict=True, verbose=0)
print(f"Validation mIoU (Keras metric): {results['mean_iou']:.4f}")

confusion = ConfusionMatrix(len(CLASS_NAMES), class_names=CLASS_NAMES)
for images, masks in val_ds:
    logits = model.predict_on_batch(images)
    confusion.update(masks, logits)
for name, iou in zip(CLASS_NAMES, confusion.per_class_iou()):
    print(f"{name:>12}: IoU {iou:.4f}")
print(f"Validation mIoU (confusion matrix): {confusion.mean_iou():.4f}")

"""
## Predictions

The model takes images as they are and returns logits at the input's size; the class
map is their argmax. Below: photos, true trimaps and predictions.
"""

images, masks = next(iter(val_ds))
predictions = keras.ops.convert_to_numpy(
    keras.ops.argmax(model.predict(images, verbose=0), axis=-1)
)
rows = min(4, len(images))
plt.figure(figsize=(9, 3 * rows))
for i in range(rows):
    panels = (
        images[i].numpy().astype("uint8"),
        colorize(masks[i].numpy()),
        colorize(predictions[i]),
    )
    for j, (panel, title) in enumerate(zip(panels, ("image", "truth", "prediction"))):
        plt.subplot(rows, 3, 3 * i + j + 1)
        plt.imshow(panel)
        plt.title(title)
        plt.axis("off")
plt.savefig("pets_predictions.png")
plt.show()

"""
## Saving and serving

`save_to_preset` writes a folder in KerasHub's layout; `from_preset` loads it again,
in this or another backend. The "Serving" tutorial exports the same model for
TensorFlow Serving and ONNX Runtime.
"""

model.save_to_preset(os.path.join(RUN_DIR, "pets_segmenter"))
reloaded = keras_hrvit.HRViTSegmenter.from_preset(
    os.path.join(RUN_DIR, "pets_segmenter")
)
same = np.array_equal(
    np.argmax(reloaded.predict(images, verbose=0), axis=-1), predictions
)
print(f"Reloaded model gives the same class maps: {same}")

"""
## Going further

- The mean IoU of a model trained from scratch improves with longer training; pretrain
  the backbone on ImageNet-style data first ("Pretrain, then transfer") for more.
- `keras_hrvit.inference.predict_classes` adds sliding-window, flip and multi-scale
  inference for images larger than the training crops.
- `tf` is only used here for the data: the model itself runs on any Keras backend.
"""

print(
    f"TensorFlow {tf.__version__} fed the data; Keras ran on {keras.backend.backend()}."
)
