// The BullMQ side of the queue benchmark: the same no-op workload as `imgclass serve
// --provider noop`, on the local Redis. One worker process (worker.mjs) with the given
// concurrency; this process is the producer. Time runs from the first add to the moment the
// worker reports its N-th completed job. The queue has a unique name and is obliterated at the
// end (and on Ctrl-C).
//
//   node bench.mjs --out F.json [--n 10000] [--concurrency 50] [--producer addBulk|add] [--bulk 1000] [--in-flight 64]
//                  [--queue NAME] [--redis-pid PID (to count redis-server's CPU)] [--port 6379]
//                  [--appendonly yes --appendfsync everysec (how that Redis was started, for the report)]
import { fork } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Queue } from "bullmq";

function machineBusyCpu() {
  const f = fs.readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  return (f.slice(0, 8).reduce((a, b) => a + b, 0) - f[3] - f[4]) / 100;
}
function procCpu(pid) {
  try {
    const st = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = st.slice(st.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return null;
  }
}

const here = path.dirname(fileURLToPath(import.meta.url));
const opts = { out: "", n: 10000, concurrency: 50, producer: "addBulk", bulk: 1000, in_flight: 64, queue: "", redis_pid: 0, port: 6379,
  appendonly: "", appendfsync: "" };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const k = argv[i].replace(/^--/, "").replace(/-/g, "_");
  if (!(k in opts)) throw new Error(`unknown option ${argv[i]}`);
  opts[k] = typeof opts[k] === "number" ? Number(argv[i + 1]) : argv[i + 1];
}
const queueName = opts.queue || `imgclass-bench-${process.pid}-${Date.now()}`;
const connection = { host: "127.0.0.1", port: opts.port, maxRetriesPerRequest: null };
const log = (m) => process.stderr.write(`bench[bullmq]: ${m}\n`);

// A tiny payload, like the 8x8 PNG of the imgclass side (77 bytes, base64).
const payload = { image: Buffer.alloc(77, 7).toString("base64"), file_name: "tiny.png" };

const queue = new Queue(queueName, { connection });
const worker = fork(path.join(here, "worker.mjs"), [queueName, String(opts.concurrency), String(opts.port)], {
  stdio: "inherit",
});
let cleaned = false;
async function cleanup() {
  if (cleaned) return;
  cleaned = true;
  worker.connected && worker.send({ stop: true });
  await new Promise((r) => {
    const t = setTimeout(() => {
      worker.kill("SIGKILL");
      r();
    }, 5000);
    worker.once("exit", () => {
      clearTimeout(t);
      r();
    });
  });
  await queue.obliterate({ force: true }).catch((e) => log(`obliterate: ${e}`));
  await queue.close();
}
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => cleanup().finally(() => process.exit(130)));

function message(pred, timeoutMs, what) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), timeoutMs);
    const on = (m) => {
      if (m.error || m.failed) {
        clearTimeout(t);
        worker.off("message", on);
        reject(new Error(m.error || m.failed));
      } else if (pred(m)) {
        clearTimeout(t);
        worker.off("message", on);
        resolve(m);
      }
    };
    worker.on("message", on);
  });
}

try {
  await queue.waitUntilReady();
  await message((m) => m.ready, 30000, "the worker to start");
  const done = message((m) => m.done, 60000 + opts.n * 10, `${opts.n} completed jobs`);
  worker.send({ expect: opts.n });
  const c0 = process.cpuUsage();
  const m0 = machineBusyCpu();
  const r0 = opts.redis_pid ? procCpu(opts.redis_pid) : null;
  const w0 = procCpu(worker.pid);
  const t0 = performance.now();
  if (opts.producer === "addBulk") {
    for (let i = 0; i < opts.n; i += opts.bulk) {
      const jobs = [];
      for (let j = i; j < Math.min(opts.n, i + opts.bulk); j++) jobs.push({ name: "classify", data: payload });
      await queue.addBulk(jobs);
    }
  } else {
    let next = 0;
    const lane = async () => {
      while (next < opts.n) {
        next++;
        await queue.add("classify", payload);
      }
    };
    await Promise.all(Array.from({ length: opts.in_flight }, lane));
  }
  const tAdded = performance.now();
  await done;
  const tDone = performance.now();
  const cpu = process.cpuUsage(c0);
  const machine = machineBusyCpu() - m0;
  const redisCpu = r0 === null ? null : procCpu(opts.redis_pid) - r0;
  const workerCpu = procCpu(worker.pid) - w0;
  const out = {
    section: "bullmq",
    bullmq: JSON.parse(fs.readFileSync(path.join(here, "node_modules/bullmq/package.json"), "utf8")).version,
    n: opts.n,
    worker_concurrency: opts.concurrency,
    producer: opts.producer === "addBulk" ? `addBulk x${opts.bulk}` : `add, ${opts.in_flight} in flight`,
    seconds: Number(((tDone - t0) / 1e3).toFixed(3)),
    per_s: Number((opts.n / ((tDone - t0) / 1e3)).toFixed(1)),
    add_seconds: Number(((tAdded - t0) / 1e3).toFixed(3)),
    add_per_s: Number((opts.n / ((tAdded - t0) / 1e3)).toFixed(1)),
    producer_cpu_s: Number(((cpu.user + cpu.system) / 1e6).toFixed(2)),
    worker_cpu_s: Number(workerCpu.toFixed(2)),
    redis_cpu_s: redisCpu === null ? null : Number(redisCpu.toFixed(2)),
    machine_busy_cpu_s: Number(machine.toFixed(2)),
    machine_cpu_ms_per_job: Number(((machine * 1e3) / opts.n).toFixed(3)),
    redis_port: opts.port,
    // How the Redis at --port keeps its data, as run.sh started it (empty: the local Redis).
    redis_appendonly: opts.appendonly || undefined,
    redis_appendfsync: opts.appendfsync || undefined,
  };
  if (opts.out) fs.writeFileSync(opts.out, JSON.stringify(out, null, 2) + "\n");
  log(`${out.producer}, worker concurrency ${opts.concurrency}: ${out.per_s} jobs/s (adds ${out.add_per_s}/s)`);
  await cleanup();
  process.exit(0);
} catch (e) {
  log(String(e.stack || e));
  await cleanup();
  process.exit(1);
}
