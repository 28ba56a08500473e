# Helpers shared by tests/bench/*.sh (sourced, not run). Every benchmark follows the same
# rules (issue 20, "honest benchmarks"):
#   1. it checks that the output is right first, and exits non-zero when it is not;
#   2. ours and the reference run alternately, RUNS times each (at least 3), and each figure is
#      the median; wall time and CPU time (user + sys) are both kept, with the 1-minute load
#      average when each run started, because the machine may be shared;
#   3. every ratio is printed with the bytes of work on both sides;
#   4. a missed timing goal is reported (MISS), never a failure.
#
# Environment: GODWIT_BIN (default target/release/godwit), RUNS (default 3, at least 3),
# GODWIT_BENCH_DIR (where generated images are cached; default $TMPDIR/godwit-bench).

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
GODWIT_BIN=${GODWIT_BIN:-$BENCH_ROOT/target/release/godwit}
RUNS=${RUNS:-3}
[ "$RUNS" -ge 3 ] 2>/dev/null || RUNS=3
BENCH_CACHE=${GODWIT_BENCH_DIR:-${TMPDIR:-/var/tmp}/godwit-bench}
TIME=/usr/bin/time

bench_need() {
  [ -x "$GODWIT_BIN" ] || { echo "bench: $GODWIT_BIN not built (make bench builds it)" >&2; return 1; }
  [ -x "$TIME" ] || { echo "bench: /usr/bin/time missing (make deps)" >&2; return 1; }
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || { echo "bench: $t missing (make deps)" >&2; return 1; }
  done
}

# bench_image: path of the 2 GiB benchmark image (512 MiB random, 512 MiB OS binaries, 1 GiB
# holes; tests/bench/make_image.py), built once and cached.
bench_image() {
  mkdir -p "$BENCH_CACHE"
  python3 "$BENCH_ROOT/tests/bench/make_image.py" "$BENCH_CACHE/bench.raw" >&2 || return 1
  echo "$BENCH_CACHE/bench.raw"
}

load1() { cut -d' ' -f1 /proc/loadavg; }

# timed LABEL CMD...: run CMD once; append "wall cpu maxrss_kib load" to $W/LABEL.runs.
# stdout goes to $W/LABEL.out (the last run's), stderr to $W/LABEL.err. Fails when CMD fails.
timed() {
  local label=$1; shift
  local l; l=$(load1)
  if ! "$TIME" -f '%e %U %S %M' -o "$W/$label.t" "$@" > "$W/$label.out" 2> "$W/$label.err"; then
    echo "bench: $label failed: $*" >&2
    tail -5 "$W/$label.err" >&2
    return 1
  fi
  awk -v l="$l" '{printf "%s %.2f %s %s\n", $1, $2 + $3, $4, l}' "$W/$label.t" >> "$W/$label.runs"
}

# median LABEL FIELD: median of one field of LABEL's runs (1 wall, 2 cpu, 3 rss, 4 load).
median() {
  awk -v f="$2" '{print $f}' "$W/$1.runs" | sort -g | awk '{a[NR]=$1} END {if (NR) printf "%.2f", a[int((NR+1)/2)]; else printf "nan"}'
}
maxof() { awk -v f="$2" 'BEGIN{m=0} {if ($f > m) m = $f} END {print m}' "$W/$1.runs"; }
nruns() { wc -l < "$W/$1.runs"; }

# div A B: A / B, or 0 when B is 0.
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print 0; else printf "%.6f", a / b }'; }

# row NAME OURS REF KIND GOAL: one line of the results table from the medians of two labels.
#   KIND=speedup: ratio = ref / ours, PASS when >= GOAL (ours GOAL times faster)
#   KIND=within:  ratio = ours / ref, PASS when <= GOAL (ours within GOAL of the reference)
# The goal is judged on wall time; the CPU-time ratio is printed beside it.
row() {
  local name=$1 ours=$2 ref=$3 kind=$4 goal=$5
  local ow rw oc rc rw_ratio rc_ratio verdict
  ow=$(median "$ours" 1); rw=$(median "$ref" 1); oc=$(median "$ours" 2); rc=$(median "$ref" 2)
  if [ "$kind" = speedup ]; then
    rw_ratio=$(div "$rw" "$ow"); rc_ratio=$(div "$rc" "$oc")
    verdict=$(echo "$rw_ratio >= $goal" | bc -l); goal=">=${goal}x"
  else
    rw_ratio=$(div "$ow" "$rw"); rc_ratio=$(div "$oc" "$rc")
    verdict=$(echo "$rw_ratio <= $goal" | bc -l); goal="<=${goal}x"
  fi
  [ "$verdict" = 1 ] && verdict=PASS || verdict=MISS
  printf '%-34s %7.2f %7.2f %7.2f %7.2f %6.2fx %6.2fx %-7s %-4s %2d/%-2d %s-%s\n' "$name" \
    "$ow" "$oc" "$rw" "$rc" "$rw_ratio" "$rc_ratio" "$goal" "$verdict" \
    "$(nruns "$ours")" "$(nruns "$ref")" \
    "$(awk '{print $4}' "$W/$ours.runs" "$W/$ref.runs" | sort -g | head -1)" \
    "$(awk '{print $4}' "$W/$ours.runs" "$W/$ref.runs" | sort -g | tail -1)"
}

table_head() {
  printf '\n%-34s %7s %7s %7s %7s %7s %7s %-7s %-4s %-5s %s\n' "what (median)" "ours s" "cpu s" \
    "ref s" "cpu s" "ratio" "cpu" "goal" "" "runs" "load"
  printf '%s\n' "-----------------------------------------------------------------------------------------------------------"
}

table_foot() {
  echo "(ratio: wall-time ratio the goal is judged on; cpu: the same for user+sys CPU seconds;"
  echo " runs: ours/reference, alternated; load: 1-minute load average at the runs' starts, min-max"
  echo " on $(nproc) CPUs. Wall times taken under load should be measured again on an idle machine.)"
}

mib() { echo "$(( $1 >> 20 )) MiB"; }
alloc_bytes() { echo $(( $(stat -c %b "$1") * $(stat -c %B "$1") )); }
