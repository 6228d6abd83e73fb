"""Pretrain a tiny HRViT classifier, then fine-tune its backbone for segmentation, on CPU.

The paper's pipeline in miniature: ImageNet-style pretraining (here the embedded 8-class shape
set), then the pretrained backbone inside an `HRViTSegmenter` fine-tuned on a segmentation set
(here the embedded shapes set). The backbone weights move over layer by layer with
`transfer_backbone_weights`.

Usage (a few minutes on a laptop CPU; `--quick` is a smoke run of well under a minute of
training):

    python examples/pretrain_then_segment.py --output-dir runs/pretrain_then_segment
    python examples/pretrain_then_segment.py --quick
"""

import argparse
import os

import keras

from keras_hrvit import HRViTSegmenter
from keras_hrvit.data import (
    SHAPES_CLASSES,
    classification_eval_pipeline,
    classification_train_pipeline,
    load_classification_data,
    load_shapes,
    segmentation_eval_pipeline,
    segmentation_train_pipeline,
)
from keras_hrvit.tasks.classification import build_classifier, train_classifier
from keras_hrvit.tasks.segmentation import train_segmenter
from keras_hrvit.weights import transfer_backbone_weights

# Full run / --quick run.
SETTINGS = {
    False: dict(image_size=64, cls_images=2048, cls_epochs=3, seg_images=400, seg_epochs=4),
    True: dict(image_size=32, cls_images=128, cls_epochs=1, seg_images=32, seg_epochs=1),
}
BATCH_SIZE = 32
MODEL = "hrvit_tiny"


def pretrain(settings, output_dir, seed):
    """Pretrains the classifier; returns it and its validation top-1."""
    size = settings["image_size"]
    train, class_names = load_classification_data(
        "embedded", "train", image_size=size, num_images=settings["cls_images"]
    )
    val, _ = load_classification_data(
        "embedded", "validation", image_size=size, num_images=max(64, settings["cls_images"] // 4)
    )
    # Light augmentation: the full ImageNet recipe is too strong for a few epochs of toy data.
    train = classification_train_pipeline(
        train,
        len(class_names),
        image_size=size,
        batch_size=BATCH_SIZE,
        scale=(0.35, 1.0),
        randaugment=False,
        random_erasing=0.0,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        seed=seed,
    )
    val = classification_eval_pipeline(val, len(class_names), image_size=size, batch_size=64)
    classifier = build_classifier(MODEL, len(class_names))
    history = train_classifier(
        classifier,
        train,
        val,
        output_dir=os.path.join(output_dir, "classification"),
        epochs=settings["cls_epochs"],
        batch_size=BATCH_SIZE,
        # 2e-3 at batch 32: the linear scaling rule's base is per 1024 images.
        base_lr=2e-3 * 1024 / BATCH_SIZE,
        warmup_epochs=min(1, settings["cls_epochs"] - 1),
        tensorboard=False,
        verbose=2,
    )
    return classifier, history.history["val_top1_accuracy"][-1]


def fine_tune(classifier, settings, output_dir, seed):
    """Builds a segmenter on a fresh backbone, copies the pretrained weights, fine-tunes it."""
    size = settings["image_size"]
    segmenter = HRViTSegmenter.from_preset(
        MODEL, num_classes=len(SHAPES_CLASSES), head_channels=64, drop_path_rate=0.1
    )
    copied = transfer_backbone_weights(classifier, segmenter)
    print(f"Copied {len(copied)} pretrained backbone layers ({copied[0]} ... {copied[-1]}).")

    train = segmentation_train_pipeline(
        load_shapes("train", num_images=settings["seg_images"], image_size=size),
        crop_size=size,
        batch_size=16,
        seed=seed,
    )
    val = segmentation_eval_pipeline(
        load_shapes("validation", num_images=max(16, settings["seg_images"] // 4), image_size=size),
        batch_size=16,
    )
    # The paper's fine-tuning recipe: AdamW, poly decay after a warm-up, 10x on the new head.
    history = train_segmenter(
        segmenter,
        train,
        val,
        output_dir=os.path.join(output_dir, "segmentation"),
        epochs=settings["seg_epochs"],
        learning_rate=1e-3,
        warmup_steps=20,
        tensorboard=False,
        verbose=2,
    )
    return history.history["val_mean_iou"][-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--output-dir", default="runs/pretrain_then_segment")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    settings = SETTINGS[args.quick]
    os.makedirs(args.output_dir, exist_ok=True)
    keras.utils.set_random_seed(args.seed)

    classifier, top1 = pretrain(settings, args.output_dir, args.seed)
    print(f"Pretraining: validation top-1 {top1:.3f} (chance 0.125).")
    miou = fine_tune(classifier, settings, args.output_dir, args.seed)
    print(f"Fine-tuning: validation mIoU {miou:.3f} over {len(SHAPES_CLASSES)} classes.")
    return top1, miou


if __name__ == "__main__":
    main()
