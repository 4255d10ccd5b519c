// The soak's load driver and report (started by soak/run.sh, which starts
// the origin and `wrangler dev` and passes their ports, wrangler's process
// group and log). Node only, no dependencies.
//
//   node soak/driver.mjs --port P --origin-port O --pgid G --log wrangler.log \
//     --facts facts --seconds 600 --rate 60 --out soak/results.md
//   (admin token in SOAK_ADMIN_TOKEN)
//
// 1. Provisions org `org_soak` (BAA active), user `user_soak` (operator),
//    and the soak's keys through the admin API: strict and leased secret
//    keys (half of them bound to the user), two widget keys for
//    https://shop.soak.example and https://*.soak.example — "widget" with
//    the policy's per-visitor limit (widget_ip_rate_limits, 10/min) and
//    "widget-own" with its own visitor_rate_limits (4/min) — and a control
//    key holding `control:read`. Every key has a minute limit far above the
//    load, so a 429 is expected only from a per-visitor limit.
// 2. Sends a fixed mix at a fixed rate (open loop: requests are issued on
//    schedule, at most --inflight at once; when that many are pending the
//    schedule lags, and the lag is reported). One cycle of 20 slots:
//      5 strict key      POST /v1/ai/chat                           200
//      5 leased key      POST /v1/ai/chat                           200
//      4 widget keys     POST /v1/ai/chat, Origin + CF-Connecting-IP 200
//        New visitors: each sends 2 requests to one key and is never
//        reused — IPv4 (198.18.0.0/16 for "widget", 198.19.0.0/16 for
//        "widget-own"; every 4th IPv4 visitor's second request in its
//        IPv4-mapped IPv6 form, the same visitor) or, every 4th visitor, an
//        IPv6 /48 whose 2 requests come from 2 different /64s of it (a
//        visitor is an IPv6 /48). Of every 20 widget requests: 13 new
//        visitors of "widget" (2 from the wildcard origin), 5 new visitors
//        of "widget-own", 1 hot IPv4 visitor of "widget" (one address,
//        ~36/min against its 10/min) and 1 hot /48 of "widget-own" (every
//        request from another /64 of one /48, ~36/min against 4/min):
//        hot visitors get 200 or 429 RATE_LIMITED, and their admissions
//        are checked against the per-visitor limit's sliding window.
//      1 preflight       OPTIONS /v1/ai/chat (widget origin)        204
//      3 invalid         malformed, unknown (well-formed, valid checksum),
//                        revoked (a key revoked by the control calls),
//                        missing, a secret key with Origin, the widget key
//                        from another origin              401 / 403
//      2 control         with the control key, one chain, in order: list,
//                        mint, use the minted key, list, audit, revoke,
//                        use the revoked key, list, usage, list
// 3. Samples the RSS (and CPU) of every process in wrangler's process group
//    from /proc every 10 s: the workerd running keyward (with its KV and
//    Durable Objects), wrangler's proxy workerd, wrangler's Node process;
//    reads the soak keys' guards (GET /admin/orgs/org_soak/api_keys/{id}/guard)
//    every minute; scans the wrangler log; writes the report.
//
// Every proxied answer is checked against what the origin echoed: the
// identity keyward sent (key id, kind, user, resource) and its signature
// (HMAC with SOAK_SIGNING_SECRET, README "Origin: verifying the signature").
//
// Exit code: 0 no findings, 1 findings (5xx, unexpected status or error
// code, a wrong identity or signature, transport errors, a hot visitor
// admitted beyond its limit, RSS growth over 10% after warm-up, workerd
// restarted, warnings or errors in the wrangler log), 2 the driver failed.
import fs from "node:fs";
import http from "node:http";
import crypto from "node:crypto";

// --- arguments
const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const PORT = Number(args.port);
const ORIGIN_PORT = Number(args["origin-port"]);
const PGID = Number(args.pgid);
const SECONDS = Number(args.seconds ?? process.env.SOAK_SECONDS ?? 600);
const RATE = Number(args.rate ?? process.env.SOAK_RATE ?? 60);
const WARMUP = Number(process.env.SOAK_WARMUP ?? Math.min(120, Math.floor(SECONDS / 5)));
const MAX_INFLIGHT = Number(process.env.SOAK_INFLIGHT ?? 64);
const ADMIN = process.env.SOAK_ADMIN_TOKEN;
const SIGNING_SECRET = process.env.SOAK_SIGNING_SECRET ?? "";
const OUT = args.out ?? "soak/results.md";
const LOG = args.log;
const TMP = args.tmp;
const INSPECTOR = Number(args.inspector ?? 0);
// "wrangler" (wrangler dev: its proxy workerd in front of keyward's) or
// "workerd" (bench/serve.mjs: keyward's workerd alone, through Miniflare).
const RUNTIME = args.runtime ?? "wrangler";
if (!PORT || !ADMIN || !PGID || !LOG) {
  console.error("usage: SOAK_ADMIN_TOKEN=... node soak/driver.mjs --port P --origin-port O --pgid G --log FILE [--facts F] [--seconds N] [--rate R] [--out FILE]");
  process.exit(2);
}
const facts = Object.fromEntries(
  (args.facts && fs.existsSync(args.facts) ? fs.readFileSync(args.facts, "utf8") : "")
    .split("\n")
    .filter((l) => l.includes("="))
    .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
);

const ORG = "org_soak";
const USER = "user_soak";
const SHOP = "https://shop.soak.example";
const BLOG = "https://blog.soak.example"; // matched by the wildcard origin
const EVIL = "https://shop.soak.example.evil.test";
const HIGH = [{ name: "minute", limit: 1_000_000, window_seconds: 60 }];
const VISITOR_LIMIT = 10; // policy/policy.json widget_ip_rate_limits: 10 per 60 s
const OWN_VISITOR_LIMIT = 4; // "widget-own"'s visitor_rate_limits: 4 per 60 s (≤ 1/4 of the key's limit)
const T0 = Date.now();
const now = () => (Date.now() - T0) / 1000;
const log = (m) => process.stderr.write(`soak [${now().toFixed(0).padStart(4)}s] ${m}\n`);

// --- HTTP
const agent = new http.Agent({ keepAlive: true, maxSockets: MAX_INFLIGHT });
function request(method, path, headers = {}, body) {
  return new Promise((resolve) => {
    const t = process.hrtime.bigint();
    const h = { ...headers };
    let payload;
    if (body !== undefined) {
      payload = Buffer.from(typeof body === "string" ? body : JSON.stringify(body));
      h["content-length"] = payload.length;
    }
    const req = http.request({ host: "127.0.0.1", port: PORT, method, path, headers: h, agent, timeout: 30_000 }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        const ms = Number(process.hrtime.bigint() - t) / 1e6;
        resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString("utf8"), ms });
      });
      res.on("error", (e) => resolve({ status: 0, error: `response: ${e.code ?? e.message}`, ms: Number(process.hrtime.bigint() - t) / 1e6 }));
    });
    req.on("timeout", () => req.destroy(new Error("timeout after 30 s")));
    req.on("error", (e) => resolve({ status: 0, error: e.code ?? e.message, ms: Number(process.hrtime.bigint() - t) / 1e6 }));
    if (payload) req.write(payload);
    req.end();
  });
}
const adminHeaders = { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" };
async function admin(method, path, body) {
  const r = await request(method, path, adminHeaders, body);
  let json = null;
  try {
    json = JSON.parse(r.body);
  } catch {}
  return { ...r, json };
}
async function mustAdmin(method, path, body, want) {
  const r = await admin(method, path, body);
  if (r.status !== want) throw new Error(`${method} ${path}: expected ${want}, got ${r.status} ${r.error ?? r.body}`);
  return r.json;
}
function errorCode(r) {
  if (!r.body || !(r.headers?.["content-type"] ?? "").includes("json")) return "";
  try {
    return JSON.parse(r.body)?.error?.code ?? "";
  } catch {
    return "";
  }
}

// --- keys that exist nowhere: well-formed, with a valid CRC32 checksum.
const B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const CRC = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(s) {
  let c = 0xffffffff;
  for (const b of Buffer.from(s)) c = CRC[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
function unknownKey() {
  const random = Array.from(crypto.randomBytes(30), (b) => B62[b % 62]).join("");
  let v = crc32(random);
  let sum = "";
  for (let i = 0; i < 6; i++) {
    sum = B62[v % 62] + sum;
    v = Math.floor(v / 62);
  }
  return `kw_live_${random}${sum}`;
}
const redact = (k) => (typeof k === "string" && k.length > 16 ? `${k.slice(0, k.indexOf("_", 3) + 1)}…${k.slice(-4)}` : k);

// --- process memory and CPU, from /proc
const CLK_TCK = 100;
function groupProcesses() {
  const out = [];
  for (const d of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, "utf8");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(f[2]) !== PGID) continue;
      const cmd = fs.readFileSync(`/proc/${d}/cmdline`, "utf8").split("\0").join(" ");
      let role;
      if (RUNTIME === "wrangler" && cmd.includes("workerd") && cmd.includes(` serve `) && cmd.includes(`entry=127.0.0.1:${PORT} `)) role = "proxy";
      else if (cmd.includes("workerd") && cmd.includes(" serve ")) role = "worker";
      else if (cmd.includes("wrangler-dist/cli.js") || cmd.includes("bench/serve.mjs")) role = "wrangler";
      else continue;
      const status = fs.readFileSync(`/proc/${d}/status`, "utf8");
      const kb = (k) => Number((status.match(new RegExp(`^${k}:\\s+(\\d+)`, "m")) ?? [])[1] ?? 0);
      out.push({ pid: Number(d), role, rssKb: kb("VmRSS"), anonKb: kb("RssAnon"), ticks: Number(f[11]) + Number(f[12]), cmd: cmd.slice(0, 400) });
    } catch {}
  }
  return out;
}
const samples = []; // {t, label, procs}
function sample(label) {
  const procs = groupProcesses();
  let loadavg = NaN;
  try {
    loadavg = Number(fs.readFileSync("/proc/loadavg", "utf8").split(" ")[0]);
  } catch {}
  samples.push({ t: now(), label, procs, loadavg });
  return procs;
}
const byRole = (procs, role) => procs.filter((p) => p.role === role);
const mib = (kb) => (kb / 1024).toFixed(1);

// --- keyward's isolate through wrangler's inspector (Chrome DevTools
// protocol; needs a WebSocket client: Node ≥ 22, or Node 20 with
// --experimental-websocket, which run.sh passes when it works). Used for
// the JS heap's size once a minute and, after the load, one forced garbage
// collection: memory a collection gives back was not leaked.
//
// The session also matters for memory: wrangler's inspector proxy (a
// Durable Object in wrangler's own workerd) keeps every message of the
// worker's inspector — four Network.* events per subrequest, i.e. per
// proxied request — in a buffer it drains only into a connected DevTools
// client. Without one, that workerd grows by the traffic (hundreds of MiB
// in 10 minutes); with this session attached, as with a developer's
// DevTools open, the buffer drains.
async function cdpOpen() {
  if (!INSPECTOR || typeof WebSocket === "undefined") return null;
  return new Promise((resolve) => {
    let ws;
    try {
      // wrangler's inspector proxy wants an Origin it allows (localhost).
      ws = new WebSocket(`ws://127.0.0.1:${INSPECTOR}/ws`, { headers: { origin: "http://127.0.0.1" } });
    } catch {
      return resolve(null);
    }
    const pending = new Map();
    let id = 0;
    const t = setTimeout(() => {
      resolve(null);
      try {
        ws.close();
      } catch {}
    }, 5000);
    ws.onmessage = (ev) => {
      let m;
      try {
        m = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (m.id && pending.has(m.id)) {
        pending.get(m.id)(m);
        pending.delete(m.id);
      }
    };
    ws.onerror = () => {
      clearTimeout(t);
      resolve(null);
    };
    ws.onclose = () => {
      for (const f of pending.values()) f({ error: { message: "closed" } });
      pending.clear();
    };
    ws.onopen = () => {
      clearTimeout(t);
      resolve({
        call(method, params = {}, ms = 15000) {
          return new Promise((res) => {
            const n = ++id;
            const timer = setTimeout(() => {
              pending.delete(n);
              res({ error: { message: "timeout" } });
            }, ms);
            pending.set(n, (m) => {
              clearTimeout(timer);
              res(m);
            });
            try {
              ws.send(JSON.stringify({ id: n, method, params }));
            } catch (e) {
              pending.delete(n);
              clearTimeout(timer);
              res({ error: { message: String(e) } });
            }
          });
        },
        close() {
          try {
            ws.close();
          } catch {}
        },
      });
    };
  });
}
let cdp = null;
const heapSamples = []; // {t, label, used, total, backing}
async function heap(label) {
  if (!cdp) return;
  const m = await cdp.call("Runtime.getHeapUsage");
  if (m.result) heapSamples.push({ t: now(), label, used: m.result.usedSize, total: m.result.totalSize, backing: m.result.backingStorageSize, embedder: m.result.embedderHeapUsedSize });
  else heapSamples.push({ t: now(), label, error: m.error?.message ?? "?" });
}

// --- the load
const stats = new Map(); // `${cls}|${op}|${status}|${code}` -> {count, expected}
const latency = new Map(); // cls -> [ms]
const minutes = []; // per minute: {sent, done, s2, s4, s5, err, lat: []}
const unexpected = []; // first ones, in full
const unexpectedBySig = new Map();
let sent = 0;
let done = 0;
let inflight = 0;
let lagged = 0; // slots issued more than 100 ms after their time (the in-flight cap was reached)
let maxLagS = 0;
let LOAD_T0 = 0; // now() when the load started
const lt = () => now() - LOAD_T0;
let maxInflightSeen = 0;
const phaseDone = { warmup: 0, steady: 0 };
const phaseSent = { warmup: 0, steady: 0 };

function minuteRow(t) {
  const m = Math.min(Math.floor(t / 60), Math.ceil(SECONDS / 60) - 1);
  while (minutes.length <= m) minutes.push({ sent: 0, done: 0, s2: 0, s4: 0, s429: 0, s5: 0, err: 0, lat: [] });
  return minutes[m];
}

function record(cls, op, req, r, expect) {
  const t = lt();
  done++;
  const phase = t < WARMUP ? "warmup" : "steady";
  phaseDone[phase]++;
  const row = minuteRow(t);
  row.done++;
  row.lat.push(r.ms);
  if (!latency.has(cls)) latency.set(cls, []);
  latency.get(cls).push(r.ms);
  const code = r.status === 0 ? r.error : errorCode(r);
  if (r.status === 0) row.err++;
  else if (r.status >= 500) row.s5++;
  else if (r.status === 429) row.s429++;
  else if (r.status >= 400) row.s4++;
  else row.s2++;
  const problem = expect(r, code);
  const key = `${cls}|${op}|${r.status}|${code}`;
  const s = stats.get(key) ?? { count: 0, expected: !problem };
  s.count++;
  stats.set(key, s);
  if (problem) {
    const sig = `${cls} ${op} → ${r.status} ${code}`;
    unexpectedBySig.set(sig, (unexpectedBySig.get(sig) ?? 0) + 1);
    if (unexpected.length < 25) {
      unexpected.push({
        t: t.toFixed(1),
        cls,
        op,
        problem,
        request: {
          method: req.method,
          path: req.path,
          headers: Object.fromEntries(
            Object.entries(req.headers).map(([k, v]) => [k, /authorization|x-api-key/i.test(k) ? v.replace(/kw_\S+/, redact) : v]),
          ),
          body: req.body === undefined ? undefined : typeof req.body === "string" ? req.body : JSON.stringify(req.body),
        },
        status: r.status,
        request_id: r.headers?.["x-request-id"] ?? null,
        response: r.status === 0 ? r.error : (r.body ?? "").slice(0, 600),
      });
    }
  }
}

async function send(cls, op, req, expect) {
  sent++;
  const t = lt();
  phaseSent[t < WARMUP ? "warmup" : "steady"]++;
  minuteRow(t).sent++;
  inflight++;
  maxInflightSeen = Math.max(maxInflightSeen, inflight);
  try {
    const r = await request(req.method, req.path, req.headers, req.body);
    record(cls, op, req, r, expect);
    return r;
  } finally {
    inflight--;
  }
}

// Expectations: return null when the response is as expected, else why not.
const want = (status, code = "") => (r, c) =>
  r.status === status && (code === "" || c === code) ? null : `expected ${status}${code ? ` ${code}` : ""}`;
// A proxied answer: 200 from the demo origin, whose echo shows the identity
// keyward sent for `key` and a valid signature over it.
function signatureOk(h) {
  const g = (n) => h[n] ?? "";
  const msg = ["keyward-v1", g("x-keyward-timestamp"), g("x-keyward-method"), g("path"), g("query"), g("x-request-id"), g("x-keyward-org"),
    g("x-keyward-key-id"), g("x-keyward-key-kind"), g("x-keyward-scopes"), g("x-keyward-user"), g("x-keyward-resource")].join("\n");
  const want = "v1=" + crypto.createHmac("sha256", SIGNING_SECRET).update(msg).digest("hex");
  return g("x-keyward-signature") === want;
}
const proxied = (key) => (r) => {
  if (r.status !== 200) return "expected 200";
  if (r.headers["x-origin"] !== "demo") return "200 not from the origin";
  let echo;
  try {
    echo = JSON.parse(r.body).echo;
  } catch {
    return "origin echo unreadable";
  }
  const h = echo.headers ?? {};
  if (h["x-keyward-org"] !== ORG || h["x-keyward-key-id"] !== key.id) return "wrong org or key id at the origin";
  if (h["x-keyward-key-kind"] !== key.kind) return "wrong key kind at the origin";
  if ((h["x-keyward-user"] ?? "") !== (key.bound ? USER : "")) return "wrong user at the origin";
  if ((h["x-keyward-resource"] ?? "") !== (key.resource ?? "")) return "wrong resource at the origin";
  if (h["x-request-id"] !== r.headers["x-request-id"]) return "X-Request-Id differs between client and origin";
  if (h.authorization || h["x-api-key"]) return "the key reached the origin";
  if (SIGNING_SECRET && !signatureOk({ ...h, path: echo.path, query: echo.query })) return "origin signature does not verify";
  return null;
};
const chatBody = (n) => ({ messages: [{ role: "user", content: `soak ${n}` }] });

let K; // provisioned keys
const revokedKeys = [];
let widgetSeq = 0;
let invalidSeq = 0;
let chatSeq = 0;

function chat(key, extra = {}) {
  return {
    method: "POST",
    path: "/v1/ai/chat",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json", ...extra },
    body: chatBody(chatSeq++),
  };
}
// The address of the `n`th request of new visitors of key `k` (0: "widget",
// 1: "widget-own"), and the visitor it stands for. Each visitor sends 2
// requests; every 4th is an IPv6 /48 (its 2 requests from 2 /64s of it),
// the others IPv4 (every 4th of them sends its second request as the
// IPv4-mapped IPv6 address: the same visitor).
function visitorAddress(n, k) {
  const v = Math.floor(n / 2);
  const second = n % 2 === 1;
  if (v % 4 === 3) {
    const w = Math.floor(v / 4) & 0xffff;
    const p48 = k === 0 ? `2001:db8:${w.toString(16)}` : `3fff:0:${w.toString(16)}`;
    return { ip: `${p48}:${second ? "8001" : "1"}::${second ? "a" : "1"}`, visitor: `${p48}::/48` };
  }
  const i = v & 0xffff;
  const ip4 = `198.${18 + k}.${i >> 8}.${i & 0xff}`;
  return { ip: second && v % 16 === 1 ? `::ffff:${ip4}` : ip4, visitor: ip4 };
}
const distinctVisitors = [new Set(), new Set()];
// The hot visitors: every admission [sent, answered] in load seconds.
const HOT = [
  { key: 0, name: "widget: hot IPv4 visitor", limit: VISITOR_LIMIT, admitted: [], refused: 0, addresses: new Set() },
  { key: 1, name: "widget-own: hot IPv6 /48", limit: OWN_VISITOR_LIMIT, admitted: [], refused: 0, addresses: new Set() },
];
function slotHot(h) {
  const key = h.key === 0 ? K.widget : K.widgetOwn;
  const ip = h.key === 0 ? "198.51.100.77" : `3fff:0:ffff:${crypto.randomBytes(2).toString("hex")}:${crypto.randomBytes(2).toString("hex")}::1`;
  h.addresses.add(ip);
  const t0 = lt();
  return send("widget", h.key === 0 ? "chat (hot visitor, IPv4)" : "chat (hot visitor, one /48, new /64 each time)", chat(key.plaintext, { origin: SHOP, "cf-connecting-ip": ip }), (r, c) => {
    if (r.status === 200) {
      h.admitted.push([t0, lt()]);
      return proxied(key)(r) ?? (r.headers["access-control-allow-origin"] === SHOP ? null : "no Access-Control-Allow-Origin");
    }
    if (r.status !== 429 || c !== "RATE_LIMITED") return "expected 200 or 429 RATE_LIMITED";
    h.refused++;
    if (r.headers["access-control-allow-origin"] !== SHOP) return "429 without Access-Control-Allow-Origin";
    if (r.headers["ratelimit-limit"] !== String(h.limit)) return `429 with RateLimit-Limit ${r.headers["ratelimit-limit"]}, not the per-visitor ${h.limit}`;
    if (!/^\d+$/.test(r.headers["retry-after"] ?? "")) return "429 without Retry-After";
    return null;
  });
}
const visitorSeqs = [0, 0];
function slotNewVisitor(k, origin) {
  const key = k === 0 ? K.widget : K.widgetOwn;
  const { ip, visitor } = visitorAddress(visitorSeqs[k]++, k);
  distinctVisitors[k].add(visitor);
  const op = `chat (new visitors${k === 1 ? ", own visitor limits" : ""}${origin === SHOP ? "" : ", wildcard origin"})`;
  return send("widget", op, chat(key.plaintext, { origin, "cf-connecting-ip": ip }), (r) =>
    proxied(key)(r) ?? (r.headers["access-control-allow-origin"] === origin ? null : "no Access-Control-Allow-Origin"),
  );
}
function slotStrict(i) {
  const key = K.strict[i % K.strict.length];
  return send("strict", key.bound ? "chat (user-bound)" : "chat", chat(key.plaintext), proxied(key));
}
function slotLeased(i) {
  const key = K.leased[i % K.leased.length];
  return send("leased", key.bound ? "chat (user-bound)" : "chat", chat(key.plaintext), proxied(key));
}
function slotWidget() {
  const n = widgetSeq++ % 20;
  if (n === 19) return slotHot(HOT[0]);
  if (n === 9) return slotHot(HOT[1]);
  if (n % 5 === 2) return slotNewVisitor(1, SHOP);
  if (n === 4 || n === 14) return slotNewVisitor(0, BLOG);
  return slotNewVisitor(0, SHOP);
}
function slotPreflight() {
  return send(
    "widget",
    "preflight",
    { method: "OPTIONS", path: "/v1/ai/chat", headers: { origin: SHOP, "access-control-request-method": "POST", "access-control-request-headers": "authorization, content-type" } },
    want(204),
  );
}
function slotInvalid() {
  const n = invalidSeq++ % 6;
  switch (n) {
    case 0:
      return send("invalid", "malformed key", chat("kw_live_this-is-not-a-key"), want(401, "INVALID_API_KEY"));
    case 1:
      return send("invalid", "unknown key", chat(unknownKey()), want(401, "INVALID_API_KEY"));
    case 2: {
      const k = revokedKeys.length ? revokedKeys[Math.floor(Math.random() * revokedKeys.length)] : unknownKey();
      return send("invalid", revokedKeys.length ? "revoked key" : "unknown key", chat(k), want(401, "INVALID_API_KEY"));
    }
    case 3: {
      const req = chat("x");
      delete req.headers.authorization;
      return send("invalid", "missing key", req, want(401, "INVALID_API_KEY"));
    }
    case 4:
      return send("invalid", "secret key with Origin", chat(K.strict[0].plaintext, { origin: SHOP }), want(403, "ORIGIN_NOT_ALLOWED"));
    default:
      return send("invalid", "widget key, other origin", chat(K.widget.plaintext, { origin: EVIL, "cf-connecting-ip": "198.51.100.99" }), want(403, "ORIGIN_NOT_ALLOWED"));
  }
}

// The control chain: one op per control slot, in order, never two at once
// (a use follows its mint, a revoke its use). Slots that arrive while an op
// runs queue up.
// SOAK_MINT=0 leaves minting out (a diagnostic: every minted key is a
// new guard, a Durable Object with a database of its own).
const MINT = process.env.SOAK_MINT !== "0";
const CHAIN = MINT
  ? ["list", "mint", "use minted", "list", "audit", "revoke", "use revoked", "list", "usage", "list"]
  : ["list", "audit", "list", "usage", "list"];
let chainPos = 0;
let chainPending = 0;
let chainRunning = false;
let minted = null;
let mintedCount = 0;
const controlHeaders = () => ({ authorization: `Bearer ${K.control.plaintext}`, "content-type": "application/json" });
async function controlOp() {
  const op = CHAIN[chainPos++ % CHAIN.length];
  switch (op) {
    case "list":
      return send("control", "GET /v1/api_keys", { method: "GET", path: "/v1/api_keys?limit=20", headers: controlHeaders() }, (r) =>
        r.status === 200 && r.body.includes('"has_more"') ? null : "expected 200 with meta",
      );
    case "audit":
      return send("control", "GET /v1/audit", { method: "GET", path: "/v1/audit?limit=20", headers: controlHeaders() }, want(200));
    case "usage":
      return send("control", "GET /v1/usage", { method: "GET", path: "/v1/usage", headers: controlHeaders() }, want(200));
    case "mint": {
      const r = await send(
        "control",
        "POST /v1/api_keys (mint)",
        { method: "POST", path: "/v1/api_keys", headers: controlHeaders(), body: { name: `soak minted ${mintedCount}`, scopes: ["ai:chat"] } },
        want(201),
      );
      if (r.status === 201) {
        const d = JSON.parse(r.body).data;
        minted = { plaintext: d.plaintext, id: d.id, kind: "secret" };
        mintedCount++;
      } else minted = null;
      return r;
    }
    case "use minted":
      if (!minted) return;
      return send("control", "minted key: chat", chat(minted.plaintext), proxied(minted));
    case "revoke": {
      if (!minted) return;
      const r = await send("control", "DELETE /v1/api_keys/{id} (revoke)", { method: "DELETE", path: `/v1/api_keys/${minted.id}`, headers: controlHeaders() }, want(200));
      // Not revoked (the call failed): revoke again in the next control slot
      // (at most 3 times) rather than expect a 401 from a live key.
      if (r.status !== 200 && (minted.revokeTries = (minted.revokeTries ?? 0) + 1) < 3) chainPos--;
      else if (r.status !== 200) minted = null;
      return r;
    }
    case "use revoked": {
      if (!minted) return;
      const k = minted.plaintext;
      minted = null;
      revokedKeys.push(k);
      if (revokedKeys.length > 200) revokedKeys.shift();
      return send("control", "revoked key: chat", chat(k), want(401, "INVALID_API_KEY"));
    }
  }
}
async function slotControl() {
  chainPending++;
  if (chainRunning) return;
  chainRunning = true;
  while (chainPending > 0) {
    chainPending--;
    await controlOp();
  }
  chainRunning = false;
}

const CYCLE = ["S", "L", "W", "S", "L", "I", "W", "S", "L", "C", "W", "S", "L", "I", "W", "P", "S", "L", "I", "C"];
let slot = 0;
let sCount = 0;
let lCount = 0;
function issueSlot() {
  const s = CYCLE[slot++ % CYCLE.length];
  switch (s) {
    case "S":
      return slotStrict(sCount++);
    case "L":
      return slotLeased(lCount++);
    case "W":
      return slotWidget();
    case "P":
      return slotPreflight();
    case "I":
      return slotInvalid();
    case "C":
      return slotControl();
  }
}

// --- guard stats of the soak's keys
const guardSnapshots = []; // {t, label, rows: {name: data|error}}
async function guards(label) {
  const rows = {};
  for (const k of [...K.strict, ...K.leased, K.widget, K.widgetOwn, K.control]) {
    const r = await admin("GET", `/admin/orgs/${ORG}/api_keys/${k.id}/guard`);
    rows[k.name] = r.status === 200 ? r.json.data : { error: `${r.status} ${r.error ?? r.body.slice(0, 200)}` };
  }
  guardSnapshots.push({ t: now(), label, rows });
}

// --- the wrangler log
function scanLog() {
  const text = fs.existsSync(LOG) ? fs.readFileSync(LOG, "utf8") : "";
  const lines = text.replace(/\x1b\[[0-9;]*m/g, "").split("\n");
  const requests = new Map(); // "METHOD status" -> count
  const messages = new Map(); // normalized -> {count, level, first}
  let ready = false;
  let last = null;
  const norm = (l) =>
    l
      .replace(/req_[0-9a-f]{24}/g, "req_…")
      .replace(/\b[0-9A-HJKMNP-TV-Z]{26}\b/g, "<ulid>")
      .replace(/kw_(live|pub)_[A-Za-z0-9]+/g, "kw_$1_…")
      .replace(/\b[0-9a-f]{32,}\b/g, "<hex>")
      .replace(/\(\d+ms\)/g, "(…ms)")
      .replace(/\d{4}-\d\d-\d\dT[\d:.]+Z/g, "<time>")
      .trim();
  for (const raw of lines) {
    const l = raw.trimEnd();
    if (!l) continue;
    const m = /^\[wrangler:info\] (\S+) (\S+) (\d{3}) .*\(\d+ms\)$/.exec(l);
    if (m) {
      const k = `${m[1]} ${m[3]}`;
      requests.set(k, (requests.get(k) ?? 0) + 1);
      last = null;
      continue;
    }
    if (/Ready on http/.test(l)) ready = true;
    // Continuation lines (stack frames, indented detail) belong to the last message.
    if (/^\s+(at\s|\S)/.test(raw) && last) {
      if (last.detail.length < 6) last.detail.push(l.trim());
      continue;
    }
    const level = /\[wrangler:err|✘|\bERROR\b|\berror\b|Error\b|panic|Uncaught|exception/i.test(l)
      ? "error"
      : /\[wrangler:warn|▲|\bWARN(ING)?\b|warn/i.test(l)
        ? "warning"
        : "info";
    const key = norm(l);
    const e = messages.get(key) ?? { count: 0, level, ready, detail: [] };
    e.count++;
    messages.set(key, e);
    last = e.count === 1 ? e : null;
  }
  return { requests, messages };
}

// --- percentiles
function pct(arr, p) {
  if (!arr.length) return NaN;
  const a = Float64Array.from(arr).sort();
  return a[Math.min(a.length - 1, Math.floor((p / 100) * a.length))];
}
const f1 = (x) => (Number.isFinite(x) ? x.toFixed(1) : "–");

const NO_FINDINGS =
  "**No findings**: no 5xx, every status and error code as expected, every proxied request with the right identity and a valid signature at the origin, no transport error, hot visitors held to their per-visitor limits, workerd's RSS flat within 10% after warm-up, no warning or error in the wrangler log after start.";

// --- main
async function main() {
  const procs0 = sample("start (idle, before provisioning)");
  if (!byRole(procs0, "worker").length) throw new Error(`no workerd running keyward in process group ${PGID}`);
  log(`workerd (keyward) pid ${byRole(procs0, "worker").map((p) => p.pid)}, proxy pid ${byRole(procs0, "proxy").map((p) => p.pid)}`);

  // Provisioning.
  const tProv = Date.now();
  // The Public Suffix List, as `make dev` and the tests load it: a widget
  // key's wildcard origin is checked against it (without one: 503). A
  // build from before the list existed has no such route (404).
  const PSL = new URL("../data/public_suffix_list.dat", import.meta.url);
  if (fs.existsSync(PSL)) {
    const r = await request("PUT", "/admin/public_suffix_list", { authorization: `Bearer ${ADMIN}`, "content-type": "text/plain" }, fs.readFileSync(PSL, "utf8"));
    if (r.status === 200) log(`public suffix list loaded: ${r.body.slice(0, 160)}`);
    else if (r.status === 404) log("this build has no /admin/public_suffix_list: list not loaded");
    else throw new Error(`PUT /admin/public_suffix_list: expected 200, got ${r.status} ${r.error ?? r.body.slice(0, 300)}`);
  }
  await mustAdmin("PUT", `/admin/orgs/${ORG}`, { name: "Soak Org", baa_active: true }, 200);
  await mustAdmin("PUT", `/admin/orgs/${ORG}/users/${USER}`, { role: "operator" }, 200);
  const mk = async (name, body) => {
    const d = (await mustAdmin("POST", `/admin/orgs/${ORG}/api_keys`, { name, rate_limits: HIGH, ...body }, 201)).data;
    return { name, id: d.id, plaintext: d.plaintext, bound: !!body.user_id, kind: d.kind, resource: d.resource_id ?? "" };
  };
  K = { strict: [], leased: [] };
  for (let i = 0; i < 4; i++) {
    const bound = i % 2 === 1 ? { user_id: USER } : {};
    K.strict.push(await mk(`strict-${i}${bound.user_id ? "-user" : ""}`, { scopes: ["ai:chat"], consistency: "strict", ...bound }));
    K.leased.push(await mk(`leased-${i}${bound.user_id ? "-user" : ""}`, { scopes: ["ai:chat"], consistency: "leased", ...bound }));
  }
  K.widget = await mk("widget", {
    kind: "widget",
    scopes: ["ai:chat"],
    allowed_origins: [SHOP, "https://*.soak.example"],
    resource_id: "bot_soak",
  });
  K.widgetOwn = await mk("widget-own", {
    kind: "widget",
    scopes: ["ai:chat"],
    allowed_origins: [SHOP, "https://*.soak.example"],
    visitor_rate_limits: [{ name: "visitor_minute", limit: OWN_VISITOR_LIMIT, window_seconds: 60 }],
  });
  K.control = await mk("control", { scopes: ["ai:chat", "control:read"], consistency: "strict" });
  const provisionS = (Date.now() - tProv) / 1000;
  await guards("after provisioning");
  sample("after provisioning");
  log(`provisioned ${K.strict.length} strict, ${K.leased.length} leased, 2 widget, 1 control key in ${provisionS.toFixed(1)} s`);

  cdp = await cdpOpen();
  log(cdp ? `inspector attached on :${INSPECTOR}` : "no inspector session (no WebSocket client, or no --inspector): JS heap not sampled");
  await heap("after provisioning");

  // Load.
  const loadStart = Date.now();
  const tLoad0 = now();
  LOAD_T0 = tLoad0;
  let nextSample = 10;
  let nextGuard = 60;
  let nextProgress = 60;
  await new Promise((resolve) => {
    const tick = setInterval(async () => {
      const el = (Date.now() - loadStart) / 1000;
      if (el >= SECONDS) {
        clearInterval(tick);
        resolve();
        return;
      }
      while (slot < Math.floor(el * RATE) && inflight < MAX_INFLIGHT) {
        const late = el - slot / RATE;
        if (late > 0.1) lagged++;
        maxLagS = Math.max(maxLagS, late);
        issueSlot();
      }
      if (el >= nextSample) {
        nextSample += 10;
        sample(Math.round(el) % 60 === 0 ? `minute ${Math.round(el) / 60}` : "");
      }
      if (el >= nextGuard) {
        nextGuard += 60;
        guards(`minute ${Math.round(el / 60)}`).catch((e) => log(`guard stats failed: ${e.message}`));
        heap(`minute ${Math.round(el / 60)}`).catch(() => {});
      }
      if (el >= nextProgress) {
        nextProgress += 60;
        const w = byRole(samples.at(-1).procs, "worker")[0];
        log(`sent ${sent}, done ${done}, in flight ${inflight}, late ${lagged}, workerd RSS ${w ? mib(w.rssKb) : "?"} MiB`);
      }
    }, 5);
  });
  const loadEnd = now();
  // Drain (at most 35 s: the request timeout is 30 s).
  const drainStart = Date.now();
  while ((inflight > 0 || chainRunning) && Date.now() - drainStart < 35_000) await new Promise((r) => setTimeout(r, 50));
  const drained = inflight === 0;
  sample(`end of load (${+(SECONDS / 60).toFixed(2)} min)`);
  await new Promise((r) => setTimeout(r, 5000));
  await guards("end (5 s after the load)");
  const procsEnd = sample("end (5 s after the load)");
  await heap("end (5 s after the load)");
  let gcNote = "";
  if (cdp) cdp.close();

  const findings = [];
  if (!drained) findings.push(`${inflight} requests still in flight 35 s after the load stopped`);

  // --- report
  const logScan = scanLog();
  const L = [];
  const p = (s = "") => L.push(s);
  p(`# keyward soak — ${facts.date ?? new Date().toISOString()}`);
  p();
  p(
    RUNTIME === "workerd"
      ? `\`SOAK_RUNTIME=workerd ./soak/run.sh\` (soak/run.sh, soak/driver.mjs): ${SECONDS} s of steady mixed load at ${RATE} req/s against keyward on workerd through Miniflare's API (bench/serve.mjs: the same bundle, local KV and Durable Objects, vars and fresh state as under \`wrangler dev\`, without wrangler's proxy worker and inspector), demo origin.`
      : `\`make soak\` (soak/run.sh, soak/driver.mjs): ${SECONDS} s of steady mixed load at ${RATE} req/s against keyward on \`wrangler dev\` (local KV and Durable Objects, fresh state, demo origin), started as the e2e tests start it${cdp ? ", with a DevTools session attached to wrangler's inspector (see Memory)" : ""}.`,
  );
  p();
  p("| | |");
  p("|---|---|");
  p(`| date | ${facts.date ?? "?"} |`);
  p(`| commit | ${facts.commit ?? "?"} |`);
  p(`| machine | ${facts.nproc ?? "?"} cores, ${facts.cpu ?? "?"}, ${facts.mem ?? "?"}, Linux ${facts.kernel ?? "?"} |`);
  p(`| tools | Node ${facts.node ?? process.version}, wrangler ${facts.wrangler ?? "?"}, workerd ${facts.workerd ?? "?"} |`);
  p(`| worker | ${facts.build_dir ?? "build"}/index_bg.wasm, ${facts.wasm_bytes ?? "?"} bytes, sha256 ${facts.wasm_sha256 ?? "?"}…, built ${facts.wasm_built ?? "?"}; copied before the start, so one build is measured throughout |`);
  p(`| sources at the start | uncommitted changes to the worker's sources: ${facts.dirty || "none"}; sources newer than the build: ${facts.newer || "none"} |`);
  p(`| load | ${RATE} req/s target, open loop, at most ${MAX_INFLIGHT} in flight; warm-up ${WARMUP} s, then steady |`);
  if (!MINT) p("| control chain | SOAK_MINT=0: list, audit, usage only (no key minted or revoked; the invalid class's revoked keys are then unknown keys) |");
  p(`| mix (per 20 requests) | 5 strict, 5 leased (4 keys each, half user-bound), 4 widget (per 20 widget requests: 13 new visitors of "widget", 5 of "widget-own", 1 hot IPv4 visitor of "widget" against ${VISITOR_LIMIT}/min, 1 hot IPv6 /48 of "widget-own" against ${OWN_VISITOR_LIMIT}/min), 1 preflight, 3 invalid, 2 control |`);
  p();

  // Verdict first.
  const sum = (m) => [...m.values()].reduce((a, b) => a + b, 0);
  const total5xx = [...stats.entries()].filter(([k]) => Number(k.split("|")[2]) >= 500).reduce((a, [, v]) => a + v.count, 0);
  const transport = [...stats.entries()].filter(([k]) => k.split("|")[2] === "0").reduce((a, [, v]) => a + v.count, 0);
  const unexpectedCount = sum(unexpectedBySig);
  if (total5xx) findings.push(`${total5xx} responses with a 5xx status`);
  if (transport) findings.push(`${transport} requests failed in transport (no HTTP response)`);
  if (unexpectedCount - total5xx - transport > 0) findings.push(`${unexpectedCount - total5xx - transport} other responses not as expected`);

  // Memory.
  const worker = (s) => byRole(s.procs, "worker");
  const workerPids = new Set(samples.flatMap((s) => worker(s).map((x) => x.pid)));
  if (workerPids.size > 1) findings.push(`the workerd running keyward changed during the run (pids ${[...workerPids].join(", ")}): it restarted`);
  const rssOf = (s, role) => byRole(s.procs, role).reduce((a, x) => a + x.rssKb, 0);
  const loadSamples = samples.filter((s) => s.t >= tLoad0);
  const base = loadSamples.find((s) => s.t - tLoad0 >= WARMUP) ?? loadSamples.at(-1);
  const after = samples.filter((s) => s.t >= base.t);
  const dev = after.map((s) => (rssOf(s, "worker") - rssOf(base, "worker")) / rssOf(base, "worker"));
  const maxDev = Math.max(...dev);
  const minDev = Math.min(...dev);
  // Growth: the median of the last 3 samples of the load against the median
  // of the first 3 after warm-up (one sample is one moment of a garbage
  // collector; a fall is no leak).
  const med = (ss) => {
    const v = ss.map((x) => rssOf(x, "worker")).sort((a, b) => a - b);
    return v[Math.floor((v.length - 1) / 2)];
  };
  const during = after.filter((s) => s.t <= loadEnd + 0.5);
  const baseSet = during.slice(0, 3);
  const endSet = during.slice(-3);
  const endLoad = during.at(-1) ?? samples.at(-1);
  const baseMed = med(baseSet.length ? baseSet : [base]);
  const endMed = med(endSet.length ? endSet : [endLoad]);
  const growth = (endMed - baseMed) / baseMed;
  const flat = growth <= 0.1;
  // Least-squares slope of the worker's RSS over the steady phase, MiB/min.
  const pts = after.filter((s) => s.t <= loadEnd + 0.5).map((s) => [(s.t - tLoad0) / 60, rssOf(s, "worker") / 1024]);
  const mx = pts.reduce((a, [x]) => a + x, 0) / pts.length;
  const my = pts.reduce((a, [, y]) => a + y, 0) / pts.length;
  const slope = pts.length > 1 ? pts.reduce((a, [x, y]) => a + (x - mx) * (y - my), 0) / pts.reduce((a, [x]) => a + (x - mx) ** 2, 0) : NaN;
  if (!flat) findings.push(`workerd (keyward) RSS grew ${(growth * 100).toFixed(1)}% after warm-up (median of 3 samples: ${mib(baseMed)} → ${mib(endMed)} MiB), more than 10%`);

  // Hot visitors: admissions against the per-visitor limit. The guard
  // admits at most `limit` in any 60 s; a request's decision happened
  // between its sending and its answer, so `limit + 1` admissions whose
  // span (first sent → last answered) is under 60 s prove a violation.
  const hotRows = HOT.map((h) => {
    const a = [...h.admitted].sort((x, y) => x[0] - y[0]);
    let violations = 0;
    let tightest = Infinity;
    for (let i = 0; i + h.limit < a.length; i++) {
      const span = Math.max(...a.slice(i, i + h.limit + 1).map((x) => x[1])) - a[i][0];
      tightest = Math.min(tightest, span);
      if (span < 60) violations++;
    }
    const loadMin = (loadEnd - tLoad0) / 60;
    const most = h.limit * Math.ceil(loadMin + 1e-9);
    const least = Math.floor(0.9 * h.limit * Math.floor(loadMin));
    if (violations) findings.push(`${h.name}: ${h.limit + 1} admissions within less than 60 s (${violations} times; tightest ${tightest.toFixed(1)} s) — over its ${h.limit}/min`);
    if (a.length > most) findings.push(`${h.name}: ${a.length} admitted in ${(loadMin * 60).toFixed(0)} s, more than ${most} (${h.limit}/min)`);
    if (a.length < least) findings.push(`${h.name}: only ${a.length} admitted in ${(loadMin * 60).toFixed(0)} s, fewer than ${least} (its ${h.limit}/min, minus 10%)`);
    return { ...h, n: a.length, tightest, violations, most, least };
  });

  // Log.
  const logProblems = [...logScan.messages.entries()].filter(([, e]) => e.level !== "info");
  const logErrors = logProblems.filter(([, e]) => e.level === "error");
  const logWarnsAfterReady = logProblems.filter(([, e]) => e.level === "warning" && e.ready);
  if (logErrors.length) findings.push(`${logErrors.reduce((a, [, e]) => a + e.count, 0)} error lines in the wrangler log (${logErrors.length} distinct)`);
  if (logWarnsAfterReady.length) findings.push(`${logWarnsAfterReady.reduce((a, [, e]) => a + e.count, 0)} warning lines in the wrangler log after start`);
  const log5xx = [...logScan.requests.entries()].filter(([k]) => Number(k.split(" ")[1]) >= 500);
  if (log5xx.length && !total5xx) findings.push(`the wrangler log shows 5xx responses the driver did not see: ${log5xx.map(([k, v]) => `${k} ×${v}`).join(", ")}`);

  p("## Verdict");
  p();
  if (!findings.length) p(NO_FINDINGS);
  else for (const f of findings) p(`- **${f}**`);
  p();

  p("## Requests");
  p();
  const loadS = loadEnd - tLoad0;
  p(`Sent ${sent}, answered ${done} (${transport} without an HTTP response). Schedule: ${lagged} requests issued more than 100 ms late (at most ${MAX_INFLIGHT} in flight; most in flight at once: ${maxInflightSeen}; largest lag ${(maxLagS * 1000).toFixed(0)} ms). New widget visitors: ${distinctVisitors[0].size} of "widget", ${distinctVisitors[1].size} of "widget-own" (IPv4 addresses and IPv6 /48s, 2 requests each), plus the two hot visitors. Control chain: ${mintedCount} keys minted and revoked.`);
  p();
  p("| phase | duration s | sent | answered | answered/s |");
  p("|---|---:|---:|---:|---:|");
  p(`| provisioning (admin API: org, user, ${2 + K.strict.length + K.leased.length} keys) | ${provisionS.toFixed(1)} | – | – | – |`);
  p(`| warm-up | ${Math.min(WARMUP, loadS).toFixed(0)} | ${phaseSent.warmup} | ${phaseDone.warmup} | ${f1(phaseDone.warmup / Math.min(WARMUP, loadS))} |`);
  p(`| steady | ${Math.max(0, loadS - WARMUP).toFixed(0)} | ${phaseSent.steady} | ${phaseDone.steady} | ${f1(phaseDone.steady / Math.max(1e-9, loadS - WARMUP))} |`);
  p(`| whole load | ${loadS.toFixed(0)} | ${sent} | ${done} | ${f1(done / loadS)} |`);
  p();
  p("Responses by class, operation, status and error code (✓ expected, ✗ a finding):");
  p();
  p("| class | operation | status | error code | count | |");
  p("|---|---|---:|---|---:|---|");
  const order = ["strict", "leased", "widget", "invalid", "control"];
  for (const [k, v] of [...stats.entries()].sort((a, b) => {
    const [ca, oa, sa] = a[0].split("|");
    const [cb, ob, sb] = b[0].split("|");
    return order.indexOf(ca) - order.indexOf(cb) || oa.localeCompare(ob) || Number(sa) - Number(sb);
  })) {
    const [cls, op, status, code] = k.split("|");
    p(`| ${cls} | ${op} | ${status === "0" ? "none" : status} | ${code || "–"} | ${v.count} | ${v.expected ? "✓" : "✗"} |`);
  }
  p();
  const allStatus = new Map();
  for (const [k, v] of stats) {
    const s = k.split("|")[2];
    allStatus.set(s, (allStatus.get(s) ?? 0) + v.count);
  }
  p(`By status: ${[...allStatus.entries()].sort().map(([s, c]) => `${s === "0" ? "no response" : s} × ${c}`).join(", ")}.`);
  p();
  p("Latency by class (ms, client side, includes the driver's own queueing):");
  p();
  p("| class | answered | p50 | p90 | p99 | max |");
  p("|---|---:|---:|---:|---:|---:|");
  for (const c of order) {
    const a = latency.get(c) ?? [];
    if (a.length) p(`| ${c} | ${a.length} | ${f1(pct(a, 50))} | ${f1(pct(a, 90))} | ${f1(pct(a, 99))} | ${f1(Math.max(...a))} |`);
  }
  p();

  p("Hot visitors (one visitor far over its per-visitor limit; the guard's sliding window admits at most the limit in any 60 s):");
  p();
  p("| visitor | limit | addresses used | admitted | refused (429) | expected admitted | tightest span of limit+1 admissions | |");
  p("|---|---:|---:|---:|---:|---|---:|---|");
  for (const h of hotRows) {
    const ok = !h.violations && h.n <= h.most && h.n >= h.least;
    p(`| ${h.name} | ${h.limit}/60 s | ${h.addresses.size} | ${h.n} | ${h.refused} | ${h.least}–${h.most} | ${Number.isFinite(h.tightest) ? `${h.tightest.toFixed(1)} s` : "–"} | ${ok ? "✓" : "✗"} |`);
  }
  p();

  if (unexpectedCount) {
    p("### Unexpected responses");
    p();
    p("| what | count |");
    p("|---|---:|");
    for (const [sig, c] of unexpectedBySig) p(`| ${sig} | ${c} |`);
    p();
    p(`The first ${unexpected.length}, with the request that caused each (keys shortened):`);
    p();
    p("```json");
    for (const u of unexpected) p(JSON.stringify(u));
    p("```");
    p();
  }

  p("## Per minute");
  p();
  p("RSS from /proc/<pid>/status (VmRSS) of the processes in wrangler's process group: **workerd (keyward)** runs the worker with its local KV and Durable Objects; the proxy is wrangler's own workerd in front of it; wrangler is its Node process. CPU is the keyward workerd's share of one core over the minute; the load average is the whole machine's (2 cores shared with other work), which is what the latencies mostly follow.");
  p();
  p("| minute | sent | answered | answered/s | 2xx | 4xx (not 429) | 429 | 5xx | no response | p50 ms | p99 ms | workerd (keyward) RSS MiB | proxy RSS MiB | wrangler RSS MiB | keyward CPU % | machine load avg (1 min) |");
  p("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
  const at = (t) => samples.reduce((best, s) => (Math.abs(s.t - t) < Math.abs(best.t - t) ? s : best), samples[0]);
  for (let m = 0; m < minutes.length; m++) {
    const r = minutes[m];
    const s0 = at(tLoad0 + m * 60);
    const s1 = at(tLoad0 + (m + 1) * 60);
    const ticks = (s) => worker(s).reduce((a, x) => a + x.ticks, 0);
    const cpu = ((ticks(s1) - ticks(s0)) / CLK_TCK / Math.max(1, s1.t - s0.t)) * 100;
    p(`| ${m + 1} | ${r.sent} | ${r.done} | ${f1(r.done / Math.max(1, Math.min(60, loadS - m * 60)))} | ${r.s2} | ${r.s4} | ${r.s429} | ${r.s5} | ${r.err} | ${f1(pct(r.lat, 50))} | ${f1(pct(r.lat, 99))} | ${mib(rssOf(s1, "worker"))} | ${mib(rssOf(s1, "proxy"))} | ${mib(rssOf(s1, "wrangler"))} | ${f1(cpu)} | ${f1(s1.loadavg)} |`);
  }
  p();
  p("## Memory");
  p();
  p("| when | t s | workerd (keyward) RSS MiB | of which anonymous MiB | proxy RSS MiB | wrangler RSS MiB |");
  p("|---|---:|---:|---:|---:|---:|");
  for (const s of samples.filter((s) => s.label)) {
    p(`| ${s.label} | ${s.t.toFixed(0)} | ${mib(rssOf(s, "worker"))} | ${mib(worker(s).reduce((a, x) => a + x.anonKb, 0))} | ${mib(rssOf(s, "proxy"))} | ${mib(rssOf(s, "wrangler"))} |`);
  }
  p();
  p(`**workerd (keyward) RSS: ${mib(rssOf(base, "worker"))} MiB after warm-up (t = ${base.t.toFixed(0)} s), ${mib(rssOf(endLoad, "worker"))} MiB at the end of the load (t = ${endLoad.t.toFixed(0)} s); medians of 3 samples ${mib(baseMed)} → ${mib(endMed)} MiB: ${growth >= 0 ? "+" : ""}${(growth * 100).toFixed(1)}%, ${flat ? "flat within 10%" : "MORE than 10%"}.** Idle before provisioning: ${mib(rssOf(samples[0], "worker"))} MiB. Every sample from the baseline on (${after.length}, one per 10 s) lies between ${(minDev * 100).toFixed(1)}% and +${(maxDev * 100).toFixed(1)}% of it. Least-squares trend over the steady phase: ${slope.toFixed(2)} MiB/min (${f1(slope * 60)} MiB/h if it went on). Samples: ${samples.length}; workerd (keyward) pid${workerPids.size > 1 ? "s" : ""} ${[...workerPids].join(", ")}.`);
  p();

  if (heapSamples.length) {
    p("keyward's isolate (its worker and its Durable Objects), from wrangler's inspector (`Runtime.getHeapUsage`):");
    p();
    p("| when | t s | JS heap used MiB | JS heap total MiB | backing stores MiB (ArrayBuffers) |");
    p("|---|---:|---:|---:|---:|");
    const m2 = (b) => (typeof b === "number" ? (b / 1048576).toFixed(1) : "–");
    for (const h of heapSamples) p(h.error ? `| ${h.label} | ${h.t.toFixed(0)} | error: ${h.error} | | |` : `| ${h.label} | ${h.t.toFixed(0)} | ${m2(h.used)} | ${m2(h.total)} | ${m2(h.backing)} |`);
    p();
    const gc = samples.find((x) => x.label.startsWith("after one forced"));
    if (gc) p(`After one forced garbage collection (\`HeapProfiler.collectGarbage\`, 5 s later): workerd (keyward) RSS ${mib(rssOf(gc, "worker"))} MiB (end of load: ${mib(rssOf(endLoad, "worker"))} MiB).`);
    if (gcNote) p(gcNote);
    p();
  }
  p("Processes sampled (wrangler's process group; role from the command line: the workerd whose socket is the soak's port is wrangler's proxy, the other workerd runs keyward):");
  p();
  for (const x of samples[0].procs) p(`- ${x.role}, pid ${x.pid}: \`${x.cmd.replace(/\/tmp\/[^ ]*/g, "<tmp>").slice(0, 160)}…\``);
  p();

  p("## Key guards");
  p();
  p("`GET /admin/orgs/org_soak/api_keys/{id}/guard` for the soak's keys: the bytes of the guard's rows and their bound, widget visitors held, live leases.");
  p();
  const g = (d, k) => (d && d[k] !== undefined ? (typeof d[k] === "object" ? JSON.stringify(d[k]) : d[k]) : "–");
  const gEnd = guardSnapshots.at(-1);
  p(`At the end (${gEnd.label}):`);
  p();
  p("| key | consistency | bytes | byte_bound | bytes/bound | database_bytes | visitors | leases | reserved | calls | rows_written |");
  p("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|");
  for (const [name, d] of Object.entries(gEnd.rows)) {
    if (d.error) p(`| ${name} | error: ${d.error} | | | | | | | | | |`);
    else p(`| ${name} | ${g(d, "consistency")} | ${g(d, "bytes")} | ${g(d, "byte_bound")} | ${((100 * d.bytes) / d.byte_bound).toFixed(2)}% | ${g(d, "database_bytes")} | ${g(d, "visitors")} | ${g(d, "leases")} | ${g(d, "reserved")} | ${g(d, "calls")} | ${g(d, "rows_written")} |`);
  }
  p();
  p("Over the run (bytes / visitors / leases):");
  p();
  const names = Object.keys(guardSnapshots[0].rows);
  p(`| when | ${names.join(" | ")} |`);
  p(`|---|${names.map(() => "---:").join("|")}|`);
  for (const snap of guardSnapshots) {
    p(`| ${snap.label} | ${names.map((n) => (snap.rows[n]?.error ? "err" : `${g(snap.rows[n], "bytes")} / ${g(snap.rows[n], "visitors")} / ${g(snap.rows[n], "leases")}`)).join(" | ")} |`);
  }
  p();
  for (const [name, d] of Object.entries(gEnd.rows)) {
    if (!d.error && typeof d.bytes === "number" && typeof d.byte_bound === "number" && d.bytes > d.byte_bound) findings.push(`guard of ${name}: ${d.bytes} bytes over its bound ${d.byte_bound}`);
  }
  const guardErrors = guardSnapshots.flatMap((snap) => Object.entries(snap.rows).filter(([, d]) => d.error).map(([n, d]) => `${snap.label}: ${n}: ${d.error}`));
  if (guardErrors.length) findings.push(`guard stats could not be read ${guardErrors.length} times (first: ${guardErrors[0]})`);
  p(`Full guard answer for the widget key at the end:`);
  p();
  p("```json");
  p(JSON.stringify(gEnd.rows.widget));
  p("```");
  p();

  p("## wrangler log");
  p();
  p(`Request lines (\`[wrangler:info] METHOD path status\`), by method and status: ${[...logScan.requests.entries()].sort().map(([k, v]) => `${k} × ${v}`).join(", ") || "none"} (total ${sum(logScan.requests)}; the driver's own admin calls included).`);
  p();
  if (logProblems.length) {
    p("Warning and error lines, counted by message (request ids, key ids, keys and durations normalized):");
    p();
    p("| level | count | after start | message |");
    p("|---|---:|---|---|");
    for (const [msg, e] of logProblems) p(`| ${e.level} | ${e.count} | ${e.ready ? "yes" : "no (startup)"} | \`${msg.replace(/\|/g, "\\|").slice(0, 300)}\`${e.detail.length ? `<br>${e.detail.map((d) => `\`${d.replace(/\|/g, "\\|").slice(0, 200)}\``).join("<br>")}` : ""} |`);
  } else p("No warning or error lines.");
  p();
  const others = [...logScan.messages.entries()].filter(([, e]) => e.level === "info" && e.ready);
  if (others.length) {
    p("Other lines after start (not request lines), counted:");
    p();
    for (const [msg, e] of others.slice(0, 30)) p(`- ${e.count} × \`${msg.slice(0, 300)}\``);
    p();
  }
  // Findings may have grown (guards); rewrite the verdict.
  const vi = L.indexOf("## Verdict");
  const vEnd = L.indexOf("## Requests");
  const verdict = findings.length
    ? findings.map((f) => `- **${f}**`)
    : [NO_FINDINGS];
  L.splice(vi + 2, vEnd - vi - 3, ...verdict);
  fs.writeFileSync(OUT, L.join("\n") + "\n");
  if (TMP) fs.writeFileSync(`${TMP}/samples.json`, JSON.stringify({ samples, guardSnapshots, minutes: minutes.map(({ lat, ...r }) => r) }));
  log(`report written to ${OUT}: ${findings.length ? `${findings.length} finding(s)` : "no findings"}`);
  return findings.length ? 1 : 0;
}

main().then(
  (code) => {
    agent.destroy();
    process.exit(code);
  },
  (e) => {
    console.error(`soak driver failed: ${e.stack ?? e}`);
    agent.destroy();
    process.exit(2);
  },
);
