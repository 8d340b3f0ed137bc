#!/usr/bin/env bash
# Builds the demo guest "tiny-linux" from Debian packages only: Debian's cloud kernel
# (linux-image-cloud-amd64, taken from its .deb with apt-get download + dpkg-deb, never
# installed on the host), busybox-static, and keyboard maps compiled from console-data.
# The cloud kernel, not the generic one: LZ4 instead of XZ and fewer drivers, it needs
# 2.4x less CPU to reach a shell under TCG (3.6 s against 8.5 s), and it still has the
# VGA text console, the PS/2 keyboard, serial console, DMI and ext4 built in.
#
#   OUT/tiny-linux.img   a raw disk: MBR (syslinux mbr.bin) + FAT boot partition with
#                        extlinux-style syslinux, kernel and initramfs + ext4 partition
#                        mounted at /data in the guest (what the guest writes stays there)
#   OUT/tiny-linux.iso   the same kernel and initramfs on an isolinux CD (no /data disk)
#
# The guest boots through SeaBIOS, prints a banner naming its VM and loads the keyboard
# layout of its console; both come from SMBIOS OEM strings the agent writes
# ("multiconsole:name=NAME", "multiconsole:keymap=de"). Shells run on tty1 and ttyS0.
#
# The guest needs 128 MiB (64 is too little to unpack the kernel) and its disk on virtio or
# ide. Idempotent: rebuilt only when a stamp of its inputs (this script, package versions)
# changes. Usage: scripts/build-guest.sh [--force]   (OUT defaults to
# /var/cache/multiconsole/guest; MULTICONSOLE_GUEST_DIR overrides it).
set -euo pipefail
export LC_ALL=C

OUT=${MULTICONSOLE_GUEST_DIR:-/var/cache/multiconsole/guest}
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

# QEMU keymap name (what a console's keyMap says) -> console-data keymap. nodeadkeys:
# a key sent by name must give its character at once, not wait for a second key.
KEYMAPS=(
  "en-us:qwerty/us"
  "en-gb:qwerty/uk"
  "de:qwertz/de-latin1-nodeadkeys"
  "de-ch:qwertz/sg-latin1"
  "fr:azerty/fr-latin1"
  "es:qwerty/es"
  "it:qwerty/it"
)
# Kernel modules the guest loads, in this order (their dependencies are added): disks on
# virtio-blk or IDE (ata_piix). ext4 (for /data) is built into the cloud kernel; SATA
# (ahci) is not in it, so the disk's bus is virtio or ide.
MODULES=(virtio_pci virtio_blk ata_piix sd_mod)
KERNEL_META=linux-image-cloud-amd64

command -v sfdisk >/dev/null || { echo "build-guest: sfdisk missing (apt-get install fdisk)" >&2; exit 1; }
BUSYBOX=$(dpkg -L busybox-static 2>/dev/null | grep -m1 '/bin/busybox$' || true)
[ -x "$BUSYBOX" ] || { echo "build-guest: busybox-static is not installed" >&2; exit 1; }

# The meta package depends on the current kernel package (its name carries the ABI).
kernel_of() { apt-cache depends "$KERNEL_META" 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
kernel_pkg=$(kernel_of)
if [ -z "$kernel_pkg" ]; then
  # No package lists (cleaned): keep a built image, else fetch the lists.
  [ -f "$OUT/tiny-linux.img" ] && [ "$FORCE" = 0 ] && exit 0
  apt-get update -qq
  kernel_pkg=$(kernel_of)
fi
[ -n "$kernel_pkg" ] || { echo "build-guest: no $KERNEL_META in the apt lists (apt-get update)" >&2; exit 1; }
deb=$(ls "$OUT/debs/${kernel_pkg}_"*.deb 2>/dev/null | head -n 1 || true)
# What the image is made of: this script, the kernel .deb and the host packages used.
inputs_stamp() {
  {
    cat "$0"
    echo "$kernel_pkg $(basename "${deb:-none}")"
    dpkg-query -W -f='${Package}=${Version}\n' busybox-static syslinux syslinux-common isolinux \
      console-data kbd e2fsprogs dosfstools mtools xorriso
  } | sha256sum | cut -c1-16
}
stamp=$(inputs_stamp)
if [ "$FORCE" = 0 ] && [ -f "$OUT/tiny-linux.img" ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
echo "build-guest: building tiny-linux in $OUT ($kernel_pkg, busybox-static)"
start=$(date +%s)

install -d -m 0755 "$OUT" "$OUT/debs"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The kernel .deb, kept in OUT/debs so a rebuild does not fetch it again.
if [ -z "$deb" ]; then
  rm -f "$OUT/debs/"*.deb
  (cd "$OUT/debs" && apt-get download -q "$kernel_pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  deb=$(ls "$OUT/debs/${kernel_pkg}_"*.deb | head -n 1)
  stamp=$(inputs_stamp)
fi
# Only the kernel and the module directories the guest's drivers come from.
mkdir -p "$work/k"
m='./lib/modules/*/kernel'
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work/k" --wildcards './boot/vmlinuz-*' \
  "$m/drivers/virtio/*" "$m/drivers/block/*" "$m/drivers/ata/*" "$m/drivers/scsi/*" \
  "$m/lib/*" "$m/crypto/*" "$m/block/*"
kver=$(ls "$work/k/lib/modules")
kmods="$work/k/lib/modules/$kver"
"$BUSYBOX" depmod -b "$work/k" "$kver"

# --- initramfs -------------------------------------------------------------------
root="$work/root"
mkdir -p "$root"/{bin,sbin,etc/keymaps,proc,sys,dev,data,tmp,root,run,lib/modules/"$kver"}
cp "$BUSYBOX" "$root/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
ln -sf ../bin/busybox "$root/sbin/init"

# Modules and their dependencies, from modules.dep (depmod of the extracted tree).
needed=
for mod in "${MODULES[@]}"; do
  line=$(grep -E "(^|/)${mod//_/[_-]}\.ko:" "$kmods/modules.dep") ||
    { echo "build-guest: module $mod not in $kver" >&2; exit 1; }
  needed+=" ${line/:/}"
done
needed=$(echo "$needed" | tr ' ' '\n' | sort -u)
for f in $needed; do
  install -D -m 0644 "$kmods/$f" "$root/lib/modules/$kver/$f"
done
"$BUSYBOX" depmod -b "$root" "$kver"
printf '%s\n' "${MODULES[@]}" >"$root/etc/modules"

for entry in "${KEYMAPS[@]}"; do
  name=${entry%%:*}
  src=/usr/share/keymaps/i386/${entry#*:}.kmap.gz
  [ -f "$src" ] || continue
  loadkeys -q -b "$src" >"$root/etc/keymaps/$name.bmap" </dev/null
done
[ -s "$root/etc/keymaps/en-us.bmap" ] && [ -s "$root/etc/keymaps/de.bmap" ] || {
  echo "build-guest: keymaps en-us and de are needed (console-data, kbd)" >&2
  exit 1
}

cat >"$root/init" <<'EOF'
#!/bin/sh
# tiny-linux: mount, load drivers, read who we are from SMBIOS, then hand over to init.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
while read -r m; do modprobe "$m" 2>/dev/null; done </etc/modules

# SMBIOS type 11 (OEM strings): NUL-separated strings after a 5-byte binary header.
oem() {
  for f in /sys/firmware/dmi/entries/11-*/raw; do
    [ -f "$f" ] && tr '\000' '\n' <"$f" | sed -n "s/.*multiconsole:$1=//p"
  done | head -n 1
}
name=$(oem name); keymap=$(oem keymap)
[ -n "$name" ] || name=unnamed
[ -n "$keymap" ] || keymap=en-us
hostname "$name"
kmnote=$keymap
if [ -f "/etc/keymaps/$keymap.bmap" ]; then
  loadkmap <"/etc/keymaps/$keymap.bmap"
else
  kmnote="$keymap (no map here: en-us)"
fi

# /data: the disk's second partition (labelled TINYDATA), else memory only.
disk=
for i in 1 2 3 4 5 6 7 8 9 10; do
  disk=$(findfs LABEL=TINYDATA 2>/dev/null) && break
  sleep 0.2
done
if [ -n "$disk" ] && mount -t ext4 "$disk" /data; then
  datanote="Files in /data stay on the disk ($disk) across restarts"
else
  mount -t tmpfs tmpfs /data
  datanote="Files in /data are in memory only (no data disk)"
fi

cat >/etc/banner <<BANNER

  =========================================================
    tiny-linux  on multiconsole
    VM name:   $name
    Keyboard:  $kmnote
    $datanote
  =========================================================
    Try:  echo \$((6*7))

BANNER
echo "tiny-linux: ready, vm $name" >/dev/ttyS0
exec /sbin/init
EOF
chmod 0755 "$root/init"

cat >"$root/etc/inittab" <<'EOF'
::sysinit:/bin/true
tty1::respawn:-/bin/sh
ttyS0::respawn:-/bin/sh
::ctrlaltdel:/bin/reboot
::shutdown:/bin/sync
EOF
cat >"$root/etc/profile" <<'EOF'
export PATH=/bin:/sbin HOME=/root TERM=linux LANG=C.UTF-8
case $(tty) in /dev/tty1) clear ;; esac
cat /etc/banner
PS1='$(hostname):$PWD# '
cd /root
EOF
echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet --owner=0:0 | gzip -6) >"$work/initrd.gz"

cat >"$work/syslinux.cfg" <<'EOF'
DEFAULT tiny
PROMPT 0
TIMEOUT 0
LABEL tiny
  KERNEL /vmlinuz
  APPEND initrd=/initrd.gz console=ttyS0,115200 console=tty0 quiet loglevel=3 consoleblank=0 panic=5
EOF
cp "$work/k/boot/vmlinuz-$kver" "$work/vmlinuz"

# --- disk image: MBR + FAT (syslinux) boot partition + ext4 data partition ---------
MiB=$((1024 * 1024))
boot_mib=24
data_mib=32
img="$work/tiny-linux.img"
truncate -s $(((1 + boot_mib + data_mib) * MiB)) "$img"
sfdisk --quiet "$img" <<EOF
label: dos
start=2048, size=$((boot_mib * 2048)), type=6, bootable
start=$(((1 + boot_mib) * 2048)), size=$((data_mib * 2048)), type=83
EOF
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$img" bs=440 count=1 conv=notrunc status=none
# FAT16 written in place at the partition's offset; -h: the hidden sectors before it.
mkfs.vfat -F 16 -n TINYBOOT --offset 2048 -h 2048 "$img" $((boot_mib * 1024)) >/dev/null 2>&1
export MTOOLS_SKIP_CHECK=1
mcopy -i "$img@@$MiB" "$work/vmlinuz" "$work/initrd.gz" "$work/syslinux.cfg" ::/
syslinux --offset $MiB --install "$img"
mke2fs -q -t ext4 -L TINYDATA -F "$work/data.ext4" "${data_mib}M" >/dev/null
dd if="$work/data.ext4" of="$img" bs=1M seek=$((1 + boot_mib)) conv=notrunc status=none

# --- ISO: isolinux, same kernel and initramfs ---------------------------------------
iso="$work/tiny-linux.iso"
mkdir -p "$work/iso/isolinux"
cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 "$work/iso/isolinux/"
cp "$work/vmlinuz" "$work/initrd.gz" "$work/iso/"
cp "$work/syslinux.cfg" "$work/iso/isolinux/isolinux.cfg"
xorriso -as mkisofs -quiet -o "$iso" -V TINYLINUX -J -R \
  -isohybrid-mbr /usr/lib/ISOLINUX/isohdpfx.bin \
  -b isolinux/isolinux.bin -c isolinux/boot.cat \
  -no-emul-boot -boot-load-size 4 -boot-info-table "$work/iso" 2>/dev/null

# Readable by QEMU (libvirt-qemu:kvm), which opens them as backing files, read-only.
chmod 0644 "$img" "$iso"
mv -f "$img" "$OUT/tiny-linux.img"
mv -f "$iso" "$OUT/tiny-linux.iso"
echo "$stamp" >"$OUT/stamp"
echo "build-guest: done in $(($(date +%s) - start)) s: $OUT/tiny-linux.img, $OUT/tiny-linux.iso"
