#!/usr/bin/env bash
# Builds tests/image/ovfcheck.go against Debian's govmomi (golang-github-vmware-govmomi-dev,
# tests/deps/image.apt) and prints the binary's path; cached by the source's hash under $1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-"$here/../../target/ovfcheck"}")
mkdir -p "$out"
hash=$(sha256sum "$here/ovfcheck.go" | cut -c1-16)
bin="$out/ovfcheck-$hash"
if [ ! -x "$bin" ]; then
  export GOPATH=/usr/share/gocode GO111MODULE=off GOCACHE="$out/gocache"
  go build -o "$bin.tmp" "$here/ovfcheck.go"
  mv "$bin.tmp" "$bin"
fi
echo "$bin"
