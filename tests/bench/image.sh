#!/usr/bin/env bash
# Appliance image benchmark: build time, artifact sizes (OVA, VHDX apparent and allocated,
# kernel, initramfs), and boot-to-setup-page time under TCG with 512 MiB on SeaBIOS
# (pvscsi + vmxnet3, the OVA's VMDK) and on OVMF with Secure Boot (virtio, the VHDX).
# Correctness first: SHA256SUMS must match the artifacts and qemu-img must find the OVA's VMDK
# and the VHDX consistent; a failed build or check, or an image that never shows the setup
# page (HTTP 2xx/3xx), exits 1. Boot times are the median of RUNS (default 3, at least 3) boots
# each. Goals (reported, PASS/MISS): OVA < 40 MB.
#
#   bash tests/bench/image.sh     (make bench builds target/release/godwit first)
#
# Environment: GODWIT_BIN (default target/release/godwit; a static build is the product,
# see `make image`), GODWIT_BENCH_DIR (deb cache and output; default $TMPDIR/godwit-bench).
set -uo pipefail
GODWIT_BIN=${GODWIT_BIN:-target/release/godwit}
BENCH=${GODWIT_BENCH_DIR:-${TMPDIR:-/tmp}/godwit-bench}/image
mkdir -p "$BENCH"
[ -x "$GODWIT_BIN" ] || { echo "bench: $GODWIT_BIN not found (make bench builds it)" >&2; exit 1; }
OUT="$BENCH/out"
t0=$(date +%s.%N)
"$GODWIT_BIN" image build --out "$OUT" --cache "$BENCH/cache" --godwit-bin "$GODWIT_BIN" >/dev/null || exit 1
t1=$(date +%s.%N)
(cd "$OUT" && tar -xf godwit.ova godwit-disk1.vmdk)
(cd "$OUT" && sha256sum --quiet -c SHA256SUMS) || { echo "image bench: FAILED: SHA256SUMS does not match the artifacts"; exit 1; }
for f in godwit-disk1.vmdk godwit.vhdx; do
  qemu-img check -q "$OUT/$f" || { echo "image bench: FAILED: qemu-img check $f"; exit 1; }
done
echo "check: SHA256SUMS matches; qemu-img check finds the VMDK and the VHDX consistent"
status=0
size() { stat -c %s "$1"; }
alloc() { echo $(( $(stat -c %b "$1") * $(stat -c %B "$1") )); }
printf '%-34s %14s\n' "artifact" "bytes"
printf '%-34s %14s\n' "godwit binary (as shipped, stripped)" "$(strip -o "$BENCH/g.strip" "$GODWIT_BIN" && size "$BENCH/g.strip")"
printf '%-34s %14s\n' "kernel (Debian cloud, signed)" "$(size "$OUT/.build/vmlinuz")"
printf '%-34s %14s\n' "initramfs (zstd)" "$(size "$OUT/.build/initrd.img")"
printf '%-34s %14s\n' "godwit.ova" "$(size "$OUT/godwit.ova")"
printf '%-34s %14s\n' "godwit.vhdx (apparent)" "$(size "$OUT/godwit.vhdx")"
printf '%-34s %14s\n' "godwit.vhdx (allocated)" "$(alloc "$OUT/godwit.vhdx")"
ova=$(size "$OUT/godwit.ova")
[ "$ova" -lt 40000000 ] && echo "OVA < 40 MB: PASS" || echo "OVA < 40 MB: MISS"
printf 'build time: %.1f s\n' "$(echo "$t1 - $t0" | bc)"

RUNS=${RUNS:-3}
[ "$RUNS" -ge 3 ] 2>/dev/null || RUNS=3
# boot NAME DISK FMT FIRMWARE-ARGS...: RUNS boots from a fresh overlay each; the setup page must
# answer 2xx/3xx (as the image tests require); prints the median and the range.
boot() {
  local name=$1; shift
  local times=() i t
  for i in $(seq "$RUNS"); do
    t=$(boot_once "$name" "$@") || { status=1; return; }
    times+=("$t")
  done
  printf '%-44s %6.1f s (median of %d; %s)\n' "boot to setup page: $name" \
    "$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')" \
    "$RUNS" "$(printf '%s ' "${times[@]}")"
}
boot_once() { # name disk fmt firmware-args...; prints seconds
  local name=$1 disk=$2 fmt=$3; shift 3
  local port; port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  qemu-img create -q -f qcow2 -F "$fmt" -b "$disk" "$BENCH/$name.qcow2"
  local start; start=$(date +%s.%N)
  qemu-system-x86_64 -accel tcg -m 512 -smp 1 -display none -monitor none -nodefaults \
    -serial "file:$BENCH/$name.log" -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:443" \
    -drive "file=$BENCH/$name.qcow2,format=qcow2,if=none,id=d0" "$@" > /dev/null &
  local pid=$!
  local ok=""
  for _ in $(seq 1 480); do
    case $(curl -sk -o /dev/null -w '%{http_code}' --max-time 2 "https://127.0.0.1:$port/") in
      2*|3*) ok=1; break ;;
    esac
    sleep 0.25
  done
  local end; end=$(date +%s.%N)
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  rm -f "$BENCH/$name.qcow2"
  if [ -n "$ok" ]; then echo "$end - $start" | bc
  else echo "boot to setup page: $name: FAILED (no 2xx/3xx in 120 s; log $BENCH/$name.log)" >&2; return 1; fi
}
boot "seabios-pvscsi-vmxnet3-vmdk" "$OUT/godwit-disk1.vmdk" vmdk -machine pc \
  -device pvscsi,id=s0 -device scsi-hd,drive=d0,bus=s0.0 -device vmxnet3,netdev=n0,romfile=
cp /usr/share/OVMF/OVMF_VARS_4M.ms.fd "$BENCH/vars.fd"
boot "ovmf-secureboot-virtio-vhdx" "$OUT/godwit.vhdx" vhdx -machine q35,smm=on \
  -global driver=cfi.pflash01,property=secure,value=on \
  -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd \
  -drive "if=pflash,format=raw,unit=1,file=$BENCH/vars.fd" \
  -device virtio-blk-pci,drive=d0,bootindex=0 -device virtio-net-pci,netdev=n0,romfile=
exit $status
