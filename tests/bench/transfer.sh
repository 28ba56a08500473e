#!/usr/bin/env bash
# Replication benchmark (issue 21, "Performance, re-anchored"), on the 2 GiB image of
# make_image.py (512 MiB random, 512 MiB OS binaries, 1 GiB holes):
#   - `godwit replicate` to a local store (file:///DIR) against `openssl dgst -sha256` of the
#     same file (goal: within 0.8x);
#   - `godwit replicate` over TLS on loopback (client and `godwit staging serve` on this
#     machine's cores) against restic's backup of the same file to a local repository, full and
#     incremental (1 % of the chunks changed), goal 2.5x faster, and the stored size no larger;
#   - the incremental again with the changed ranges handed in (`--changed-ranges`), so only
#     what changed is read and hashed;
#   - peak RSS of client and server (goal 128 MiB each).
# Correctness first: every sync of every run is exported and compared with the source (cmp;
# the exports are not timed), and restic's last snapshot of the first run restored and compared; the script exits 1 when any differs. Timing goals are
# reported (PASS/MISS), not enforced. Stores are emptied and `sync` is run before each full run.
#
#   bash tests/bench/transfer.sh        (make bench builds target/release/godwit first)
#   CHUNK_SIZE=1M bash tests/bench/transfer.sh    (pass --chunk-size to every replicate)
set -uo pipefail
. "$(dirname "$0")/lib.sh"
bench_need openssl restic python3 bc cmp || exit 1
W=$(mktemp -d "${TMPDIR:-/var/tmp}/godwit-bench-transfer.XXXXXX")
SRV=""
stop_server() {
  if [ -n "$SRV" ]; then
    kill "$SRV" 2>/dev/null
    wait "$SRV" 2>/dev/null
    SRV=""
  fi
}
trap 'stop_server; rm -rf "$W"' EXIT
export RESTIC_PASSWORD=godwit-bench RESTIC_CACHE_DIR="$W/restic-cache"

CS_ARGS=${CHUNK_SIZE:+--chunk-size $CHUNK_SIZE}
SRC=$(bench_image) || exit 1
IMG="$W/disk.raw"
SIZE=$(stat -c %s "$SRC")
fail() { echo "transfer bench: FAILED: $*"; exit 1; }
fresh_image() { rm -f "$IMG"; cp --sparse=always "$SRC" "$IMG"; cat "$IMG" > /dev/null; }
field() { python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]).get(sys.argv[2]))" "$1" "$2"; }
rfield() { python3 -c "
import json, sys
for l in open(sys.argv[1]):
    try: j = json.loads(l)
    except ValueError: continue
    if j.get('message_type') == 'summary': print(j.get(sys.argv[2]))" "$1" "$2"; }

start_server() { # DATA
  "$TIME" -f '%M' -o "$W/server.rss" "$GODWIT_BIN" staging serve --listen 127.0.0.1:0 --data "$1" \
    > "$W/server.out" 2> "$W/server.err" &
  SRV=$!
  for _ in $(seq 300); do grep -q '^token: ' "$W/server.out" 2>/dev/null && break; sleep 0.1; done
  ADDR=$(sed -n 's/^listening: //p' "$W/server.out")
  FP=$(sed -n 's/^fingerprint: //p' "$W/server.out")
  sed -n 's/^token: //p' "$W/server.out" > "$W/token"
  [ -n "$ADDR" ] && [ -s "$W/token" ] || fail "staging server did not start: $(tail -3 "$W/server.err")"
}
# The server runs under /usr/bin/time: stop the godwit under it so time writes the peak RSS.
stop_server_rss() {
  local g; g=$(pgrep -P "$SRV" | head -1)
  [ -n "$g" ] && kill "$g" 2>/dev/null
  wait "$SRV" 2>/dev/null; SRV=""
  cat "$W/server.rss" >> "$W/server.rsslist"
}
staging() { echo --target "staging://$ADDR" --target-fingerprint "$FP" --token-file "$W/token"; }
export_check() { # WHAT TARGET-ARGS...
  local what=$1; shift
  rm -f "$W/export.raw"
  "$GODWIT_BIN" export --vm bench --format raw --out "$W/export.raw" "$@" > "$W/export.json" 2>&1 \
    || fail "$what: export failed: $(tail -3 "$W/export.json")"
  cmp -s "$W/export.raw" "$IMG" || fail "$what: the export differs from the source"
  echo "check: $what: export is byte-equal to the source"
}

echo "== transfer: $(mib "$SIZE") image, $(mib "$(alloc_bytes "$SRC")") allocated (512 MiB random, 512 MiB binaries, 1 GiB holes), $(nproc) CPUs, load $(load1)${CHUNK_SIZE:+, --chunk-size $CHUNK_SIZE}"

# --- 1. Local store against openssl dgst -sha256 -------------------------------------------
# Also `openssl dgst` of the allocated data alone (the bytes godwit hashes): like with like.
DATA=$BENCH_CACHE/bench.data
python3 "$BENCH_ROOT/tests/bench/make_image.py" --data "$SRC" "$DATA" || exit 1
fresh_image
cat "$DATA" > /dev/null
for r in $(seq "$RUNS"); do
  rm -rf "$W/store"; sync
  timed local "$GODWIT_BIN" replicate --json $CS_ARGS --vm bench --source "file://$IMG" --target "file://$W/store" || exit 1
  [ "$r" = 1 ] && cp "$W/local.out" "$W/local.first"
  export_check "replicate to a local store (run $r)" --target "file://$W/store"
  timed openssl openssl dgst -sha256 "$IMG" || exit 1
  timed openssl_data openssl dgst -sha256 "$DATA" || exit 1
done
LOCAL_STORED=$(du -sb "$W/store/chunks" | cut -f1)
rm -rf "$W/store"

# --- 2. TLS loopback against restic, full and incremental ----------------------------------
for r in $(seq "$RUNS"); do
  fresh_image
  rm -rf "$W/staging" "$W/repo"; restic init -q --repo "$W/repo" > /dev/null || fail "restic init"
  sync
  start_server "$W/staging"
  timed full $GODWIT_BIN replicate --json $CS_ARGS --vm bench --source "file://$IMG" $(staging) || exit 1
  [ "$r" = 1 ] && cp "$W/full.out" "$W/full.first"
  export_check "full over TLS (run $r)" $(staging)
  timed restic_full restic --repo "$W/repo" backup --json "$IMG" || exit 1
  [ "$r" = 1 ] && cp "$W/restic_full.out" "$W/restic_full.first"
  # 1 % of the chunks changed: every allocated byte read and hashed again.
  python3 "$BENCH_ROOT/tests/bench/make_image.py" --change "$IMG" 1 "$r" > "$W/ranges1" || exit 1
  timed inc $GODWIT_BIN replicate --json $CS_ARGS --vm bench --source "file://$IMG" $(staging) || exit 1
  [ "$r" = 1 ] && cp "$W/inc.out" "$W/inc.first"
  export_check "incremental over TLS (run $r)" $(staging)
  timed restic_inc restic --repo "$W/repo" backup --json "$IMG" || exit 1
  [ "$r" = 1 ] && cp "$W/restic_inc.out" "$W/restic_inc.first"
  # Another 1 % changed, this time handed in as changed ranges.
  python3 "$BENCH_ROOT/tests/bench/make_image.py" --change "$IMG" 1 "$((r + 100))" > "$W/ranges2" || exit 1
  timed cbt $GODWIT_BIN replicate --json $CS_ARGS --vm bench --source "file://$IMG" $(staging) --changed-ranges "$W/ranges2" || exit 1
  [ "$r" = 1 ] && cp "$W/cbt.out" "$W/cbt.first"
  export_check "incremental with --changed-ranges (run $r)" $(staging)
  timed restic_inc2 restic --repo "$W/repo" backup --json "$IMG" || exit 1
  if [ "$r" = 1 ]; then
    STAGED=$(du -sb "$W/staging/store/chunks" | cut -f1)
    RESTIC_STORED=$(du -sb "$W/repo/data" | cut -f1)
    rm -rf "$W/restored"
    restic --repo "$W/repo" restore latest --target "$W/restored" > /dev/null 2>&1 || fail "restic restore"
    cmp -s "$W/restored$IMG" "$IMG" || fail "restic's restore differs from the source"
    echo "check: restic's last snapshot restores byte-equal to the source"
    rm -rf "$W/restored"
  fi
  stop_server_rss
done

# --- Report --------------------------------------------------------------------------------
L=$W/local.first F=$W/full.first
table_head
row "replicate to local store (full)" local openssl within 0.8
row "  against hashing its data alone" local openssl_data within 1
row "replicate over TLS (full)" full restic_full speedup 2.5
row "replicate over TLS (1 % changed)" inc restic_inc speedup 2.5
row "  ... with --changed-ranges" cbt restic_inc2 speedup 2.5
table_foot
echo
echo "bytes of work (first run):"
printf '  %-28s virtual %s, read %s, hashed %s, written %s (chunks, %s stored)\n' "godwit to local store:" \
  "$(mib "$SIZE")" "$(mib "$(field "$L" bytes_read)")" "$(mib "$(field "$L" bytes_hashed)")" \
  "$(mib "$(field "$L" bytes_sent)")" "$(mib "$LOCAL_STORED")"
printf '  %-28s read and hashed %s (the image), %s (its data alone)\n' "openssl dgst -sha256:" "$(mib "$SIZE")" "$(mib "$(stat -c %s "$DATA")")"
for x in full inc cbt; do
  f=$W/$x.first
  printf '  %-28s virtual %s, read %s, hashed %s, sent %s; unchanged but re-hashed %s (%.2f s of worker time)\n' \
    "godwit over TLS ($x):" "$(mib "$SIZE")" "$(mib "$(field "$f" bytes_read)")" \
    "$(mib "$(field "$f" bytes_hashed)")" "$(mib "$(field "$f" bytes_sent)")" \
    "$(mib "$(field "$f" bytes_unchanged)")" "$(field "$f" seconds_unchanged)"
done
for x in full inc; do
  printf '  %-28s read and hashed %s, added %s\n' "restic backup ($x):" \
    "$(mib "$(rfield "$W/restic_$x.first" total_bytes_processed)")" "$(mib "$(rfield "$W/restic_$x.first" data_added)")"
done
printf '  stage time of the full (worker seconds): read %.2f, hash %.2f, zstd %.2f\n' \
  "$(field "$F" seconds_read)" "$(field "$F" seconds_hash)" "$(field "$F" seconds_compress)"
v=$([ "$STAGED" -le "$RESTIC_STORED" ] && echo PASS || echo MISS)
echo "stored after full + 2 incrementals: godwit $(mib "$STAGED") ($STAGED bytes), restic $(mib "$RESTIC_STORED") ($RESTIC_STORED bytes): godwit <= restic $v"
INC_MED=$(median inc 1); FULL_MED=$(median full 1); CBT_MED=$(median cbt 1)
printf 'incremental time / full time: %.0f %% re-reading everything, %.0f %% with --changed-ranges\n' \
  "$(echo "100 * $INC_MED / $FULL_MED" | bc -l)" "$(echo "100 * $CBT_MED / $FULL_MED" | bc -l)"
CRSS=$(for l in local full inc cbt; do maxof "$l" 3; done | sort -g | tail -1)
SRSS=$(sort -g "$W/server.rsslist" | tail -1)
printf 'peak RSS: client %d KiB, server %d KiB (goal <= 131072 each): %s %s\n' "$CRSS" "$SRSS" \
  "$([ "$CRSS" -le 131072 ] && echo PASS || echo MISS)" "$([ "$SRSS" -le 131072 ] && echo PASS || echo MISS)"
exit 0
