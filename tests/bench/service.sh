#!/usr/bin/env bash
# `godwit serve` under load (make bench): wrk on the dashboard and the jobs API, 8 s each at
# once, while a 256 MiB vcsim disk replicates to a staging server; p50/p99 latency, requests/s,
# errors and the service's RSS. The scenario lives in tests/tests/service_load.rs (ignored by
# `make test`); this runs it against the release binary.
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=${GODWIT_BIN:-$PWD/target/release/godwit}
[ -x "$BIN" ] || { echo "service bench: FAILED: $BIN not built (cargo build --release -p godwit-appliance)"; exit 1; }
command -v wrk >/dev/null || { echo "service bench: wrk missing (make deps)"; exit 1; }
GODWIT_BIN="$BIN" cargo test -q -p godwit-tests --test service_load -- --ignored --nocapture 2>&1 \
  | grep -E '^service bench:|panicked|FAILED|error' 
exit "${PIPESTATUS[0]}"
