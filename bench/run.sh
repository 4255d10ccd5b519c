#!/usr/bin/env bash
# `make bench`: the core benchmark (divan), then keyward end to end on
# workerd against the baselines (pass-through; + 1 KV read; + 1 KV read +
# 1 Durable Object call) and the bare origin, with wrk; then a short counting
# run per scenario for its I/O per request. Writes bench/results.md and
# prints it. Everything listens on 127.0.0.1 only; every process started
# here is killed on exit.
#
# Every keyward scenario runs the benchmark build (cargo feature `bench`:
# KEY_GUARD=off, GUARD_DELAY_MS and the /__keyward/io counters), built here
# into bench/keyward-bench/build/ when its sources changed; the normal build
# (build/, `make build`) is only measured for size and startup.
#
# Knobs (environment): ROUNDS (5), DURATION seconds per run (5), CONNS (4),
# THREADS (1), STARTS (3, worker startup samples), KEYS (100), WARMUP (2),
# COUNT_DURATION seconds of each I/O counting run (5), SETTLE seconds waited
# before the counters are read after a counting run (1.5), GUARD_DELAY_MS
# for (c50)/(h50) (50), CORE (1; 0 skips the core benchmark, for quick
# end-to-end checks), RESULTS (bench/results.md: where the report is
# written), KEEP_TMP (1 keeps the raw outputs),
# RUNNER: how the workers run on workerd —
#   miniflare (default)  bench/serve.mjs: Miniflare's API, no inspector, no
#                        wrangler proxy, no Node process on the request path
#   wrangler             the `wrangler dev` CLI (inspector always attached;
#                        every subrequest relayed through its Node process)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
CONNS=${CONNS:-4}
THREADS=${THREADS:-1}
STARTS=${STARTS:-3}
KEYS=${KEYS:-100}
WARMUP=${WARMUP:-2}
COUNT_DURATION=${COUNT_DURATION:-5}
SETTLE=${SETTLE:-1.5}
GUARD_DELAY_MS=${GUARD_DELAY_MS:-50}
RUNNER=${RUNNER:-miniflare}
CORE=${CORE:-1}
RESULTS=${RESULTS:-bench/results.md}

CARGO_BIN=${CARGO_BIN:-$HOME/.cargo/bin}
export PATH="$CARGO_BIN:$PATH"
export WASM_BINDGEN_BIN=${WASM_BINDGEN_BIN:-$CARGO_BIN/wasm-bindgen}
export ESBUILD_BIN=${ESBUILD_BIN:-$ROOT/node_modules/.bin/esbuild}
export WASM_OPT_BIN=${WASM_OPT_BIN:-$ROOT/node_modules/.bin/wasm-opt}
# The final wasm-opt pass of the Makefile's build/ rule (`make bench` passes
# its WASM_FEATURES; this default is the same list).
WASM_OPT_FEATURES=${WASM_OPT_FEATURES:---enable-mutable-globals --enable-sign-ext --enable-nontrapping-float-to-int --enable-bulk-memory --enable-multivalue --enable-reference-types --enable-exception-handling}
export CI=true WRANGLER_SEND_METRICS=false
WRANGLER=$ROOT/node_modules/.bin/wrangler
ADMIN_TOKEN=bench-admin-token-0123456789abcdef
SIGNING_SECRET=bench-signing-secret-0123456789abcdef

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

[ -f build/index_bg.wasm ] || die "build/index_bg.wasm is missing: run \`make bench\` (it builds the worker first)"
[ -x "$WRANGLER" ] || die "wrangler is not installed: run \`make bench\` (it runs \`make tools\` first)"
case "$RUNNER" in
  miniflare) [ -f node_modules/miniflare/package.json ] || die "node_modules/miniflare is missing (it comes with wrangler): run \`make tools\`" ;;
  wrangler) ;;
  *) die "RUNNER=$RUNNER: expected miniflare or wrangler" ;;
esac

# --- processes: each in its own session under a watchdog that kills its
# group if this script dies; all killed by the trap.
TMP=$(mktemp -d "${TMPDIR:-/tmp}/keyward-bench.XXXXXX")
PGIDS=()
cleanup() {
  local pg all=("${PGIDS[@]}")
  for pg in "${all[@]}"; do kill -TERM -- "-$pg" 2>/dev/null || true; done
  for pg in "${all[@]}"; do stop "$pg"; done
  if [ -n "${KEEP_TMP:-}" ]; then echo "bench: kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# spawn, stop, free_port: scripts/procs.sh.
. "$ROOT/scripts/procs.sh"

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# wait_up PORT LOG: until anything answers HTTP on 127.0.0.1:PORT.
wait_up() {
  local port=$1 logf=$2 deadline=$(($(date +%s) + 120))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$port/")" != "000" ]; do
    if [ "$(date +%s)" -gt "$deadline" ]; then
      cat "$logf" >&2
      die "nothing answered on 127.0.0.1:$port"
    fi
    sleep 0.05
  done
}

# start_worker NAME ORIGIN_PORT [--config FILE] [--var K:V]...: starts a
# worker (default config: wrangler.toml) with the RUNNER, a fresh state dir
# and its own env file; sets PORT_<NAME>, PG_<NAME> and STARTUP_MS (spawn of
# the runner to the first served response).
#   wrangler:  `wrangler dev` (local mode, the e2e harness's invocation)
#   miniflare: bench/mfconfig.mjs turns the wrangler config into serve.json
#              (not timed), then bench/serve.mjs runs it
start_worker() {
  local name=$1 origin_port=$2
  shift 2
  local dir=$TMP/$name port inspector t0 config=wrangler.toml logf
  if [ "${1:-}" = --config ]; then config=$2; shift 2; fi
  mkdir -p "$dir"
  printf 'ADMIN_TOKEN=%s\nORIGIN_SIGNING_SECRET=%s\n' "$ADMIN_TOKEN" "$SIGNING_SECRET" >"$dir/bench.env"
  port=$(free_port)
  if [ "$RUNNER" = wrangler ]; then
    inspector=$(free_port)
    logf=$dir/wrangler.log
    t0=$(now_ms)
    spawn "$logf" "$WRANGLER" dev --config "$config" --port "$port" --ip 127.0.0.1 --inspector-port "$inspector" \
      --persist-to "$dir/state" --env-file "$dir/bench.env" --show-interactive-dev-session=false \
      --log-level warn --var "ORIGIN_URL:http://127.0.0.1:$origin_port" "$@"
  else
    logf=$dir/serve.log
    node bench/mfconfig.mjs --config "$config" --port "$port" --state "$dir/state" --env-file "$dir/bench.env" \
      --var "ORIGIN_URL:http://127.0.0.1:$origin_port" "$@" >"$dir/serve.json" || die "bench/mfconfig.mjs failed for $config"
    t0=$(now_ms)
    spawn "$logf" node bench/serve.mjs "$dir/serve.json"
  fi
  wait_up "$port" "$logf"
  STARTUP_MS=$(($(now_ms) - t0))
  printf -v "PORT_$name" '%s' "$port"
  printf -v "PG_$name" '%s' "$SPAWNED"
}

# --- 0. prerequisites and builds
if ! command -v wrk >/dev/null; then
  log "installing wrk (apt)"
  apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
fi
command -v wrk >/dev/null || die "wrk is not installed and apt-get could not install it"

# The baselines (b), (b1), (b2): one crate, MODE=plain|kv|kv_do.
PT=bench/passthrough
if [ ! -f $PT/build/index_bg.wasm ] || [ -n "$(find $PT/src $PT/Cargo.toml $PT/Cargo.lock -newer $PT/build/index_bg.wasm)" ]; then
  log "building the baseline worker (bench/passthrough: worker-build --release)"
  (cd $PT && worker-build --release) >"$TMP/passthrough-build.log" 2>&1 || {
    cat "$TMP/passthrough-build.log" >&2
    die "baseline build failed"
  }
fi

# keyward's benchmark build: the same sources, profile and final wasm-opt
# pass as build/ (Makefile), plus `--features bench`, in its own cargo target
# directory (a build with other features never overwrites build/'s, nor
# waits on its lock). Its entry and config are generated from
# worker/entry.mjs and wrangler.toml, so they cannot drift.
KB=bench/keyward-bench
KB_WASM=$KB/build/index_bg.wasm
if [ ! -f $KB_WASM ] || [ -n "$(find src policy Cargo.toml Cargo.lock -newer $KB_WASM)" ]; then
  log "building keyward's benchmark build (worker-build --release -- --features bench)"
  {
    worker-build --release --out-dir $KB/build -- --features bench --target-dir "$ROOT/target/bench" &&
      # shellcheck disable=SC2086
      "$WASM_OPT_BIN" $KB_WASM -o $KB_WASM ${WASM_OPT_PASSES:--Oz} --strip-debug --strip-producers $WASM_OPT_FEATURES
  } >"$TMP/keyward-bench-build.log" 2>&1 || {
    cat "$TMP/keyward-bench-build.log" >&2
    rm -f $KB_WASM
    die "keyward benchmark build failed"
  }
fi
grep -q '"\.\./build/index\.js"' worker/entry.mjs || die "worker/entry.mjs no longer imports \"../build/index.js\": update bench/run.sh"
sed 's#"\.\./build/index\.js"#"./build/index.js"#' worker/entry.mjs >$KB/entry.mjs
grep -q '^main = "worker/entry\.mjs"$' wrangler.toml || die "wrangler.toml: main is no longer worker/entry.mjs: update bench/run.sh"
{
  echo "# Generated by bench/run.sh from ../../wrangler.toml: keyward's benchmark build."
  # The console's assets, relative to this config's directory.
  sed -e 's#^main = "worker/entry\.mjs"$#main = "entry.mjs"#' \
    -e 's#^directory = "\./console/dist"$#directory = "../../console/dist"#' wrangler.toml
} >$KB/wrangler.toml
KB_CONFIG=$KB/wrangler.toml
LEASE_MS=$(awk -F'"' '/^LEASE_MS *=/{print $2}' wrangler.toml)

{
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "nproc=$(nproc)"
  echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "kernel=$(uname -r)"
  echo "node=$(node --version)"
  echo "wrangler=$("$WRANGLER" --version 2>/dev/null | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | head -n1)"
  echo "runner=$RUNNER"
  echo "miniflare=$(node -p 'require("./node_modules/miniflare/package.json").version' 2>/dev/null || echo '?')"
  echo "workerd=$(node -p 'require("./node_modules/workerd/package.json").version' 2>/dev/null || echo '?')"
  echo "wrk=$(wrk -v 2>&1 | head -n1 | awk '{print $2}')"
  echo "rustc=$(rustc --version | awk '{print $2}')"
  echo "git=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src policy worker Cargo.toml Cargo.lock wrangler.toml || echo '+dirty')"
  printf 'rounds=%s\nduration=%s\nconns=%s\nthreads=%s\nkeys=%s\n' "$ROUNDS" "$DURATION" "$CONNS" "$THREADS" "$KEYS"
  printf 'count_duration=%s\nsettle=%s\nguard_delay_ms=%s\nlease_ms=%s\n' "$COUNT_DURATION" "$SETTLE" "$GUARD_DELAY_MS" "${LEASE_MS:-1000}"
  echo "wasm_raw=$(stat -c %s build/index_bg.wasm)"
  echo "wasm_gz=$(gzip -9 -c build/index_bg.wasm | wc -c)"
  echo "bench_wasm_raw=$(stat -c %s $KB_WASM)"
  echo "bench_wasm_gz=$(gzip -9 -c $KB_WASM | wc -c)"
  echo "pt_wasm_raw=$(stat -c %s $PT/build/index_bg.wasm)"
  echo "pt_wasm_gz=$(gzip -9 -c $PT/build/index_bg.wasm | wc -c)"
} >"$TMP/facts"

# --- 1. core, native
if [ "$CORE" = 0 ]; then
  log "core benchmark skipped (CORE=0)"
else
  log "core benchmark (cargo bench --bench core)"
  cargo bench --bench core 2>&1 | tee "$TMP/core.txt" >&2
fi

# --- 2. processes: the origin; the baselines (plain, kv, kv_do); the normal
# build x STARTS (startup only); the benchmark build three times: guard on,
# KEY_GUARD=off, and GUARD_DELAY_MS (a guard far away).
log "starting the origin, the baselines and keyward"
ORIGIN_PORT=$(free_port)
spawn "$TMP/origin.log" env PORT="$ORIGIN_PORT" node bench/origin.mjs
PG_origin=$SPAWNED
wait_up "$ORIGIN_PORT" "$TMP/origin.log"

start_worker passthrough "$ORIGIN_PORT" --config $PT/wrangler.toml --var MODE:plain
echo "startup_passthrough=$STARTUP_MS" >>"$TMP/facts"
start_worker pt_kv "$ORIGIN_PORT" --config $PT/wrangler.toml --var MODE:kv
start_worker pt_kv_do "$ORIGIN_PORT" --config $PT/wrangler.toml --var MODE:kv_do

# Startup of what ships: the normal build (build/, wrangler.toml).
starts=()
for s in $(seq 1 "$STARTS"); do
  start_worker normal "$ORIGIN_PORT"
  starts+=("$STARTUP_MS")
  echo "  keyward (normal build) start $s: ${STARTUP_MS} ms" >&2
  stop "$PG_normal"
  rm -rf "$TMP/normal"
done
echo "startup_keyward=${starts[*]}" >>"$TMP/facts"
start_worker on "$ORIGIN_PORT" --config $KB_CONFIG
echo "startup_keyward_bench=$STARTUP_MS" >>"$TMP/facts"
start_worker off "$ORIGIN_PORT" --config $KB_CONFIG --var KEY_GUARD:off
start_worker far "$ORIGIN_PORT" --config $KB_CONFIG --var "GUARD_DELAY_MS:$GUARD_DELAY_MS"

# --- 3. provisioning through the admin API
log "provisioning: an org with BAA, $KEYS strict and $KEYS leased keys, a refused key; the baselines' KV value"
json_field() { node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{let v;try{v=JSON.parse(s)}catch{}const r=process.argv[1].split(".").reduce((o,k)=>o&&o[k],v);if(r===undefined){console.error(s);process.exit(1)}console.log(r)})' "$1"; }
admin() { # PORT METHOD PATH [BODY]
  curl -sS --max-time 30 -X "$2" "http://127.0.0.1:$1$3" -H "Authorization: Bearer $ADMIN_TOKEN" \
    -H 'content-type: application/json' ${4:+-d "$4"}
}
# Every default limit of the policy, raised to the maximum, so no run is
# rate-limited; KEY_BODY_LIMITED: one request a day (after the first, every
# request is refused 429 for the whole bench).
key_body() { # CONSISTENCY LIMIT
  node -e '
  const [consistency, limit] = process.argv.slice(1);
  const p = JSON.parse(require("fs").readFileSync("policy/policy.json", "utf8"));
  let limits = (p.default_rate_limits || []).map(l => ({ ...l, limit: Number(limit) }));
  if (!limits.some(l => l.name === "minute")) limits.push({ name: "minute", limit: Number(limit), window_seconds: 60 });
  if (Number(limit) === 1) limits.push({ name: "day", limit: 1, window_seconds: 86400 });
  console.log(JSON.stringify({ name: "bench", scopes: ["ai:chat"], rate_limits: limits, consistency }));' "$1" "$2"
}
KEY_BODY_STRICT=$(key_body strict 1000000)
KEY_BODY_LEASED=$(key_body leased 1000000)
KEY_BODY_LIMITED=$(key_body strict 1)
new_key() { # PORT BODY NAME: appends "Bearer <plaintext>" to $TMP/NAME and the key id to $TMP/NAME.ids
  local reply
  reply=$(admin "$1" POST /admin/orgs/org_bench/api_keys "$2")
  echo "Bearer $(json_field data.plaintext <<<"$reply")" >>"$TMP/$3"
  json_field data.id <<<"$reply" >>"$TMP/$3.ids"
}
for inst in on off far; do
  port_var=PORT_$inst
  admin "${!port_var}" PUT /admin/orgs/org_bench '{"name":"Bench Org","baa_active":true}' | json_field success >/dev/null
done
rm -f "$TMP"/keys100* "$TMP"/leased100*
for _ in $(seq 1 "$KEYS"); do
  new_key "$PORT_on" "$KEY_BODY_STRICT" keys100
  new_key "$PORT_on" "$KEY_BODY_LEASED" leased100
done
head -n1 "$TMP/keys100" >"$TMP/hot"
head -n1 "$TMP/keys100.ids" >"$TMP/hot.ids"
head -n1 "$TMP/leased100" >"$TMP/hot_leased"
head -n1 "$TMP/leased100.ids" >"$TMP/hot_leased.ids"
new_key "$PORT_off" "$KEY_BODY_STRICT" hot_off
new_key "$PORT_far" "$KEY_BODY_STRICT" hot_far
new_key "$PORT_far" "$KEY_BODY_LEASED" hot_far_leased
new_key "$PORT_on" "$KEY_BODY_LIMITED" refused
# A key of valid format (prefix, length, charset, CRC32) that the guard-on
# instance has never seen: refused after exactly one KV read.
cp "$TMP/hot_off" "$TMP/unknown"
# Malformed: refused by the format check, before any KV read.
echo "Bearer kw_live_this-is-not-a-key" >"$TMP/garbage"
for inst in passthrough pt_kv pt_kv_do; do
  port_var=PORT_$inst
  curl -sS --max-time 30 -X PUT "http://127.0.0.1:${!port_var}/__passthrough/seed" -H "Authorization: Bearer $ADMIN_TOKEN" |
    grep -qx seeded || die "$inst: seeding its KV value failed"
done

# scenario: name  port  process-group  keys-file  expected-status  counter-kind
SCENARIOS=(
  "a_origin $ORIGIN_PORT $PG_origin hot 200 -"
  "b_passthrough $PORT_passthrough $PG_passthrough hot 200 passthrough"
  "b1_kv $PORT_pt_kv $PG_pt_kv hot 200 passthrough"
  "b2_kv_do $PORT_pt_kv_do $PG_pt_kv_do hot 200 passthrough"
  "c_strict $PORT_on $PG_on hot 200 keyward"
  "d_garbage $PORT_on $PG_on garbage 401 keyward"
  "d2_unknown $PORT_on $PG_on unknown 401 keyward"
  "e_keys100 $PORT_on $PG_on keys100 200 keyward"
  "f_guard_off $PORT_off $PG_off hot_off 200 keyward"
  "h_leased $PORT_on $PG_on hot_leased 200 keyward"
  "i_leased100 $PORT_on $PG_on leased100 200 keyward"
  "c50_strict_far $PORT_far $PG_far hot_far 200 keyward"
  "h50_leased_far $PORT_far $PG_far hot_far_leased 200 keyward"
  "j_refused $PORT_on $PG_on refused 429 keyward"
)

status_of() { # PORT AUTH
  curl -s -o /dev/null -w '%{http_code}' --max-time 30 -X POST "http://127.0.0.1:$1/v1/ai/chat" \
    -H "Authorization: $2" -H 'content-type: application/json' -d '{"model":"bench"}'
}
# The limited key's one request of the day.
got=$(status_of "$PORT_on" "$(cat "$TMP/refused")")
[ "$got" = 200 ] || die "j_refused: the first request should be allowed, got $got"
for sc in "${SCENARIOS[@]}"; do
  read -r name port _ keys want _ <<<"$sc"
  while read -r auth; do
    got=$(status_of "$port" "$auth")
    [ "$got" = "$want" ] || die "$name: expected $want, got $got"
  done <"$TMP/$keys"
done

# --- 4. load: warm-up, then ROUNDS rounds alternating the scenarios (the
# order rotates each round).
mkdir -p "$TMP/wrk" "$TMP/io"
# cpu_ticks PGID PORT: "role ticks" for each process of the target's group:
# worker (the workerd running the worker, its KV and Durable Objects; with
# RUNNER=miniflare also Miniflare's entry worker, the only workerd), proxy
# (RUNNER=wrangler: the workerd holding wrangler's proxy worker, which
# listens on PORT), wrangler (RUNNER=wrangler: its Node process), serve
# (RUNNER=miniflare: bench/serve.mjs, Node), origin.
cpu_ticks() {
  local p cmd role
  for p in $(pgrep -g "$1"); do
    cmd=$({ tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null) || continue
    case "$RUNNER $cmd" in
      *\ bash\ -c\ *) continue ;; # spawn()'s watchdog: its argv names the command it watches
      wrangler\ *workerd*"entry=127.0.0.1:$2 "*) role=proxy ;;
      *workerd\ serve*) role=worker ;;
      *wrangler-dist/cli.js*) role=wrangler ;;
      *bench/serve.mjs*) role=serve ;;
      *origin.mjs*) role=origin ;;
      *) continue ;;
    esac
    awk -v r="$role" '{print r, $14 + $15}' "/proc/$p/stat" 2>/dev/null || true
  done
}
run_wrk() { # NAME PORT PGID KEYS SECONDS OUT
  cpu_ticks "$3" "$2" >"$6.cpu0"
  BENCH_KEYS_FILE=$TMP/$4 wrk -t"$THREADS" -c"$CONNS" -d"$5"s --timeout 10s --latency -s bench/wrk.lua \
    "http://127.0.0.1:$2" >"$6" 2>&1 || { cat "$6" >&2; die "wrk failed for $1"; }
  cpu_ticks "$3" "$2" >"$6.cpu1"
}
echo "clk_tck=$(getconf CLK_TCK)" >>"$TMP/facts"
log "warm-up (${WARMUP}s per scenario)"
for sc in "${SCENARIOS[@]}"; do
  read -r name port pg keys _ <<<"$sc"
  run_wrk "$name" "$port" "$pg" "$keys" "$WARMUP" "$TMP/wrk/warmup.$name.txt"
done
n=${#SCENARIOS[@]}
for r in $(seq 1 "$ROUNDS"); do
  log "round $r/$ROUNDS (${DURATION}s per scenario, $CONNS connections)"
  for k in $(seq 0 $((n - 1))); do
    read -r name port pg keys _ <<<"${SCENARIOS[$(((k + r - 1) % n))]}"
    run_wrk "$name" "$port" "$pg" "$keys" "$DURATION" "$TMP/wrk/$name.$r.txt"
    grep WRK_JSON "$TMP/wrk/$name.$r.txt" | sed "s/^WRK_JSON /  $name: /" >&2
  done
done

# --- 5. I/O per request, counted: a separate short run per scenario (not
# timed), between two snapshots of the worker's own counters and of the
# guards of every key the scenario uses (bench/iocount.mjs); the responses
# are counted by status. SETTLE seconds after the run let the work a
# request leaves for later (lease returns, refunds) land in the window.
log "I/O counting runs (${COUNT_DURATION}s each)"
sleep "$SETTLE"
for sc in "${SCENARIOS[@]}"; do
  read -r name port _ keys _ kind <<<"$sc"
  [ "$kind" = - ] && continue
  snap=(env BENCH_ADMIN_TOKEN="$ADMIN_TOKEN" node bench/iocount.mjs --port "$port" --kind "$kind" --org org_bench)
  [ -f "$TMP/$keys.ids" ] && snap+=(--ids "$TMP/$keys.ids")
  "${snap[@]}" --order guard-first >"$TMP/io/$name.before.json" || die "$name: counter snapshot failed"
  BENCH_COUNT_STATUS=1 BENCH_KEYS_FILE=$TMP/$keys wrk -t"$THREADS" -c"$CONNS" -d"$COUNT_DURATION"s --timeout 10s \
    -s bench/wrk.lua "http://127.0.0.1:$port" >"$TMP/io/$name.wrk.txt" 2>&1 || { cat "$TMP/io/$name.wrk.txt" >&2; die "wrk failed for $name (counting)"; }
  sleep "$SETTLE"
  "${snap[@]}" --order io-first >"$TMP/io/$name.after.json" || die "$name: counter snapshot failed"
  echo "  $name: $(grep WRK_STATUS "$TMP/io/$name.wrk.txt" | cut -d' ' -f2-)" >&2
done

# --- 6. report
node bench/report.mjs "$TMP" "$RESULTS"
cat "$RESULTS"
