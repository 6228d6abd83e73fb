"""
Title: Serving an HRViT segmenter with TF Serving and ONNX Runtime
Author: keras_hrvit contributors
Date created: 2026/12/03
Last modified: 2026/12/03
Description: Export a segmenter for TF Serving, send it REST requests, run it on ONNX.
Accelerator: None
"""

"""
## Introduction

A segmenter is useful once a program that knows nothing of Keras can ask it for class
maps. This tutorial takes an HRViT segmenter to two serving stacks:

- **TensorFlow Serving.** `keras_hrvit.export.export_saved_model` writes a SavedModel
  into the `<name>/<version>/` folder layout that TF Serving loads. We read its
  signatures with `saved_model_cli`, build the JSON bodies of REST `predict` requests
  (raw pixels, then base64-encoded PNG files, as web clients send images), answer them
  here the way TF Serving maps JSON to the model's inputs, and turn the response into
  class maps.
- **ONNX Runtime.** `keras_hrvit.export.export_onnx` converts the same serving function
  to an ONNX file, which `onnxruntime` runs with no TensorFlow at all; we compare its
  class maps with Keras's.

The model is small and barely trained on the toy *shapes* dataset of the package:
serving, not accuracy, is the lesson, and the same calls serve a fully trained model
(load yours with `keras.saving.load_model("model.keras")` instead of the training cell).

Run it with `python examples/serving.py`: about 10 minutes on a CPU (an estimate; the
ONNX conversion takes most of it). Any Keras backend trains the model; the export runs
under TensorFlow, in a subprocess when the backend is JAX or PyTorch. It needs
TensorFlow, `tf2onnx` and `onnxruntime`: `pip install "keras-hrvit[onnx]"`. With
`HRVIT_TUTORIAL_SMOKE=1` it runs a tiny model at a small size, as the tests do, and
skips the ONNX conversion (add `HRVIT_TUTORIAL_ONNX=1` to keep it).
"""

"""
## Setup
"""

import base64
import io
import json
import os
import subprocess
import sys
import time

import keras
import matplotlib.patches
import matplotlib.pyplot as plt
import numpy as np
import onnxruntime
import tensorflow as tf
from PIL import Image

import keras_hrvit
from keras_hrvit.data import SHAPES_CLASSES, load_shapes, segmentation_train_pipeline
from keras_hrvit.export import export_onnx, export_saved_model
from keras_hrvit.files import atomic_write, write_text

SMOKE = os.environ.get("HRVIT_TUTORIAL_SMOKE") == "1"
# The ONNX conversion takes half a minute even for the smoke run's model: the smoke run
# skips it unless HRVIT_TUTORIAL_ONNX=1.
RUN_ONNX = os.environ.get("HRVIT_TUTORIAL_ONNX", "0" if SMOKE else "1") == "1"
IMAGE_SIZE = 48 if SMOKE else 64
MODEL_NAME = "hrvit_shapes"
# TF Serving's `--model_base_path`: one numbered folder per version of the model.
MODEL_BASE_PATH = os.path.join("models", MODEL_NAME)
keras.utils.set_random_seed(0)
print("Keras backend:", keras.backend.backend())

"""
## A small segmenter to serve

The `hrvit_tiny_shapes` preset learns the shapes dataset (circles, rectangles, triangles
and rings on a background) in a few minutes on a CPU; here it takes a short fit, enough
for its class maps to follow the shapes roughly. The smoke run builds the smallest HRViT
the segmentation head takes (four branches, one attention block) and fits it two steps.
"""

if SMOKE:
    backbone = keras_hrvit.HRViTBackbone(
        stem_channels=8,
        channels=(8, 8, 8, 8),
        blocks=((0,), (0, 0), (0, 0, 0), (0, 0, 0, 1)),
        head_dim=8,
        window_sizes=(1, 2, 7, 7),
        mlp_ratios=(1, 1, 1, 1),
        name="smoke_backbone",
    )
    model = keras_hrvit.HRViTSegmenter(
        backbone, num_classes=len(SHAPES_CLASSES), head_channels=8
    )
    steps, batch_size = 2, 4
else:
    model = keras_hrvit.HRViTSegmenter.from_preset("hrvit_tiny_shapes")
    steps, batch_size = 60, 8

train = segmentation_train_pipeline(
    load_shapes("train", steps * batch_size, IMAGE_SIZE),
    crop_size=IMAGE_SIZE,
    batch_size=batch_size,
)
model.compile(epochs=1, steps_per_epoch=steps)
model.fit(train, epochs=1, steps_per_epoch=steps, verbose=2)

"""
## Export into TF Serving's layout

TF Serving watches a model's base folder and serves the highest numbered subfolder in
it; `export_saved_model(..., version=1)` writes `models/hrvit_shapes/1/`. It writes the
SavedModel under a temporary name (a dot-name TF Serving ignores) and renames it once
complete, so a running server never loads half a version. An existing version is refused
unless `overwrite=True`: a re-run of this tutorial replaces version 1, while a new model
in production goes to `version=2`, and TF Serving switches to it once it has loaded.

Under PyTorch or JAX the export saves the model as a `.keras` file and re-opens it under
TensorFlow in a subprocess; a progress bar on stderr shows its stages.
"""

start = time.time()
saved_model = export_saved_model(model, MODEL_BASE_PATH, version=1, overwrite=True)
print(f"Exported in {time.time() - start:.0f} s")
for folder, _, files in sorted(os.walk(MODEL_BASE_PATH)):
    print(folder + "/", sorted(files))

"""
## The serving signatures: `saved_model_cli show`

`saved_model_cli`, installed with TensorFlow, lists what a SavedModel serves. We keep
the signature part of its report (it goes on with every operation of the graph):

- `serving_default` (also `serve`): input `images`, a `uint8` batch of any height and
  width; output `output_0`, the `int32` class id of every pixel.
- `serving_bytes`: input `image_bytes`, a batch of encoded images (JPEG, PNG, GIF or BMP
  files). Each image is decoded and segmented on its own, at its own size; a batch of
  different sizes comes back as one tensor of the largest size, each class map padded
  with `-1` past its own image.
"""

command = ["saved_model_cli", "show", "--dir", saved_model, "--all"]
print("$", " ".join(command))
# The module behind the `saved_model_cli` command: it runs whether or not the
# environment's scripts folder is on PATH.
cli = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", *command[1:]]
environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
report = subprocess.run(cli, capture_output=True, text=True, env=environment)
if report.returncode == 0:
    print(report.stdout.split("The MetaGraph with tag set")[0].strip())
else:  # an installation without the tool: the same facts from the loaded SavedModel
    for name, function in tf.saved_model.load(saved_model).signatures.items():
        print(name, function.structured_input_signature[1], function.structured_outputs)

"""
## A REST request with raw pixels

TF Serving's REST API answers `POST /v1/models/<name>:predict` (or
`/v1/models/<name>/versions/<n>:predict`). In its *row* format the body holds a list of
`instances`, one per image; with a single input, each instance is that input's value,
here an image as nested lists of numbers. No `signature_name` means `serving_default`.

We take two test images of the shapes dataset, and crop the second so that the two
differ in size (the `serving_bytes` section needs that).
"""

test_images = [image.numpy() for image, _ in load_shapes("test", 2, IMAGE_SIZE)]
test_images[1] = test_images[1][:, : IMAGE_SIZE * 3 // 4]
print("Test image sizes:", [image.shape for image in test_images])

pixels_body = json.dumps({"instances": [test_images[0].tolist()]})
write_text("request_pixels.json", pixels_body)
print(f"request_pixels.json: {len(pixels_body)} characters:", pixels_body[:80], "...")

"""
## A REST request with PNG bytes

Clients usually hold image files, not pixel arrays. JSON carries binary data as base64
inside an object with the single key `b64`; TF Serving decodes such an object into the
bytes of a string input. The body names the `serving_bytes` signature; each instance is
either that object (the signature has one input) or an object naming the input,
`{"image_bytes": {"b64": ...}}`, which is the form used below. A PNG is also far smaller
than its pixels written out as JSON numbers.
"""


def png_bytes(image):
    """The bytes of a PNG file of a `uint8` (height, width, 3) image."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


instances = [
    {"image_bytes": {"b64": base64.b64encode(png_bytes(image)).decode("ascii")}}
    for image in test_images
]
bytes_body = json.dumps({"signature_name": "serving_bytes", "instances": instances})
write_text("request_png.json", bytes_body)
print(f"request_png.json: {len(bytes_body)} characters:", bytes_body[:100], "...")

"""
## Sending them to TF Serving

With TF Serving's Docker image, the two request files go to a server like this (not run
here):

```shell
docker run --rm -p 8501:8501 \
    -v "$PWD/models/hrvit_shapes:/models/hrvit_shapes" \
    -e MODEL_NAME=hrvit_shapes tensorflow/serving
curl -X POST http://localhost:8501/v1/models/hrvit_shapes:predict \
    -H "Content-Type: application/json" -d @request_png.json
```
"""

"""
## Answering the requests as TF Serving does

Without a server we answer the bodies with the loaded SavedModel, following the rules of
TF Serving's row format: pick the signature (`serving_default` if none is named), stack
the instances into one tensor per input (a plain list feeds the only input; objects name
their inputs), decode `{"b64": ...}` objects into bytes, call the signature, and return
its only output, unnamed, under `predictions`.
"""

served = tf.saved_model.load(saved_model)


def is_base64(value):
    return isinstance(value, dict) and list(value) == ["b64"]


def answer_predict(body):
    """The JSON response of TF Serving's REST `predict` to `body` (row format)."""
    request = json.loads(body)
    signature = served.signatures[request.get("signature_name", "serving_default")]
    specs = signature.structured_input_signature[1]  # {input name: TensorSpec}
    rows = request["instances"]
    if isinstance(rows[0], dict) and not is_base64(rows[0]):
        columns = {name: [row[name] for row in rows] for name in specs}
    else:
        (name,) = specs
        columns = {name: rows}
    inputs = {}
    for name, values in columns.items():
        if specs[name].dtype == tf.string:
            values = [base64.b64decode(v["b64"]) if is_base64(v) else v for v in values]
        inputs[name] = tf.constant(values, dtype=specs[name].dtype)
    (output,) = signature(**inputs).values()
    return json.dumps({"predictions": output.numpy().tolist()})


pixels_answer = np.array(json.loads(answer_predict(pixels_body))["predictions"])
bytes_answer = np.array(json.loads(answer_predict(bytes_body))["predictions"])
print("serving_default answer:", pixels_answer.shape, pixels_answer.dtype)
print("serving_bytes answer:", bytes_answer.shape, "(the largest height and width)")

"""
## From the response to class maps

The `serving_bytes` answer pads each class map past its own image with `-1`: crop it to
the image's size. A PNG holds exactly the pixels it was made from, so both signatures
give the same class map of the first image.
"""

class_maps = [
    answer[: image.shape[0], : image.shape[1]]
    for answer, image in zip(bytes_answer, test_images)
]
assert all((classes >= 0).all() for classes in class_maps)
print("The two signatures agree:", np.array_equal(class_maps[0], pixels_answer[0]))
found = np.unique(np.concatenate([classes.ravel() for classes in class_maps]))
print("Classes found:", [SHAPES_CLASSES[c] for c in found])


def show_classes(axis, classes):
    """Draws a class map, one colour of matplotlib's `tab10` per class id."""
    axis.imshow(classes, cmap="tab10", vmin=0, vmax=9, interpolation="nearest")


legend = [
    matplotlib.patches.Patch(color=plt.get_cmap("tab10")(index), label=name)
    for index, name in enumerate(SHAPES_CLASSES)
]
figure, axes = plt.subplots(2, 2, figsize=(7, 7.5))
for row, (image, classes) in enumerate(zip(test_images, class_maps)):
    axes[row, 0].imshow(image)
    axes[row, 0].set_title(f"image {image.shape[0]}x{image.shape[1]}")
    show_classes(axes[row, 1], classes)
    axes[row, 1].set_title("served class map")
for axis in axes.ravel():
    axis.axis("off")
figure.legend(handles=legend, loc="lower center", ncol=len(SHAPES_CLASSES))
figure.tight_layout(rect=(0, 0.05, 1, 1))
atomic_write("served_class_maps.png", figure.savefig, ".png")
plt.show()

"""
## ONNX Runtime

`export_onnx` converts the `uint8` serving function with `tf2onnx`: the ONNX file's
input `images` takes a `uint8` batch of any size and its output is the class map. ONNX
cannot decode JPEG or PNG, so the client decodes images itself; nor can it fail with a
message, so unlike the SavedModel it does not refuse images under the model's 32x32
minimum: check the size before calling it. The conversion is slow (`tf2onnx` optimizes
every node of the graph: about six minutes for `hrvit_tiny` on a CPU), and the progress
bar shows it as one long stage.
"""

if not RUN_ONNX:
    print("Skipped the ONNX Runtime section (HRVIT_TUTORIAL_ONNX=0).")
    raise SystemExit(0)

onnx_path = os.path.join("models", MODEL_NAME + ".onnx")
start = time.time()
export_onnx(model, onnx_path, overwrite=True)
print(f"Converted in {time.time() - start:.0f} s")

session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
print("ONNX inputs:", [(i.name, i.type, i.shape) for i in session.get_inputs()])
onnx_maps = [session.run(None, {"images": image[None]})[0][0] for image in test_images]
keras_maps = [
    np.argmax(model.predict(image[None], verbose=0)[0], axis=-1)
    for image in test_images
]
for index, (onnx_map, keras_map) in enumerate(zip(onnx_maps, keras_maps)):
    agreement = np.mean(onnx_map == keras_map)
    print(f"image {index}: ONNX Runtime and Keras agree on {agreement:.2%} of pixels")

figure, axes = plt.subplots(1, 3, figsize=(9, 3.4))
panels = [
    ("image", test_images[0]),
    ("Keras", keras_maps[0]),
    ("ONNX Runtime", onnx_maps[0]),
]
for axis, (title, panel) in zip(axes, panels):
    if panel.ndim == 3:
        axis.imshow(panel)
    else:
        show_classes(axis, panel)
    axis.set_title(title)
    axis.axis("off")
figure.tight_layout()
atomic_write("onnx_runtime_vs_keras.png", figure.savefig, ".png")
plt.show()

"""
## Next steps

- Start TF Serving on the folder (the Docker command above) and send the two request
  files with `curl`; its responses are those printed here.
- Export a new model as `version=2` next to version 1: TF Serving loads it, then
  switches to it without a restart. `python -m keras_hrvit.export model.keras
  models/hrvit_shapes --version 2` does the same from the command line.
- `serving_bytes` runs one image at a time; for throughput on a GPU, send same-size
  batches of pixels to `serving_default`, or enable TF Serving's request batching.
"""
