// A server that accepts POST /api/jobs like imgclass (reads the whole body, answers 202 with a
// job id) and does nothing else: to measure how fast a benchmark client can submit.
// Prints its base URL on stdout.
import http from "node:http";

let seq = 0;
const server = http.createServer((req, res) => {
  req.on("data", () => {});
  req.on("end", () => {
    const body = `{"jobs":[{"id":"00000000-0000-0000-0000-${String(++seq).padStart(12, "0")}","status":"queued"}]}`;
    res.writeHead(202, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
    res.end(body);
  });
});
server.keepAliveTimeout = 60000;
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`http://127.0.0.1:${server.address().port}\n`);
});
