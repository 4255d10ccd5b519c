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
const NAMES = {
  a_origin: "(a) origin directly",
  b_passthrough: "(b) pass-through Rust worker",
  c_valid: "(c) keyward, valid key (hot, guard on)",
  d_garbage: "(d) keyward, malformed key → 401",
  d2_unknown: "(d′) keyward, well-formed unknown key → 401",
  e_keys100: "(e) keyward, 100 keys rotating (guard on)",
  f_guard_off: "(f) keyward, valid key, KEY_GUARD=off",
  g_awaited_writes: "(g) keyward, valid key, guard write awaited (GUARD_WRITES=await)",
};
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

// --- derived numbers
const decision = core.decision?.median;
const floor = core.sha256_floor?.median;
const b = e2e.b_passthrough;
const c = e2e.c_valid;
const d = e2e.d_garbage;
const d2 = e2e.d2_unknown;
const e100 = e2e.e_keys100;
const off = e2e.f_guard_off;
const starts = (facts.startup_keyward || "").split(" ").filter(Boolean).map(Number);
const startup = median(starts);
const probeChecks = Number(facts.probe_remaining_before) - Number(facts.probe_remaining_after) - 1;
const probeRequests = (() => {
  const l = read("probe.txt").split("\n").find((x) => x.startsWith("WRK_JSON "));
  return l ? JSON.parse(l.slice(9)).requests : NaN;
})();
const kib = (n) => (Number(n) / 1024).toFixed(1);

const budgets = [
  ...(hasCore
    ? [
        ["core decision, median", "≤ 2 µs", fmtNs(decision), decision <= 2000],
        ["core decision / SHA-256 floor", "≤ 10×", `${ratio(decision, floor)}×`, decision / floor <= 10],
      ]
    : []),
  ["(c) throughput / (b)", "≥ 0.75", ratio(c.rps, b.rps), c.rps / b.rps >= 0.75],
  ["(c) p99 − (b) p99", "≤ 2 ms", `${ms(c.p99 - b.p99)} ms`, c.p99 - b.p99 <= 2],
  ["(d) throughput / (b)", "≥ 0.90", ratio(d.rps, b.rps), d.rps / b.rps >= 0.9],
  ["wasm gzipped", "≤ 300 KiB", `${kib(facts.wasm_gz)} KiB`, Number(facts.wasm_gz) <= 300 * 1024],
];

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
  `| load | wrk -t${settings.threads} -c${settings.conns}, ${settings.duration} s per run, ${settings.rounds} rounds alternating the scenarios; medians of the rounds |`,
);
L.push("");

L.push(`## End to end (${RUNNER_TEXT.e2e}, POST /v1/ai/chat)`, "");
L.push("| scenario | requests/s | p50 ms | p99 ms | req/s vs (b) | p99 − (b) ms | non-2xx |");
L.push("|---|---:|---:|---:|---:|---:|---:|");
for (const [k, label] of Object.entries(NAMES)) {
  const r = e2e[k];
  if (!r) continue;
  const vsB = k === "a_origin" || k === "b_passthrough" ? (k === "a_origin" ? ratio(r.rps, b.rps) : "1.00") : ratio(r.rps, b.rps);
  L.push(
    `| ${label} | ${r.rps.toFixed(0)} | ${ms(r.p50)} | ${ms(r.p99)} | ${vsB} | ${ms(r.p99 - b.p99)} | ${r.non2xx}/${r.requests} |`,
  );
}
L.push("");
L.push(
  runner === "wrangler"
    ? "CPU time per request, by process (median of rounds; from /proc, so it holds even when the machine is shared). `worker` is the workerd running the worker itself with its local KV and Durable Objects; `proxy` and `wrangler` are `wrangler dev`'s own proxy worker (workerd) and Node process, which production does not have."
    : "CPU time per request, by process (median of rounds; from /proc, so it holds even when the machine is shared). `worker` is the one workerd: Miniflare's entry worker, the worker itself and its local KV and Durable Objects; `serve` is bench/serve.mjs's Node process (Miniflare), which should stay near 0 — nothing on the request path goes through it.",
  "",
);
const ROLES = runner === "wrangler" ? ["worker", "proxy", "wrangler", "origin"] : ["worker", "serve", "origin"];
L.push(`| scenario | ${ROLES.map((r) => `${r} µs/req`).join(" | ")} |`, `|---|${"---:|".repeat(ROLES.length)}`);
const us = (x) => (x === undefined ? "–" : (x * 1000).toFixed(0));
for (const [k, label] of Object.entries(NAMES)) {
  const r = e2e[k];
  if (!r) continue;
  L.push(`| ${label.split(" ")[0]} | ${ROLES.map((role) => us(r.cpu[role])).join(" | ")} |`);
}
L.push("");
L.push("Ratios:", "");
L.push(`- (c)/(b) throughput **${ratio(c.rps, b.rps)}**, p99 added **${ms(c.p99 - b.p99)} ms**, p50 added ${ms(c.p50 - b.p50)} ms.`);
L.push(`- (d)/(b) throughput **${ratio(d.rps, b.rps)}**; malformed (d) vs well-formed unknown (d′): ${ratio(d.rps, d2.rps)}× the throughput, p50 ${ms(d.p50)} vs ${ms(d2.p50)} ms.`);
L.push(`- Durable Object hop: guard off/on throughput **${ratio(off.rps, c.rps)}**, p50 ${ms(off.p50)} vs ${ms(c.p50)} ms (${ms(c.p50 - off.p50)} ms per request), p99 ${ms(off.p99)} vs ${ms(c.p99)} ms.`);
L.push(`- 100 keys vs one hot key: throughput **${ratio(e100.rps, c.rps)}**, p99 ${ms(e100.p99)} vs ${ms(c.p99)} ms.`);
const g = e2e.g_awaited_writes;
if (g) {
  L.push(`- Guard storage write awaited (g) vs left to the output gate (c): throughput **${ratio(g.rps, c.rps)}**, p50 ${ms(g.p50)} vs ${ms(c.p50)} ms, p99 ${ms(g.p99)} vs ${ms(c.p99)} ms.`);
}
L.push(`- (b)/(a): the pass-through worker alone delivers ${ratio(b.rps, e2e.a_origin.rps)}× the origin's direct throughput.`);
L.push("");
L.push("Per round (requests/s · p50 ms · p99 ms):", "");
L.push(`| scenario | ${Array.from({ length: Number(settings.rounds) }, (_, i) => `round ${i + 1}`).join(" | ")} |`);
L.push(`|---|${"---|".repeat(Number(settings.rounds))}`);
for (const [k, label] of Object.entries(NAMES)) {
  const r = e2e[k];
  if (!r) continue;
  L.push(`| ${label.split(" ")[0]} | ${r.rounds.map((x) => `${x.rps.toFixed(0)} · ${ms(x.p50_us / 1000)} · ${ms(x.p99_us / 1000)}`).join(" | ")} |`);
}
L.push("");

L.push("## Per-request work on the valid-key path", "");
L.push("| | per request | how it is known |", "|---|---:|---|");
L.push("| KV reads, valid key | 1 (org; + user for a user-bound key, concurrently; the key record is cached per isolate for 30 s after its first read) | src/edge/gate.rs |");
L.push(
  `| Durable Object calls, valid key | 1 (KeyGuard check) | measured: ${probeChecks} checks counted by RateLimit-Remaining for ${probeRequests} requests (${ratio(probeChecks, probeRequests)} per request; in-flight requests at the end of the run count but are not reported by wrk) |`,
);
L.push("| origin fetches, valid key | 1 | src/edge/gate.rs |");
L.push(
  `| KV reads, malformed key | 0 | by construction (format check before any read); measured: (d) p50 ${ms(d.p50)} ms vs ${ms(d2.p50)} ms for a well-formed unknown key, which costs exactly 1 KV read |`,
);
L.push("| KV reads, well-formed unknown key | 1 (the miss) | src/edge/gate.rs |");
L.push("");

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
L.push(`| keyward build/index_bg.wasm | ${kib(facts.wasm_raw)} KiB | ${kib(facts.wasm_gz)} KiB |`);
L.push(`| pass-through build/index_bg.wasm (reference) | ${kib(facts.pt_wasm_raw)} KiB | ${kib(facts.pt_wasm_gz)} KiB |`);
L.push("");
L.push(
  `Worker startup (${RUNNER_TEXT.startup}): median **${startup} ms** of ${starts.length} starts (${starts.join(", ")} ms); the pass-through worker: ${facts.startup_passthrough} ms (one start). ${RUNNER_TEXT.startupNote}`,
);
L.push("");

L.push("## Budgets", "");
L.push("| budget | target | measured | |", "|---|---|---|---|");
for (const [what, target, got, ok] of budgets) L.push(`| ${what} | ${target} | ${got} | ${ok ? "met" : "**missed**"} |`);
L.push("");
const bad = Object.entries(e2e).filter(([k, r]) => r.errors > 0 || (k.startsWith("d") ? r.non2xx !== r.requests : r.non2xx > 0));
if (bad.length) L.push(`Warning: unexpected statuses or socket errors in ${bad.map(([k]) => k).join(", ")}.`, "");

fs.writeFileSync(out, L.join("\n"));
