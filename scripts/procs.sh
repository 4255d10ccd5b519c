# Process helpers shared by bench/run.sh and soak/run.sh (sourced; bash).
# The caller declares `PGIDS=()` and kills what is left in it on exit.

# spawn LOG CMD...: CMD in a new session (its own process group) under a
# watchdog that kills the group if the calling script dies; sets SPAWNED to
# the group id and adds it to PGIDS.
spawn() {
  local logf=$1
  shift
  # shellcheck disable=SC2016
  setsid bash -c 'parent=$1; shift; "$@" & c=$!
    while kill -0 "$parent" 2>/dev/null && kill -0 "$c" 2>/dev/null; do sleep 0.5; done
    kill -- -$$ 2>/dev/null' watchdog $$ "$@" >"$logf" 2>&1 </dev/null &
  SPAWNED=$!
  PGIDS+=("$SPAWNED")
}

# stop PGID: kills the group (TERM, then KILL after 10 s) and waits until
# every process of it is gone; removes it from PGIDS.
stop() {
  local pg=$1 keep=() p i
  kill -TERM -- "-$pg" 2>/dev/null || true
  wait "$pg" 2>/dev/null || true
  for i in $(seq 1 100); do
    kill -0 -- "-$pg" 2>/dev/null || break
    [ "$i" -lt 100 ] && sleep 0.1 || kill -KILL -- "-$pg" 2>/dev/null || true
  done
  for p in "${PGIDS[@]}"; do [ "$p" = "$pg" ] || keep+=("$p"); done
  PGIDS=("${keep[@]}")
}

# free_port: a TCP port free on 127.0.0.1 right now.
free_port() {
  node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}
