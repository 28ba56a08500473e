#!/usr/bin/env bash
# Dynamic VHDX and dynamic VHD -> raw with `godwit disk convert`, against a plain `cp` of the
# equivalent raw file (goal: within 1.2x of cp), with qemu-img convert alongside for reference.
# Source: the 2 GiB image of make_image.py (512 MiB random, 512 MiB OS binaries, 1 GiB holes),
# converted to dynamic VHDX and VHD by qemu-img. Correctness first: godwit's outputs are
# compared with the source (cmp) before any timing; the script exits 1 when one differs.
# Outputs removed and `sync` before every run; ours and the references alternate; medians.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
bench_need qemu-img python3 bc cmp || exit 1
W=$(mktemp -d "${TMPDIR:-/var/tmp}/godwit-bench-vhd.XXXXXX")
trap 'rm -rf "$W"' EXIT
fail() { echo "disk_vhd bench: FAILED: $*"; exit 1; }

SRC=$(bench_image) || exit 1
for fmt in vhdx vhd; do
  f=$BENCH_CACHE/bench.$fmt
  if [ ! -f "$f" ] || [ "$SRC" -nt "$f" ]; then
    case $fmt in
      vhdx) qemu-img convert -f raw -O vhdx -o subformat=dynamic "$SRC" "$f" || exit 1 ;;
      vhd) qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on "$SRC" "$f" || exit 1 ;;
    esac
  fi
done
SIZE=$(stat -c %s "$SRC")
echo "== disk_vhd: $(mib "$SIZE") image, $(mib "$(alloc_bytes "$SRC")") allocated; $(nproc) CPUs, load $(load1)"
OUT=$W/out
for fmt in vhdx vhd raw; do
  in=$BENCH_CACHE/bench.$fmt; [ "$fmt" = raw ] && in=$SRC
  "$GODWIT_BIN" disk convert -f "$([ "$fmt" = vhd ] && echo vpc || echo "$fmt")" "$in" "$OUT.raw" -O raw || fail "$fmt -> raw"
  cmp -s "$OUT.raw" "$SRC" || fail "$fmt -> raw output differs from the source"
  rm -f "$OUT.raw"
done
echo "check: dynamic VHDX, dynamic VHD and raw -> raw outputs are identical to the source"

cat "$SRC" "$BENCH_CACHE/bench.vhdx" "$BENCH_CACHE/bench.vhd" > /dev/null
for _ in $(seq "$RUNS"); do
  for fmt in vhdx vhd; do
    rm -f "$OUT.raw"; sync; timed "$fmt" "$GODWIT_BIN" disk convert "$BENCH_CACHE/bench.$fmt" "$OUT.raw" -O raw || exit 1
    rm -f "$OUT.raw"; sync; timed "${fmt}_q" qemu-img convert -O raw "$BENCH_CACHE/bench.$fmt" "$OUT.raw" || exit 1
  done
  # The same writer with a raw source isolates the cost of the readers from the raw writer's.
  rm -f "$OUT.raw"; sync; timed rr "$GODWIT_BIN" disk convert -f raw "$SRC" "$OUT.raw" -O raw || exit 1
  rm -f "$OUT.raw"; sync; timed cp cp --sparse=auto "$SRC" "$OUT.raw" || exit 1
done
rm -f "$OUT.raw"
table_head
row "dynamic VHDX -> raw (cp)" vhdx cp within 1.2
row "dynamic VHDX -> raw (qemu)" vhdx vhdx_q speedup 1
row "dynamic VHD -> raw (cp)" vhd cp within 1.2
row "dynamic VHD -> raw (qemu)" vhd vhd_q speedup 1
row "raw -> raw, writer alone (cp)" rr cp within 1.2
table_foot
echo
echo "bytes of work: every row writes $(mib "$SIZE") virtual with $(mib "$(alloc_bytes "$SRC")") of data;" \
  "inputs: vhdx $(mib "$(stat -c %s "$BENCH_CACHE/bench.vhdx")"), vhd $(mib "$(stat -c %s "$BENCH_CACHE/bench.vhd")"), raw $(mib "$SIZE") ($(mib "$(alloc_bytes "$SRC")") allocated)"
exit 0
