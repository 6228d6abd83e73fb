"""Training and evaluation workflows around `model.fit`, one module per task.

`segmentation` (`train_segmenter`, `evaluate_segmenter`, the datasets' protocols) and
`classification` (`train_classifier`, ImageNet-style pretraining). Their command lines,
`python -m keras_hrvit.train <task>` and `python -m keras_hrvit.evaluate`, are in
`keras_hrvit/cli/`.

Example:

>>> from keras_hrvit.tasks.segmentation import build_segmenter, train_segmenter
>>> model = build_segmenter("hrvit_tiny_shapes")
"""
