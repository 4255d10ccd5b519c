#!/usr/bin/env bash
# make fuzz: every fuzz target (or those named) under libFuzzer for
# FUZZ_SECONDS each (default 60), then a table of executions, coverage,
# corpus and findings per target. Installs what is missing first: the
# nightly toolchain and a pinned cargo-fuzz.
#
#   FUZZ_SECONDS=600 fuzz/run.sh            # ten minutes per target
#   FUZZ_RUNS=10000000 fuzz/run.sh path     # 10^7 executions (no time limit
#                                           # unless FUZZ_SECONDS is set too)
#   FUZZ_JOBS=2 ...                         # libFuzzer -fork=2 (default 1)
#   FUZZ_RESULTS=logs/a.md ...              # where the table goes
#
# The working corpus is fuzz/corpus/<target>/ (kept between runs, not
# committed); fuzz/seeds/<target>/ (committed) is read as well. Crashes go
# to fuzz/artifacts/<target>/; logs to fuzz/logs/<target>.log; the table
# to fuzz/logs/results.md (or FUZZ_RESULTS). Known findings
# (fuzz/README.md) are tolerated and listed; KEYWARD_FUZZ_STRICT=1 makes
# them crashes. Runs under `nice -n 19`. Exit status 1 if any target
# crashed.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.1
cd "$(dirname "$0")"
export PATH="$HOME/.cargo/bin:$PATH"

if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked ||
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

ALL=$(cargo +nightly fuzz list)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || mapfile -t TARGETS <<<"$ALL"

SECONDS_EACH=${FUZZ_SECONDS:-}
[ -n "$SECONDS_EACH" ] || [ -n "${FUZZ_RUNS:-}" ] || SECONDS_EACH=60
JOBS=${FUZZ_JOBS:-1}
# Release with debug assertions and overflow checks; no sanitizer: keyward
# forbids unsafe code, so AddressSanitizer would only slow the search.
BUILD=(-O -a -s none)

nice -n 19 cargo +nightly fuzz build "${BUILD[@]}"

mkdir -p logs
failed=0
rows=()
for t in "${TARGETS[@]}"; do
  grep -qx "$t" <<<"$ALL" || { echo "no fuzz target $t (targets: $(echo $ALL))" >&2; exit 2; }
  mkdir -p "corpus/$t" "artifacts/$t"
  # Longer inputs only slow a target down (comparisons are traced byte by
  # byte): a Cache-Control value is read whole, other checks cap their work.
  case "$t" in cache_control) max_len=1024 ;; *) max_len=4096 ;; esac
  args=(-dict="dict/$t.dict" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="artifacts/$t/")
  [ -z "$SECONDS_EACH" ] || args+=(-max_total_time="$SECONDS_EACH")
  [ -z "${FUZZ_RUNS:-}" ] || args+=(-runs="$FUZZ_RUNS")
  [ "$JOBS" -le 1 ] || args+=(-fork="$JOBS" -ignore_crashes=0)
  echo "== $t: ${SECONDS_EACH:-no time limit}${SECONDS_EACH:+ s}${FUZZ_RUNS:+, $FUZZ_RUNS runs}, $JOBS job(s)" >&2
  count_crashes() { find "artifacts/$t" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \) | wc -l; }
  before=$(count_crashes)
  start=$(date +%s)
  status=0
  nice -n 19 cargo +nightly fuzz run "${BUILD[@]}" "$t" "corpus/$t" "seeds/$t" -- "${args[@]}" \
    >"logs/$t.log" 2>&1 || status=$?
  secs=$(( $(date +%s) - start ))
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "logs/$t.log" | awk '{s+=$2} END {print s+0}')
  # With -fork, the parent's status lines count every job's executions.
  if [ "$execs" = 0 ]; then
    execs=$(grep -oE '^#[0-9]+' "logs/$t.log" | tail -1 | tr -d '#')
  fi
  last=$(grep -E ' (cov|ft): ' "logs/$t.log" | tail -1 || true)
  cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | awk '{print $2}')
  ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | awk '{print $2}')
  corp=$(find "corpus/$t" -type f | wc -l)
  known=$(grep -oE 'known finding K[0-9]+' "logs/$t.log" | awk '{print $3}' | sort -u | paste -sd, - || true)
  crashes=$(( $(count_crashes) - before ))
  if [ "$status" -ne 0 ]; then
    failed=1
    crashes="$crashes new (exit $status, see fuzz/logs/$t.log)"
  fi
  rate=$(( secs > 0 ? execs / secs : execs ))
  rows+=("| $t | ${execs:-0} | $secs | $rate | ${cov:-?} / ${ft:-?} | $corp | ${crashes:-0}${known:+; known: $known} |")
done

{
  echo "| target | executions | seconds | exec/s | coverage (cov / ft) | corpus | findings |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
  printf '%s\n' "${rows[@]}"
} | tee "${FUZZ_RESULTS:-logs/results.md}"
echo "(cov: edges covered, ft: libFuzzer features; commit $(git -C .. rev-parse --short HEAD 2>/dev/null || echo '?'))"
exit "$failed"
