"""Command-line evaluation of a saved segmenter: `python -m keras_hrvit.evaluate MODEL.keras`.

Scores a validation split like MMSegmentation (whole-image or sliding-window inference,
optional flip, predictions resized to the original masks), writes `report.json` and overlay
PNGs to `--output-dir`, and prints the mIoU. The options are in `keras_hrvit/cli/evaluate.py`
(`keras_hrvit.cli.evaluate.main` runs it from Python), the evaluation in
`keras_hrvit.tasks.segmentation.evaluate_segmenter`.

Example:

    python -m keras_hrvit.evaluate runs/shapes/model.keras --dataset shapes --image-size 64 \
        --output-dir runs/shapes/eval
    python -m keras_hrvit.evaluate runs/city/model.keras --dataset cityscapes \
        --data-dir /data/cityscapes --mode slide --crop-size 1024 --stride 768 --flip \
        --output-dir runs/city/eval
"""

if __name__ == "__main__":
    from keras_hrvit.cli.evaluate import main

    raise SystemExit(main())
