#!/usr/bin/env bash
# schemathesis (PyPI) against the real `godwit serve`, logged in, bounded; run by
# tests/tests/service_scans.rs inside a network namespace of its own (`unshare --net`): only
# loopback exists, so whatever a fuzzed request names (a source, a staging server, an NTP or DNS
# server) cannot be reached and fails at once, and nothing leaves the machine.
#
#   schemathesis.sh WORK GODWIT OPENAPI_JSON [MAX_EXAMPLES]
#
# Checks: no 5xx (not_a_server_error; 502 only from the four operations that contact a remote
# system, see schemathesis.toml), every status, content type and body as documented
# (status_code_conformance, content_type_conformance, response_schema_conformance). Exits
# non-zero when schemathesis found anything; its report is in WORK/schemathesis/. One worker:
# hypothesis' source inspection is not thread-safe on Python 3.11 (a runtime error otherwise).
set -euo pipefail
work=$1 godwit=$2 openapi=$3 examples=${4:-10}
ip link set lo up
mkdir -p "$work"
printf 'correct-horse-battery\n' > "$work/admin-password"
"$godwit" serve --listen 127.0.0.1:0 --data "$work/svc" \
  --admin-password-file "$work/admin-password" > "$work/serve.out" 2> "$work/serve.err" &
svc=$!
trap 'kill $svc 2>/dev/null || true' EXIT
url=""
for _ in $(seq 1 300); do
  url=$(sed -n 's/^url: //p' "$work/serve.out" | tr -d '\r')
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "godwit serve did not start:"; cat "$work/serve.err"; exit 1; }
url=${url%/}
# Trust exactly the service's own certificate (no verification switched off).
openssl x509 -inform der -in "$work/svc/tls/cert.der" -out "$work/ca.pem"
jar="$work/cookies"
token=$(curl -sS --cacert "$work/ca.pem" -c "$jar" -b "$jar" "$url/api/v1/session" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["csrf_token"])')
token=$(curl -sS --cacert "$work/ca.pem" -c "$jar" -b "$jar" -H "x-csrf-token: $token" \
  -H 'content-type: application/json' -d '{"password":"correct-horse-battery"}' \
  "$url/api/v1/login" | python3 -c 'import json,sys; print(json.load(sys.stdin)["csrf_token"])')
cookie=$(awk '$6 == "godwit_session" { print $6 "=" $7 }' "$jar")
[ -n "$cookie" ] || { echo "no session cookie after the login"; exit 1; }
echo "schemathesis: logged in at $url"
set +e
# Logout would end the session the rest of the run uses; everything else is fuzzed.
here=$(cd "$(dirname "$0")" && pwd)
# schemathesis keeps a cache (.schemathesis/) in its working directory: the run's own, not the repo.
cd "$work"
schemathesis --config-file "$here/schemathesis.toml" run "$openapi" --url "$url" \
  --tls-verify "$work/ca.pem" \
  -H "Cookie: $cookie" -H "X-CSRF-Token: $token" \
  --exclude-path /api/v1/logout \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing \
  --max-examples "$examples" --seed 19 --workers 1 --request-timeout 30 \
  --report junit --report-dir "$work/schemathesis" \
  --warnings off
rc=$?
set -e
# Still serving, and nothing panicked.
curl -sS --cacert "$work/ca.pem" -o /dev/null -w 'after the run: GET /api/v1/session %{http_code}\n' \
  "$url/api/v1/session"
if grep -n "panicked" "$work/serve.err"; then
  echo "godwit serve panicked during the run"
  rc=1
fi
exit $rc
