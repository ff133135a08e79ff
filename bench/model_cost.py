"""What each model costs a node: `imgclass serve` started with the built-in model and 0, 1, 2
... extra models (copies of the built-in EfficientNet-Lite0 under other names, so every extra
model is the same size), measured per start: the time from the process's start until every model
is served (`GET /api/models` lists this node for each), the resident memory (VmRSS) a few
seconds later, and what the models (their files and ONNX Runtime sessions) hold in the memory budget
(`imgclass_memory_held_bytes{holder="models"}` of `/metrics`). Median of --runs starts.
Python standard library only. See docs/models.md, "What a model costs a node".

Usage:
  python3 bench/model_cost.py [--bin target/release/imgclass] [--extra 0,1,2] [--runs 3]
                              [--settle 3] [-- extra serve flags...]
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILTIN = os.path.join(ROOT, "crates/classifier/model")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def repository(dir, extra):
    """A repository of `extra` copies of the built-in model, named extra-1, extra-2, ..."""
    repo = os.path.join(dir, f"models-{extra}")
    os.makedirs(repo, exist_ok=True)
    for i in range(1, extra + 1):
        d = os.path.join(repo, f"extra-{i}")
        os.makedirs(d, exist_ok=True)
        shutil.copy(os.path.join(BUILTIN, "efficientnet-lite0.onnx"), os.path.join(d, "model.onnx"))
        shutil.copy(os.path.join(BUILTIN, "model.toml"), os.path.join(d, "model.toml"))
        shutil.copy(os.path.join(BUILTIN, "imagenet_labels.txt"), os.path.join(d, "labels.txt"))
    return repo


def one_start(binary, repo, extra, settle, flags, dir):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    db = os.path.join(dir, f"run-{time.monotonic_ns()}.db")
    args = [binary, "serve", "--listen", f"127.0.0.1:{port}", "--database", f"sqlite://{db}",
            "--models", repo, *flags]
    t0 = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                sys.exit(f"serve exited with {proc.returncode}: {' '.join(args)}")
            try:
                models = json.loads(get(f"{base}/api/models"))["models"]
                if sum(1 for m in models if m["nodes"]) == extra + 1:
                    break
            except OSError:
                pass
            time.sleep(0.01)
        ready = time.monotonic() - t0
        time.sleep(settle)
        rss = rss_mib(proc.pid)
        sessions = None
        for line in get(f"{base}/metrics").splitlines():
            if line.startswith('imgclass_memory_held_bytes{holder="models"}'):
                sessions = float(line.split()[-1]) / (1 << 20)
        return ready, rss, sessions
    finally:
        proc.terminate()
        proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/imgclass"))
    ap.add_argument("--extra", default="0,1,2")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("flags", nargs="*")
    a = ap.parse_args()
    counts = [int(x) for x in a.extra.split(",")]
    print("| extra models | start-up until every model is served | resident memory | models hold in the budget |")
    print("|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as dir:
        rows = {n: [] for n in counts}
        repos = {n: repository(dir, n) for n in counts}
        # Interleaved, so that a slow moment of the machine falls on every row alike.
        for _ in range(a.runs):
            for n in counts:
                rows[n].append(one_start(a.bin, repos[n], n, a.settle, a.flags, dir))
        for n in counts:
            ready = statistics.median(r[0] for r in rows[n])
            rss = statistics.median(r[1] for r in rows[n])
            sessions = statistics.median(r[2] for r in rows[n])
            print(f"| {n} | {ready:.2f} s | {rss:.0f} MiB | {sessions:.0f} MiB |")


if __name__ == "__main__":
    main()
