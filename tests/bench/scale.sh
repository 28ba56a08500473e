#!/usr/bin/env bash
# Scale drill (make bench, #21): vcsim with 50 VMs of 2 disks each, replicated by one
# `godwit serve` with K concurrent jobs while a second process polls the API: wall time, bytes,
# API p50/p99 latency, the service's RSS; every replica exported and compared with its source
# (SHA-256), failing on any difference. Then 200 VMs in inventory only: refresh time and page
# load time. The scenarios live in tests/tests/service_scale.rs (ignored by `make test`); this
# runs them against the release binary. GODWIT_SCALE_JOBS (K, default 4),
# GODWIT_SCALE_DISK_MIB (16) and GODWIT_SCALE_DATA_MIB (4) change the sizes.
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=${GODWIT_BIN:-$PWD/target/release/godwit}
[ -x "$BIN" ] || { echo "scale bench: $BIN not built (cargo build --release -p godwit-appliance)"; exit 0; }
command -v python3 >/dev/null || { echo "scale bench: python3 missing (make deps)"; exit 1; }
GODWIT_BIN="$BIN" cargo test -q -p godwit-tests --test service_scale -- --ignored --nocapture --test-threads 1 2>&1 \
  | grep -E '^scale bench:|panicked|FAILED|error'
exit "${PIPESTATUS[0]}"
