// Shared helpers of the Node parts of the benchmark: no dependencies beyond Node itself.
import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import os from "node:os";

export const now = () => performance.now();

export function parseArgs(argv, defaults) {
  const out = { ...defaults, _: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) {
      out._.push(a);
      continue;
    }
    const key = a.slice(2).replace(/-/g, "_");
    const def = defaults[key];
    if (typeof def === "boolean") out[key] = true;
    else {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      out[key] = typeof def === "number" ? Number(v) : v;
    }
  }
  return out;
}

export function quantile(values, q) {
  if (values.length === 0) return null;
  const s = [...values].sort((a, b) => a - b);
  // Nearest rank: the smallest value with at least q of the values at or below it.
  const k = Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1));
  return s[k];
}

export const round = (x, d = 2) => (x == null ? null : Number(x.toFixed(d)));

export function writeJson(file, obj) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify(obj, null, 2) + "\n");
}

export function loadavg() {
  try {
    return fs.readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).map(Number);
  } catch {
    return null;
  }
}

/** Kilobytes of a /proc/PID/status field (VmRSS, VmHWM), or null once the process is gone. */
export function procStatusKb(pid, field) {
  try {
    const m = fs.readFileSync(`/proc/${pid}/status`, "utf8").match(new RegExp(`^${field}:\\s+(\\d+) kB`, "m"));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** User+system CPU seconds in the text of a /proc/PID/stat (or /proc/PID/task/TID/stat). */
function statCpuSeconds(stat) {
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // fields[11] and [12] are utime and stime (fields 14 and 15 of the full line), in clock ticks.
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** User+system CPU seconds of a process so far (from /proc/PID/stat), or null. */
export function procCpuSeconds(pid) {
  try {
    return statCpuSeconds(fs.readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return null;
  }
}

/**
 * CPU seconds of a process's threads so far, by group of thread names (from
 * /proc/PID/task/TID/stat): `inference` (imgclass-infer-*), `tokio` (the runtime's workers and
 * its blocking pool), `sqlite` (the round thread and sqlx's connection threads), `other`.
 * Keyed by thread id, so that two snapshots can be subtracted thread by thread.
 */
export function procThreadCpu(pid) {
  const threads = {};
  let tids = [];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return threads;
  }
  for (const tid of tids) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const group = name.startsWith("imgclass-infer")
        ? "inference"
        : name.startsWith("tokio-")
          ? "tokio"
          : name.startsWith("imgclass-sqlite") || name.startsWith("sqlx-sqlite")
            ? "sqlite"
            : "other";
      threads[tid] = { group, seconds: statCpuSeconds(stat) };
    } catch {
      // the thread ended meanwhile
    }
  }
  return threads;
}

/** Per group, the CPU seconds the threads used between two `procThreadCpu` snapshots. */
export function threadCpuBetween(before, after) {
  const groups = {};
  for (const [tid, t] of Object.entries(after)) {
    groups[t.group] = (groups[t.group] ?? 0) + t.seconds - (before[tid]?.seconds ?? 0);
  }
  return groups;
}

/** Whole-machine busy and total CPU seconds (from /proc/stat), for "how busy was the machine". */
export function machineCpu() {
  const line = fs.readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  const idle = line[3] + line[4];
  const total = line.slice(0, 8).reduce((a, b) => a + b, 0);
  return { busy: (total - idle) / 100, total: total / 100 };
}

const children = new Set();
function killChildren() {
  for (const c of children) {
    try {
      c.kill("SIGKILL");
    } catch {}
  }
}
process.on("exit", killChildren);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(sig, () => {
    killChildren();
    process.exit(128 + (sig === "SIGINT" ? 2 : sig === "SIGTERM" ? 15 : 1));
  });
}

/** Runs `imgclass serve` on a free port; resolves once it prints its address. The result cache
 *  is off: the benchmarks send the same images many times and measure their classification.
 *  The server writes its log straight into `logFile` (a temporary file when none is named), as
 *  `imgclass serve > file` would: relaying it through this process, line by line, cost the
 *  client about a tenth of its CPU on the cores the server shares. */
export async function startServe({ bin, database, args = [], logFile, timeoutMs = 60000, env = {} }) {
  const argv = ["serve", "--listen", "127.0.0.1:0", "--database", database, "--no-result-cache", ...args];
  logFile ??= path.join(fs.mkdtempSync(path.join(os.tmpdir(), "imgclass-bench-")), "serve.log");
  const fd = fs.openSync(logFile, "w");
  fs.writeSync(fd, `$ ${bin} ${argv.join(" ")}\n`);
  const child = spawn(bin, argv, {
    env: { ...process.env, NO_COLOR: "1", ...env },
    stdio: ["ignore", fd, fd],
  });
  fs.closeSync(fd);
  children.add(child);
  child.on("exit", () => children.delete(child));
  const base = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => done(new Error(`imgclass serve did not report its address within ${timeoutMs} ms`)), timeoutMs);
    const poll = setInterval(() => {
      const m = fs.readFileSync(logFile, "utf8").match(/listening on (http:\/\/[0-9.]+:\d+)/);
      if (m) done(null, m[1]);
    }, 20);
    const exited = (code, sig) => done(new Error(`imgclass serve exited early (${code ?? sig}); see ${logFile}`));
    child.once("exit", exited);
    function done(err, url) {
      clearTimeout(timer);
      clearInterval(poll);
      child.off("exit", exited);
      if (err) reject(err);
      else resolve(url);
    }
  });
  return {
    base,
    pid: child.pid,
    child,
    /** SIGTERM, then SIGKILL if it has not exited within `graceMs`. */
    async stop(graceMs = 10000) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), graceMs);
      await exited;
      clearTimeout(t);
    },
  };
}

/**
 * Follows GET /api/events. `onEvent(kind, jobId, data, t)` gets each event with its arrival
 * time; `data` is the raw JSON text (parse it only when needed: parsing costs CPU that the
 * server, on the same 2 cores, would rather have). Resolves once the stream is open.
 */
export function followEvents(base, onEvent) {
  return new Promise((resolve, reject) => {
    const req = http.get(`${base}/api/events`, { headers: { accept: "text/event-stream" } }, (res) => {
      if (res.statusCode !== 200) {
        reject(new Error(`GET /api/events: ${res.statusCode}`));
        return;
      }
      res.setEncoding("utf8");
      let buf = "";
      res.on("data", (chunk) => {
        const t = now();
        buf += chunk;
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          let kind = "message";
          let data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) kind = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trimStart();
          }
          if (!data) continue; // keep-alive comment
          const i = data.indexOf('"job_id":"');
          const jobId = i >= 0 ? data.slice(i + 10, data.indexOf('"', i + 10)) : null;
          onEvent(kind, jobId, data, t);
        }
      });
      resolve({ close: () => req.destroy() });
    });
    req.on("error", (e) => {
      if (e.code !== "ECONNRESET") reject(e);
    });
  });
}

/** A multipart/form-data body holding one file field, built once and sent many times. */
export function multipartBody(fileName, contentType, bytes) {
  return multipartFiles([{ name: fileName, type: contentType, bytes }]);
}

/** One multipart body with several files, each a part named "file". */
export function multipartFiles(files) {
  const boundary = "----imgclassbench" + Math.random().toString(16).slice(2);
  const parts = [];
  for (const f of files) {
    parts.push(
      Buffer.from(
        `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="${f.name}"\r\n` +
          `Content-Type: ${f.type}\r\n\r\n`,
      ),
      f.bytes,
      Buffer.from("\r\n"),
    );
  }
  parts.push(Buffer.from(`--${boundary}--\r\n`));
  return { body: Buffer.concat(parts), contentType: `multipart/form-data; boundary=${boundary}`, count: files.length };
}

function imageFile(file) {
  const ext = path.extname(file).toLowerCase();
  const type = ext === ".png" ? "image/png" : ext === ".jpg" || ext === ".jpeg" ? "image/jpeg" : "application/octet-stream";
  return { name: path.basename(file), type, bytes: fs.readFileSync(file) };
}

export function imageUpload(file) {
  const f = imageFile(file);
  return { name: f.name, ...multipartFiles([f]) };
}

/**
 * Requests of `perPost` files each, taken in turn from `files` (a batch of the queue rows:
 * BullMQ's users batch with addBulk, imgclass's clients with many files per POST).
 */
export function batchUploads(files, perPost) {
  const all = files.map(imageFile);
  const n = Math.max(1, all.length);
  return Array.from({ length: n }, (_, b) => ({
    name: `${perPost} files`,
    ...multipartFiles(Array.from({ length: perPost }, (_, i) => all[(b * perPost + i) % all.length])),
  }));
}

/** Reads a response's whole body as UTF-8 text, then calls `done(text)`; `fail` on an error. */
function onText(res, done, fail) {
  const parts = [];
  res.on("data", (d) => parts.push(d));
  res.on("end", () => done(Buffer.concat(parts).toString("utf8")));
  res.on("error", fail);
}

/** POST one prepared body; resolves with {status, body}. */
export function post(agent, url, upload, timeoutMs = 120000) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      {
        method: "POST",
        agent,
        headers: { "content-type": upload.contentType, "content-length": upload.body.length },
      },
      (res) => onText(res, (body) => resolve({ status: res.statusCode, body }), reject),
    );
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`POST ${url} timed out`)));
    req.on("error", reject);
    req.end(upload.body);
  });
}

/** GET a JSON document (node:http, as the uploads: `fetch` would load undici in the middle of a
 *  measured run). */
export function getJson(url) {
  return new Promise((resolve, reject) => {
    http
      .get(url, (res) =>
        onText(
          res,
          (text) => (res.statusCode === 200 ? resolve(JSON.parse(text)) : reject(new Error(`GET ${url}: ${res.statusCode}`))),
          reject,
        ),
      )
      .on("error", reject);
  });
}

/**
 * Submits `n` jobs (round-robin over `uploads`, each a request of `upload.count` files, one by
 * default) with `concurrency` requests in flight. Returns the accepted job ids and timing.
 */
export async function submitAll({ base, uploads, n, concurrency, onAccepted }) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  const url = `${base}/api/jobs`;
  const perPost = uploads[0].count ?? 1;
  const requests = Math.ceil(n / perPost);
  const ids = [];
  let next = 0;
  let firstSend = null;
  let lastAccepted = null;
  const lane = async () => {
    for (;;) {
      const i = next++;
      if (i >= requests) return;
      const t = now();
      if (firstSend === null) firstSend = t;
      const r = await post(agent, url, uploads[i % uploads.length]);
      if (r.status !== 202) throw new Error(`POST /api/jobs: ${r.status} ${r.body.slice(0, 300)}`);
      lastAccepted = now();
      for (let j = r.body.indexOf('"id":"'); j >= 0; j = r.body.indexOf('"id":"', j + 6)) {
        const id = r.body.slice(j + 6, r.body.indexOf('"', j + 6));
        ids.push(id);
        onAccepted?.(id, t, lastAccepted);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, requests) }, lane));
  agent.destroy();
  return { ids, firstSend, lastAccepted };
}

/**
 * Resolves when `predicate()` holds (checked every 20 ms), rejects after `timeoutMs`. `what`
 * names what was waited for; a function is called at the timeout, so it can report progress.
 */
export function waitFor(predicate, timeoutMs, what) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const tick = () => {
      if (predicate()) return resolve();
      if (Date.now() - t0 > timeoutMs) return reject(new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === "function" ? what() : what}`));
      setTimeout(tick, 20);
    };
    tick();
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
