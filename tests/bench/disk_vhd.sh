#!/usr/bin/env bash
# Dynamic VHDX and dynamic VHD -> raw with `godwit disk convert`, against a plain `cp` of the
# equivalent raw file (goal: within 1.2x of cp), with qemu-img convert alongside for reference.
# Source: a 2 GiB disk, half allocated (64 MiB chunks alternating data and holes; the data is
# half random, half repetitive). Page cache warm; median of 3 runs. Goals are reported
# (PASS/MISS); the script fails only when an output differs from the source.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
GODWIT=${GODWIT_BIN:-$here/target/release/godwit}
[ -x "$GODWIT" ] || { echo "disk_vhd bench: $GODWIT not built (make bench builds it)"; exit 0; }
work=$(mktemp -d "${TMPDIR:-/tmp}/godwit-bench-vhd.XXXXXX")
trap 'rm -rf "$work"' EXIT

raw=$work/src.raw
truncate -s 2G "$raw"
python3 - "$raw" <<'PY'
import os, sys
f = open(sys.argv[1], "r+b")
for i in range(0, 32, 2):  # 64 MiB data chunks at even positions, holes between
    f.seek(i * 64 << 20)
    for _ in range(64):
        if i % 4 == 0:
            f.write(os.urandom(1 << 20))
        else:
            f.write((b"godwit vhd bench %d " % i) * 47662 + bytes((1 << 20) - 47662 * len(b"godwit vhd bench %d " % i)))
f.close()
PY
qemu-img convert -f raw -O vhdx -o subformat=dynamic "$raw" "$work/src.vhdx"
qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on "$raw" "$work/src.vhd"

# median of 3 wall-clock seconds of a command (after one warm-up run)
median() {
  local out=$1; shift
  rm -f "$out"; "$@" >/dev/null 2>&1
  local times=()
  for _ in 1 2 3; do
    rm -f "$out"
    local t0 t1
    t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N)
    times+=("$(echo "$t1 - $t0" | bc -l)")
  done
  printf '%s\n' "${times[@]}" | sort -n | sed -n 2p
}

cp_t=$(median "$work/cp.raw" cp "$raw" "$work/cp.raw")
printf 'cp raw (2 GiB, 1 GiB allocated)        %6.3f s\n' "$cp_t"
# The same writer with a raw source isolates the cost of the reader from the raw writer's.
rr=$(median "$work/rr.raw" "$GODWIT" disk convert -f raw "$raw" "$work/rr.raw" -O raw)
printf 'godwit raw -> raw (writer alone)       %6.3f s  (%5.2fx cp)\n' "$rr" "$(echo "$rr / $cp_t" | bc -l)"
status=0
for fmt in vhdx vhd; do
  q=$(median "$work/q.raw" qemu-img convert -O raw "$work/src.$fmt" "$work/q.raw")
  o=$(median "$work/o.raw" "$GODWIT" disk convert "$work/src.$fmt" "$work/o.raw" -O raw)
  cmp "$work/o.raw" "$raw" || { echo "disk_vhd: $fmt -> raw output differs"; status=1; }
  ratio=$(echo "$o / $cp_t" | bc -l)
  verdict=MISS
  if [ "$(echo "$ratio <= 1.2" | bc -l)" = 1 ]; then verdict=PASS; fi
  printf 'dynamic %-4s -> raw: godwit %6.3f s  qemu-img %6.3f s  godwit/cp %5.2fx  godwit/qemu %5.2fx  %s (goal <= 1.2x cp)\n' \
    "$fmt" "$o" "$q" "$ratio" "$(echo "$o / $q" | bc -l)" "$verdict"
done
exit $status
