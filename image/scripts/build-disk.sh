#!/usr/bin/env bash
# Builds the appliance's raw GPT disk, rootless (no loop device, no mount, no root needed for
# anything but `apt-get download`'s cache). Called by `godwit image build` (godwit_image::build),
# which writes this script, init, inittab and udhcpc.sh into $SCRIPTS and sets:
#   WORK        scratch directory (kept for inspection)
#   DEBS        directory caching the downloaded .deb files (kernel, shim, grub)
#   GODWIT_BIN  the godwit binary to put in the initramfs (static, or dynamic: its libraries follow)
#   VERSION     version string shown on the console
#   SOURCE_DATE_EPOCH  fixed time for every timestamp in the image
#   OUT_RAW     the raw disk to write
#   DISK_MIB    its virtual size in MiB (sparse: only the partitions' data is written)
#   DISK_GUID ESP_GUID DATA_GUID FAT_SERIAL EXT4_UUID   fixed identifiers (reproducible builds)
# Layout (MiB): 1 gap | ESP FAT32 1..97 (slots /A and /B, shim+GRUB, SYSLINUX) | data ext4 97..135 |
# the rest of the disk, unwritten: at boot `godwit system run` grows the data partition (GPT and
# ext4, online) to fill the disk, whatever size the user gave it.
set -euo pipefail
: "${WORK:?}" "${DEBS:?}" "${GODWIT_BIN:?}" "${VERSION:?}" "${SOURCE_DATE_EPOCH:?}" "${OUT_RAW:?}" "${SCRIPTS:?}" "${DISK_MIB:?}"
: "${DISK_GUID:?}" "${ESP_GUID:?}" "${DATA_GUID:?}" "${FAT_SERIAL:?}" "${EXT4_UUID:?}"
export LC_ALL=C TZ=UTC
step() { echo "image: $*" >&2; }
need() { command -v "$1" >/dev/null || { echo "image: $1 not found (package $2; make deps installs it)" >&2; exit 3; }; }
need apt-get apt; need dpkg-deb dpkg; need mkfs.fat dosfstools; need mcopy mtools; need syslinux syslinux
need sgdisk gdisk; need mkfs.ext4 e2fsprogs; need resize2fs e2fsprogs; need cpio cpio; need zstd zstd; need depmod kmod; need faketime faketime; need debugfs e2fsprogs
BUSYBOX=/bin/busybox; [ -x "$BUSYBOX" ] || { echo "image: /bin/busybox not found (package busybox-static)" >&2; exit 3; }
GPTMBR=/usr/lib/SYSLINUX/gptmbr.bin; [ -f $GPTMBR ] || GPTMBR=/usr/lib/syslinux/mbr/gptmbr.bin
FROZEN="$(date -u -d "@$SOURCE_DATE_EPOCH" '+%Y-%m-%d %H:%M:%S')"
frozen() { faketime "$FROZEN" "$@"; }

rm -rf "$WORK/kroot" "$WORK/sb" "$WORK/ir" "$WORK/esp" "$WORK/data"
mkdir -p "$WORK" "$DEBS"

# 1. Debian packages: the signed cloud kernel, shim and GRUB, downloaded (never installed).
KPKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-6/{print $2; exit}')
[ -n "$KPKG" ] || { echo "image: cannot resolve linux-image-cloud-amd64 (run apt-get update)" >&2; exit 3; }
for p in "$KPKG" shim-signed grub-efi-amd64-signed; do
  ls "$DEBS/${p}_"*.deb >/dev/null 2>&1 || (cd "$DEBS" && apt-get download -q "$p" 2>&1 | grep -v unsandboxed >&2 || true)
  ls "$DEBS/${p}_"*.deb >/dev/null 2>&1 || { echo "image: apt-get download $p failed" >&2; exit 3; }
done
step "kernel $KPKG"
dpkg-deb -x "$(ls "$DEBS/${KPKG}_"*.deb | sort | tail -1)" "$WORK/kroot"
dpkg-deb -x "$(ls "$DEBS/shim-signed_"*.deb | sort | tail -1)" "$WORK/sb"
dpkg-deb -x "$(ls "$DEBS/grub-efi-amd64-signed_"*.deb | sort | tail -1)" "$WORK/sb"
KV=${KPKG#linux-image-}

# 2. initramfs: busybox, godwit (+ its shared libraries when dynamic), drivers, init.
IR="$WORK/ir"
mkdir -p "$IR"/{bin,sbin,dev,proc,sys,etc,tmp,run,data,mnt,lib64,usr/share/udhcpc}
cp "$BUSYBOX" "$IR/bin/busybox"
for a in sh mount umount modprobe insmod ip udhcpc hostname ntpd sleep cat echo mkdir reboot poweroff init \
         blkid ls ps kill sync mdev setsid date blockdev; do ln -s busybox "$IR/bin/$a"; done
ln -s ../bin/busybox "$IR/sbin/init"
strip -o "$IR/bin/godwit" "$GODWIT_BIN" 2>/dev/null || cp "$GODWIT_BIN" "$IR/bin/godwit"
chmod 755 "$IR/bin/godwit"
if ldd "$GODWIT_BIN" >/dev/null 2>&1; then
  for lib in $(ldd "$GODWIT_BIN" | grep -o '/[^ ]*' | sort -u); do install -D -m 755 "$lib" "$IR$lib"; done
fi
# resize2fs grows the mounted data file system online at boot (busybox has none); with its
# shared libraries (e2fsprogs, libext2fs2, libc6).
RESIZE2FS=$(command -v resize2fs)
install -D -m 755 "$RESIZE2FS" "$IR/sbin/resize2fs"
for lib in $(ldd "$RESIZE2FS" | grep -o '/[^ ]*' | sort -u); do
  [ -e "$IR$lib" ] || install -D -m 755 "$lib" "$IR$lib"
done
install -m 755 "$SCRIPTS/init" "$IR/init"
install -m 644 "$SCRIPTS/inittab" "$IR/etc/inittab"
install -m 755 "$SCRIPTS/udhcpc.sh" "$IR/usr/share/udhcpc/default.script"
echo "$VERSION" > "$IR/etc/godwit-version"
mkdir -p "$IR/etc/godwit"; cp "$SCRIPTS/update.pub" "$IR/etc/godwit/update.pub"
echo "root:x:0:0:root:/:/bin/sh" > "$IR/etc/passwd"
depmod -b "$WORK/kroot" "$KV"
MODS="virtio_pci virtio_net vmxnet3 hv_vmbus hv_netvsc virtio_blk virtio_scsi vmw_pvscsi hv_storvsc ata_piix
      sd_mod sr_mod iso9660 vfat nls_cp437 nls_ascii efivarfs"
for m in $(modprobe -d "$WORK/kroot" -S "$KV" --show-depends -a $MODS | awk '/^insmod/{print $2}' \
           | sed "s|.*/lib/modules/$KV/||" | sort -u); do
  install -D -m 644 "$WORK/kroot/lib/modules/$KV/$m" "$IR/lib/modules/$KV/$m"
done
cp "$WORK/kroot/lib/modules/$KV/"modules.{order,builtin,builtin.modinfo} "$IR/lib/modules/$KV/"
depmod -b "$IR" "$KV"
find "$IR" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$IR" && find . -print0 | sort -z | cpio --null -o -H newc --owner=0:0 --reproducible --quiet) \
  | zstd -q -19 -T1 > "$WORK/initrd.img"
cp "$WORK/kroot/boot/vmlinuz-$KV" "$WORK/vmlinuz"
step "initramfs $(stat -c %s "$WORK/initrd.img") bytes, kernel $(stat -c %s "$WORK/vmlinuz") bytes"

# 3. ESP (FAT32): shim -> GRUB (UEFI, Secure Boot) and SYSLINUX (BIOS), both reading /A or /B.
# grub.cfg, slot.cfg, grubenv and syslinux.cfg come from godwit_image::slots (rendered into $SCRIPTS);
# the boot-once ADV SYSLINUX reads is the last 1 KiB of ldlinux.sys (empty as installed).
for f in grub.cfg slot.cfg grubenv syslinux.cfg update.pub; do [ -f "$SCRIPTS/$f" ] || { echo "image: $SCRIPTS/$f missing" >&2; exit 3; }; done
rm -f "$WORK/esp.img"
frozen mkfs.fat -F 32 -s 1 -S 512 -n GODWIT-ESP -i "$FAT_SERIAL" -C "$WORK/esp.img" $((96*1024)) >/dev/null
export MTOOLS_SKIP_CHECK=1
frozen mmd -i "$WORK/esp.img" ::/EFI ::/EFI/BOOT ::/boot ::/boot/syslinux ::/boot/grub ::/A ::/B
frozen mcopy -i "$WORK/esp.img" "$WORK/sb/usr/lib/shim/shimx64.efi.signed" ::/EFI/BOOT/BOOTX64.EFI
frozen mcopy -i "$WORK/esp.img" "$WORK/sb/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed" ::/EFI/BOOT/grubx64.efi
frozen mcopy -i "$WORK/esp.img" "$SCRIPTS/grub.cfg" ::/boot/grub/grub.cfg
frozen mcopy -i "$WORK/esp.img" "$SCRIPTS/slot.cfg" ::/boot/grub/slot.cfg
# GRUB's environment block (boot-once trial); GRUB and godwit rewrite it in place.
frozen mcopy -i "$WORK/esp.img" "$SCRIPTS/grubenv" ::/boot/grub/grubenv
frozen mcopy -i "$WORK/esp.img" "$SCRIPTS/syslinux.cfg" ::/boot/syslinux/syslinux.cfg
frozen mcopy -i "$WORK/esp.img" "$WORK/vmlinuz" ::/A/vmlinuz
frozen mcopy -i "$WORK/esp.img" "$WORK/initrd.img" ::/A/initrd.img
frozen syslinux --install --directory /boot/syslinux "$WORK/esp.img"

# 4. Data partition (ext4): settings, job state, logs, spools, exports; fixed UUID, hash seed and
# times. 4 KiB blocks and one inode per 64 KiB (its files are few and large), room reserved to
# grow online to 2 TiB, a 16 MiB journal (online growth adds up to 16 groups per transaction,
# about 260 journal credits; the default 4 MiB journal of a small file system allows 256), no
# blocks reserved for root (the service is root), exports/ made ahead.
mkdir -p "$WORK/data/system" "$WORK/data/service" "$WORK/data/exports"
chmod 700 "$WORK/data/service" "$WORK/data/exports"
echo "1" > "$WORK/data/system/layout-version"
find "$WORK/data" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
rm -f "$WORK/data.img"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH frozen mkfs.ext4 -q -F -L godwit-data -U "$EXT4_UUID" -b 4096 -i 65536 -m 0 -J size=16 \
  -E "root_owner=0:0,hash_seed=$EXT4_UUID,lazy_itable_init=0,resize=536870912" -d "$WORK/data" "$WORK/data.img" 38M
# mkfs.ext4 -d copies each source file's ctime (the real time it was made; faketime cannot
# change what the kernel stamps): set it to SOURCE_DATE_EPOCH too.
(cd "$WORK/data" && find . -mindepth 1 | sort | sed "s|^\.\(.*\)|sif \1 ctime @$SOURCE_DATE_EPOCH|") > "$WORK/data.sif"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH debugfs -w -f "$WORK/data.sif" "$WORK/data.img" >/dev/null 2>&1

# 5. GPT disk: partitions placed with dd, SYSLINUX's GPT MBR, legacy-BIOS-bootable ESP.
rm -f "$OUT_RAW"; truncate -s "${DISK_MIB}M" "$OUT_RAW"
sgdisk -Z -U "$DISK_GUID" \
  -n 1:2048:+96M -t 1:EF00 -c 1:esp -u "1:$ESP_GUID" -A 1:set:2 \
  -n 2:0:+38M -t 2:8300 -c 2:data -u "2:$DATA_GUID" "$OUT_RAW" >/dev/null
dd if="$WORK/esp.img" of="$OUT_RAW" bs=64K seek=16 conv=notrunc,sparse status=none
dd if="$WORK/data.img" of="$OUT_RAW" bs=64K seek=1552 conv=notrunc,sparse status=none
dd if="$GPTMBR" of="$OUT_RAW" bs=440 count=1 conv=notrunc status=none
sgdisk -v "$OUT_RAW" | grep -q "No problems found" || { sgdisk -v "$OUT_RAW" >&2; exit 4; }
step "disk $OUT_RAW ready"
