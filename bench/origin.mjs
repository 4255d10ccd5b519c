// The bench origin: as fast as Node gets. Drains the request body and
// answers 200 with a small fixed JSON body. Keeps no state, logs nothing.
// PORT from the environment; listens on 127.0.0.1 only.
import http from "node:http";

const body = Buffer.from('{"ok":true,"model":"bench","choices":[{"message":"hi"}]}\n');
const headers = { "content-type": "application/json", "content-length": String(body.length) };

const server = http.createServer((req, res) => {
  req.on("data", () => {});
  req.on("end", () => {
    res.writeHead(200, headers);
    res.end(body);
  });
});
server.keepAliveTimeout = 60_000;
server.listen(Number(process.env.PORT || 8788), "127.0.0.1");
