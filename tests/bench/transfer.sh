#!/usr/bin/env bash
# Replication benchmark (design.md §9): a 4 GiB half-empty raw image replicated over TLS on
# loopback with target/release/godwit, against `sha256sum` of the same file in the same run;
# then an incremental with 1 % of the chunks changed; peak RSS of server and client.
# Prints ratios and PASS/MISS; always exits 0 (goals are reported, not enforced).
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=${GODWIT_BIN:-target/release/godwit}
[ -x "$BIN" ] || { echo "transfer bench: $BIN not built (cargo build --release -p godwit-appliance)"; exit 0; }
TIME=/usr/bin/time
[ -x "$TIME" ] || { echo "transfer bench: /usr/bin/time missing (apt-get install time)"; exit 0; }
W=$(mktemp -d "${TMPDIR:-/var/tmp}/godwit-bench-transfer.XXXXXX")
SRV=""
cleanup() {
  if [ -n "$SRV" ]; then
    for p in $(pgrep -P "$SRV"); do kill "$p" 2>/dev/null; done
    kill "$SRV" 2>/dev/null
  fi
  wait 2>/dev/null; rm -rf "$W"
}
trap cleanup EXIT

SIZE_MIB=4096
IMG="$W/disk.raw"
truncate -s ${SIZE_MIB}M "$IMG"
# Half full: 2 GiB of data in 64 MiB stripes (every other stripe), mildly compressible
# (random 4 KiB blocks mixed with text-like repeats), the rest holes.
python3 - "$IMG" <<'PY'
import os, sys
f = open(sys.argv[1], "r+b")
stripe = 64 << 20
block = os.urandom(1 << 20)
for i in range(0, 4096 // 64, 2):
    f.seek(i * stripe)
    for j in range(64):
        half = os.urandom(512 << 10)
        f.write(half + block[: 512 << 10])
f.close()
PY
sync
cat "$IMG" > /dev/null  # warm the page cache for both contenders

t0=$(date +%s.%N)
sha256sum "$IMG" > /dev/null
t1=$(date +%s.%N)
SHA_S=$(echo "$t1 - $t0" | bc -l)

"$TIME" -v -o "$W/server.time" "$BIN" staging serve --listen 127.0.0.1:0 --data "$W/staging" > "$W/server.out" 2> "$W/server.err" &
SRV=$!
for _ in $(seq 100); do grep -q '^listening: ' "$W/server.out" 2>/dev/null && break; sleep 0.1; done
ADDR=$(sed -n 's/^listening: //p' "$W/server.out")
FP=$(sed -n 's/^fingerprint: //p' "$W/server.out")
sed -n 's/^token: //p' "$W/server.out" > "$W/token"

rep() {
  "$TIME" -v -o "$W/client.time" "$BIN" replicate --json --source "file://$IMG" --vm bench \
    --target "staging://$ADDR" --target-fingerprint "$FP" --token-file "$W/token" | tail -1
}
t0=$(date +%s.%N)
FULL=$(rep)
t1=$(date +%s.%N)
REP_S=$(echo "$t1 - $t0" | bc -l)
CLIENT_RSS=$(awk -F: '/Maximum resident/ {gsub(/ /,"",$2); print $2}' "$W/client.time")

# Change 1 % of the chunks (10 of 1024 4-MiB chunks): one 4 KiB write in each.
python3 - "$IMG" <<'PY'
import os, sys
f = open(sys.argv[1], "r+b")
for k in range(10):
    f.seek((k * 97 + 3) * (4 << 20) + 12345)
    f.write(os.urandom(4096))
f.close()
PY
t0=$(date +%s.%N)
INC=$(rep)
t1=$(date +%s.%N)
INC_S=$(echo "$t1 - $t0" | bc -l)
CLIENT_RSS2=$(awk -F: '/Maximum resident/ {gsub(/ /,"",$2); print $2}' "$W/client.time")
GPID=$(pgrep -P "$SRV" | head -1)  # the godwit under /usr/bin/time
[ -n "$GPID" ] && kill "$GPID" 2>/dev/null
wait "$SRV" 2>/dev/null; SRV=""
SERVER_RSS=$(awk -F: '/Maximum resident/ {gsub(/ /,"",$2); print $2}' "$W/server.time")

field() { python3 -c "import json,sys; print(json.loads(sys.argv[1]).get(sys.argv[2]))" "$1" "$2"; }
SENT_FULL=$(field "$FULL" bytes_sent)
SENT_INC=$(field "$INC" bytes_sent)
DISK=$((SIZE_MIB * 1024 * 1024))
verdict() { if python3 -c "import sys; sys.exit(0 if $1 else 1)"; then echo PASS; else echo MISS; fi; }
RATIO=$(echo "$SHA_S / $REP_S" | bc -l)
INC_PCT=$(echo "100 * $SENT_INC / $DISK" | bc -l)
MAXRSS=$(( CLIENT_RSS > CLIENT_RSS2 ? CLIENT_RSS : CLIENT_RSS2 ))
printf 'sha256sum 4 GiB:            %6.2f s (%.0f MiB/s)\n' "$SHA_S" "$(echo "$SIZE_MIB / $SHA_S" | bc -l)"
printf 'replicate full over TLS:    %6.2f s (%.0f MiB/s), sent %s bytes\n' "$REP_S" "$(echo "$SIZE_MIB / $REP_S" | bc -l)" "$SENT_FULL"
printf 'throughput ratio:           %6.2f x sha256sum (goal >= 0.8)  %s\n' "$RATIO" "$(verdict "$RATIO >= 0.8")"
printf 'incremental 1 %% changed:    %6.2f s, sent %s bytes = %.3f %% of the disk (goal <= 1.5 %%)  %s\n' "$INC_S" "$SENT_INC" "$INC_PCT" "$(verdict "$INC_PCT <= 1.5")"
printf 'peak RSS client:            %6d KiB (goal <= 131072)  %s\n' "$MAXRSS" "$(verdict "$MAXRSS <= 131072")"
printf 'peak RSS server:            %6d KiB (goal <= 131072)  %s\n' "$SERVER_RSS" "$(verdict "$SERVER_RSS <= 131072")"
exit 0
