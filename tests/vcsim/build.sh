#!/usr/bin/env bash
# Builds tests/vcsim/main.go against Debian's govmomi sources (golang-github-vmware-govmomi-dev,
# listed in tests/deps/vmware.apt) and prints the binary's path. Cached by the hash of the sources
# (all *.go files) under $1 (default: target/vcsim), so only the first test run pays the ~15 s build.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-"$here/../../target/vcsim"}")
mkdir -p "$out"
hash=$(cat "$here"/*.go | sha256sum | cut -c1-16)
bin="$out/vcsim-godwit-$hash"
if [ ! -x "$bin" ]; then
  export GOPATH=/usr/share/gocode GO111MODULE=off GOFLAGS=-mod=mod GOCACHE="$out/gocache"
  unset GOFLAGS
  go build -o "$bin.tmp" "$here"/*.go
  mv "$bin.tmp" "$bin"
fi
echo "$bin"
