"""Reads the per-section JSON files of one bench/run.sh run, prints the table (Markdown, so that
it can be pasted into bench/README.md as it is) and writes them all into one JSON file.

Usage: python report.py SECTIONS_DIR OUT.json
"""
import glob
import json
import os
import statistics
import sys


def load(d, name):
    p = os.path.join(d, name)
    if not os.path.exists(p):
        return None
    with open(p) as fh:
        return json.load(fh)


def fmt(x, d=1):
    if x is None:
        return "—"
    return f"{x:,.{d}f}"


def mib(kb):
    return "—" if kb is None else f"{kb / 1024:,.0f} MiB"


def grouped(runs, key):
    """{layout: "rate" or "rate1 / rate2"} in first-seen order."""
    out = {}
    for r in runs:
        out.setdefault(key(r), []).append(fmt(r["images_per_s"]))
    return {k: " / ".join(v) for k, v in out.items()}


def ratio(a, b):
    return None if not a or not b else a / b


def service_split(run):
    """The service's own CPU per job of a throughput run (the process's less the inference
    threads', both exact) and its split by thread group as text. The groups' figures miss part of
    the threads started during the run (the blocking pool's), since /proc counts each thread in
    10 ms ticks: what no group holds is shown apart."""
    groups = run.get("server_threads_ms_per_job") or {}
    own = run["server_cpu_ms_per_job"] - (groups.get("inference") or 0)
    named = {g: groups[g] for g in ("tokio", "sqlite", "other") if groups.get(g)}
    unnamed = own - sum(named.values())
    text = ", ".join(f"{g} {fmt(v, 2)}" for g, v in named.items())
    if unnamed > 0.005:
        text += f", below /proc's per-thread resolution of 10 ms {fmt(unnamed, 2)}"
    return own, text


def median(values):
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def rounds_of(d, sub, kind):
    """The JSON of each alternated round of one kind, in round order (bench/image_ab.sh and
    bench/batched_ab.sh write KIND-1.json, KIND-2.json, ...)."""
    out, r = [], 1
    while True:
        one = load(os.path.join(d, sub), f"{kind}-{r}.json")
        if one is None:
            return out
        out.append(one)
        r += 1


def side_by_side(d):
    """The goal ratios from the alternated rounds: per round, each ratio of rows run one after
    the other; then the median over the rounds. Rows for the table, and the summary's figures."""
    rows, summary = [], {}
    e2e, raw, py = (rounds_of(d, "ab-image", k) for k in ("e2e", "raw", "python"))
    image = []
    for e, r, p in zip(e2e, raw, py):
        rb = max(r["runs"], key=lambda x: x["images_per_s"])
        pb = max(p["runs"], key=lambda x: x["images_per_s"])
        image.append({
            "e2e/python": ratio(e["per_s"], pb["images_per_s"]),
            "cpu/raw": ratio(e["server_cpu_ms_per_job"], rb.get("cpu_ms_per_image")),
            "e2e": e["per_s"], "raw": rb["images_per_s"], "python": pb["images_per_s"],
        })
    sql, pgs, bull = (rounds_of(d, "ab-batched", k) for k in ("sqlite", "postgres", "bullmq"))
    if not image and not sql:
        return rows, summary

    def each(values, digits):
        return " · ".join(fmt(v, digits) for v in values)

    n = max(len(image), len(sql))
    rows.append(("**Side by side**", "", f"the goal ratios again, the compared rows one after the other in each round "
                 f"({n} round{'s' if n > 1 else ''}: bench/image_ab.sh, bench/batched_ab.sh); the median of the rounds' ratios"))
    if image:
        v = [x["e2e/python"] for x in image]
        summary["e2e_over_ceiling"] = median(v)
        rows.append(("end to end / competent Python, alternated", f"**{fmt(median(v), 2)}**",
                     f"rounds: {each(v, 2)}; end to end {each([x['e2e'] for x in image], 1)} img/s, "
                     f"Python {each([x['python'] for x in image], 1)} img/s"))
        v = [x["cpu/raw"] for x in image]
        summary["server_cpu_per_image_over_raw"] = median(v)
        rows.append(("server CPU per image / raw loop's, alternated", f"**{fmt(median(v), 2)}**",
                     f"rounds: {each(v, 2)}; raw loop (2 threads × 1 intra) {each([x['raw'] for x in image], 1)} img/s"))
    for name, key, runs in (("SQLite", "sqlite", sql), ("PostgreSQL", "postgres", pgs)):
        if not runs or not bull:
            continue
        v = [ratio(a["per_s"], b["per_s"]) for a, b in zip(runs, bull)]
        cpu = [a.get("server_cpu_ms_per_job") for a in runs]
        summary[f"batched_{key}_over_bullmq_addbulk"] = median(v)
        summary[f"batched_{key}_server_cpu_ms_per_job"] = median(cpu)
        first = runs[0]
        rows.append((f"batched {name}, default workers / BullMQ `addBulk`, alternated", f"**{fmt(median(v), 2)}**",
                     f"rounds: {each(v, 2)}; {name} {each([a['per_s'] for a in runs], 0)} jobs/s, BullMQ "
                     f"{each([b['per_s'] for b in bull], 0)} jobs/s; {first['n']} jobs, {first['per_post']} files per POST, "
                     f"{first['concurrency']} in flight; server CPU per job {each(cpu, 3)} ms (median {fmt(median(cpu), 3)})"))
    return rows, summary


def main():
    d, out_path = sys.argv[1], sys.argv[2]
    m = load(d, "machine.json") or {}
    e2e = load(d, "e2e.json")
    ceil = load(d, "ceiling.json")
    raw = load(d, "raw.json")
    lat = load(d, "latency.json")
    cap = load(d, "client-capacity.json")
    pg = load(d, "postgres.json")
    ph = load(d, "phases-sqlite.json")
    queues = [load(d, os.path.basename(p)) for p in glob.glob(os.path.join(d, "queue-*.json"))]
    # SQLite on disk, then SQLite on tmpfs, then PostgreSQL; fewer workers first.
    queues.sort(key=lambda q: ("PostgreSQL" in q["label"], "tmpfs" in q["label"], "polls" in q["label"], q["workers"]))
    bulls = [load(d, os.path.basename(p)) for p in sorted(glob.glob(os.path.join(d, "bullmq-*.json")))]
    load_end = open(os.path.join(d, "loadavg-end.txt")).read().split() if os.path.exists(os.path.join(d, "loadavg-end.txt")) else []

    # The ceiling is the competent Python pipeline; the naive one is shown beside it.
    def best_of(pipeline):
        runs = [r for r in (ceil or {}).get("runs", []) if r.get("pipeline", "naive") == pipeline]
        return max(runs, key=lambda r: r["images_per_s"]) if runs else None
    naive_best = best_of("naive")
    ceil_best = best_of("competent") or naive_best
    raw_best = max(raw["runs"], key=lambda r: r["images_per_s"]) if raw else None
    disk_queues = [q for q in queues if "tmpfs" not in q["label"] and "polls" not in q["label"]]
    q_best = max(disk_queues, key=lambda q: q["per_s"]) if disk_queues else None
    batched = [load(d, os.path.basename(p)) for p in glob.glob(os.path.join(d, "batched-*.json"))]
    batch_cap = next((b for b in batched if b.get("section") == "client_capacity"), None)
    batched = [b for b in batched if b.get("section") == "queue"]
    batched.sort(key=lambda q: ("PostgreSQL" in q["label"], q["workers"] == "default", q["label"]))
    bull_ok = [b for b in bulls if "per_s" in b]
    b_best = max(bull_ok, key=lambda b: b["per_s"]) if bull_ok else None

    rows = []
    add = rows.append
    n = e2e["n"] if e2e else (ceil or {}).get("n")
    add(("**Classification throughput**", "", f"{n} photos round-robin over 5 fixtures (0.1–0.3 MP) + 3 JPEGs (6–12 MP)"))
    if e2e:
        other = e2e.get("other_cpu_s")
        add((
            "end to end: HTTP upload → queue → model → `succeeded`",
            f"**{fmt(e2e['per_s'])} img/s**",
            f"`serve` defaults (twice the cores in workers, sharing one 1-intra-thread session per core), {e2e['concurrency']} uploads in flight, "
            f"first POST → last `succeeded` event; all submitted after {fmt(e2e['submit_seconds'], 2)} s; "
            f"server CPU {fmt(e2e['server_cpu_ms_per_job'], 0)} ms per image"
            + (f" (raw loop: {fmt(1000 * (m.get('cores') or 2) / raw_best['images_per_s'], 0)} ms on {m.get('cores') or 2} busy cores)" if raw_best else "")
            + f"; other processes used {fmt(other)} CPU s during the {fmt(e2e['seconds'], 2)} s"
            + (f"; runs: {' / '.join(fmt(r['per_s']) for r in e2e['runs'])}" if len(e2e.get('runs', [])) > 1 else ""),
        ))
    if ceil:
        modes = {"1x2": "1 session × 2 threads", "2proc": "2 processes × 1 thread", "2thread": "2 threads × 1"}
        what = {
            "competent": "ceiling: competent Python pipeline (Pillow draft-mode JPEG decode, reducing_gap=2.0) + onnxruntime",
            "naive": "naive Python pipeline (full decode, one bilinear resize: the reference pre-processing)",
        }
        for pipeline in ("competent", "naive"):
            runs = [r for r in ceil["runs"] if r.get("pipeline", "naive") == pipeline]
            if not runs:
                continue
            best = max(runs, key=lambda r: r["images_per_s"])
            add((
                what[pipeline] + f", onnxruntime {ceil['onnxruntime']}, Pillow {ceil['pillow']}",
                f"**{fmt(best['images_per_s'])} img/s**" if pipeline == "competent" else f"{fmt(best['images_per_s'])} img/s",
                "best of " + ", ".join(f"{modes.get(k, k)} {v}" for k, v in grouped(runs, lambda r: r["mode"]).items())
                + "; decode + pre-processing + model, images in memory",
            ))
    if raw:
        add((
            "imgclass raw loop (`examples/raw`: `Classifier::classify`, no queue, no HTTP)",
            f"**{fmt(raw_best['images_per_s'])} img/s**",
            "best of " + ", ".join(
                f"{t} thread{'s' if t > 1 else ''} × {i} intra {v}"
                for (t, i), v in grouped(raw["runs"], lambda r: (r["threads"], r["intra"])).items()
            ),
        ))
    if e2e and ceil_best:
        add(("ratio end to end / Python ceiling", f"**{fmt(ratio(e2e['per_s'], ceil_best['images_per_s']), 2)}**", ""))
    if raw_best and ceil_best:
        add(("ratio raw loop / Python ceiling", f"**{fmt(ratio(raw_best['images_per_s'], ceil_best['images_per_s']), 2)}**", ""))
    if raw_best and naive_best and naive_best is not ceil_best:
        add(("ratio raw loop / naive Python", fmt(ratio(raw_best['images_per_s'], naive_best['images_per_s']), 2), ""))
    if e2e and raw_best:
        add(("ratio end to end / raw loop", fmt(ratio(e2e["per_s"], raw_best["images_per_s"]), 2), "what the service around the model costs"))
    cpu_ratio = None
    cores = m.get("cores") or 2

    def cpu_per_image(run):
        # A loop's own CPU per image where it was measured (the raw loop's timed loop, Python's
        # threads' layouts); else cores / rate (it keeps every core busy). With how it was had.
        measured = run.get("cpu_ms_per_image")
        if measured:
            return measured, "its own CPU time"
        return 1000 * cores / run["images_per_s"], f"{cores} cores / its img/s"

    if e2e and raw_best:
        raw_cpu_ms, how = cpu_per_image(raw_best)
        cpu_ratio = ratio(e2e["server_cpu_ms_per_job"], raw_cpu_ms)
        groups = e2e.get("server_threads_ms_per_job") or {}
        split = ""
        if groups.get("inference"):
            own, rest = service_split(e2e)
            split = (f"; by thread: inference {fmt(groups['inference'], 1)} ms (the raw loop's work), "
                     f"the service's own {fmt(own, 2)} ms ({rest})")
        add((
            "ratio server CPU per image / raw loop's",
            f"**{fmt(cpu_ratio, 2)}**",
            f"{fmt(e2e['server_cpu_ms_per_job'], 1)} ms against {fmt(raw_cpu_ms, 1)} ms ({how}){split}",
        ))
    if e2e and ceil_best:
        py_cpu_ms, py_how = cpu_per_image(ceil_best)
        client_ms = 1000 * e2e["client_cpu_s"] / e2e["n"] if e2e.get("client_cpu_s") else None
        add((
            "ratio server CPU per image / competent Python's",
            fmt(ratio(e2e["server_cpu_ms_per_job"], py_cpu_ms), 2),
            f"{fmt(e2e['server_cpu_ms_per_job'], 1)} ms (upload received, hashed, stored, handed to a worker, "
            f"classified, events sent) against {fmt(py_cpu_ms, 1)} ms ({py_how}, "
            "images in memory); the end-to-end row also pays its client on the same cores"
            + (f": {fmt(client_ms, 1)} ms per image" if client_ms else ""),
        ))

    service = load(d, "service-photos.json")
    if service and raw_best:
        raw_cpu_ms, _ = cpu_per_image(raw_best)
        _, rest = service_split(service)
        add((
            "the service's own work per photo, without the model (the same photos to `--provider noop`)",
            f"{fmt(service['server_cpu_ms_per_job'], 2)} ms of server CPU",
            f"{fmt(service['per_s'], 0)} photos/s, {service['concurrency']} in flight, --workers {service['workers']}; "
            f"by thread, ms per photo: {rest}; the photo received, SHA-256, checked, stored, claimed, "
            "finished, events sent; "
            f"{fmt(100 * service['server_cpu_ms_per_job'] / raw_cpu_ms, 1)} % of the raw loop's CPU per image",
        ))

    nq = queues[0]["n"] if queues else (b_best or {}).get("n")
    add(("**Queue overhead**", "", f"{nq} no-op jobs (8×8 PNG), first submit → last `succeeded`/completed"))
    for q in queues:
        add((
            q["label"],
            f"{fmt(q['per_s'], 0)} jobs/s",
            f"`--provider noop`; {q['concurrency']} POSTs in flight, submitted at {fmt(q['submit_per_s'], 0)}/s; "
            f"CPU per job: server {fmt(q['server_cpu_ms_per_job'], 2)} ms, whole machine {fmt(q.get('machine_cpu_ms_per_job'), 2)} ms; "
            f"in {fmt(q['seconds'], 2)} s CPU used: server {fmt(q['server_cpu_s'])} s, "
            f"client {fmt(q['client_cpu_s'])} s, other processes "
            + ("(PostgreSQL's included) " if "PostgreSQL" in q["label"] else "")
            + f"{fmt(q.get('other_cpu_s'))} s",
        ))
    if ph:
        add((
            "imgclass SQLite, halves apart: submit only (`--no-workers`)",
            f"{fmt(ph['submit']['per_s'], 0)} jobs/s",
            f"HTTP + upload check + insert; server CPU {fmt(ph['submit']['server_cpu_ms_per_job'], 2)} ms per job",
        ))
        add((
            f"imgclass SQLite, halves apart: drain only (`--workers {ph['workers']}`, no HTTP)",
            f"{fmt(ph['drain']['per_s'], 0)} jobs/s",
            f"claim + read image + finish + events, on the {ph['n']} queued jobs; server CPU {fmt(ph['drain']['server_cpu_ms_per_job'], 2)} ms per job",
        ))
    if pg and pg.get("status") != "measured":
        add(("imgclass PostgreSQL", f"postgres: {pg['status']}", ""))
    for b in bulls:
        if "per_s" not in b:
            add(("BullMQ", b.get("status", "?"), ""))
            continue
        redis = m.get("redis")
        if b.get("redis_appendonly") == "yes":
            persist = f"append-only file, fsync {b.get('redis_appendfsync')}"
        elif b.get("redis_appendonly", m.get("redis_appendonly")) == "no" and not m.get("redis_save"):
            persist = "no persistence"
        else:
            persist = f"appendonly {b.get('redis_appendonly', m.get('redis_appendonly'))}"
        add((
            f"BullMQ {b['bullmq']}, 1 worker process, concurrency {b['worker_concurrency']}",
            f"{fmt(b['per_s'], 0)} jobs/s",
            f"producer {b['producer']} ({fmt(b['add_per_s'], 0)} adds/s); Redis {redis}, {persist}; "
            f"CPU per job, whole machine {fmt(b.get('machine_cpu_ms_per_job'), 3)} ms; in {fmt(b['seconds'], 2)} s CPU used: "
            f"worker {fmt(b.get('worker_cpu_s'))} s, producer {fmt(b.get('producer_cpu_s'))} s, redis-server {fmt(b.get('redis_cpu_s'))} s",
        ))
    if q_best and b_best:
        add((
            "ratio imgclass (best on disk) / BullMQ (best)",
            f"**{fmt(ratio(q_best['per_s'], b_best['per_s']), 3)}**",
            f"{q_best['label']} vs BullMQ concurrency {b_best['worker_concurrency']}, {b_best['producer']}",
        ))
    bulk = next((b for b in bull_ok if b["producer"].startswith("addBulk")
                 and b.get("redis_appendonly") != "yes"), None)
    # The same, on a Redis that keeps its data in an append-only file (synced every second):
    # durable against a crash of the process, as imgclass's commits are.
    bulk_aof = next((b for b in bull_ok if b["producer"].startswith("addBulk")
                     and b.get("redis_appendonly") == "yes"), None)
    batched_ratio = {}
    if batched:
        per = batched[0]["per_post"]
        add(("**Batched submissions**", "", f"{batched[0]['n']} no-op jobs, {per} files per POST, {batched[0]['concurrency']} POSTs in flight; "
             "beside BullMQ's `addBulk` (the BullMQ row above)"))
        for q in batched:
            db = "postgres" if "PostgreSQL" in q["label"] else "sqlite"
            r = ratio(q["per_s"], bulk and bulk["per_s"])
            if q["workers"] != "default":
                batched_ratio.setdefault(db, r)
            add((
                q["label"],
                f"**{fmt(q['per_s'], 0)} jobs/s**",
                f"submitted at {fmt(q['submit_per_s'], 0)}/s; CPU per job: server {fmt(q['server_cpu_ms_per_job'], 3)} ms, "
                f"whole machine {fmt(q.get('machine_cpu_ms_per_job'), 3)} ms; client {fmt(q['client_cpu_s'])} s, other processes "
                + ("(PostgreSQL's included) " if db == "postgres" else "")
                + f"{fmt(q.get('other_cpu_s'))} s"
                + (f"; / BullMQ {bulk['producer']}: **{fmt(r, 2)}**" if r else "")
                + (f"; / the same on a Redis with an append-only file: {fmt(ratio(q['per_s'], bulk_aof['per_s']), 2)}"
                   if bulk_aof else ""),
            ))
        if batch_cap:
            add((
                "client capacity, batched (null server)",
                f"{fmt(batch_cap['per_s'], 0)} jobs/s",
                f"{batch_cap['client']}, {batch_cap['per_post']} files per POST, {batch_cap['concurrency']} in flight, "
                f"{fmt(batch_cap['client_cpu_s'], 2)} CPU s",
            ))
    if cap:
        alts = "; ".join(f"{a['client']}: {fmt(a['per_s'], 0)}/s" for a in cap.get("alternatives", []))
        add((
            "client capacity (same client against a null server)",
            f"{fmt(cap['per_s'], 0)} req/s",
            f"{cap['client']}, {cap['concurrency']} in flight, {fmt(cap['client_cpu_s'], 2)} CPU s"
            + (f"; {alts}" if alts else ""),
        ))

    if lat:
        add(("**Latency**", "", f"{lat['file']}, idle server, {lat['n']} sequential jobs after {lat['warmup']} warm-up; client clock, SSE arrival"))
        for key, label in [
            ("accepted", "submit → `202` answer"),
            ("submit_to_running", "submit → `running` event"),
            ("submit_to_succeeded", "submit → `succeeded` event"),
        ]:
            s = lat[key]
            add((label, f"{fmt(s['median'])} ms median, {fmt(s['p99'])} ms p99", f"max {fmt(s['max'])} ms"))
        s, w = lat["server_created_to_finished"], lat["worker_decode_ms"]
        add((
            "same, server timestamps created → finished",
            f"{fmt(s['median'], 0)} ms median, {fmt(s['p99'], 0)} ms p99",
            f"worker: decode+resize {fmt(w['median'])} ms, model {fmt(lat['worker_inference_ms']['median'])} ms (medians)",
        ))

    if e2e:
        add(("**Memory** (`imgclass serve` RSS)", "", ""))
        add(("idle, model loaded (2 sessions)", mib(e2e["rss_idle_kb"]), "VmRSS 1.5 s after start"))
        add(("peak during the end-to-end run", mib(e2e["rss_peak_kb"]), "VmHWM at the end (and VmRSS sampled every 100 ms)"))
        add(("idle after the run", mib(e2e["rss_after_kb"]), ""))
        noop = next((q for q in queues if q["label"].endswith("--workers 2") and "SQLite" in q["label"]), None)
        if noop:
            add(("`--provider noop`, peak in the queue run", mib(noop["rss_peak_kb"]), "no model: the service itself"))

    title = (
        f"imgclass benchmark ({m.get('mode', '?')}) — {m.get('date', '?')} — {m.get('cpu', '?')}, "
        f"{m.get('cores', '?')} cores, {m.get('mem_gib', '?')} GiB — git {m.get('git', '?')} — "
        f"load average at start {' '.join(m.get('loadavg_start', []))}, at end {' '.join(load_end)} — "
        f"on the database disk, 4 KiB rewrite+fdatasync {m.get('fdatasync_ms_median', '?')} ms, "
        f"append+fsync {m.get('append_fsync_ms_median', '?')} ms (medians)"
    )
    ab_rows, ab_summary = side_by_side(d)
    for row in ab_rows:
        add(row)
    lines = [title, "", "| measurement | result | notes |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]

    # Where the time goes, per photo: the two raw pipelines and what the server reported.
    if raw and raw.get("breakdown") and ceil and ceil.get("breakdown"):
        srv = (e2e or {}).get("server_timings", {}).get("by_file", {})
        lines += [
            "",
            "Per photo, milliseconds (median of 5; model with 2 intra threads; server = mean over the end-to-end jobs, one 1-intra-thread session per core, decode includes resize):",
            "",
            "| photo | size | Rust decode | Rust resize+normalise | Rust model | Python (competent) decode | Python resize+normalise | Python model | server decode+resize | server model |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        py = {os.path.basename(r["file"]): r for r in ceil["breakdown"] if r.get("pipeline", "competent") == "competent"}
        for r in raw["breakdown"]:
            name = os.path.basename(r["file"])
            p = py.get(name, {})
            s = srv.get(name, {})
            lines.append(
                f"| {name} | {r['width']}×{r['height']}, {r['bytes'] / 1e6:.2f} MB | {fmt(r['decode_ms'])} | {fmt(r['preprocess_ms'])} | "
                f"{fmt(r['inference_ms'])} | {fmt(p.get('decode_ms'))} | {fmt(p.get('preprocess_ms'))} | {fmt(p.get('inference_ms'))} | "
                f"{fmt(s.get('decode_ms_mean'))} | {fmt(s.get('inference_ms_mean'))} |"
            )
    text = "\n".join(lines)
    print(text)

    combined = {
        "machine": m,
        "summary": {
            "e2e_images_per_s": e2e and e2e["per_s"],
            "python_ceiling_images_per_s": ceil_best and ceil_best["images_per_s"],
            "raw_images_per_s": raw_best and raw_best["images_per_s"],
            "e2e_over_ceiling": ratio(e2e and e2e["per_s"], ceil_best and ceil_best["images_per_s"]),
            "raw_over_ceiling": ratio(raw_best and raw_best["images_per_s"], ceil_best and ceil_best["images_per_s"]),
            "queue_best_jobs_per_s": q_best and q_best["per_s"],
            "bullmq_best_jobs_per_s": b_best and b_best["per_s"],
            "queue_over_bullmq": ratio(q_best and q_best["per_s"], b_best and b_best["per_s"]),
            "latency_submit_to_running_ms": lat and lat["submit_to_running"],
            "latency_submit_to_succeeded_ms": lat and lat["submit_to_succeeded"],
            "rss_idle_kb": e2e and e2e["rss_idle_kb"],
            "rss_peak_kb": e2e and e2e["rss_peak_kb"],
            "postgres": pg and pg.get("status"),
            "server_cpu_per_image_over_raw": cpu_ratio,
            "batched_sqlite_over_bullmq_addbulk": batched_ratio.get("sqlite"),
            "batched_postgres_over_bullmq_addbulk": batched_ratio.get("postgres"),
        },
        # The same goal ratios from the alternated rounds (medians), where they were run.
        "side_by_side": ab_summary,
        "sections": {
            "e2e": e2e, "ceiling_python": ceil, "raw": raw, "latency": lat, "client_capacity": cap,
            "queues": queues, "queue_phases": ph, "bullmq": bulls, "postgres": pg,
            "batched": batched, "batched_client_capacity": batch_cap,
        },
        "table_markdown": text,
    }
    with open(out_path, "w") as fh:
        json.dump(combined, fh, indent=2)
        fh.write("\n")
    print(f"\n(JSON: {out_path}; sections: {d}/)")


if __name__ == "__main__":
    main()
