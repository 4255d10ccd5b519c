#!/usr/bin/env bash
# `make soak`: SOAK_SECONDS (600) of steady mixed load against keyward on
# `wrangler dev`, started as the end-to-end tests start it
# (tests/common/mod.rs): a fresh state directory, free ports, an env file
# with ADMIN_TOKEN and ORIGIN_SIGNING_SECRET, the demo origin
# (demo/origin.mjs) as ORIGIN_URL, USAGE_ROLLUP_SECONDS=1. The load, the
# workerd memory samples and the report are soak/driver.mjs's; this script
# starts and stops the processes and hands it the wrangler log.
#
# Writes soak/results.md (SOAK_RESULTS) and prints it. Exits non-zero when
# the run has findings (a 5xx, an unexpected status, a transport error,
# memory growth beyond 10% after warm-up, a panic or error in the log).
#
# Knobs (environment): SOAK_SECONDS (600), SOAK_RATE requests/s (60),
# SOAK_WARMUP seconds (min(120, SOAK_SECONDS/5)), SOAK_INFLIGHT (64, the
# most requests in flight before the schedule is counted as lagging),
# SOAK_RESULTS (soak/results.md), SOAK_KEEP (1 keeps the temp dir: logs,
# raw samples), SOAK_COMMIT (the commit to name in the report when the tree
# is not a git checkout), SOAK_BUILD (build: the worker-build output to run,
# e.g. a copy taken earlier), WRANGLER (node_modules/.bin/wrangler),
# SOAK_RUNTIME (wrangler: `wrangler dev`, the soak; workerd: the same
# worker, state and vars on workerd through Miniflare's API — bench/serve.mjs,
# as `make bench` and the harness's start_on_workerd run it — without
# wrangler's proxy and inspector, to tell their memory and connections from
# keyward's), SOAK_INSPECT (1: attach a DevTools session to wrangler's
# inspector and sample keyward's JS heap once a minute; it costs throughput
# on a busy machine — every proxied request then also sends four inspector
# events through wrangler's inspector proxy to the driver).
#
# One build is measured from start to end: the bundle (SOAK_BUILD's
# index.js, index_bg.wasm, package.json, worker/) and worker/entry.mjs are
# copied into the run's temp directory, and wrangler runs a config of its
# own whose `main` is that copy. A rebuild of build/ during the run (which
# `wrangler dev` would otherwise pick up and reload) does not reach it.
#
# Everything listens on and sends to 127.0.0.1 only; every process started
# here runs in its own session under a watchdog and is killed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SOAK_SECONDS=${SOAK_SECONDS:-600}
SOAK_RATE=${SOAK_RATE:-60}
SOAK_RESULTS=${SOAK_RESULTS:-soak/results.md}
SOAK_BUILD=${SOAK_BUILD:-build}
SOAK_RUNTIME=${SOAK_RUNTIME:-wrangler}
case $SOAK_RUNTIME in wrangler | workerd) ;; *) echo "soak: SOAK_RUNTIME is wrangler or workerd" >&2; exit 2 ;; esac
WRANGLER=${WRANGLER:-$ROOT/node_modules/.bin/wrangler}
ADMIN_TOKEN=soak-admin-token-0123456789-abcdefghijklmnop
SIGNING_SECRET=soak-signing-secret-abcdefghij-0123456789
# As the tests run wrangler (CI: no prompts, no metrics), plus: no banner
# (its update check is a registry query) and no download of the
# `Request.cf` object (wrangler dev otherwise looks up workers.cloudflare.com
# at start and logs a warning when it cannot).
export CI=true WRANGLER_SEND_METRICS=false WRANGLER_HIDE_BANNER=true CLOUDFLARE_CF_FETCH_ENABLED=false

die() { printf 'soak: %s\n' "$*" >&2; exit 1; }

[ -f "$SOAK_BUILD/index_bg.wasm" ] && [ -f "$SOAK_BUILD/index.js" ] ||
  die "$SOAK_BUILD/index_bg.wasm is missing: run \`make soak\` (it builds the worker first)"
[ -x "$WRANGLER" ] || die "wrangler is not installed ($WRANGLER): run \`make tools\`"
# Sources changed after the build: they are not in what the soak measures.
newer=$(find src policy -type f -newer "$SOAK_BUILD/index_bg.wasm" | head -n5 | tr '\n' ' ')
if [ -n "$newer" ]; then
  [ "$SOAK_BUILD" != build ] || die "the worker build is older than ${newer% }: run \`make soak\` (it rebuilds first)"
  echo "soak: note: ${newer% } changed after $SOAK_BUILD was built (not in the build measured)" >&2
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/keyward-soak.XXXXXX")
PGIDS=()
DRIVER=
cleanup() {
  local pg all=("${PGIDS[@]}")
  [ -z "$DRIVER" ] || kill -TERM "$DRIVER" 2>/dev/null || true
  for pg in "${all[@]}"; do kill -TERM -- "-$pg" 2>/dev/null || true; done
  for pg in "${all[@]}"; do stop "$pg"; done
  if [ -n "${SOAK_KEEP:-}" ]; then echo "soak: kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# spawn, stop, free_port: scripts/procs.sh.
. "$ROOT/scripts/procs.sh"

# The build, copied once. worker-build writes index.js before wasm-opt
# rewrites index_bg.wasm: a copy is taken only when no file changed while it
# was copied, and its wasm's imports must all be in its index.js (a copy
# that caught a rebuild midway would pair two builds).
APP=$TMP/app
snapshot() {
  local i before after
  for i in $(seq 1 60); do
    before=$(stat -c '%n %s %Y' "$SOAK_BUILD"/index.js "$SOAK_BUILD"/index_bg.wasm "$SOAK_BUILD"/package.json worker/entry.mjs)
    rm -rf "$APP" && mkdir -p "$APP/build" "$APP/worker"
    cp -p "$SOAK_BUILD"/index.js "$SOAK_BUILD"/index_bg.wasm "$SOAK_BUILD"/package.json "$APP/build/"
    [ ! -d "$SOAK_BUILD/worker" ] || cp -pR "$SOAK_BUILD/worker" "$APP/build/"
    cp -p worker/entry.mjs "$APP/worker/entry.mjs"
    sleep 1
    after=$(stat -c '%n %s %Y' "$SOAK_BUILD"/index.js "$SOAK_BUILD"/index_bg.wasm "$SOAK_BUILD"/package.json worker/entry.mjs)
    if [ "$before" = "$after" ] && node -e '
      // The import names of the wasm (its import section, read by hand:
      // Node 20 cannot compile this module), each of which index.js must hold.
      const fs = require("fs");
      const [js, wasm] = process.argv.slice(1);
      const b = fs.readFileSync(wasm);
      let o = 8;
      const u = () => { let r = 0, s = 0, x; do { x = b[o++]; r += (x & 0x7f) * 2 ** s; s += 7; } while (x & 0x80); return r; };
      const str = () => { const n = u(); o += n; return b.toString("utf8", o - n, o); };
      const ref = () => { if (b[o] === 0x63 || b[o] === 0x64) { o++; u(); } else o++; };
      const limits = () => { const f = b[o++]; u(); if (f & 1) u(); };
      const names = [];
      while (o < b.length) {
        const id = b[o++], size = u(), end = o + size;
        if (id !== 2) { o = end; continue; }
        for (let n = u(); n > 0; n--) {
          str();
          names.push(str());
          const kind = b[o++];
          if (kind === 0) u(); else if (kind === 1) { ref(); limits(); } else if (kind === 2) limits();
          else if (kind === 3) { ref(); o++; } else if (kind === 4) { o++; u(); } else break;
        }
        break;
      }
      const text = fs.readFileSync(js, "utf8");
      const missing = names.filter((n) => !text.includes(n));
      if (!names.length || missing.length) { console.error(`wasm imports not in index.js: ${missing.slice(0, 3).join(", ") || "(none read)"}`); process.exit(1); }
    ' "$APP/build/index.js" "$APP/build/index_bg.wasm"; then
      return 0
    fi
    echo "soak: $SOAK_BUILD changed while it was copied (a rebuild?); trying again" >&2
    sleep 4
  done
  die "could not take a consistent copy of $SOAK_BUILD in 5 minutes"
}
snapshot

# The facts the report names.
commit=${SOAK_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
# Files of the worker's sources that differ from the commit now (the build
# may or may not contain them: see `newer`).
dirty=$(git status --porcelain -- src policy worker Cargo.toml Cargo.lock wrangler.toml 2>/dev/null | awk '{print $2}' | tr '\n' ' ')
{
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "commit=$commit"
  echo "dirty=${dirty% }"
  echo "newer=${newer% }"
  echo "build_dir=$SOAK_BUILD"
  echo "nproc=$(nproc)"
  echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "mem=$(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel=$(uname -r)"
  echo "node=$(node --version)"
  echo "wrangler=$("$WRANGLER" --version 2>/dev/null | tail -n1)"
  echo "workerd=$(node -p 'require(require.resolve("workerd/package.json", { paths: [require("fs").realpathSync(process.argv[1]) + "/../.."] })).version' "$WRANGLER" 2>/dev/null || echo '?')"
  echo "wasm_bytes=$(stat -c %s "$APP/build/index_bg.wasm")"
  echo "wasm_sha256=$(sha256sum "$APP/build/index_bg.wasm" | cut -c1-16)"
  echo "wasm_built=$(date -u -r "$APP/build/index_bg.wasm" '+%Y-%m-%d %H:%M:%S UTC')"
} >"$TMP/facts"

# The origin, then wrangler dev (the e2e harness's invocation). Ports are
# chosen free, then bound by the server a moment later: another process may
# take one in between (or wrangler may pick it for one of its own
# listeners), so a server that does not come up is started again on fresh
# ports, up to three times (tests/common/mod.rs does the same).
fresh_port() { # a free port other than the ones given
  local p
  while :; do
    p=$(free_port)
    case " $* " in *" $p "*) ;; *) echo "$p"; return ;; esac
  done
}
start_origin() {
  ORIGIN_PORT=$(fresh_port)
  spawn "$TMP/origin.log" env PORT="$ORIGIN_PORT" node demo/origin.mjs
  PG_ORIGIN=$SPAWNED
}
start_wrangler() {
  PORT=$(fresh_port "$ORIGIN_PORT")
  INSPECTOR=$(fresh_port "$ORIGIN_PORT" "$PORT")
  spawn "$TMP/wrangler.log" "$WRANGLER" dev --config "$TMP/wrangler.toml" --port "$PORT" --ip 127.0.0.1 \
    --inspector-port "$INSPECTOR" --persist-to "$TMP/wrangler-state" --env-file "$TMP/soak.env" \
    --show-interactive-dev-session=false --var "ORIGIN_URL:http://127.0.0.1:$ORIGIN_PORT" \
    --var USAGE_ROLLUP_SECONDS:1
  PG_WRANGLER=$SPAWNED
}
# up PGID PORT PATH LOG: waits until PORT answers PATH (any HTTP status);
# fails when the process group is gone, the log says a port was taken, or
# after 120 s.
up() {
  local deadline=$(($(date +%s) + 120))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$2$3")" != "000" ]; do
    kill -0 -- "-$1" 2>/dev/null || { echo "exited"; return 1; }
    ! grep -qiE 'EADDRINUSE|address already in use' "$4" || { echo "a port was taken"; return 1; }
    [ "$(date +%s)" -le "$deadline" ] || { echo "nothing answered in 120 s"; return 1; }
    sleep 0.2
  done
}
# start_with_retry NAME START PGID_VAR PORT_VAR PATH LOG
start_with_retry() {
  local attempt why pg port
  for attempt in 1 2 3; do
    "$2"
    pg=${!3}
    port=${!4}
    if why=$(up "$pg" "$port" "$5" "$6"); then return 0; fi
    kill -TERM -- "-$pg" 2>/dev/null || true
    sleep 1
    kill -KILL -- "-$pg" 2>/dev/null || true
    mv "$6" "$6.attempt-$attempt"
    echo "soak: $1 on port $port did not come up ($why); $([ "$attempt" -lt 3 ] && echo 'trying fresh ports' || echo 'giving up')" >&2
  done
  cat "$6.attempt-3" >&2
  die "$1 did not come up"
}

start_with_retry "the origin" start_origin PG_ORIGIN ORIGIN_PORT /__origin/log "$TMP/origin.log"

# A config of its own (as the harness's isolated_config): `main` is this
# run's copy of the entry (which imports ../build/index.js, the copied
# bundle), and the bundles wrangler keeps next to its config (.wrangler/tmp)
# are this run's alone.
grep -q '^main = ' wrangler.toml || die "wrangler.toml has no \`main = \` line"
# The console's assets (make builds them), by absolute path.
sed -e "s#^main = .*#main = \"$APP/worker/entry.mjs\"#" \
  -e "s#^directory = \"\./console/dist\"\$#directory = \"$(pwd)/console/dist\"#" wrangler.toml >"$TMP/wrangler.toml"
grep -q "^main = \"$APP/worker/entry.mjs\"$" "$TMP/wrangler.toml" || die "could not point main at the copy"
printf 'ADMIN_TOKEN=%s\nORIGIN_SIGNING_SECRET=%s\n' "$ADMIN_TOKEN" "$SIGNING_SECRET" >"$TMP/soak.env"
# SOAK_RUNTIME=workerd: the same config, bundle, state and vars as Miniflare
# options (bench/mfconfig.mjs), served by bench/serve.mjs.
start_workerd() {
  PORT=$(fresh_port "$ORIGIN_PORT")
  INSPECTOR=0
  node bench/mfconfig.mjs --config "$TMP/wrangler.toml" --port "$PORT" --state "$TMP/wrangler-state" \
    --env-file "$TMP/soak.env" --var "ORIGIN_URL:http://127.0.0.1:$ORIGIN_PORT" --var USAGE_ROLLUP_SECONDS:1 >"$TMP/serve.json"
  spawn "$TMP/wrangler.log" node bench/serve.mjs "$TMP/serve.json"
  PG_WRANGLER=$SPAWNED
}
if [ "$SOAK_RUNTIME" = workerd ]; then
  start_with_retry "workerd (bench/serve.mjs)" start_workerd PG_WRANGLER PORT / "$TMP/wrangler.log"
else
  start_with_retry "wrangler dev" start_wrangler PG_WRANGLER PORT / "$TMP/wrangler.log"
fi
echo "soak: keyward on http://127.0.0.1:$PORT (origin :$ORIGIN_PORT, inspector :$INSPECTOR; bundle $APP), ${SOAK_SECONDS}s at ${SOAK_RATE} req/s" >&2

mkdir -p "$(dirname "$SOAK_RESULTS")"
status=0
# In the background and waited for, so that INT/TERM reach this script's
# trap at once (bash runs traps only between foreground commands).
# The driver reads keyward's JS heap through the inspector: Node 20 needs
# --experimental-websocket for a WebSocket client (Node 22 has one).
NODE_WS=()
if node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' 2>/dev/null; then :
elif node --experimental-websocket -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' 2>/dev/null; then NODE_WS=(--experimental-websocket)
fi
SOAK_ADMIN_TOKEN=$ADMIN_TOKEN SOAK_SIGNING_SECRET=$SIGNING_SECRET node "${NODE_WS[@]}" soak/driver.mjs --port "$PORT" --origin-port "$ORIGIN_PORT" \
  --runtime "$SOAK_RUNTIME" --inspector "$([ "${SOAK_INSPECT:-}" = 1 ] && echo "$INSPECTOR" || echo 0)" --pgid "$PG_WRANGLER" --log "$TMP/wrangler.log" --facts "$TMP/facts" --tmp "$TMP" \
  --seconds "$SOAK_SECONDS" --rate "$SOAK_RATE" --out "$SOAK_RESULTS" &
DRIVER=$!
wait "$DRIVER" || status=$?
DRIVER=
[ -f "$SOAK_RESULTS" ] && cat "$SOAK_RESULTS"
exit "$status"
