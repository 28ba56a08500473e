#!/usr/bin/env bash
# Builds tests/hyperv/gowinrm/main.go against Debian's Go WinRM client
# (golang-github-masterzen-winrm-dev, tests/deps/hyperv_clients.apt) and prints the binary's path.
# Cached by the source's hash under $1 (default: target/gowinrm).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-"$here/../../../target/gowinrm"}")
mkdir -p "$out"
hash=$(cat "$here"/*.go | sha256sum | cut -c1-16)
bin="$out/gowinrm-check-$hash"
if [ ! -x "$bin" ]; then
  export GOPATH=/usr/share/gocode GO111MODULE=off GOCACHE="$out/gocache"
  go build -o "$bin.tmp" "$here"/main.go
  mv "$bin.tmp" "$bin"
fi
echo "$bin"
