"""
Title: Pretrain an HRViT classifier, then transfer its backbone to segmentation
Author: keras_hrvit contributors
Date created: 2026/12/03
Last modified: 2026/12/03
Description: Pretrain HRViT on Imagenette, then fine-tune its backbone for segmentation.
Accelerator: GPU
"""

"""
## Introduction

The HRViT paper pretrains its backbones on ImageNet, then fine-tunes them for semantic
segmentation. No pretrained HRViT weights were ever published, so this is the path to a
good segmenter when you have a classification dataset at hand. This tutorial walks it
on a small scale:

1. pretrain an `HRViTClassifier` on
   [Imagenette](https://github.com/fastai/imagenette), ten easy ImageNet classes, with
   the augmentations of Keras core (`RandAugment`, `MixUp`, `CutMix`);
2. put its backbone in an `HRViTSegmenter` and fine-tune it on Oxford-IIIT Pets;
3. compare with the same segmenter trained from scratch for the same steps.

Run the whole tutorial with:

```
python examples/pretrain_then_transfer.py
```

TensorFlow Datasets downloads both datasets (about 1 GB) on the first run. The full
run pretrains HRViT-b1 for 40 epochs at 128x128, then fine-tunes two segmenters for 10
epochs each at 256x256: about 2 hours on one GPU (an estimate, not a measurement).
"""

"""
## Setup
"""

import os

import keras
import matplotlib.pyplot as plt
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_hrvit
from keras_hrvit.data import segmentation_eval_pipeline, segmentation_train_pipeline

# The test suite runs this file with HRVIT_TUTORIAL_SMOKE=1: a tiny model, a few steps.
SMOKE = os.environ.get("HRVIT_TUTORIAL_SMOKE") == "1"
if SMOKE:
    BACKBONE, CLS_SIZE, CLS_BATCH, CLS_EPOCHS = "hrvit_tiny", 32, 2, 1
    SEG_SIZE, SEG_BATCH, SEG_EPOCHS, HEAD_CHANNELS = 32, 2, 1, 16
else:
    BACKBONE, CLS_SIZE, CLS_BATCH, CLS_EPOCHS = "hrvit_b1", 128, 64, 40
    SEG_SIZE, SEG_BATCH, SEG_EPOCHS, HEAD_CHANNELS = 256, 16, 10, 256
NUM_CLASSES = 10

keras.utils.set_random_seed(42)

"""
## Imagenette with Keras core augmentations

The images of `imagenette/160px` have a short side of 160 pixels. Training images get
a random crop and flip, then `RandAugment` (two random operations per image, as in
DeiT's recipe that the paper follows). Batches are then mixed: each batch goes through
either `MixUp` (a blend of two images, labels blended alike) or `CutMix` (a patch of one
image pasted into another, labels by area). Both need one-hot labels.

All of these are Keras layers: inside `tf.data` they run as TensorFlow operations,
whatever backend trains the model.
"""

cls_train = tfds.load("imagenette/160px", split="train", shuffle_files=True)
cls_val = tfds.load("imagenette/160px", split="validation")

resize = keras.layers.Resizing(CLS_SIZE + CLS_SIZE // 8, CLS_SIZE + CLS_SIZE // 8)
crop = keras.layers.RandomCrop(CLS_SIZE, CLS_SIZE)
flip = keras.layers.RandomFlip("horizontal")
rand_augment = keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.5)
mixup = keras.layers.MixUp(alpha=0.8)
cutmix = keras.layers.CutMix(factor=1.0)
center_crop = keras.layers.CenterCrop(CLS_SIZE, CLS_SIZE)


def train_example(example):
    image = tf.cast(example["image"], "float32")
    image = rand_augment(flip(crop(resize(image))))
    return image, tf.one_hot(example["label"], NUM_CLASSES)


def mix(images, labels):
    data = {"images": images, "labels": labels}
    use_mixup = tf.random.uniform(()) < 0.5
    mixed = tf.cond(use_mixup, lambda: mixup(data), lambda: cutmix(data))
    return mixed["images"], mixed["labels"]


def val_example(example):
    image = center_crop(resize(tf.cast(example["image"], "float32")))
    return image, tf.one_hot(example["label"], NUM_CLASSES)


cls_train_ds = (
    cls_train.shuffle(1024)
    .map(train_example, num_parallel_calls=tf.data.AUTOTUNE)
    .batch(CLS_BATCH, drop_remainder=True)
    .map(mix, num_parallel_calls=tf.data.AUTOTUNE)
    .prefetch(tf.data.AUTOTUNE)
)
cls_val_ds = cls_val.map(val_example).batch(CLS_BATCH).prefetch(tf.data.AUTOTUNE)

images, labels = next(iter(cls_train_ds))
plt.figure(figsize=(8, 2.5))
for i in range(min(4, len(images))):
    plt.subplot(1, 4, i + 1)
    plt.imshow(images[i].numpy().clip(0, 255).astype("uint8"))
    plt.title(f"max label {labels[i].numpy().max():.2f}")
    plt.axis("off")
plt.savefig("imagenette_augmented.png")
plt.show()

"""
## Pretraining

`HRViTClassifier` puts the HRNetV2-style classification head of the paper on the
backbone and returns class probabilities. `compile()` sets DeiT's recipe: AdamW with
no weight decay on normalization weights and biases, a warm-up then cosine decay over
the `fit`, gradient clipping, and a cross-entropy that takes the soft labels of
MixUp and CutMix. The recipe's learning rate is for ImageNet's batch of 1024; for a
small dataset and batch we give our own peak rate.
"""

classifier = keras_hrvit.HRViTClassifier.from_preset(BACKBONE, classes=NUM_CLASSES)
classifier.compile(learning_rate=2e-3)
classifier.fit(
    cls_train_ds,
    validation_data=cls_val_ds,
    epochs=CLS_EPOCHS,
    verbose=2 if SMOKE else 1,
)
accuracy = classifier.evaluate(cls_val_ds, return_dict=True, verbose=0)["top1_accuracy"]
print(f"Imagenette validation top-1 accuracy: {accuracy:.4f}")

"""
## Transfer to segmentation

The classifier's backbone is an ordinary `HRViTBackbone`: passing it to
`HRViTSegmenter` builds a segmenter on the same layers and weights. We keep a copy of
the pretrained classifier on disk, because fine-tuning changes the shared backbone.
"""

classifier.save("imagenette_classifier.keras")
pretrained = keras_hrvit.HRViTSegmenter(
    classifier.backbone, num_classes=3, head_channels=HEAD_CHANNELS
)
scratch = keras_hrvit.HRViTSegmenter(
    keras_hrvit.HRViTBackbone.from_preset(BACKBONE),
    num_classes=3,
    head_channels=HEAD_CHANNELS,
)

"""
## Fine-tuning on Oxford-IIIT Pets

The segmentation data is the trimap task of the "Oxford-IIIT Pets" tutorial: pet,
background and outline. `compile(recipe="paper")` is the paper's fine-tuning
recipe, made for this case: a pretrained backbone and a new head that learns 10 times
faster. We raise the learning rate for a run this short, and train the segmenter from
scratch with the same settings to see what pretraining buys.
"""


def to_pair(example):
    return example["image"], example["segmentation_mask"][..., 0] - 1


seg_scale = (2 * SEG_SIZE, SEG_SIZE)
seg_train_ds = segmentation_train_pipeline(
    tfds.load("oxford_iiit_pet", split="train", shuffle_files=True).map(to_pair),
    crop_size=SEG_SIZE,
    base_scale=seg_scale,
    ratio_range=(0.75, 1.5),
    batch_size=SEG_BATCH,
    seed=42,
    num_classes=3,
)
seg_val_ds = segmentation_eval_pipeline(
    tfds.load("oxford_iiit_pet", split="test").map(to_pair),
    scale=seg_scale,
    batch_size=SEG_BATCH,
    resize_mask=True,
    num_classes=3,
)

curves = {}
for name, segmenter in (("pretrained", pretrained), ("from scratch", scratch)):
    segmenter.compile(recipe="paper", learning_rate=3e-4)
    history = segmenter.fit(
        seg_train_ds,
        validation_data=seg_val_ds,
        epochs=SEG_EPOCHS,
        verbose=2 if SMOKE else 1,
    )
    curves[name] = history.history["val_mean_iou"]
    print(f"{name}: validation mIoU {curves[name][-1]:.4f}")

"""
## What pretraining bought

Both segmenters saw the same images for the same number of steps; only the starting
point of the backbone differs.
"""

plt.figure(figsize=(5, 3))
for name, values in curves.items():
    plt.plot(range(1, len(values) + 1), values, marker="o", label=name)
plt.xlabel("epoch")
plt.ylabel("validation mIoU")
plt.legend()
plt.savefig("pretrained_vs_scratch.png")
plt.show()

"""
## Going further

- The pretrained classifier is saved in `imagenette_classifier.keras`. Load it later
  with `keras.saving.load_model`, or build a classifier on it with
  `keras_hrvit.HRViTB1(weights="imagenette_classifier.keras", classes=10)`.
- With a real ImageNet pretraining, use the package's command line:
  `python -m keras_hrvit.train classification --data tfds:imagenet2012 ...`.
- `keras_hrvit.weights.transfer_backbone_weights` copies a backbone's weights into
  another model, for example a segmenter built in another script.
"""
