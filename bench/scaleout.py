#!/usr/bin/env python3
"""Scale-out on PostgreSQL: one `imgclass serve --no-workers` API node and K `imgclass worker`
processes on one database (its own, created and dropped here), fed N photos over HTTP.

Prints images/s from the first upload to the last `succeeded` (polling GET /api/stats), and the
idle submit → running latency across processes (the API node stamps `created_at`, the worker
process `started_at`; median and p99 over sequential jobs).

    python3 bench/scaleout.py --procs 1 --workers-per-proc 2 [--n 200] [--bin target/release/imgclass]

Standard library only; talks to 127.0.0.1 only.
"""
import argparse
import concurrent.futures as cf
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def psql(admin, sql):
    subprocess.run(["psql", admin, "-qAtc", sql], check=True, capture_output=True)


def start(args, ready):
    env = dict(os.environ, NO_COLOR="1", RUST_LOG="info")
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    for line in p.stdout:
        m = re.search(r"listening on (http://[0-9.:]+)", line)
        if m:
            return p, m.group(1)
        if ready in line:
            return p, None
    raise SystemExit(f"{args[1]} exited before it was ready")


def upload(base, name, data):
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
        f"Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(
        base + "/api/jobs", data=body, method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(req) as r:
        return json.load(r)["jobs"][0]["id"]


def get(base, path):
    with urllib.request.urlopen(base + path) as r:
        return json.load(r)


def stop(procs):
    """Ends the node processes: SIGTERM, then SIGKILL for any still running after 30 s."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--workers-per-proc", type=int, default=1)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--intra", type=int, default=0, help="--intra-threads for each worker process")
    ap.add_argument("--latency-n", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/imgclass"))
    ap.add_argument("--admin", default=os.environ.get("IMGCLASS_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/test"))
    ap.add_argument("images", nargs="*")
    a = ap.parse_args()
    images = a.images or [os.path.join(ROOT, "tests/fixtures", f) for f in sorted(os.listdir(os.path.join(ROOT, "tests/fixtures")))]
    photos = [(os.path.basename(p), open(p, "rb").read()) for p in images]

    db = f"imgclass_scaleout_{os.getpid()}"
    psql(a.admin, f"CREATE DATABASE {db}")
    url = a.admin.rsplit("/", 1)[0] + "/" + db
    procs = []
    try:
        # The result cache is off: the same photos are sent many times, to be classified each time.
        api, base = start([a.bin, "serve", "--no-workers", "--no-result-cache", "--listen", "127.0.0.1:0", "--database", url], "listening")
        procs.append(api)
        for _ in range(a.procs):
            w, _ = start([a.bin, "worker", "--database", url, "--workers", str(a.workers_per_proc)] + (["--intra-threads", str(a.intra)] if a.intra else []), "worker is running")
            procs.append(w)

        # Idle latency across processes: one job at a time.
        lat = []
        for i in range(a.latency_n):
            jid = upload(base, photos[1][0], photos[1][1])
            while True:
                j = get(base, f"/api/jobs/{jid}")
                if j["status"] == "succeeded":
                    break
                time.sleep(0.01)
            lat.append((ts(j["started_at"]) - ts(j["created_at"])) * 1e3)
        lat.sort()

        # Throughput.
        done_before = get(base, "/api/stats")["counts"]["succeeded"]
        t0 = time.monotonic()
        with cf.ThreadPoolExecutor(a.concurrency) as ex:
            list(ex.map(lambda i: upload(base, *photos[i % len(photos)]), range(a.n)))
        while get(base, "/api/stats")["counts"]["succeeded"] < done_before + a.n:
            time.sleep(0.01)
        elapsed = time.monotonic() - t0
        failed = get(base, "/api/stats")["counts"]["failed"]
        print(json.dumps({
            "worker_processes": a.procs,
            "workers_per_process": a.workers_per_proc,
            "photos": a.n,
            "images_per_s": round(a.n / elapsed, 1),
            "failed": failed,
            "submit_to_running_ms_median": round(statistics.median(lat), 1),
            "submit_to_running_ms_p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1),
        }))
    finally:
        stop(procs)
        psql(a.admin, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


if __name__ == "__main__":
    main()
