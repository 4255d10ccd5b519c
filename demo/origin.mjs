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
// with `aborted: true` and the bytes that arrived. One carrying
// `x-test-reset-after-bytes: N` gets a 200 whose body stops after N bytes:
// the connection is destroyed (a reset) midway, with the body chunked or,
// with `x-test-reset-declared-length: M`, with `content-length: M`.
import http from "node:http";

const port = Number(process.env.PORT || 8788);
const log = [];
// A fake Turnstile siteverify (tests and `make dev`): with the secret
// TURNSTILE_TEST_SECRET, the token "pass:<hostname>" passes for that
// hostname, anything else fails. GET /__turnstile/calls lists the calls.
const turnstileSecret = process.env.TURNSTILE_TEST_SECRET || "test-turnstile-secret-0123456789abcdef";
const turnstileCalls = [];

const server = http.createServer((req, res) => {
  if (req.url === "/__origin/log") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(log));
    return;
  }
  if (req.url === "/__turnstile/calls") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(turnstileCalls));
    return;
  }
  if (req.url === "/__turnstile/siteverify" && req.method === "POST") {
    const parts = [];
    req.on("data", (c) => parts.push(c));
    req.on("end", () => {
      let call = {};
      try {
        call = JSON.parse(Buffer.concat(parts).toString("utf8"));
      } catch {
        // Not JSON: fails below.
      }
      turnstileCalls.push({ ...call, secret_ok: call.secret === turnstileSecret, content_type: req.headers["content-type"] });
      if (turnstileCalls.length > 1000) turnstileCalls.shift();
      const token = String(call.response || "");
      let answer = { success: false, "error-codes": ["invalid-input-response"] };
      if (call.secret !== turnstileSecret) answer = { success: false, "error-codes": ["invalid-input-secret"] };
      else if (token.startsWith("pass:")) answer = { success: true, hostname: token.slice(5), "error-codes": [] };
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(answer));
    });
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
    const resetAfter = Number(req.headers["x-test-reset-after-bytes"] || 0);
    if (resetAfter > 0) {
      // Fault tests: the origin goes away in the middle of its body.
      const headers = { "content-type": "text/plain", "x-origin": "demo" };
      const declared = Number(req.headers["x-test-reset-declared-length"] || 0);
      if (declared > 0) headers["content-length"] = String(declared);
      res.writeHead(200, headers);
      res.write("x".repeat(resetAfter));
      setTimeout(() => res.socket.destroy(), 300);
      return;
    }
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
