"""The ceiling: the same ONNX model on the same images through Python onnxruntime + Pillow +
numpy, decode and pre-processing included, using both cores as well as Python can.

Two pre-processing pipelines, both RGB, shorter side to 256 (bilinear), centre crop 224,
(x-127)/128, NCHW float32:
  naive      the model's reference one: full decode, one bilinear resize of the whole image
  competent  what a practitioner who cares about speed writes with Pillow: JPEGs decoded at
             reduced scale in the DCT domain (Image.draft("RGB", (256, 256))), EXIF orientation
             applied (ImageOps.exif_transpose), and resize(..., reducing_gap=2.0), which first
             box-reduces by an integer factor and then resamples

Layouts tried (the N images round-robin over the files, read into memory first):
  1x2      one process, one session with intra_op_num_threads=2
  2proc    two processes, each a session with 1 intra thread, half of the images each
  2thread  one process, two threads, each its own 1-thread session (Pillow and onnxruntime
           release the GIL for most of their work)

Usage: python ceiling.py --model M.onnx [--n 200] [--repeat 1] [--modes 1x2,2proc,2thread]
                         [--pipelines naive,competent] [--breakdown] [--json OUT] IMG...
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
from PIL import Image, ImageOps

MEAN, STD, SIZE, RESIZE = 127.0, 128.0, 224, 256


def open_naive(data):
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def open_competent(data):
    im = Image.open(io.BytesIO(data))
    if im.format == "JPEG":
        im.draft("RGB", (RESIZE, RESIZE))
    im.load()
    return im


def preprocess_naive(im):
    return finish(im.convert("RGB").resize(target_size(im.size), Image.BILINEAR))


def preprocess_competent(im):
    im = ImageOps.exif_transpose(im, in_place=False) if im.getexif().get(0x0112, 1) != 1 else im
    if im.mode != "RGB":
        im = im.convert("RGB")
    return finish(im.resize(target_size(im.size), Image.BILINEAR, reducing_gap=2.0))


PIPELINES = {
    "naive": (open_naive, preprocess_naive),
    "competent": (open_competent, preprocess_competent),
}


def target_size(size):
    w, h = size
    s = RESIZE / min(w, h)
    return max(SIZE, round(w * s)), max(SIZE, round(h * s))


def finish(im):
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


def classify(sess, data, pipeline="naive"):
    opener, pre = PIPELINES[pipeline]
    logits = sess.run(None, {"input": pre(opener(data))})[0][0]
    e = np.exp(logits - logits.max())
    p = e / e.sum()
    return np.argsort(-p)[:5]


def load(files):
    out = []
    for f in files:
        with open(f, "rb") as fh:
            out.append(fh.read())
    return out


def run_1x2(model, images, n, pipeline):
    s = session(model, 2)
    classify(s, images[0], pipeline)
    t, c = time.perf_counter(), time.process_time()
    for i in range(n):
        classify(s, images[i % len(images)], pipeline)
    return time.perf_counter() - t, time.process_time() - c


def run_2thread(model, images, n, pipeline):
    sessions = [session(model, 1) for _ in range(2)]
    for s in sessions:
        classify(s, images[0], pipeline)
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
            classify(s, images[i % len(images)], pipeline)

    threads = [threading.Thread(target=work, args=(s,)) for s in sessions]
    for th in threads:
        th.start()
    barrier.wait()
    t, c = time.perf_counter(), time.process_time()
    for th in threads:
        th.join()
    return time.perf_counter() - t, time.process_time() - c


def _proc(model, files, indices, ready, go, done, pipeline):
    images = load(files)
    s = session(model, 1)
    classify(s, images[0], pipeline)
    ready.release()
    go.wait()
    for i in indices:
        classify(s, images[i % len(images)], pipeline)
    done.put(len(indices))


def run_2proc(model, files, n, pipeline):
    ctx = mp.get_context("spawn")
    ready, go, done = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_proc, args=(model, files, list(range(k, n, 2)), ready, go, done, pipeline))
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
    return elapsed, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--modes", default="1x2,2proc,2thread")
    ap.add_argument("--pipelines", default="naive,competent")
    ap.add_argument("--repeat", type=int, default=1, help="run each layout this many times")
    ap.add_argument("--json")
    ap.add_argument("--breakdown", action="store_true", help="also time decode, resize and model per file")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    images = load(a.files)
    pipelines = a.pipelines.split(",")
    # Check each pipeline once: coffee must be espresso (967), as in the reference.
    for f, data in zip(a.files, images):
        if os.path.basename(f) == "coffee.png":
            for p in pipelines:
                top = classify(session(a.model, 1), data, p)
                assert top[0] == 967, f"{p}: coffee.png gave class {top[0]}, expected 967 espresso"
    runs = []
    # Pipelines alternate inside each repeat, so that both see the same machine.
    for _ in range(a.repeat):
        for pipeline in pipelines:
            for mode in a.modes.split(","):
                if mode == "1x2":
                    secs, cpu = run_1x2(a.model, images, a.n, pipeline)
                elif mode == "2thread":
                    secs, cpu = run_2thread(a.model, images, a.n, pipeline)
                elif mode == "2proc":
                    secs, cpu = run_2proc(a.model, a.files, a.n, pipeline)
                else:
                    sys.exit(f"unknown mode {mode}")
                # CPU of the timed part (not measured for the 2proc children).
                cpu_ms = cpu * 1e3 / a.n if cpu is not None else None
                rate = a.n / secs
                cpu_note = f", CPU {cpu_ms:.1f} ms per image" if cpu_ms is not None else ""
                print(f"python-ort: {pipeline}: {mode}: {a.n} images in {secs:.2f} s = {rate:.1f} img/s{cpu_note}", file=sys.stderr)
                runs.append({"pipeline": pipeline, "mode": mode, "seconds": round(secs, 4), "images_per_s": round(rate, 2),
                             "cpu_ms_per_image": cpu_ms and round(cpu_ms, 2)})
    breakdown = []
    if a.breakdown:
        s = session(a.model, 2)
        for pipeline in pipelines:
            opener, pre_fn = PIPELINES[pipeline]
            for f, data in zip(a.files, images):
                dec, pre, inf = [], [], []
                for _ in range(5):
                    t0 = time.perf_counter()
                    im = opener(data)
                    t1 = time.perf_counter()
                    x = pre_fn(im)
                    t2 = time.perf_counter()
                    s.run(None, {"input": x})
                    t3 = time.perf_counter()
                    dec.append((t1 - t0) * 1e3)
                    pre.append((t2 - t1) * 1e3)
                    inf.append((t3 - t2) * 1e3)
                med = lambda v: sorted(v)[len(v) // 2]
                full = Image.open(io.BytesIO(data)).size
                row = {"pipeline": pipeline, "file": f, "width": full[0], "height": full[1], "bytes": len(data),
                       "decoded": list(im.size),
                       "decode_ms": round(med(dec), 2), "preprocess_ms": round(med(pre), 2),
                       "inference_ms": round(med(inf), 2)}
                print(f"python-ort: {pipeline}: {f}: {full[0]}x{full[1]} (decoded {im.size[0]}x{im.size[1]}): "
                      f"decode {row['decode_ms']:.1f} ms, preprocess {row['preprocess_ms']:.1f} ms, "
                      f"model (2 intra) {row['inference_ms']:.1f} ms", file=sys.stderr)
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
