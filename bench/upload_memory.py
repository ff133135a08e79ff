"""A burst of big uploads against one `imgclass serve`, and the server's memory: resident set
size (VmRSS) when idle with the model loaded, its peak (VmHWM) during the burst, and VmRSS once
every job has finished and after the process has been idle for a while. Python standard
library only; images are generated (nothing is downloaded). See bench/README.md, "Memory".

Usage:
  python3 bench/upload_memory.py [--bin target/debug/imgclass] [--label NAME] [--uploads 24]
                                 [--files 1] [--settle 30] [-- extra serve flags...]

Environment variables for the server (e.g. MALLOC_MMAP_THRESHOLD_) pass through. Prints one
Markdown table row: label, uploads answered (by status), idle RSS, peak, RSS when the jobs are
done, RSS after --settle seconds idle, wall time.
"""
import argparse
import http.client
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def png_noise(path, side):
    """An RGB PNG of noise (incompressible: about 3 × side² bytes), stored uncompressed."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z = zlib.compressobj(0)
    idat = bytearray()
    for _ in range(side):
        idat += z.compress(b"\x00" + os.urandom(side * 3))
    idat += z.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", bytes(idat)))
        f.write(chunk(b"IEND", b""))


def png_bomb(path, side):
    """A 16-bit RGBA PNG of side² identical rows: under 1 MB, 800 MB once decoded whole."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z = zlib.compressobj(9)
    idat = bytearray()
    line = b"\x00" + bytes(side * 8)
    for _ in range(side):
        idat += z.compress(line)
    idat += z.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)))
        f.write(chunk(b"IDAT", bytes(idat)))
        f.write(chunk(b"IEND", b""))


def tiff_rgb(path, w, h):
    """An uncompressed 8-bit RGB TIFF of noise, one strip (decoded whole by the server)."""
    data = os.urandom(w * h * 3)
    entries = [
        (256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2),
        (273, 4, 1, 0), (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, len(data)),
    ]
    ifd_at = 8
    data_at = ifd_at + 2 + 12 * len(entries) + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_at))
    out += struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if tag == 273:
            value = data_at
        if kind == 3:
            out += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, kind, count, value)
    out += struct.pack("<I", 0)
    out += data
    with open(path, "wb") as f:
        f.write(out)


def rss(pid):
    """(VmRSS, VmHWM) of a process, in MiB."""
    got = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                got[key] = int(value.split()[0]) / 1024
    return got.get("VmRSS", 0.0), got.get("VmHWM", 0.0)


def request(port, method, path, body=None, headers=None, timeout=600):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/debug/imgclass"))
    ap.add_argument("--label", default="")
    ap.add_argument("--uploads", type=int, default=24)
    ap.add_argument("--files", type=int, default=1,
                    help="files per request (more than 1: a multipart body)")
    ap.add_argument("--settle", type=float, default=30.0)
    ap.add_argument("extra", nargs="*")
    args = ap.parse_args()

    images_dir = os.path.join(ROOT, "target/bench/memory")
    os.makedirs(images_dir, exist_ok=True)
    images = [
        ("noise-2800.png", "image/png", lambda p: png_noise(p, 2800)),       # 23.5 MB
        ("noise-2800x2800.tif", "image/tiff", lambda p: tiff_rgb(p, 2800, 2800)),  # 23.5 MB
        ("bomb-rgba16-10000.png", "image/png", lambda p: png_bomb(p, 10000)),  # 0.8 MB
    ]
    loaded = []
    for name, ctype, make in images:
        path = os.path.join(images_dir, name)
        if not os.path.exists(path):
            make(path)
        with open(path, "rb") as f:
            loaded.append((name, ctype, f.read()))

    work = tempfile.mkdtemp(prefix="imgclass-mem-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(os.path.join(work, "server.log"), "w")
    server = subprocess.Popen(
        [args.bin, "serve", "--listen", f"127.0.0.1:{port}",
         "--database", f"sqlite://{work}/db.sqlite", *args.extra],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 180
        while True:
            try:
                if request(port, "GET", "/readyz", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                sys.exit(f"the server did not become ready (see {work}/server.log)")
            time.sleep(0.2)
        time.sleep(2)
        idle, _ = rss(server.pid)

        statuses = {}
        lock = threading.Lock()

        def upload(i):
            name, ctype, body = loaded[i % len(loaded)]
            path, headers = f"/api/jobs?filename={i}-{name}", {"Content-Type": ctype}
            if args.files > 1:
                parts = []
                for k in range(args.files):
                    name, ctype, data = loaded[(i + k) % len(loaded)]
                    parts.append(
                        b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\""
                        + f"{i}-{k}-{name}".encode() + b"\"\r\nContent-Type: " + ctype.encode()
                        + b"\r\n\r\n" + data + b"\r\n")
                body = b"".join(parts) + b"--B--\r\n"
                path, headers = "/api/jobs", {"Content-Type": "multipart/form-data; boundary=B"}
            try:
                status, _ = request(port, "POST", path, body, headers)
            except OSError as e:
                status = type(e).__name__
            with lock:
                statuses[status] = statuses.get(status, 0) + 1

        samples = []
        done = threading.Event()

        def sample():
            while not done.is_set():
                try:
                    samples.append(rss(server.pid)[0])
                except OSError:
                    return
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        t0 = time.time()
        threads = [threading.Thread(target=upload, args=(i,)) for i in range(args.uploads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Every accepted job finishes (succeeds or fails) before the figures are read.
        while True:
            _, body = request(port, "GET", "/api/stats")
            counts = json.loads(body)["counts"]
            if counts["queued"] + counts["running"] == 0:
                break
            time.sleep(0.2)
        wall = time.time() - t0
        done.set()
        sampler.join()
        after, peak = rss(server.pid)
        time.sleep(args.settle)
        settled, _ = rss(server.pid)
        answered = ", ".join(f"{n}×{s}" for s, n in sorted(statuses.items(), key=str))
        print(f"| {args.label or os.path.basename(args.bin)} | {answered} | {idle:.0f} MiB | "
              f"{peak:.0f} MiB | {after:.0f} MiB | {settled:.0f} MiB | {wall:.1f} s |")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
