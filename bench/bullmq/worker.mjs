// One BullMQ worker process: completes every job at once (the no-op workload of imgclass's
// `--provider noop`). Started by bench.mjs, which talks to it over IPC:
//   parent -> {expect: N}      child -> {ready: true}      child -> {done: N, lastCompleted}
import { Worker } from "bullmq";

const [queueName, concurrencyArg, portArg] = process.argv.slice(2);
const concurrency = Number(concurrencyArg) || 50;
const connection = { host: "127.0.0.1", port: Number(portArg) || 6379, maxRetriesPerRequest: null };

let expected = Infinity;
let completed = 0;
const worker = new Worker(queueName, async (job) => ({ ok: true, size: job.data.image?.length ?? 0 }), {
  connection,
  concurrency,
  autorun: true,
});
worker.on("completed", () => {
  completed++;
  if (completed === expected) process.send({ done: completed });
});
worker.on("failed", (job, err) => process.send({ failed: String(err) }));
worker.on("error", (err) => process.send({ error: String(err) }));
process.on("message", async (m) => {
  if (m.expect) {
    expected = m.expect;
    if (completed >= expected) process.send({ done: completed });
  }
  if (m.stop) {
    await worker.close();
    process.exit(0);
  }
});
await worker.waitUntilReady();
process.send({ ready: true });
