#!/usr/bin/env bash
# `make deploy-check`: validates the configuration and the bundle the way a
# real deploy would — `wrangler deploy --dry-run` reads wrangler.toml (vars,
# bindings, Durable Object migrations), bundles worker/entry.mjs with the
# built wasm (build/, `make build`) and writes exactly what it would upload
# to build/dry-run — then checks the upload's size against the Workers
# limits. Offline: --dry-run needs no login and no account; CI=true and
# WRANGLER_SEND_METRICS=false keep wrangler from prompting and from sending
# metrics, and WRANGLER_HIDE_BANNER=true skips its banner, whose update check
# is otherwise wrangler's one network call here (a registry query with a 3 s
# timeout, cached a day in $TMPDIR/update-check).
#
# Limits (https://developers.cloudflare.com/workers/platform/limits/#worker-size):
# a Worker may be at most 3 MB after compression (gzip) on the Workers Free
# plan and 10 MB on the Workers Paid plan. wrangler 4.86 measures them in
# MiB (its bundle reporter: MAX_GZIP_SIZE_BYTES = 3 * 1024 * 1024), and so
# does this check. Default: the Free plan's 3 MiB, the stricter one;
# DEPLOY_PLAN=paid checks against 10 MiB. Newer Cloudflare documentation
# replaces both with one 64 MiB limit on the uncompressed size, on every
# plan; that is checked too.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=build/dry-run
WRANGLER=node_modules/.bin/wrangler
PLAN=${DEPLOY_PLAN:-free}
case "$PLAN" in
  free) GZIP_LIMIT=$((3 * 1024 * 1024)) ;;
  paid) GZIP_LIMIT=$((10 * 1024 * 1024)) ;;
  *) echo "deploy-check: DEPLOY_PLAN must be free or paid, not '$PLAN'" >&2; exit 2 ;;
esac
RAW_LIMIT=$((64 * 1024 * 1024))

[ -f build/index_bg.wasm ] && [ -f build/index.js ] || {
  echo "deploy-check: the worker is not built (build/index_bg.wasm): run \`make build\` first" >&2
  exit 1
}
[ -x "$WRANGLER" ] || { echo "deploy-check: wrangler is not installed: run \`make tools\` (npm ci)" >&2; exit 1; }

rm -rf "$OUT"
mkdir -p "$OUT"
log=$OUT/../dry-run.log
if ! CI=true WRANGLER_SEND_METRICS=false WRANGLER_HIDE_BANNER=true FORCE_COLOR=0 \
  "$WRANGLER" deploy --dry-run --outdir "$OUT" >"$log" 2>&1; then
  cat "$log" >&2
  echo "deploy-check: wrangler deploy --dry-run failed (above)" >&2
  exit 1
fi
# A deploy that succeeds with warnings is still worth reading.
if grep -q '\[WARNING\]\|\[ERROR\]' "$log"; then
  echo "deploy-check: wrangler warned:" >&2
  grep -A3 '\[WARNING\]\|\[ERROR\]' "$log" >&2
fi

# wrangler's own figures: "Total Upload: 742.68 KiB / gzip: 298.57 KiB".
reported=$(sed -n 's/\x1b\[[0-9;]*m//g; s/^Total Upload: \(.*\)$/\1/p' "$log")
[ -n "$reported" ] || { cat "$log" >&2; echo "deploy-check: no 'Total Upload' line in wrangler's output" >&2; exit 1; }

# The same figures measured from the outdir: every module wrangler wrote
# (the bundled entry and the wasm it references; not README.md, and source
# maps only if wrangler.toml uploads them), gzipped as wrangler does (Node's
# zlib defaults, over the modules concatenated, the entry last).
maps=false
grep -Eq '^\s*upload_source_maps\s*=\s*true' wrangler.toml && maps=true
node - "$OUT" "$maps" "$GZIP_LIMIT" "$RAW_LIMIT" "$PLAN" "$reported" <<'JS'
const fs = require("node:fs");
const path = require("node:path");
const zlib = require("node:zlib");
const [dir, maps, gzipLimit, rawLimit, plan, reported] = process.argv.slice(2);
const files = fs.readdirSync(dir).filter((f) => f !== "README.md" && (maps === "true" || !f.endsWith(".map")));
const main = files.find((f) => /^entry\.(m?js)$/.test(f)) ?? files.find((f) => f.endsWith(".js"));
if (!main) { console.error(`deploy-check: no bundled entry in ${dir}: ${files.join(", ")}`); process.exit(1); }
const ordered = [...files.filter((f) => f !== main).sort(), main];
const bufs = ordered.map((f) => fs.readFileSync(path.join(dir, f)));
const raw = bufs.reduce((n, b) => n + b.length, 0);
const gz = zlib.gzipSync(Buffer.concat(bufs)).length;
const kib = (n) => `${(n / 1024).toFixed(2)} KiB`;
const mib = (n) => `${+(n / 1048576).toFixed(2)} MiB`;
console.log(`deploy-check: wrangler deploy --dry-run OK (config and bundle valid); upload in ${dir}/:`);
for (let i = 0; i < ordered.length; i++) console.log(`  ${ordered[i].padEnd(60)} ${kib(bufs[i].length).padStart(12)}`);
console.log(`  wrangler reports:   ${reported}`);
console.log(`  measured (outdir):  ${kib(raw)} / gzip: ${kib(gz)}`);
const pct = (n, l) => `${((n / l) * 100).toFixed(1)}%`;
console.log(`  gzip ${kib(gz)} of the ${plan} plan's ${mib(+gzipLimit)} limit (${pct(gz, +gzipLimit)}); uncompressed ${kib(raw)} of ${mib(+rawLimit)} (${pct(raw, +rawLimit)})`);
// wrangler's figure is the one a deploy is judged by; fail on either.
const m = /gzip:\s*([\d.]+)\s*KiB/.exec(reported);
const reportedGz = m ? Math.round(parseFloat(m[1]) * 1024) : NaN;
let bad = false;
if (!(reportedGz <= +gzipLimit) || gz > +gzipLimit) {
  console.error(`deploy-check: FAIL — the gzipped upload exceeds the ${plan} plan's ${mib(+gzipLimit)} limit`);
  bad = true;
}
if (raw > +rawLimit) {
  console.error(`deploy-check: FAIL — the uncompressed upload exceeds ${mib(+rawLimit)}`);
  bad = true;
}
process.exit(bad ? 1 : 0);
JS

# keyward's own budget (README, Performance): the wasm at most 300 KiB
# gzipped (gzip -9), far below the platform's limit — every byte ships to
# every edge location and is compiled on every cold start.
BUDGET=$((300 * 1024))
wasm_gz=$(gzip -9c build/index_bg.wasm | wc -c)
echo "deploy-check: build/index_bg.wasm is $wasm_gz bytes gzipped of keyward's $BUDGET-byte budget (300 KiB)"
if [ "$wasm_gz" -gt "$BUDGET" ]; then
  echo "deploy-check: FAIL — the wasm is over keyward's size budget" >&2
  exit 1
fi
