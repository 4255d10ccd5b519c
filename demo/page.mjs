// Serves demo/widget.html on one or more ports (each port is its own
// browser origin):  PORTS=8789,8790 node demo/page.mjs
import http from "node:http";
import { readFileSync } from "node:fs";

const html = readFileSync(new URL("./widget.html", import.meta.url));
const ports = (process.env.PORTS || process.env.PORT || "8789").split(",").map(Number);

for (const port of ports) {
  http
    .createServer((req, res) => {
      if (req.url === "/favicon.ico") {
        res.writeHead(204);
        res.end();
        return;
      }
      res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
      res.end(html);
    })
    .listen(port, "127.0.0.1", () => console.log(`demo page on http://127.0.0.1:${port}/`));
}
