// Turns the raw outputs of bench/run.sh into bench/results.md.
// usage: node bench/report.mjs <tmp dir of run.sh> <out.md>
import fs from "node:fs";
import path from "node:path";

const [dir, out] = process.argv.slice(2);
const read = (f) => fs.readFileSync(path.join(dir, f), "utf8");

const facts = {};
for (const line of read("facts").split("\n")) {
  const i = line.indexOf("=");
  if (i > 0) facts[line.slice(0, i)] = line.slice(i + 1);
}
const settings = facts;
// Which runner served the workers (bench/run.sh RUNNER); results written
// before the switch to Miniflare have no `runner` fact: wrangler.
const runner = facts.runner || "wrangler";
const RUNNER_TEXT = {
  miniflare: {
    e2e: "workerd via Miniflare (`bench/serve.mjs`, no inspector)",
    software: `miniflare ${facts.miniflare} (workerd ${facts.workerd}) through bench/serve.mjs, no inspector; wrangler ${facts.wrangler} only reads the config`,
    startup: "spawn of `node bench/serve.mjs` (Node, Miniflare, workerd) to first served response",
    startupNote: "This is mostly Node loading Miniflare and workerd booting, not the wasm module.",
  },
  wrangler: {
    e2e: "workerd via `wrangler dev`",
    software: `wrangler ${facts.wrangler} (\`wrangler dev\`, workerd, local mode, inspector attached)`,
    startup: "spawn of `wrangler dev` to first served response",
    startupNote: "This is mostly wrangler and workerd booting, not the wasm module.",
  },
}[runner];
if (!RUNNER_TEXT) throw new Error(`unknown runner ${runner}`);

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

// --- core (divan's table)
const UNIT = { ps: 1e-3, ns: 1, "µs": 1e3, us: 1e3, ms: 1e6, s: 1e9 };
const toNs = (t) => {
  const m = t.trim().match(/^([\d.]+)\s*(ps|ns|µs|us|ms|s)$/);
  return m ? Number(m[1]) * UNIT[m[2]] : NaN;
};
const core = {};
// CORE=0 (bench/run.sh) skips the core benchmark: no core.txt.
const hasCore = fs.existsSync(path.join(dir, "core.txt"));
for (const line of hasCore ? read("core.txt").split("\n") : []) {
  const cols = line.split("│");
  if (cols.length < 6) continue;
  const m = cols[0].match(/^[\s├╰│─]*([a-z0-9_]+)\s+(\S+\s*\S+)\s*$/);
  if (!m || !Number.isFinite(toNs(m[2]))) continue;
  core[m[1]] = { fastest: toNs(m[2]), median: toNs(cols[2]), mean: toNs(cols[3]), samples: cols[4].trim() };
}
const fmtNs = (ns) => (ns >= 1000 ? `${(ns / 1000).toFixed(2)} µs` : `${ns.toFixed(1)} ns`);

// --- end to end (wrk)
// Every scenario: label, expected status, and what its keys are (for the
// I/O and cost tables). Keyward scenarios all run the benchmark build.
const SCEN = {
  a_origin: { label: "(a) origin directly", status: 200 },
  b_passthrough: { label: "(b) pass-through Rust worker", status: 200 },
  b1_kv: { label: "(b1) pass-through + 1 KV read", status: 200 },
  b2_kv_do: { label: "(b2) pass-through + 1 KV read + 1 Durable Object call", status: 200 },
  c_strict: { label: "(c) keyward, strict key (hot)", status: 200 },
  d_garbage: { label: "(d) keyward, malformed key → 401", status: 401 },
  d2_unknown: { label: "(d′) keyward, well-formed unknown key → 401", status: 401 },
  e_keys100: { label: "(e) keyward, 100 strict keys rotating", status: 200 },
  f_guard_off: { label: "(f) keyward, strict key, KEY_GUARD=off", status: 200 },
  h_leased: { label: "(h) keyward, leased key (hot)", status: 200 },
  i_leased100: { label: "(i) keyward, 100 leased keys rotating", status: 200 },
  c50_strict_far: { label: `(c50) keyward, strict key, guard ${facts.guard_delay_ms} ms away`, status: 200 },
  h50_leased_far: { label: `(h50) keyward, leased key, guard ${facts.guard_delay_ms} ms away`, status: 200 },
  j_refused: { label: "(j) keyward, strict key over its limit → 429", status: 429 },
};
const tag = (k) => SCEN[k].label.split(" ")[0];
const runs = {};
for (const f of fs.readdirSync(path.join(dir, "wrk"))) {
  const m = f.match(/^([a-z0-9_]+)\.(\d+)\.txt$/);
  if (!m) continue;
  const line = read(path.join("wrk", f)).split("\n").find((l) => l.startsWith("WRK_JSON "));
  if (!line) throw new Error(`no WRK_JSON line in ${f}`);
  const j = JSON.parse(line.slice(9));
  j.rps = j.requests / (j.duration_us / 1e6);
  // CPU time per request of each process role of the target (see run.sh).
  const ticks = (suffix) => {
    const t = {};
    for (const l of read(path.join("wrk", f + suffix)).split("\n")) {
      const [role, n] = l.split(" ");
      if (role) t[role] = (t[role] ?? 0) + Number(n);
    }
    return t;
  };
  const t0 = ticks(".cpu0");
  const t1 = ticks(".cpu1");
  j.cpu = {};
  for (const role of Object.keys(t1)) j.cpu[role] = (((t1[role] - (t0[role] ?? 0)) / Number(facts.clk_tck)) * 1000) / j.requests;
  (runs[m[1]] ??= []).push({ round: Number(m[2]), ...j });
}
const e2e = {};
for (const [name, rs] of Object.entries(runs)) {
  rs.sort((a, b) => a.round - b.round);
  e2e[name] = {
    rps: median(rs.map((r) => r.rps)),
    p50: median(rs.map((r) => r.p50_us)) / 1000,
    p99: median(rs.map((r) => r.p99_us)) / 1000,
    non2xx: rs.reduce((s, r) => s + r.non_2xx, 0),
    requests: rs.reduce((s, r) => s + r.requests, 0),
    errors: rs.reduce((s, r) => s + r.socket_errors, 0),
    cpu: Object.fromEntries(Object.keys(rs[0].cpu).map((role) => [role, median(rs.map((r) => r.cpu[role] ?? 0))])),
    rounds: rs,
  };
}
const ms = (x) => x.toFixed(2);
const ratio = (x, y) => (x / y).toFixed(2);

// --- I/O per request, counted (run.sh step 5): deltas of the worker's own
// counters (and of the guards of the scenario's keys) over a separate run,
// divided by the requests the worker counted in that window.
const io = {};
const hasIo = fs.existsSync(path.join(dir, "io"));
for (const k of Object.keys(SCEN)) {
  if (!hasIo || !fs.existsSync(path.join(dir, "io", `${k}.after.json`))) continue;
  const before = JSON.parse(read(path.join("io", `${k}.before.json`)));
  const after = JSON.parse(read(path.join("io", `${k}.after.json`)));
  const wrkText = read(path.join("io", `${k}.wrk.txt`)).split("\n");
  const wrkJson = JSON.parse((wrkText.find((l) => l.startsWith("WRK_JSON ")) ?? "WRK_JSON {}").slice(9));
  const statuses = JSON.parse((wrkText.find((l) => l.startsWith("WRK_STATUS ")) ?? "WRK_STATUS {}").slice(11));
  const d = (o, f) => (after[o]?.[f] ?? 0) - (before[o]?.[f] ?? 0);
  const requests = d("io", "requests");
  const keyward = after.guard !== undefined || after.io.guard_calls !== undefined;
  const r = { requests, wrkRequests: wrkJson.requests, statuses, keys: after.guard?.keys ?? 0 };
  r.kv = d("io", "kv_reads");
  if (keyward) {
    r.guardCalls = d("io", "guard_calls");
    r.byKind = Object.fromEntries(["check", "lease", "return", "refused", "refund", "revoke"].map((x) => [x, d("guard", x)]));
    r.received = Object.values(r.byKind).reduce((a, b) => a + b, 0);
    r.factsReads = d("guard", "facts_reads");
    r.rows = d("guard", "rows_written");
    r.commits = d("guard", "commits");
    // Each key's guard answered one stats call per snapshot; fewer means a
    // guard was reloaded (its counters restarted) inside the window.
    r.reloaded = r.keys > 0 && d("guard", "stats") !== r.keys;
  } else {
    r.guardCalls = d("io", "do_calls");
    r.factsReads = 0;
    // The baseline's Durable Object has no storage: nothing is written.
    r.rows = 0;
    r.commits = 0;
  }
  r.doCalls = r.guardCalls + r.factsReads;
  for (const f of ["kv", "guardCalls", "factsReads", "doCalls", "rows", "commits", "received"]) {
    if (r[f] !== undefined) r[`${f}PerReq`] = requests > 0 ? r[f] / requests : NaN;
  }
  io[k] = r;
}

// --- cost per million requests at list prices (bench/README.md, "Prices"):
// Workers Standard requests and CPU time, KV reads, Durable Object requests,
// SQLite-backed Durable Object rows written. Beyond the included monthly
// allowances; Durable Object duration, rows read and stored data excluded.
const PRICE = {
  workerRequest: 0.3 / 1e6, // $ per request (Workers Standard)
  cpuMs: 0.02 / 1e6, // $ per CPU millisecond (Workers Standard)
  kvRead: 0.5 / 1e6, // $ per KV read
  doRequest: 0.15 / 1e6, // $ per Durable Object request
  rowWritten: 1.0 / 1e6, // $ per SQLite row written (Durable Objects)
};
const cost = {};
for (const [k, r] of Object.entries(io)) {
  const cpuMs = e2e[k]?.cpu.worker;
  if (cpuMs === undefined) continue;
  const c = {
    requests: PRICE.workerRequest * 1e6,
    cpu: cpuMs * PRICE.cpuMs * 1e6,
    kv: r.kvPerReq * PRICE.kvRead * 1e6,
    dos: r.doCallsPerReq * PRICE.doRequest * 1e6,
    rows: r.rowsPerReq * PRICE.rowWritten * 1e6,
  };
  c.total = c.requests + c.cpu + c.kv + c.dos + c.rows;
  c.io = c.kv + c.dos + c.rows;
  cost[k] = c;
}

// --- derived numbers
const decision = core.decision?.median;
const floor = core.sha256_floor?.median;
const b = e2e.b_passthrough;
const b2 = e2e.b2_kv_do;
const c = e2e.c_strict;
const d = e2e.d_garbage;
const d2 = e2e.d2_unknown;
const e100 = e2e.e_keys100;
const off = e2e.f_guard_off;
const h = e2e.h_leased;
const i100 = e2e.i_leased100;
const c50 = e2e.c50_strict_far;
const h50 = e2e.h50_leased_far;
const starts = (facts.startup_keyward || "").split(" ").filter(Boolean).map(Number);
const startup = median(starts);
const kib = (n) => (Number(n) / 1024).toFixed(1);
const per = (x, digits = 3) => (Number.isFinite(x) ? x.toFixed(digits) : "–");

const budgets = [
  ...(hasCore
    ? [
        ["core decision, median", "≤ 2 µs", fmtNs(decision), decision <= 2000],
        ["core decision / SHA-256 floor", "≤ 10×", `${ratio(decision, floor)}×`, decision / floor <= 10],
      ]
    : []),
  ["wasm gzipped (normal build)", "≤ 300 KiB", `${kib(facts.wasm_gz)} KiB`, Number(facts.wasm_gz) <= 300 * 1024],
];
const budget = (what, target, got, ok) => budgets.push([what, target, got, ok]);
if (h && b) budget("(h) leased hot key: throughput / (b)", "≥ 0.80", ratio(h.rps, b.rps), h.rps / b.rps >= 0.8);
if (io.h_leased) {
  const r = io.h_leased;
  budget(
    "(h) guard calls per request",
    "≤ 0.02",
    `${per(r.guardCallsPerReq, 4)} (${r.guardCalls} in ${r.requests}; with the guard's reads of lease facts: ${per(r.doCallsPerReq, 4)} Durable Object calls)`,
    r.guardCallsPerReq <= 0.02,
  );
  budget("(h) KV reads per request", "0", `${per(r.kvPerReq, 4)} (${r.kv} in ${r.requests})`, r.kv === 0);
}
if (c && b2) budget("(c) strict: throughput / (b2) floor", "≥ 0.80", ratio(c.rps, b2.rps), c.rps / b2.rps >= 0.8);
if (h50 && b)
  budget(
    `(h50) p50 − (b) p50, guard ${facts.guard_delay_ms} ms away`,
    "≤ 1 ms",
    `${ms(h50.p50 - b.p50)} ms`,
    h50.p50 - b.p50 <= 1,
  );
for (const [k, limit, kind] of [
  ["h_leased", 0.02, "leased"],
  ["i_leased100", 0.02, "leased"],
  ["h50_leased_far", 0.02, "leased"],
  ["c_strict", 1, "strict"],
  ["e_keys100", 1, "strict"],
  ["c50_strict_far", 1, "strict"],
  ["j_refused", 0, "refusals"],
]) {
  const r = io[k];
  if (!r) continue;
  budget(
    `${tag(k)} storage rows written per request (${kind})`,
    limit === 0 ? "0" : `≤ ${limit}`,
    `${per(r.rowsPerReq, 4)} (${r.rows} rows, ${r.commits} commits, ${r.requests} requests)`,
    limit === 0 ? r.rows === 0 : r.rowsPerReq <= limit,
  );
}

const L = [];
L.push("# keyward — benchmark results", "");
L.push("Written by `make bench` (bench/run.sh; method in bench/README.md). Do not edit by hand.", "");
L.push("| | |", "|---|---|");
L.push(`| date | ${facts.date} |`);
L.push(`| machine | ${facts.nproc} CPUs (nproc), ${facts.cpu}, Linux ${facts.kernel} |`);
L.push(`| runner | **${runner}** (\`RUNNER=${runner}\`) |`);
L.push(`| software | rustc ${facts.rustc}, node ${facts.node}, ${RUNNER_TEXT.software}, wrk ${facts.wrk} |`);
L.push(`| keyward commit | ${facts.git} |`);
L.push(
  `| keyward build | every keyward scenario runs the **benchmark build** (cargo feature \`bench\`: \`KEY_GUARD=off\`, \`GUARD_DELAY_MS\`, the \`/__keyward/io\` counters; bench/keyward-bench/); the artifact size is the normal build's (build/) |`,
);
L.push(
  `| load | wrk -t${settings.threads} -c${settings.conns}, ${settings.duration} s per run, ${settings.rounds} rounds alternating the scenarios; medians of the rounds. I/O counted over a separate ${settings.count_duration} s run per scenario |`,
);
L.push(`| leases | LEASE_MS ${facts.lease_ms}; (c50)/(h50): GUARD_DELAY_MS ${facts.guard_delay_ms} (every call to a key's guard waits that long first) |`);
L.push("");

L.push(`## End to end (${RUNNER_TEXT.e2e}, POST /v1/ai/chat)`, "");
L.push("| scenario | requests/s | p50 ms | p99 ms | req/s vs (b) | req/s vs (b2) | p50 − (b) ms | p99 − (b) ms | expected status |");
L.push("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
for (const [k, sc] of Object.entries(SCEN)) {
  const r = e2e[k];
  if (!r) continue;
  const bad = sc.status === 200 ? r.non2xx : r.requests - r.non2xx;
  L.push(
    `| ${sc.label} | ${r.rps.toFixed(0)} | ${ms(r.p50)} | ${ms(r.p99)} | ${ratio(r.rps, b.rps)} | ${b2 ? ratio(r.rps, b2.rps) : "–"} | ${ms(r.p50 - b.p50)} | ${ms(r.p99 - b.p99)} | ${sc.status}: ${r.requests - bad}/${r.requests} |`,
  );
}
L.push("");
L.push(
  "Expected status: the responses that match, from wrk (for the 401 and 429 scenarios wrk counts non-2xx responses; the counting runs below give every status exactly).",
  "",
);
L.push(
  runner === "wrangler"
    ? "CPU time per request, by process (median of rounds; from /proc, so it holds even when the machine is shared). `worker` is the workerd running the worker itself with its local KV and Durable Objects; `proxy` and `wrangler` are `wrangler dev`'s own proxy worker (workerd) and Node process, which production does not have."
    : "CPU time per request, by process (median of rounds; from /proc, so it holds even when the machine is shared). `worker` is the one workerd: Miniflare's entry worker, the worker itself and its local KV and Durable Objects; `serve` is bench/serve.mjs's Node process (Miniflare), which should stay near 0 — nothing on the request path goes through it.",
  "",
);
const ROLES = runner === "wrangler" ? ["worker", "proxy", "wrangler", "origin"] : ["worker", "serve", "origin"];
L.push(`| scenario | ${ROLES.map((r) => `${r} µs/req`).join(" | ")} |`, `|---|${"---:|".repeat(ROLES.length)}`);
const us = (x) => (x === undefined ? "–" : (x * 1000).toFixed(0));
for (const k of Object.keys(SCEN)) {
  const r = e2e[k];
  if (!r) continue;
  L.push(`| ${tag(k)} | ${ROLES.map((role) => us(r.cpu[role])).join(" | ")} |`);
}
L.push("");
L.push("Ratios:", "");
if (c && b2) L.push(`- (c) strict vs its own I/O floor (b2): throughput **${ratio(c.rps, b2.rps)}**, p50 ${ms(c.p50)} vs ${ms(b2.p50)} ms, worker CPU ${us(c.cpu.worker)} vs ${us(b2.cpu.worker)} µs/request.`);
if (h) L.push(`- (h) leased hot key vs (b): throughput **${ratio(h.rps, b.rps)}**, p50 added ${ms(h.p50 - b.p50)} ms, worker CPU ${us(h.cpu.worker)} vs ${us(b.cpu.worker)} µs/request; vs (c) strict: ${ratio(h.rps, c.rps)}× the throughput.`);
if (c50 && h50) L.push(`- Guard ${facts.guard_delay_ms} ms away: strict (c50) p50 ${ms(c50.p50)} ms, ${c50.rps.toFixed(0)} req/s; leased (h50) p50 ${ms(h50.p50)} ms (${ms(h50.p50 - b.p50)} ms over (b)), p99 ${ms(h50.p99)} ms, ${h50.rps.toFixed(0)} req/s.`);
if (d && d2) L.push(`- (d)/(b) throughput **${ratio(d.rps, b.rps)}**; malformed (d) vs well-formed unknown (d′): ${ratio(d.rps, d2.rps)}× the throughput, p50 ${ms(d.p50)} vs ${ms(d2.p50)} ms.`);
if (off && c) L.push(`- Durable Object hop (strict): guard off/on throughput **${ratio(off.rps, c.rps)}**, p50 ${ms(off.p50)} vs ${ms(c.p50)} ms.`);
if (e100 && c) L.push(`- 100 strict keys vs one: throughput **${ratio(e100.rps, c.rps)}**; 100 leased keys vs one: ${i100 && h ? ratio(i100.rps, h.rps) : "–"}.`);
if (e2e.b1_kv && b2) L.push(`- Baselines: (b1)/(b) ${ratio(e2e.b1_kv.rps, b.rps)}, (b2)/(b) ${ratio(b2.rps, b.rps)} (the cost of one KV read, then of one KV read and one Durable Object call, on this runner).`);
L.push(`- (b)/(a): the pass-through worker alone delivers ${ratio(b.rps, e2e.a_origin.rps)}× the origin's direct throughput.`);
L.push("");
L.push("Per round (requests/s · p50 ms · p99 ms):", "");
L.push(`| scenario | ${Array.from({ length: Number(settings.rounds) }, (_, i) => `round ${i + 1}`).join(" | ")} |`);
L.push(`|---|${"---|".repeat(Number(settings.rounds))}`);
for (const k of Object.keys(SCEN)) {
  const r = e2e[k];
  if (!r) continue;
  L.push(`| ${tag(k)} | ${r.rounds.map((x) => `${x.rps.toFixed(0)} · ${ms(x.p50_us / 1000)} · ${ms(x.p99_us / 1000)}`).join(" | ")} |`);
}
L.push("");

L.push("## I/O per request (counted)", "");
if (!Object.keys(io).length) L.push("Not measured.", "");
else {
  L.push(
    `A separate ${settings.count_duration} s run per scenario (not one of the timed rounds), between two snapshots of the worker isolate's own counters (\`GET /__keyward/io\` in keyward's benchmark build, \`GET /__passthrough/io\` in the baselines) and of the guard of every key the scenario uses (\`GET /admin/orgs/{org}/api_keys/{key}/guard\`); deltas divided by the requests the worker counted in the window. Guard calls are the worker's calls to key guards; facts reads are the guards' calls to the org's object for lease facts; Durable Object calls are their sum. Rows written and commits are the guards' SQLite rows written and write transactions. Responses are counted by status.`,
    "",
  );
  L.push("| scenario | requests (worker / wrk) | statuses | KV reads/req | guard calls/req | facts reads/req | DO calls/req | rows written/req | commits/req | guard calls received, by kind |");
  L.push("|---|---:|---|---:|---:|---:|---:|---:|---:|---|");
  for (const [k, r] of Object.entries(io)) {
    const st = Object.entries(r.statuses).map(([s, n]) => `${s}×${n}`).join(" ") || "–";
    const kinds = r.byKind
      ? Object.entries(r.byKind).filter(([, n]) => n).map(([x, n]) => `${x} ${n}`).join(", ") || "none"
      : "(baseline)";
    L.push(
      `| ${tag(k)} | ${r.requests} / ${r.wrkRequests ?? "?"} | ${st} | ${per(r.kvPerReq)} | ${per(r.guardCallsPerReq, 4)} | ${per(r.factsReadsPerReq, 4)} | ${per(r.doCallsPerReq, 4)} | ${per(r.rowsPerReq, 4)} | ${per(r.commitsPerReq, 4)} | ${kinds} |`,
    );
  }
  L.push("");
  L.push(
    "The baselines' KV reads and Durable Object calls are counted the same way (the baseline worker counts its own); their Durable Object has no storage, so 0 rows by construction. The worker's request count can exceed wrk's by the requests in flight when wrk stopped.",
    "",
  );
}

L.push("## Cost per million requests at list prices", "");
if (!Object.keys(cost).length) L.push("Not computed (no I/O counts).", "");
else {
  L.push(
    "US$ per million requests of each scenario (for the 200 scenarios: per million valid requests), beyond the Workers Paid plan's included allowances, from the counted I/O above and the measured `worker` CPU time; prices and what is left out in bench/README.md (\"Prices\"). Workers Standard: $0.30 per million requests, $0.02 per million CPU ms; Workers KV: $0.50 per million reads; Durable Objects: $0.15 per million requests, SQLite storage $1.00 per million rows written. **Excluded:** Durable Object duration (wall-clock GB-s while an object is in memory, which depends on traffic over time, not on requests), rows read, stored data, the included allowances and the $5 monthly minimum. The CPU column is an **upper bound**: locally the `worker` process also runs Miniflare's entry worker and the simulated KV and Durable Objects.",
    "",
  );
  L.push("| scenario | requests | CPU (upper bound) | KV reads | DO requests | rows written | **total** | I/O only | total vs (b2) |");
  L.push("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
  const $ = (x) => (Number.isFinite(x) ? `$${x.toFixed(3)}` : "–");
  for (const [k, x] of Object.entries(cost)) {
    L.push(
      `| ${tag(k)} | ${$(x.requests)} | ${$(x.cpu)} | ${$(x.kv)} | ${$(x.dos)} | ${$(x.rows)} | **${$(x.total)}** | ${$(x.io)} | ${cost.b2_kv_do ? ratio(x.total, cost.b2_kv_do.total) : "–"} |`,
    );
  }
  L.push("");
}

L.push("## Core decision (native, divan; no I/O)", "");
if (!hasCore) L.push("Not run (`CORE=0`).", "");
else {
  L.push("| benchmark | median | fastest | mean |", "|---|---:|---:|---:|");
  for (const [k, v] of Object.entries(core)) {
    L.push(`| ${k} | ${fmtNs(v.median)} | ${fmtNs(v.fastest)} | ${fmtNs(v.mean)} |`);
  }
  L.push("");
  L.push(`decision / SHA-256 floor: **${ratio(decision, floor)}×**.`, "");
}

L.push("## Artifact and startup", "");
L.push("| | raw | gzip -9 |", "|---|---:|---:|");
L.push(`| **keyward build/index_bg.wasm (normal build: what ships)** | ${kib(facts.wasm_raw)} KiB | ${kib(facts.wasm_gz)} KiB |`);
L.push(`| keyward benchmark build (feature \`bench\`, measured above) | ${kib(facts.bench_wasm_raw)} KiB | ${kib(facts.bench_wasm_gz)} KiB |`);
L.push(`| baseline worker, bench/passthrough (reference; holds the plain, kv and kv_do modes) | ${kib(facts.pt_wasm_raw)} KiB | ${kib(facts.pt_wasm_gz)} KiB |`);
L.push("");
L.push(
  `Worker startup (${RUNNER_TEXT.startup}), normal build: median **${startup} ms** of ${starts.length} starts (${starts.join(", ")} ms); the benchmark build: ${facts.startup_keyward_bench} ms (one start); the baseline: ${facts.startup_passthrough} ms (one start). ${RUNNER_TEXT.startupNote}`,
);
L.push("");

L.push("## Budgets", "");
L.push("| budget | target | measured | |", "|---|---|---|---|");
for (const [what, target, got, ok] of budgets) L.push(`| ${what} | ${target} | ${got} | ${ok ? "met" : "**missed**"} |`);
L.push("");
const bad = Object.entries(e2e).filter(([k, r]) => {
  const want = SCEN[k]?.status ?? 200;
  return r.errors > 0 || (want === 200 ? r.non2xx > 0 : r.non2xx !== r.requests);
});
const badStatus = Object.entries(io).filter(([k, r]) => Object.keys(r.statuses).some((s) => Number(s) !== SCEN[k].status));
if (bad.length) L.push(`Warning: unexpected statuses or socket errors in ${bad.map(([k]) => k).join(", ")}.`, "");
const reloaded = Object.entries(io).filter(([, r]) => r.reloaded);
if (reloaded.length) L.push(`Warning: a key guard was reloaded during the counting run of ${reloaded.map(([k]) => k).join(", ")}: its guard counts are lower bounds.`, "");
if (badStatus.length) L.push(`Warning: unexpected statuses in the counting runs of ${badStatus.map(([k]) => k).join(", ")}.`, "");

fs.writeFileSync(out, L.join("\n"));
