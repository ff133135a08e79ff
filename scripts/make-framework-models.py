#!/usr/bin/env python3
"""Writes the framework-exported models of the classifier's agreement test
(crates/classifier/tests/frameworks/): small networks of torchvision's and Keras' own
architectures, exported to ONNX by each framework's exporter, with each framework's answers for the
five test photos computed by that framework's usual pipeline. The test
(crates/classifier/tests/it/frameworks.rs) serves each export with its model.toml and checks
that imgclass gives the framework's answers.

    python3 -m venv venv && venv/bin/pip install torch==2.15.0 torchvision==0.29.2 \\
        keras==3.15.1 onnx==1.23.2 onnxscript pillow numpy
    KERAS_BACKEND=torch venv/bin/python scripts/make-framework-models.py

(torch's wheel brings CUDA libraries, several GB: this script is run by hand, not in CI; its
outputs are committed.)

The networks are the frameworks' architectures trained here for a minute each (no pretrained
weights can be fetched where this runs) to tell the five photos apart: random crops of them
(10-100 % of the area, resized with several kernels, flipped, colour-jittered), with label
smoothing so that their answers stay short of certainty. That is what the test needs: each
framework's pipeline against imgclass's, photo by photo, on a network that, like a trained
classifier, does not change its answer over a one-pixel difference in resizing (a network
with random weights does: its answers moved by 0.4 between a resize to 256 and to 257).

The models:
- torchvision-shufflenet: torchvision.models.shufflenet_v2_x0_5(num_classes=10), exported with
  torch.onnx.export; the pipeline of torchvision's ImageNet weights: Resize(256) (bilinear,
  antialiased), CenterCrop(224), ToTensor, Normalize(ImageNet mean, std); NCHW, RGB, logits.
- keras-mobilenetv2: keras.applications.MobileNetV2(alpha=0.35, classes=10), exported with
  Keras' model.export(format="onnx"); keras.utils.load_img(target_size=(224, 224),
  interpolation="bilinear"), mobilenet_v2.preprocess_input (p / 127.5 - 1); NHWC, softmax.
- keras-caffe-192x256: the same architecture at 192×256 (non-square), with the "caffe"
  preprocess_input of ResNet50/VGG (BGR, the ImageNet mean subtracted in 0..255); NHWC, softmax.

expected.tsv: photo, model, then the framework's probabilities of the 5 classes (softmax of the
logits for the torchvision model). labels.txt names the classes after the photos.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import pathlib  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/classifier/tests/frameworks"
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "grace_hopper.jpg", "rocket.jpg"]
LABELS = [p.split(".")[0] for p in PHOTOS]
CLASSES = len(PHOTOS)
STEPS, BATCH = 150, 32
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CAFFE_MEAN_BGR = [103.939, 116.779, 123.68]


def photo(name):
    return Image.open(ROOT / "tests/fixtures" / name).convert("RGB")


SOURCES = [photo(p) for p in PHOTOS]


def training_batch(rng, size):
    """BATCH random crops of the photos at size (height, width), as PIL images, and their
    labels (which photo)."""
    kernels = [
        transforms.InterpolationMode.BILINEAR,
        transforms.InterpolationMode.BICUBIC,
        transforms.InterpolationMode.NEAREST,
        transforms.InterpolationMode.BOX,
    ]
    images, labels = [], []
    for _ in range(BATCH):
        i = int(rng.integers(len(PHOTOS)))
        augment = transforms.Compose(
            [
                transforms.RandomResizedCrop(
                    size, scale=(0.1, 1.0), interpolation=kernels[int(rng.integers(4))]
                ),
                transforms.RandomHorizontalFlip(),
                transforms.ColorJitter(0.2, 0.2, 0.2),
            ]
        )
        images.append(augment(SOURCES[i]))
        labels.append(i)
    return images, labels


def write_folder(name, toml):
    folder = OUT / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels.txt").write_text("".join(f"{label}\n" for label in LABELS))
    (folder / "model.toml").write_text(toml)
    return folder


def torchvision_model():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    m = torchvision.models.shufflenet_v2_x0_5(num_classes=CLASSES)
    norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    optimizer = torch.optim.AdamW(m.parameters(), 3e-3)
    loss = torch.nn.CrossEntropyLoss(label_smoothing=0.3)
    m.train()
    for _ in range(STEPS):
        images, labels = training_batch(rng, 224)
        x = torch.stack([norm(transforms.functional.to_tensor(i)) for i in images])
        optimizer.zero_grad()
        loss(m(x), torch.tensor(labels)).backward()
        optimizer.step()
    m.eval()

    folder = write_folder(
        "torchvision-shufflenet",
        """# torchvision's pipeline for its ImageNet weights: Resize(256), CenterCrop(224), ToTensor,
# Normalize(mean, std); torch.onnx.export keeps NCHW and the raw logits.
[input]
layout = "NCHW"
size = [224, 224]
color = "RGB"
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
resize = "crop"
crop_fraction = 0.875

[output]
kind = "logits"
""",
    )
    torch.onnx.export(
        m,
        torch.zeros(1, 3, 224, 224),
        folder / "model.onnx",
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
        opset_version=17,
        dynamo=False,
    )
    pipeline = transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), norm]
    )
    rows = []
    for name in PHOTOS:
        with torch.no_grad():
            logits = m(pipeline(photo(name)).unsqueeze(0))
        rows.append((name, folder.name, torch.softmax(logits, 1)[0].numpy()))
    return rows


def keras_model(name, size, preprocess, toml, seed):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    m = keras.applications.MobileNetV2(
        input_shape=(*size, 3), alpha=0.35, weights=None, classes=CLASSES
    )
    for layer in m.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9  # moving statistics that settle within the short training
    m.compile(
        optimizer=keras.optimizers.AdamW(3e-3),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.3),
    )
    for _ in range(STEPS):
        images, labels = training_batch(rng, size)
        x = preprocess(np.stack([np.asarray(i, dtype=np.float32) for i in images]))
        m.train_on_batch(x, np.eye(CLASSES, dtype=np.float32)[labels])

    folder = write_folder(name, toml)
    m.export(str(folder / "model.onnx"), format="onnx", verbose=False)
    rows = []
    for photo_name in PHOTOS:
        img = keras.utils.load_img(
            ROOT / "tests/fixtures" / photo_name, target_size=size, interpolation="bilinear"
        )
        x = preprocess(keras.utils.img_to_array(img))[None]
        probs = keras.ops.convert_to_numpy(m.predict(x, verbose=0))[0]
        rows.append((photo_name, folder.name, probs))
    return rows


def main():
    rows = torchvision_model()
    rows += keras_model(
        "keras-mobilenetv2",
        (224, 224),
        keras.applications.mobilenet_v2.preprocess_input,
        """# keras.utils.load_img(target_size=(224, 224), interpolation="bilinear") stretches;
# mobilenet_v2.preprocess_input is p / 127.5 - 1; the export keeps NHWC and the softmax.
[input]
layout = "NHWC"
size = [224, 224]
color = "RGB"
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
resize = "stretch"

[output]
kind = "probabilities"
""",
        10,
    )
    rows += keras_model(
        "keras-caffe-192x256",
        (192, 256),
        lambda x: keras.applications.imagenet_utils.preprocess_input(x.copy(), mode="caffe"),
        """# The "caffe" preprocess_input of ResNet50 and VGG: RGB to BGR, the ImageNet mean
# subtracted in 0..255, no scaling; at 192 × 256 (height, width), stretched.
[input]
layout = "NHWC"
size = [192, 256]
color = "BGR"
mean = [0.4076039215686274, 0.457956862745098, 0.4850196078431373]
std = [0.00392156862745098, 0.00392156862745098, 0.00392156862745098]
resize = "stretch"

[output]
kind = "probabilities"
""",
        20,
    )
    with open(OUT / "expected.tsv", "w") as f:
        f.write("# photo\tmodel\tprobabilities of the labels.txt classes, by the framework\n")
        for photo_name, model, probs in rows:
            f.write(f"{photo_name}\t{model}\t" + ",".join(f"{p:.6f}" for p in probs) + "\n")
    for photo_name, model, probs in rows:
        top = int(np.argmax(probs))
        print(f"{model:24} {photo_name:18} {LABELS[top]:14} {probs[top]:.3f}")


if __name__ == "__main__":
    main()
