#!/usr/bin/env bash
# `make run`: a local staging server under ./var for a newcomer to replicate to.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var/staging
exec target/release/godwit staging serve --listen 127.0.0.1:1500 --data var/staging
