#!/usr/bin/env bash
# qemu-system-x86 for the image boot tests must match qemu-utils. Debian bookworm machines
# here come with qemu-utils from bookworm-backports; then qemu-system-x86 (and seabios) must
# come from there too, pinned so nothing else is upgraded. Idempotent; run by install.sh.
set -euo pipefail
command -v qemu-system-x86_64 >/dev/null && exit 0
v=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
case "$v" in *bpo12*) ;; *) exit 0 ;; esac
sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    | $sudo_cmd tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
  printf 'Package: *\nPin: release n=bookworm-backports\nPin-Priority: 100\n' \
    | $sudo_cmd tee /etc/apt/preferences.d/godwit-backports >/dev/null
fi
export DEBIAN_FRONTEND=noninteractive
$sudo_cmd apt-get update -qq
$sudo_cmd apt-get install -y -qq --no-install-recommends qemu-system-x86/bookworm-backports \
  qemu-system-common/bookworm-backports qemu-system-data/bookworm-backports seabios/bookworm-backports >/dev/null
