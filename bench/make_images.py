"""Makes the benchmark's extra images from the test fixtures (deterministic):
multi-megapixel JPEGs like phone photos (a fixture upscaled, with mild sensor-like noise so that
the JPEG is not unrealistically smooth) and a tiny 8x8 PNG for the queue benchmark.

Usage: python make_images.py FIXTURES_DIR OUT_DIR
"""
import os
import sys

import numpy as np
from PIL import Image

# (source fixture, width, height, output name)
LARGE = [
    ("coffee.png", 4000, 3000, "coffee-12mp.jpg"),
    ("chelsea.png", 4032, 3024, "chelsea-12mp.jpg"),
    ("rocket.jpg", 2000, 3000, "rocket-6mp.jpg"),
]


def main():
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(20261128)
    for name, w, h, dst in LARGE:
        path = os.path.join(out, dst)
        if os.path.exists(path):
            continue
        im = Image.open(os.path.join(src, name)).convert("RGB")
        # Scale to cover w x h, then centre-crop: keeps the aspect ratio of the photo.
        s = max(w / im.width, h / im.height)
        im = im.resize((round(im.width * s), round(im.height * s)), Image.BICUBIC)
        left, top = (im.width - w) // 2, (im.height - h) // 2
        im = im.crop((left, top, left + w, top + h))
        a = np.asarray(im, dtype=np.int16)
        a = np.clip(a + rng.normal(0, 3, a.shape).round(), 0, 255).astype(np.uint8)
        Image.fromarray(a).save(path + ".tmp", "JPEG", quality=90)
        os.replace(path + ".tmp", path)
    tiny = os.path.join(out, "tiny.png")
    if not os.path.exists(tiny):
        Image.new("RGB", (8, 8), (200, 80, 40)).save(tiny, "PNG")
    for f in sorted(os.listdir(out)):
        p = os.path.join(out, f)
        with Image.open(p) as im:
            print(f"{f}\t{im.width}x{im.height}\t{os.path.getsize(p)} bytes")


if __name__ == "__main__":
    main()
