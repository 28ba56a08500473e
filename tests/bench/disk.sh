#!/usr/bin/env bash
# Disk conversion benchmark (issue 21): `godwit disk convert` against `qemu-img convert` (and
# `cp` for the sparse → raw copy) on the 2 GiB image of make_image.py (512 MiB random,
# 512 MiB OS binaries, 1 GiB holes: half of the data incompressible). Goals:
#   streamOptimized VMDK -> raw   >= 4x faster than qemu-img
#   raw -> streamOptimized VMDK   >= 10x faster than qemu-img
#   monolithicSparse VMDK -> raw  within 1.2x of `cp --sparse=auto` of the raw image
# Correctness first: each godwit output is compared with the source (cmp, or qemu-img compare
# for VMDK output, which qemu reads back) and the script exits 1 when one differs. Outputs are
# removed and `sync` is run before every run; ours and the reference alternate, median of RUNS.
#
#   bash tests/bench/disk.sh            (make bench builds target/release/godwit first)
set -uo pipefail
. "$(dirname "$0")/lib.sh"
bench_need qemu-img python3 bc cmp || exit 1
W=$(mktemp -d "${TMPDIR:-/var/tmp}/godwit-bench-disk.XXXXXX")
trap 'rm -rf "$W"' EXIT
fail() { echo "disk bench: FAILED: $*"; exit 1; }

SRC=$(bench_image) || exit 1
STREAM=$BENCH_CACHE/bench-stream.vmdk
SPARSE=$BENCH_CACHE/bench-sparse.vmdk
if [ ! -f "$STREAM" ] || [ "$SRC" -nt "$STREAM" ]; then
  qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$SRC" "$STREAM" || exit 1
fi
if [ ! -f "$SPARSE" ] || [ "$SRC" -nt "$SPARSE" ]; then
  qemu-img convert -f raw -O vmdk -o subformat=monolithicSparse "$SRC" "$SPARSE" || exit 1
fi
SIZE=$(stat -c %s "$SRC")
echo "== disk: $(mib "$SIZE") image, $(mib "$(alloc_bytes "$SRC")") allocated (512 MiB random, 512 MiB binaries, 1 GiB holes); $(nproc) CPUs, load $(load1)"
OUT=$W/out

# --- correctness first ----------------------------------------------------------------------
"$GODWIT_BIN" disk convert -O raw "$STREAM" "$OUT.raw" || fail "stream -> raw"
cmp -s "$OUT.raw" "$SRC" || fail "streamOptimized -> raw output differs from the source"
"$GODWIT_BIN" disk convert -O raw "$SPARSE" "$OUT.raw" || fail "sparse -> raw"
cmp -s "$OUT.raw" "$SRC" || fail "monolithicSparse -> raw output differs from the source"
"$GODWIT_BIN" disk convert -O vmdk "$SRC" "$OUT.vmdk" || fail "raw -> stream"
qemu-img compare -q -f vmdk -F raw "$OUT.vmdk" "$SRC" || fail "raw -> streamOptimized output differs from the source (qemu-img compare)"
GODWIT_VMDK=$(stat -c %s "$OUT.vmdk")
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$SRC" "$OUT.q.vmdk"
QEMU_VMDK=$(stat -c %s "$OUT.q.vmdk")
echo "check: every godwit output is identical to the source"
rm -f "$OUT".*

# --- timing, alternating ---------------------------------------------------------------------
cat "$SRC" "$STREAM" "$SPARSE" > /dev/null
for _ in $(seq "$RUNS"); do
  rm -f "$OUT".*; sync; timed s2r "$GODWIT_BIN" disk convert -O raw "$STREAM" "$OUT.raw" || exit 1
  rm -f "$OUT".*; sync; timed s2r_q qemu-img convert -f vmdk -O raw "$STREAM" "$OUT.raw" || exit 1
  rm -f "$OUT".*; sync; timed r2s "$GODWIT_BIN" disk convert -O vmdk "$SRC" "$OUT.vmdk" || exit 1
  rm -f "$OUT".*; sync; timed r2s_q qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$SRC" "$OUT.vmdk" || exit 1
  rm -f "$OUT".*; sync; timed m2r "$GODWIT_BIN" disk convert -O raw "$SPARSE" "$OUT.raw" || exit 1
  rm -f "$OUT".*; sync; timed m2r_cp cp --sparse=auto "$SRC" "$OUT.raw" || exit 1
  rm -f "$OUT".*; sync; timed m2r_q qemu-img convert -f vmdk -O raw "$SPARSE" "$OUT.raw" || exit 1
done
rm -f "$OUT".*

table_head
row "streamOptimized -> raw" s2r s2r_q speedup 4
row "raw -> streamOptimized" r2s r2s_q speedup 10
row "monolithicSparse -> raw (cp)" m2r m2r_cp within 1.2
row "monolithicSparse -> raw (qemu)" m2r m2r_q speedup 1
table_foot
echo
echo "bytes of work (both sides read the same input and write the same content):"
echo "  streamOptimized -> raw: in $(mib "$(stat -c %s "$STREAM")") (qemu's stream VMDK), out $(mib "$SIZE") virtual, $(mib "$(alloc_bytes "$SRC")") of data"
echo "  raw -> streamOptimized: in $(mib "$SIZE") virtual, $(mib "$(alloc_bytes "$SRC")") of data; out godwit $(mib "$GODWIT_VMDK"), qemu-img $(mib "$QEMU_VMDK")"
echo "  monolithicSparse -> raw: in $(mib "$(stat -c %s "$SPARSE")"), out $(mib "$SIZE") virtual, $(mib "$(alloc_bytes "$SRC")") of data (cp: the raw image itself)"
exit 0
