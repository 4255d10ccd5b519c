// Demo and test origin: answers every request with a JSON echo of what it
// received (method, path, query, headers, body), and keeps the last requests
// for tests at GET /__origin/log (only reachable directly, never through
// keyward, whose policy has no such route).
//
//   PORT=8788 node demo/origin.mjs
//
// A request carrying `x-test-delay-ms: N` is answered after N ms (timeout tests);
// one carrying `x-test-origin-cors` gets `access-control-allow-origin: *`;
// one carrying `x-test-vary: V` gets `vary: V`; one carrying
// `x-test-response-headers: {"name": "value", …}` (JSON) gets those headers.
// A request whose body ends in an error (the sender aborted it) is logged
// with `aborted: true` and the bytes that arrived.
import http from "node:http";

const port = Number(process.env.PORT || 8788);
const log = [];

const server = http.createServer((req, res) => {
  if (req.url === "/__origin/log") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(log));
    return;
  }
  if (req.url === "/__origin/reset" && req.method === "POST") {
    log.length = 0;
    res.writeHead(204);
    res.end();
    return;
  }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  let ended = false;
  const aborted = () => {
    if (ended) return;
    ended = true;
    const [path, ...q] = req.url.split("?");
    log.push({
      method: req.method,
      url: req.url,
      path,
      query: q.join("?"),
      headers: req.headers,
      body: Buffer.concat(chunks).toString("utf8"),
      aborted: true,
      at: Date.now(),
    });
    if (log.length > 5000) log.shift();
  };
  req.on("aborted", aborted);
  req.on("error", aborted);
  req.on("end", () => {
    if (ended) return;
    ended = true;
    const body = Buffer.concat(chunks).toString("utf8");
    const [path, ...q] = req.url.split("?");
    const entry = {
      method: req.method,
      url: req.url,
      path,
      query: q.join("?"),
      headers: req.headers,
      body,
      at: Date.now(),
    };
    log.push(entry);
    if (log.length > 5000) log.shift();
    const delay = Number(req.headers["x-test-delay-ms"] || 0);
    setTimeout(() => {
      const headers = { "content-type": "application/json", "x-origin": "demo" };
      // Tests: an origin that sets its own CORS headers (keyward must drop them).
      if (req.headers["x-test-origin-cors"]) headers["access-control-allow-origin"] = "*";
      if (req.headers["x-test-vary"]) headers["vary"] = req.headers["x-test-vary"];
      if (req.headers["x-test-response-headers"]) {
        try {
          Object.assign(headers, JSON.parse(req.headers["x-test-response-headers"]));
        } catch {
          // Not JSON: ignored.
        }
      }
      res.writeHead(200, headers);
      res.end(JSON.stringify({ echo: entry }));
    }, delay);
  });
});

server.listen(port, "127.0.0.1", () => {
  console.log(`origin listening on http://127.0.0.1:${port}`);
});
