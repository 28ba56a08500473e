#!/usr/bin/env bash
# `godwit serve` under load (make bench): wrk on the dashboard and the jobs API, 8 s each at
# once, while a 256 MiB vcsim disk replicates to a staging server; p50/p99 latency, requests/s,
# errors and the service's RSS. Then (issue #18) the jobs API while 20 jobs replicate at once,
# their progress, per-disk figures and ETA changing every second: p50/p99 against the 50 ms
# goal (MISS reported, not failed), after every replica's SHA-256 was checked. The scenarios
# live in tests/tests/service_load.rs and service_load_jobs.rs (ignored by `make test`); this
# runs them against the release binary.
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=${GODWIT_BIN:-$PWD/target/release/godwit}
[ -x "$BIN" ] || { echo "service bench: FAILED: $BIN not built (cargo build --release -p godwit-appliance)"; exit 1; }
command -v wrk >/dev/null || { echo "service bench: wrk missing (make deps)"; exit 1; }
rc=0
GODWIT_BIN="$BIN" cargo test -q -p godwit-tests --test service_load -- --ignored --nocapture 2>&1 \
  | grep -E '^service bench:|panicked|FAILED|error'
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
GODWIT_BIN="$BIN" cargo test -q -p godwit-tests --test service_load_jobs -- --ignored --nocapture 2>&1 \
  | grep -E '^service bench:|panicked|FAILED|error'
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
exit "$rc"
