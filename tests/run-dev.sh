#!/usr/bin/env bash
# `make run`: a local staging server (data ./var/staging, 127.0.0.1:1500) and the connector
# service (data ./var/service, https://127.0.0.1:8443/). Prints the URL, the certificate
# fingerprints, a connector token for the wizard's staging step (issued once with
# `godwit staging tokens issue --connector dev`, kept in ./var/dev-connector.token) and the one-time
# setup code; Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${GODWIT_BIN:-target/release/godwit}
VAR=${GODWIT_VAR:-./var}
LISTEN=${GODWIT_LISTEN:-127.0.0.1:8443}
STAGING=${GODWIT_STAGING_LISTEN:-127.0.0.1:1500}
[ -x "$BIN" ] || { echo "run-dev: $BIN not found; run 'make run' (it builds it)" >&2; exit 2; }
mkdir -p "$VAR/staging" "$VAR/service"

pids=()
stop() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap stop EXIT INT TERM

# Staging server: its first lines are fingerprint/token/listening.
"$BIN" staging serve --listen "$STAGING" --data "$VAR/staging" >"$VAR/staging.out" 2>"$VAR/staging.log" &
pids+=($!)
for _ in $(seq 100); do grep -q '^listening:' "$VAR/staging.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^listening:' "$VAR/staging.out" || { echo "run-dev: staging server did not start; see $VAR/staging.log" >&2; exit 1; }
# A token for the connector `dev` (tokens are per connector and kept in the store; the store is
# shared with the running server, which reads new tokens at once).
TOKEN_FILE="$VAR/dev-connector.token"
if [ ! -s "$TOKEN_FILE" ]; then
    "$BIN" staging tokens issue --data "$VAR/staging" --connector dev --out "$TOKEN_FILE" >/dev/null
fi

"$BIN" serve --data "$VAR/service" --listen "$LISTEN" >"$VAR/service.out" 2> >(tee -a "$VAR/service.stderr" >&2) &
pids+=($!)
for _ in $(seq 100); do grep -q '^fingerprint:' "$VAR/service.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^fingerprint:' "$VAR/service.out" || { echo "run-dev: the service did not start" >&2; exit 1; }
sleep 0.2

echo
echo "== Godwit connector (dev) =="
sed -n 's/^url: /  open        /p; s/^fingerprint: /  certificate /p; s/^setup code: /  setup code  /p' "$VAR/service.out"
echo
echo "  staging server for the wizard's staging step:"
sed -n 's/^listening: /    address     /p; s/^fingerprint: /    fingerprint /p' "$VAR/staging.out"
echo "    token       $(cat "$TOKEN_FILE")   (connector dev; more: $BIN staging tokens issue --data $VAR/staging --connector NAME)"
echo
echo "  (self-signed certificate: compare the fingerprint above when the browser asks)"
echo "  Ctrl-C stops both. Data: $VAR/service, $VAR/staging"
wait -n "${pids[@]}"
