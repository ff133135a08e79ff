"""The same submit loop as bench/imgclass.mjs (one file per multipart POST, N requests with C in
flight, keep-alive) written with Python asyncio + aiohttp, to compare the two clients against
bench/nullserver.mjs. The benchmark uses whichever is faster (it has been Node).

Usage: python aiohttp_client.py BASE_URL FILE [--n 10000] [--concurrency 64] [--json OUT]
"""
import argparse
import asyncio
import json
import os
import sys
import time

import aiohttp


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("file")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--json")
    a = ap.parse_args()
    data = open(a.file, "rb").read()
    name = os.path.basename(a.file)
    url = a.base + "/api/jobs"
    next_i = 0
    connector = aiohttp.TCPConnector(limit=a.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def lane():
            nonlocal next_i
            while next_i < a.n:
                next_i += 1
                form = aiohttp.FormData()
                form.add_field("file", data, filename=name, content_type="image/png")
                async with session.post(url, data=form) as r:
                    body = await r.read()
                    if r.status != 202:
                        raise RuntimeError(f"{r.status} {body[:200]!r}")

        c0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(a.concurrency)))
        secs = time.perf_counter() - t0
        cpu = time.process_time() - c0
    out = {
        "client": f"python {sys.version.split()[0]} asyncio + aiohttp {aiohttp.__version__}",
        "n": a.n,
        "concurrency": a.concurrency,
        "seconds": round(secs, 3),
        "per_s": round(a.n / secs),
        "client_cpu_s": round(cpu, 2),
    }
    print(f"bench[capacity]: aiohttp client against a null server: {out['per_s']} requests/s", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=2)
            fh.write("\n")


if __name__ == "__main__":
    asyncio.run(main())
