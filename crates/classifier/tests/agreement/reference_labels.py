"""Reference labels for the agreement test (crates/classifier/tests/it/agreement.rs).

Runs the model's reference pre-processing -- full decode, EXIF orientation applied, RGB,
shorter side to 256 with Pillow's bilinear filter (no draft mode, no reducing_gap), centre crop
224, (x-127)/128 -- and Python onnxruntime on every file of a directory written by
`cargo run -p imgclass-classifier --example agreement_variants -- DIR`, and prints one line per
file: name, sha256 of the bytes, the five most probable class indices, and the margin between
the first two probabilities (a near tie flips with any rounding difference, so the test checks
top-1 on the clear cases and reports the rest).

Usage: python reference_labels.py DIR [MODEL.onnx] > reference_top5.tsv
Needs: pip install onnxruntime==1.32.0 pillow numpy (bench/requirements.txt has the pins).
"""
import hashlib
import io
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

MEAN, STD, SIZE, RESIZE = 127.0, 128.0, 224, 256


def preprocess(data):
    im = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    w, h = im.size
    s = RESIZE / min(w, h)
    im = im.resize((max(SIZE, round(w * s)), max(SIZE, round(h * s))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - SIZE) // 2, (h - SIZE) // 2
    im = im.crop((left, top, left + SIZE, top + SIZE))
    a = (np.asarray(im, dtype=np.float32) - MEAN) / STD
    return a.transpose(2, 0, 1)[None].copy()


def main():
    directory = sys.argv[1]
    here = os.path.dirname(os.path.abspath(__file__))
    model = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "../../model/efficientnet-lite0.onnx")
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    print("# name\tsha256\ttop5\tmargin p1-p2 (reference pipeline: Pillow full decode + bilinear, onnxruntime "
          f"{ort.__version__}, Pillow {Image.__version__})")
    for name in sorted(os.listdir(directory)):
        data = open(os.path.join(directory, name), "rb").read()
        logits = sess.run(None, {"input": preprocess(data)})[0][0]
        top = np.argsort(-logits, kind="stable")[:5]
        e = np.exp(logits - logits.max())
        p = e / e.sum()
        margin = p[top[0]] - p[top[1]]
        print(f"{name}\t{hashlib.sha256(data).hexdigest()}\t{','.join(str(i) for i in top)}\t{margin:.4f}")


if __name__ == "__main__":
    main()
