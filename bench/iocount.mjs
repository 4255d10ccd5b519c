// One snapshot of the I/O counters `make bench` divides per request (see
// bench/README.md, "I/O per request"). Prints one JSON object.
//
// usage: BENCH_ADMIN_TOKEN=... node bench/iocount.mjs --port PORT --kind keyward|passthrough
//          [--org ORG --ids FILE] [--order io-first|guard-first]
//   keyward      GET /__keyward/io (benchmark build: the isolate's KV reads,
//                calls to key guards, requests) and, for every key id in
//                FILE (one per line), GET /admin/orgs/ORG/api_keys/ID/guard
//                (the guard's calls by kind, commits, rows written, reads of
//                lease facts from the org's object), summed
//   passthrough  GET /__passthrough/io (KV reads, Durable Object calls,
//                requests)
//   --order      which is read first (default io-first). The guard reads
//                are admin requests: the worker counts them as requests and
//                as guard calls, so the snapshot before a run reads the
//                guards first and the one after reads the counters first;
//                the window between the two counter reads then holds only
//                the run's own requests.
import fs from "node:fs";

function die(msg) {
  console.error(`iocount: ${msg}`);
  process.exit(2);
}
const args = {};
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  if (!argv[i].startsWith("--") || argv[i + 1] === undefined) die(`bad argument ${argv[i]}`);
  args[argv[i].slice(2)] = argv[i + 1];
}
const token = process.env.BENCH_ADMIN_TOKEN;
if (!token || !args.port || !["keyward", "passthrough"].includes(args.kind)) die("--port, --kind and BENCH_ADMIN_TOKEN are required");
const base = `http://127.0.0.1:${Number(args.port)}`;
const headers = { authorization: `Bearer ${token}` };

async function getJson(path) {
  for (let attempt = 1; ; attempt++) {
    try {
      const r = await fetch(base + path, { headers, signal: AbortSignal.timeout(30_000) });
      const text = await r.text();
      if (r.status !== 200) throw new Error(`${path}: ${r.status} ${text.slice(0, 300)}`);
      return JSON.parse(text);
    } catch (e) {
      if (attempt >= 3) die(e.message);
      await new Promise((res) => setTimeout(res, 200));
    }
  }
}

const KINDS = ["check", "lease", "return", "refused", "refund", "revoke", "stats"];
async function guards() {
  const ids = args.ids ? fs.readFileSync(args.ids, "utf8").split("\n").filter(Boolean) : [];
  const sum = { keys: ids.length, commits: 0, rows_written: 0, facts_reads: 0, leases: 0, reserved: 0 };
  for (const k of KINDS) sum[k] = 0;
  // A few at a time: 100 keys are read in well under a second.
  for (let i = 0; i < ids.length; i += 8) {
    const got = await Promise.all(ids.slice(i, i + 8).map((id) => getJson(`/admin/orgs/${args.org}/api_keys/${id}/guard`)));
    for (const { data: d } of got) {
      for (const k of KINDS) sum[k] += d.calls?.[k] ?? 0;
      for (const k of ["commits", "rows_written", "facts_reads", "leases", "reserved"]) sum[k] += d[k] ?? 0;
    }
  }
  return sum;
}
const io = () => getJson(args.kind === "keyward" ? "/__keyward/io" : "/__passthrough/io");

const out = { t: Date.now() };
if (args.kind === "passthrough") out.io = await io();
else if ((args.order ?? "io-first") === "io-first") {
  out.io = await io();
  out.guard = await guards();
} else {
  out.guard = await guards();
  out.io = await io();
}
process.stdout.write(JSON.stringify(out) + "\n");
