#!/usr/bin/env bash
# Disk engine benchmark: godwit against qemu-img (and cp) in one run, on the same ~2 GiB,
# half-allocated image of mixed content (random, ELF binaries, text, explicit zeros, sparse
# 4 KiB writes, holes). Page cache warm, median of 3 runs. Prints a table of times and ratios
# with PASS/MISS per goal, and always exits 0: it reports, it does not gate.
#
#   bash tests/bench/disk.sh            (make bench builds target/release/godwit first)
#
# Environment: GODWIT_BIN (default target/release/godwit), GODWIT_BENCH_DIR (where the
# generated source image is cached between runs; default $TMPDIR/godwit-bench), RUNS (3).
#
# Other benchmark scripts reuse the helpers: `DISK_BENCH_LIB=1 source tests/bench/disk.sh`
# defines bench_setup, make_mixed_raw, median_time, warm, row and table_end without running
# anything. tests/bench/disk_vhd.sh (VHD/VHDX rows) follows this pattern.
set -uo pipefail

bench_setup() {
  GODWIT_BIN=${GODWIT_BIN:-target/release/godwit}
  RUNS=${RUNS:-3}
  BENCH_CACHE=${GODWIT_BENCH_DIR:-${TMPDIR:-/tmp}/godwit-bench}
  mkdir -p "$BENCH_CACHE"
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/godwit-bench-run.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  if [ ! -x "$GODWIT_BIN" ]; then
    echo "bench: $GODWIT_BIN not found; run make bench (it builds the release binary)" >&2
    return 1
  fi
  for t in qemu-img python3; do
    command -v "$t" >/dev/null || { echo "bench: $t missing (make deps)" >&2; return 1; }
  done
}

# make_mixed_raw FILE: 2 GiB raw, cycling through 64 MiB chunks of random data, a hole, ELF
# binaries, a hole, text, explicit zeros, a hole with 4 KiB written every 1 MiB, a hole:
# about half the disk allocated. Deterministic for a given machine; cached by version.
make_mixed_raw() {
  local out=$1 version=1
  if [ -f "$out" ] && [ "$(cat "$out.version" 2>/dev/null)" = "$version" ]; then
    return 0
  fi
  mkdir -p "$(dirname "$out")"
  python3 - "$out" <<'PY' || return 1
import os, random, sys
out = sys.argv[1]
CH = 64 << 20
rng = random.Random(20240601)

def corpus(paths, exts=None, limit=CH * 4):
    buf = bytearray()
    for root in paths:
        for dirpath, _, names in sorted(os.walk(root)):
            for n in sorted(names):
                p = os.path.join(dirpath, n)
                if exts and not n.endswith(exts):
                    continue
                try:
                    if os.path.islink(p) or not os.path.isfile(p):
                        continue
                    with open(p, 'rb') as f:
                        b = f.read(8 << 20)
                except OSError:
                    continue
                if exts is None and not b.startswith(b'\x7fELF'):
                    continue
                buf += b
                if len(buf) >= limit:
                    return bytes(buf)
    return bytes(buf)

elf = corpus(['/usr/bin', '/usr/lib/x86_64-linux-gnu', '/usr/lib'])
text = corpus(['/usr/share/doc', '/usr/share/common-licenses', '/usr/include', '/usr/share'],
              exts=('.txt', '.h', 'copyright', '.md', '.html', '.py', '.rst', '.c'))
if len(elf) < CH or len(text) < CH:
    sys.exit("bench: not enough ELF or text on this machine to build the image")

def chunk_of(src, i):
    o = (i * 7919 * 4096) % (len(src) - CH)
    return src[o:o + CH]

with open(out + '.tmp', 'wb') as f:
    f.truncate(32 * CH)
    for i in range(32):
        kind = i % 8
        f.seek(i * CH)
        if kind == 0:
            f.write(rng.randbytes(CH))
        elif kind == 2:
            f.write(chunk_of(elf, i))
        elif kind == 4:
            f.write(chunk_of(text, i))
        elif kind == 5:
            f.write(bytes(CH))
        elif kind == 6:
            for k in range(64):
                f.seek(i * CH + k * (1 << 20))
                f.write(rng.randbytes(4096))
os.replace(out + '.tmp', out)
PY
  echo "$version" > "$out.version"
}

# warm FILE...: read files once so the page cache is warm.
warm() { for f in "$@"; do cat "$f" > /dev/null; done; }

# median_time CMD...: run CMD $RUNS times (output files removed before each run by the
# caller's CLEAN hook, if set), print the median wall time in seconds.
median_time() {
  local times=() t0 t1
  for _ in $(seq "$RUNS"); do
    if [ -n "${CLEAN:-}" ]; then rm -f $CLEAN; sync; fi
    t0=$(date +%s.%N)
    "$@" >/dev/null 2>"$WORK/err" || { echo "bench: failed: $* ($(head -c 300 "$WORK/err"))" >&2; echo nan; return; }
    t1=$(date +%s.%N)
    times+=("$(echo "$t1 - $t0" | bc -l)")
  done
  printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {printf "%.3f", a[int((NR+1)/2)]}'
}

table_start() {
  printf '\n%-34s %9s %9s %-10s %8s %-8s %s\n' "operation" "godwit s" "ref s" "reference" "ratio" "goal" "result"
  printf '%s\n' "--------------------------------------------------------------------------------------------"
}

# row OP OURS REF REFNAME KIND GOAL
#   KIND=speedup: ratio = ref/ours, PASS when ratio >= GOAL (ours at least GOAL x faster)
#   KIND=within:  ratio = ours/ref, PASS when ratio <= GOAL (ours within GOAL x of ref)
row() {
  local op=$1 ours=$2 ref=$3 refname=$4 kind=$5 goal=$6 ratio verdict goaltxt
  if [ "$ours" = nan ] || [ "$ref" = nan ]; then
    printf '%-34s %9s %9s %-10s %8s %-8s %s\n' "$op" "$ours" "$ref" "$refname" "-" "-" "ERROR"
    return
  fi
  if [ "$kind" = speedup ]; then
    ratio=$(echo "$ref / $ours" | bc -l)
    goaltxt=">=${goal}x"
    verdict=$(echo "$ratio >= $goal" | bc -l)
  else
    ratio=$(echo "$ours / $ref" | bc -l)
    goaltxt="<=${goal}x"
    verdict=$(echo "$ratio <= $goal" | bc -l)
  fi
  [ "$verdict" = 1 ] && verdict=PASS || verdict=MISS
  printf '%-34s %9.3f %9.3f %-10s %7.2fx %-8s %s\n' "$op" "$ours" "$ref" "$refname" "$ratio" "$goaltxt" "$verdict"
}

table_end() { printf '%s\n' "(ratio: reference time / godwit time for speed goals; godwit / reference for 'within' goals)"; }

disk_vmdk_bench() {
  bench_setup || return 0
  local src="$BENCH_CACHE/mixed.raw"
  echo "== disk (VMDK): building the 2 GiB mixed image (cached in $BENCH_CACHE)"
  make_mixed_raw "$src" || return 0
  local alloc
  alloc=$(du -k "$src" | cut -f1)
  echo "source: $src, $(( $(stat -c %s "$src") >> 20 )) MiB virtual, $(( alloc >> 10 )) MiB allocated; $(nproc) CPUs"
  # Inputs: qemu's own stream and sparse VMDKs of the source (qemu's stream is what the goal
  # is stated against).
  if [ ! -f "$BENCH_CACHE/qemu-stream.vmdk" ] || [ "$src" -nt "$BENCH_CACHE/qemu-stream.vmdk" ]; then
    qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$src" "$BENCH_CACHE/qemu-stream.vmdk"
  fi
  if [ ! -f "$BENCH_CACHE/qemu-sparse.vmdk" ] || [ "$src" -nt "$BENCH_CACHE/qemu-sparse.vmdk" ]; then
    qemu-img convert -f raw -O vmdk -o subformat=monolithicSparse "$src" "$BENCH_CACHE/qemu-sparse.vmdk"
  fi
  warm "$src" "$BENCH_CACHE/qemu-stream.vmdk" "$BENCH_CACHE/qemu-sparse.vmdk"
  local out="$WORK/out"
  table_start
  local ours ref
  CLEAN="$out.raw"
  ours=$(median_time "$GODWIT_BIN" disk convert -O raw "$BENCH_CACHE/qemu-stream.vmdk" "$out.raw")
  ref=$(median_time qemu-img convert -f vmdk -O raw "$BENCH_CACHE/qemu-stream.vmdk" "$out.raw")
  row "streamOptimized -> raw" "$ours" "$ref" qemu-img speedup 2.5
  CLEAN="$out.vmdk"
  ours=$(median_time "$GODWIT_BIN" disk convert -O vmdk "$src" "$out.vmdk")
  ref=$(median_time qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$src" "$out.vmdk")
  row "raw -> streamOptimized" "$ours" "$ref" qemu-img speedup 5
  CLEAN="$out.raw"
  ours=$(median_time "$GODWIT_BIN" disk convert -O raw "$BENCH_CACHE/qemu-sparse.vmdk" "$out.raw")
  ref=$(median_time cp --sparse=auto "$src" "$out.raw")
  row "monolithicSparse -> raw" "$ours" "$ref" "cp raw" within 1.2
  local qemu_sparse
  qemu_sparse=$(median_time qemu-img convert -f vmdk -O raw "$BENCH_CACHE/qemu-sparse.vmdk" "$out.raw")
  row "monolithicSparse -> raw (qemu)" "$ours" "$qemu_sparse" qemu-img speedup 1
  CLEAN=""
  table_end
  # A sanity check that the fast paths are also right.
  "$GODWIT_BIN" disk convert -O raw "$BENCH_CACHE/qemu-stream.vmdk" "$out.raw" \
    && cmp -s "$out.raw" "$src" && echo "check: stream -> raw output is identical to the source" \
    || echo "check: FAILED: stream -> raw output differs from the source"
  rm -f "$out.raw" "$out.vmdk"
}

if [ -z "${DISK_BENCH_LIB:-}" ]; then
  disk_vmdk_bench
  exit 0
fi
