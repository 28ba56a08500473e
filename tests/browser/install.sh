#!/usr/bin/env bash
# Installs the browser tests' npm packages (playwright-core, pinned by package-lock.json) into
# tests/browser/node_modules. No browser is downloaded: the tests drive Debian's /usr/bin/chromium.
# Idempotent and quick when already installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v npm >/dev/null 2>&1; then
  echo "deps: installing Debian's npm"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends npm >/dev/null
fi
want=$(sed -n 's/.*"playwright-core": *"\([^"]*\)".*/\1/p' "$here/package.json" | head -1)
have=$(sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' "$here/node_modules/playwright-core/package.json" 2>/dev/null | head -1 || true)
if [ "$want" != "$have" ]; then
  echo "deps: installing npm packages for tests/browser (playwright-core $want)"
  (cd "$here" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi
