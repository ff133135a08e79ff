"""The ceiling: the same ONNX model on the same images through Python onnxruntime + Pillow +
numpy, decode and pre-processing included, using both cores as well as Python can.

Pre-processing is the model's reference one: decode,
RGB, shorter side to 256 (bilinear), centre crop 224, (x-127)/128, NCHW float32.

Layouts tried (the N images round-robin over the files, read into memory first):
  1x2      one process, one session with intra_op_num_threads=2
  2proc    two processes, each a session with 1 intra thread, half of the images each
  2thread  one process, two threads, each its own 1-thread session (Pillow and onnxruntime
           release the GIL for most of their work)

Usage: python ceiling.py --model M.onnx [--n 200] [--repeat 1] [--modes 1x2,2proc,2thread] [--json OUT] IMG...
"""
import argparse
import io
import json
import multiprocessing as mp
import os
import sys
import threading
import time

import numpy as np
import onnxruntime as ort
from PIL import Image

MEAN, STD, SIZE, RESIZE = 127.0, 128.0, 224, 256


def preprocess(data):
    return preprocess_image(Image.open(io.BytesIO(data)))


def preprocess_image(im):
    im = im.convert("RGB")
    w, h = im.size
    s = RESIZE / min(w, h)
    im = im.resize((max(SIZE, round(w * s)), max(SIZE, round(h * s))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - SIZE) // 2, (h - SIZE) // 2
    im = im.crop((left, top, left + SIZE, top + SIZE))
    a = (np.asarray(im, dtype=np.float32) - MEAN) / STD
    return a.transpose(2, 0, 1)[None].copy()


def session(model, intra):
    o = ort.SessionOptions()
    o.intra_op_num_threads = intra
    o.inter_op_num_threads = 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, o, providers=["CPUExecutionProvider"])


def classify(sess, data):
    logits = sess.run(None, {"input": preprocess(data)})[0][0]
    e = np.exp(logits - logits.max())
    p = e / e.sum()
    return np.argsort(-p)[:5]


def load(files):
    out = []
    for f in files:
        with open(f, "rb") as fh:
            out.append(fh.read())
    return out


def run_1x2(model, images, n):
    s = session(model, 2)
    classify(s, images[0])
    t = time.perf_counter()
    for i in range(n):
        classify(s, images[i % len(images)])
    return time.perf_counter() - t


def run_2thread(model, images, n):
    sessions = [session(model, 1) for _ in range(2)]
    for s in sessions:
        classify(s, images[0])
    lock = threading.Lock()
    counter = [0]
    barrier = threading.Barrier(3)

    def work(s):
        barrier.wait()
        while True:
            with lock:
                i = counter[0]
                counter[0] += 1
            if i >= n:
                return
            classify(s, images[i % len(images)])

    threads = [threading.Thread(target=work, args=(s,)) for s in sessions]
    for th in threads:
        th.start()
    barrier.wait()
    t = time.perf_counter()
    for th in threads:
        th.join()
    return time.perf_counter() - t


def _proc(model, files, indices, ready, go, done):
    images = load(files)
    s = session(model, 1)
    classify(s, images[0])
    ready.release()
    go.wait()
    for i in indices:
        classify(s, images[i % len(images)])
    done.put(len(indices))


def run_2proc(model, files, n):
    ctx = mp.get_context("spawn")
    ready, go, done = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_proc, args=(model, files, list(range(k, n, 2)), ready, go, done))
        for k in range(2)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        if not ready.acquire(timeout=120):
            raise RuntimeError("a worker process did not start")
    t = time.perf_counter()
    go.set()
    count = sum(done.get(timeout=600) for _ in procs)
    elapsed = time.perf_counter() - t
    for p in procs:
        p.join()
    assert count == n
    return elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--modes", default="1x2,2proc,2thread")
    ap.add_argument("--repeat", type=int, default=1, help="run each layout this many times")
    ap.add_argument("--json")
    ap.add_argument("--breakdown", action="store_true", help="also time decode, resize and model per file")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    images = load(a.files)
    # Check the pipeline once: coffee must be espresso (967), as in the reference.
    for f, data in zip(a.files, images):
        if os.path.basename(f) == "coffee.png":
            top = classify(session(a.model, 1), data)
            assert top[0] == 967, f"coffee.png gave class {top[0]}, expected 967 espresso"
    runs = []
    for mode in [m for m in a.modes.split(",") for _ in range(a.repeat)]:
        if mode == "1x2":
            secs = run_1x2(a.model, images, a.n)
        elif mode == "2thread":
            secs = run_2thread(a.model, images, a.n)
        elif mode == "2proc":
            secs = run_2proc(a.model, a.files, a.n)
        else:
            sys.exit(f"unknown mode {mode}")
        rate = a.n / secs
        print(f"python-ort: {mode}: {a.n} images in {secs:.2f} s = {rate:.1f} img/s", file=sys.stderr)
        runs.append({"mode": mode, "seconds": round(secs, 4), "images_per_s": round(rate, 2)})
    breakdown = []
    if a.breakdown:
        s = session(a.model, 2)
        for f, data in zip(a.files, images):
            dec, pre, inf = [], [], []
            for _ in range(5):
                t0 = time.perf_counter()
                im = Image.open(io.BytesIO(data))
                im.load()
                t1 = time.perf_counter()
                x = preprocess_image(im)
                t2 = time.perf_counter()
                s.run(None, {"input": x})
                t3 = time.perf_counter()
                dec.append((t1 - t0) * 1e3)
                pre.append((t2 - t1) * 1e3)
                inf.append((t3 - t2) * 1e3)
            med = lambda v: sorted(v)[len(v) // 2]
            row = {"file": f, "width": im.width, "height": im.height, "bytes": len(data),
                   "decode_ms": round(med(dec), 2), "preprocess_ms": round(med(pre), 2),
                   "inference_ms": round(med(inf), 2)}
            print(f"python-ort: {f}: {im.width}x{im.height}: decode {row['decode_ms']:.1f} ms, "
                  f"preprocess {row['preprocess_ms']:.1f} ms, model (2 intra) {row['inference_ms']:.1f} ms",
                  file=sys.stderr)
            breakdown.append(row)
    out = {
        "n": a.n,
        "files": a.files,
        "onnxruntime": ort.__version__,
        "pillow": Image.__version__,
        "numpy": np.__version__,
        "runs": runs,
        "breakdown": breakdown,
    }
    text = json.dumps(out, indent=2)
    if a.json:
        with open(a.json, "w") as fh:
            fh.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
