// Turns a wrangler.toml into the JSON config of bench/serve.mjs: the same
// worker, bindings and compatibility date that `wrangler dev` would run, as
// Miniflare options. The config is read by wrangler's own reader
// (unstable_readConfig), so it cannot drift from what wrangler sees; binding
// kinds this script does not map are refused rather than silently dropped.
// Runs once per instance, before serve.mjs is started (importing wrangler
// costs ~1.5 s, which is kept out of serve.mjs and out of its startup time).
//
// usage: node bench/mfconfig.mjs --config wrangler.toml --port PORT --state DIR
//          [--env-file FILE] [--var NAME:VALUE]... > serve.json
//   --env-file  dotenv lines (NAME=VALUE) added as plain-text bindings, as
//               `wrangler dev --env-file` does for secrets
//   --var       overrides or adds a [vars] entry, as `wrangler dev --var`
//   --state     directory for the local KV and Durable Object state (SQLite
//               files, like `wrangler dev --persist-to`); "memory" keeps it
//               in memory
import fs from "node:fs";
import path from "node:path";
import { unstable_readConfig } from "wrangler";

function die(msg) {
  console.error(`mfconfig: ${msg}`);
  process.exit(2);
}

const args = { vars: [] };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  const v = argv[++i];
  if (v === undefined) die(`${a} needs a value`);
  if (a === "--config") args.config = v;
  else if (a === "--port") args.port = Number(v);
  else if (a === "--state") args.state = v;
  else if (a === "--env-file") args.envFile = v;
  else if (a === "--var") args.vars.push(v);
  else die(`unknown argument ${a}`);
}
if (!args.config || !Number.isInteger(args.port) || !args.state) die("--config, --port and --state are required");

const configPath = path.resolve(args.config);
const c = unstable_readConfig({ config: configPath });
if (!c.main) die(`${configPath}: no main`);

// Everything that would change what the worker sees must be mapped below.
const EMPTY = (v) => v === undefined || v === null || (Array.isArray(v) ? v.length === 0 : typeof v === "object" && Object.keys(v).length === 0);
const UNMAPPED = [
  "services", "r2_buckets", "d1_databases", "queues", "hyperdrive", "analytics_engine_datasets",
  "vectorize", "ai", "browser", "workflows", "text_blobs", "data_blobs", "wasm_modules",
  "unsafe", "send_email", "ratelimits", "secrets_store_secrets", "dispatch_namespaces",
  "mtls_certificates", "tail_consumers", "containers", "version_metadata",
];
// [assets] (the console's static files) is not served here: Static Assets
// answer their paths before the worker runs, so the worker sees the same
// requests either way; only a binding would change what it sees.
if (c.assets && c.assets.binding) die(`${configPath}: assets.binding is set, and bench/mfconfig.mjs does not map it`);
for (const k of UNMAPPED) {
  const v = c[k];
  const empty = k === "queues" ? EMPTY(v?.producers) && EMPTY(v?.consumers) : EMPTY(v);
  if (!empty) die(`${configPath}: "${k}" is set, and bench/mfconfig.mjs does not map it`);
}
if (!EMPTY(c.compatibility_flags) && c.compatibility_flags.some((f) => f.startsWith("nodejs_compat"))) {
  die(`${configPath}: nodejs_compat needs wrangler's bundling; not supported here`);
}

// Durable Objects: SQLite-backed iff the class is in a new_sqlite_classes
// migration (what wrangler does).
const sqlite = new Set();
for (const m of c.migrations || []) {
  for (const cls of m.new_sqlite_classes || []) sqlite.add(cls);
  for (const r of m.renamed_classes || []) if (sqlite.has(r.from)) sqlite.add(r.to);
  for (const cls of m.deleted_classes || []) sqlite.delete(cls);
}
const durableObjects = {};
for (const b of c.durable_objects?.bindings || []) {
  if (b.script_name) die(`${configPath}: Durable Object ${b.name} lives in another script`);
  durableObjects[b.name] = { className: b.class_name, useSQLite: sqlite.has(b.class_name) };
}

const kvNamespaces = {};
for (const kv of c.kv_namespaces || []) kvNamespaces[kv.binding] = { id: kv.id ?? kv.binding };

const bindings = { ...(c.vars || {}) };
for (const v of args.vars) {
  const i = v.indexOf(":");
  if (i <= 0) die(`--var ${v}: expected NAME:VALUE`);
  bindings[v.slice(0, i)] = v.slice(i + 1);
}
if (args.envFile) {
  for (const line of fs.readFileSync(args.envFile, "utf8").split("\n")) {
    const m = line.match(/^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$/);
    if (!m) continue;
    bindings[m[1]] = m[2].replace(/^"(.*)"$/, "$1").replace(/^'(.*)'$/, "$1");
  }
}

const root = path.dirname(configPath);
const out = {
  name: c.name,
  host: "127.0.0.1",
  port: args.port,
  persist: args.state === "memory" ? false : path.resolve(args.state),
  worker: {
    name: c.name,
    modules: true,
    scriptPath: c.main,
    // entry.mjs imports ../build/index.js: module names are relative to the
    // config's directory, as in wrangler's bundle.
    modulesRoot: root,
    // wrangler's rules for an ES-module worker: .js is ESM (Miniflare's
    // default would be CommonJS), .wasm a compiled module.
    modulesRules: [
      { type: "ESModule", include: ["**/*.js", "**/*.mjs"] },
      { type: "CompiledWasm", include: ["**/*.wasm", "**/*.wasm?module"] },
    ],
    compatibilityDate: c.compatibility_date,
    compatibilityFlags: c.compatibility_flags || [],
    bindings,
    kvNamespaces,
    durableObjects,
  },
};
if (!out.worker.compatibilityDate) die(`${configPath}: no compatibility_date`);
process.stdout.write(JSON.stringify(out, null, 2) + "\n");
