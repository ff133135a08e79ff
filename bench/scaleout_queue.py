#!/usr/bin/env python3
"""Scale-out of the queue on PostgreSQL: one `imgclass serve --no-workers` API node and K
`imgclass worker --provider noop` processes that share one total number of workers, on a fresh
database of their own (created and dropped here) for each run.

For each K it submits N no-op jobs (an 8×8 PNG of 71 bytes) in POSTs of `--batch` files,
`--in-flight` POSTs at a time, and measures from the first POST to the moment `GET /api/stats`
counts all of them `succeeded`:

- jobs/s;
- PostgreSQL's CPU per job: user + system time of the backends connected to the run's database
  and of the server's background processes (WAL writer, checkpointer, background writer,
  autovacuum), read from /proc before and after;
- the nodes' CPU per job (the API node and the worker processes), from /proc;
- transactions per job (`pg_stat_database.xact_commit` of the run's database);
- the peak number of connections to the run's database (its backends, counted in /proc every
  50 ms, so the counting itself costs PostgreSQL nothing).

After each run it checks the jobs: every one `succeeded`, with one attempt, one `running` and one
`succeeded` event; a run that lost or repeated a job fails the script.

    python3 bench/scaleout_queue.py [--procs 1,2,4,8,16] [--total-workers 32] [--runs 2]
        [--n 10000] [--batch 50] [--in-flight 4] [--bin target/release/imgclass]
        [--worker-arg=--db-max-connections=4 ...] [--json out.json]

Prints one Markdown table, a row per run. Standard library only; talks to 127.0.0.1 only.
"""
import argparse
import http.client
import json
import os
import re
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
import zlib

from scaleout import stop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")
BACKGROUND = ("walwriter", "checkpointer", "background writer", "autovacuum")


def tiny_png():
    """An 8×8 grey PNG (71 bytes), the queue benchmark's image."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + b"\x80" * 8 for _ in range(8))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def psql(url, sql):
    out = subprocess.run(["psql", url, "-qAtc", sql], capture_output=True, text=True,
                         env=dict(os.environ, PGOPTIONS="--client-min-messages=warning"))
    if out.returncode != 0:
        raise RuntimeError(f"psql: {out.stderr.strip()}")
    return out.stdout.strip()


PROBLEMS = []


def start(args, ready):
    env = dict(os.environ, NO_COLOR="1", RUST_LOG="info")
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)

    def follow():
        # Keep reading its output (so that it never blocks on a full pipe); keep its complaints.
        for line in p.stdout:
            if (" WARN " in line or " ERROR " in line) and "provider noop" not in line:
                PROBLEMS.append(line.strip())

    for line in p.stdout:
        m = re.search(r"listening on (http://[0-9.:]+)", line)
        if m or ready in line:
            threading.Thread(target=follow, daemon=True).start()
            return p, m.group(1) if m else None
        if (" WARN " in line or " ERROR " in line) and "provider noop" not in line:
            PROBLEMS.append(line.strip())
    raise RuntimeError(f"{' '.join(args[:2])} exited before it was ready: {PROBLEMS[-1:]}")


def proc_cpu(pid):
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0


def postgres_processes(db):
    """PostgreSQL's processes that work for this run: {pid: is_a_connection}."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\x00", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if not cmd.startswith("postgres: "):
            continue
        # "postgres: [CLUSTER: ]USER DATABASE HOST(PORT) STATE" or "postgres: [CLUSTER: ]walwriter"
        rest = re.sub(r"^\S+: ", "", cmd[len("postgres: "):])
        if re.match(rf"\S+ {re.escape(db)} ", rest):
            out[int(pid)] = True
        elif rest.startswith(BACKGROUND):
            out[int(pid)] = False
    return out


class Sampler(threading.Thread):
    """Follows PostgreSQL's processes during a run: the CPU each used (its last reading, so a
    backend that ends keeps what it used until then) and the peak number of connections."""

    def __init__(self, db):
        super().__init__(daemon=True)
        self.db, self.stop, self.peak = db, threading.Event(), 0
        self.first, self.last = {}, {}
        self.sample()

    def sample(self):
        procs = postgres_processes(self.db)
        self.peak = max(self.peak, sum(procs.values()))
        for pid in procs:
            cpu = proc_cpu(pid)
            self.first.setdefault(pid, cpu)
            self.last[pid] = max(cpu, self.last.get(pid, 0.0))

    def run(self):
        while not self.stop.wait(0.05):
            self.sample()

    def cpu(self):
        return sum(self.last[p] - self.first[p] for p in self.last)


def multipart(files):
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        parts.append(
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def submit(base, n, batch, in_flight, png):
    """Posts n jobs, `batch` files a POST, `in_flight` POSTs at a time; returns the job ids."""
    host = urllib.parse.urlparse(base).netloc
    body, ctype = multipart([(f"tiny{i}.png", png) for i in range(batch)])
    posts = [batch] * (n // batch) + ([n % batch] if n % batch else [])
    lock, ids, errors = threading.Lock(), [], []

    def client():
        conn = http.client.HTTPConnection(host, timeout=60)
        while True:
            with lock:
                if not posts or errors:
                    return
                k = posts.pop()
            b, t = (body, ctype) if k == batch else multipart([(f"tiny{i}.png", png) for i in range(k)])
            conn.request("POST", "/api/jobs", body=b, headers={"Content-Type": t})
            r = conn.getresponse()
            data = r.read()
            with lock:
                if r.status != 202:
                    errors.append(f"{r.status} {data[:200]!r}")
                    return
                ids.extend(j["id"] for j in json.loads(data)["jobs"])

    threads = [threading.Thread(target=client) for _ in range(in_flight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"a POST failed: {errors[0]}")
    return ids


def stats(base):
    host = urllib.parse.urlparse(base).netloc
    conn = http.client.HTTPConnection(host, timeout=30)
    conn.request("GET", "/api/stats")
    return json.loads(conn.getresponse().read())["counts"]


def check(url, n):
    """Every job succeeded once: one attempt, one `running` and one `succeeded` event each."""
    q = lambda sql: int(psql(url, sql) or 0)
    problems = {
        "jobs": q("SELECT count(*) FROM jobs"),
        "not succeeded": q("SELECT count(*) FROM jobs WHERE status <> 'succeeded'"),
        "attempts <> 1": q("SELECT count(*) FROM jobs WHERE attempts <> 1"),
        "succeeded events <> 1": q(
            "SELECT count(*) FROM (SELECT j.id FROM jobs j LEFT JOIN events e ON e.job_id = j.id "
            "AND e.kind = 'succeeded' GROUP BY j.id HAVING count(e.seq) <> 1) x"),
        "running events <> 1": q(
            "SELECT count(*) FROM (SELECT j.id FROM jobs j LEFT JOIN events e ON e.job_id = j.id "
            "AND e.kind = 'running' GROUP BY j.id HAVING count(e.seq) <> 1) x"),
    }
    ok = problems["jobs"] == n and all(v == 0 for k, v in problems.items() if k != "jobs")
    return ok, problems


def run_once(a, procs, png):
    per, extra = divmod(a.total_workers, procs)
    db = f"imgclass_scaleq_{os.getpid()}_{procs}_{int(time.time() * 1000) % 100000}"
    admin = a.admin
    psql(admin, f"CREATE DATABASE {db}")
    url = admin.rsplit("/", 1)[0] + "/" + db
    nodes = []
    try:
        subprocess.run([a.bin, "migrate", "--database", url], check=True, capture_output=True)
        api, base = start([a.bin, "serve", "--no-workers", "--no-result-cache", "--provider", "noop",
                           "--listen", "127.0.0.1:0", "--database", url] + a.api_arg, "listening")
        nodes.append(api)
        for i in range(procs):
            w = per + (1 if i < extra else 0)
            p, _ = start([a.bin, "worker", "--provider", "noop", "--database", url,
                          "--workers", str(w)] + a.worker_arg, "worker is running")
            nodes.append(p)
        time.sleep(1.0)
        xact0 = int(psql(admin, f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{db}'"))
        sampler = Sampler(db)
        node_cpu0 = sum(proc_cpu(p.pid) for p in nodes)
        sampler.start()
        t0 = time.monotonic()
        ids = submit(base, a.n, a.batch, a.in_flight, png)
        submitted = time.monotonic() - t0
        while True:
            counts = stats(base)
            if counts["succeeded"] + counts["failed"] >= a.n:
                break
            if time.monotonic() - t0 > a.timeout:
                raise SystemExit(f"{procs} processes: not done after {a.timeout} s: {counts}")
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        sampler.stop.set()
        sampler.join()
        sampler.sample()
        node_cpu = sum(proc_cpu(p.pid) for p in nodes) - node_cpu0
        xacts = int(psql(admin, f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{db}'")) - xact0
        ok, problems = check(url, a.n)
        if len(set(ids)) != a.n:
            ok, problems["distinct ids"] = False, len(set(ids))
        return {
            "processes": procs,
            "workers_per_process": f"{per}" + (f"–{per + 1}" if extra else ""),
            "jobs": a.n,
            "jobs_per_s": a.n / elapsed,
            "submitted_per_s": a.n / submitted,
            "pg_cpu_ms_per_job": sampler.cpu() * 1e3 / a.n,
            "nodes_cpu_ms_per_job": node_cpu * 1e3 / a.n,
            "xacts_per_job": xacts / a.n,
            "peak_connections": sampler.peak,
            "integrity_ok": ok,
            "integrity": problems,
            "load_after": open("/proc/loadavg").read().split()[0],
        }
    finally:
        stop(nodes)
        psql(admin, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", default="1,2,4,8,16")
    ap.add_argument("--total-workers", type=int, default=32)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--in-flight", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/imgclass"))
    ap.add_argument("--admin", default=os.environ.get("IMGCLASS_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--worker-arg", action="append", default=[], help="extra flag for each worker process")
    ap.add_argument("--api-arg", action="append", default=[], help="extra flag for the API node")
    ap.add_argument("--json", help="write every run's numbers here")
    a = ap.parse_args()
    png = tiny_png()
    procs = [int(p) for p in a.procs.split(",")]
    rows = []
    # Runs interleave (1, 2, ..., 16, then again), so that a noisy minute does not fall on one K.
    for r in range(a.runs):
        for k in procs:
            PROBLEMS.clear()
            try:
                row = run_once(a, k, png)
            except (Exception, SystemExit) as e:
                row = {"processes": k, "error": str(e)[:300]}
            row["run"] = r + 1
            row["node_warnings"] = len(PROBLEMS)
            row["first_warning"] = PROBLEMS[0][:300] if PROBLEMS else None
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    base = {r["run"]: r["jobs_per_s"] for r in rows if r["processes"] == procs[0] and "error" not in r}
    print(f"| worker processes | workers each | run | jobs/s | × {procs[0]} process(es), same run "
          "| PostgreSQL CPU per job | nodes' CPU per job | transactions per job | peak connections | integrity |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in sorted(rows, key=lambda r: (r["processes"], r["run"])):
        if "error" in row:
            print(f"| {row['processes']} | | {row['run']} | failed | | | | | | {row['error']} (nodes: {row['first_warning']}) |")
            continue
        ratio = f"{row['jobs_per_s'] / base[row['run']]:.2f}" if row["run"] in base else ""
        print(f"| {row['processes']} | {row['workers_per_process']} | {row['run']} | {row['jobs_per_s']:,.0f} "
              f"| {ratio} | {row['pg_cpu_ms_per_job']:.2f} ms | {row['nodes_cpu_ms_per_job']:.2f} ms "
              f"| {row['xacts_per_job']:.2f} | {row['peak_connections']} "
              f"| {'ok' if row['integrity_ok'] else 'FAILED ' + json.dumps(row['integrity'])} |")
    if not all(r.get("integrity_ok") for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
