#!/usr/bin/env bash
# build-base-image.sh - build the Debian 12 (bookworm) base cloud image that the
# orchestrator's Packer/QEMU builds start from (the stand-in for an Azure
# marketplace "source" image).
#
# Usage:  scripts/build-base-image.sh OUTPUT.qcow2        (as root)
#
# Result: a qcow2 with a 3 GiB virtual disk: MBR, one bootable ext4 partition
# labelled "debroot" (starting at 1 MiB), extlinux as boot loader, the Debian
# cloud kernel, systemd, openssh-server, sudo, cloud-init (NoCloud only) and
# waagent (WALinuxAgent; inert off Azure, used by the deprovision step).
# eth0 gets DHCP through ifupdown, so the image is reachable under QEMU
# user-mode networking with a virtio-net NIC.  Log in via cloud-init user-data
# (a NoCloud seed ISO labelled "cidata"); root's password is locked.
#
# Environment:
#   MIRROR       Debian mirror (default: the first "URIs:" line of
#                /etc/apt/sources.list.d/debian.sources, then the first "deb"
#                line of /etc/apt/sources.list, then http://deb.debian.org/debian)
#   TMPDIR       the work dir is created under ${TMPDIR:-/var/tmp}
#   IMAGE_SIZE   raw disk size (default 3G)
#
# Non-obvious steps (measured on this platform, see /work/shared/platform-facts.md):
# * debootstrap --variant=minbase needs python3-cffi-backend in --include (else
#   it cannot resolve python3-cffi-backend-api-min for cloud-init) and dbus
#   (else systemctl/shutdown fail with "Failed to connect to bus").
# * There is no udev on the build host, so loop devices get no partition nodes
#   (/dev/loopNp1): the partition is attached on its own with
#   `losetup -o OFFSET --sizelimit SIZE`.
# * ext4 is created without the 64bit feature (not needed below 16 TiB) so that
#   extlinux/syslinux 6.04 can read it whatever its ext4 support.
# * The root filesystem is built in a directory and copied into the fresh
#   filesystem afterwards, so deleted files (apt caches, logs) leave no data
#   blocks behind and the qcow2 stays small.
# * cloud-init 22.4 on minbase: `locale: false` (no locales package, so
#   update-locale would fail) and `manage_etc_hosts: true` (else sudo warns
#   "unable to resolve host" after cloud-init sets the hostname).
#   cloud-init 22.4's schema wants a string for `locale`, so its log carries one
#   harmless "Invalid cloud-config provided" WARNING; `cloud-init status` is
#   still "done" with exit code 0.
#   Its network configuration is disabled: ifupdown's eth0 stanza is the single
#   source of network config (no duplicate dhclient from a 50-cloud-init file,
#   and the network still comes up if cloud-init is disabled later).
# * No SSH host keys are shipped: cloud-init (ssh module, ordered before
#   ssh.service) creates them on first boot; a drop-in runs `ssh-keygen -A`
#   before sshd as a fallback when there is no host key at all (e.g. after waagent
#   -deprovision deleted them and cloud-init does not run). It leaves cloud-init's
#   choice alone: the build VM asks for an ed25519 key only (RSA costs ~6 s under TCG).
# * The initramfs was built before /etc/fstab existed, so it prints "fsck not
#   present, so skipping root file system"; root is mounted `ro` and
#   systemd-fsck-root checks it before the remount rw instead.
# * /etc/machine-id is empty so that every VM made from the image gets its own
#   id on first boot (systemd's "first boot" semantics).
set -euo pipefail

PROG=${0##*/}
START=$SECONDS
SUITE=bookworm
LABEL=debroot
HOSTNAME_DEFAULT=debian
IMAGE_SIZE=${IMAGE_SIZE:-3G}
PART_START_SECTOR=2048           # 1 MiB alignment
INCLUDES=python3-cffi-backend,dbus,systemd-sysv,openssh-server,sudo,linux-image-cloud-amd64,waagent,ifupdown,isc-dhcp-client,iproute2,netbase,cloud-init,cloud-guest-utils,fdisk,ca-certificates

log() { printf '[%s %4ds] %s\n' "$PROG" "$((SECONDS - START))" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

# Run a long step in its own process group and wait for it, so that a signal
# reaches the cleanup trap at once (bash defers traps while a foreground
# command runs) and the trap can stop the whole step (debootstrap runs dpkg
# inside the chroot).
CHILD=
run_step() {
    setsid --wait "$@" &
    CHILD=$!
    local rc=0
    wait "$CHILD" || rc=$?
    CHILD=
    return "$rc"
}

usage() { printf 'usage: %s OUTPUT.qcow2   (must run as root)\n' "$PROG" >&2; exit 2; }

[[ $# -eq 1 && -n $1 && $1 != -* ]] || usage
[[ $(id -u) -eq 0 ]] || die "must be run as root (debootstrap, losetup and mount need it)"

OUTPUT=$1
for tool in debootstrap sfdisk losetup mkfs.ext4 extlinux qemu-img chroot; do
    command -v "$tool" >/dev/null 2>&1 || die "required tool '$tool' not found (apt-get install debootstrap fdisk e2fsprogs extlinux syslinux-common qemu-utils)"
done
MBR_BIN=
for f in /usr/lib/syslinux/mbr/mbr.bin /usr/lib/EXTLINUX/mbr.bin /usr/share/syslinux/mbr.bin; do
    [[ -r $f ]] && { MBR_BIN=$f; break; }
done
[[ -n $MBR_BIN ]] || die "syslinux mbr.bin not found (apt-get install syslinux-common)"

out_dir=$(dirname -- "$OUTPUT")
mkdir -p -- "$out_dir"
OUTPUT="$(cd -- "$out_dir" && pwd)/$(basename -- "$OUTPUT")"
TMP_OUTPUT="$OUTPUT.tmp-$$"

# --- mirror -----------------------------------------------------------------
if [[ -z ${MIRROR:-} ]]; then
    if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
        MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    fi
    if [[ -z ${MIRROR:-} && -r /etc/apt/sources.list ]]; then
        MIRROR=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list)
    fi
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi
SECURITY_MIRROR=http://deb.debian.org/debian-security
if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
    # the URIs of the deb822 stanza whose Suites mention -security
    sec=$(awk 'BEGIN{RS=""} /Suites:[^\n]*-security/ { if (match($0, /URIs:[ \t]*[^ \t\n]+/)) { s = substr($0, RSTART, RLENGTH); sub(/URIs:[ \t]*/, "", s); print s; exit } }' /etc/apt/sources.list.d/debian.sources)
    SECURITY_MIRROR=${sec:-$SECURITY_MIRROR}
fi

# --- work dir and cleanup -----------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/build-base-image.XXXXXX")
ROOTFS=$WORK/rootfs
MNT=$WORK/mnt
RAW=$WORK/disk.raw
LOOP=

cleanup() {
    local rc=$? m busy=0
    set +e
    exec 2>&3   # a signal may arrive inside a step whose stderr goes to a log
    if [[ -n ${CHILD:-} ]]; then
        kill -TERM -- "-$CHILD" 2>/dev/null || kill -TERM "$CHILD" 2>/dev/null
        wait "$CHILD" 2>/dev/null
    fi
    # Unmount everything below the work dir, deepest first (debootstrap may
    # leave proc/sys mounts in the rootfs when it fails).
    if [[ -n ${WORK:-} && -d $WORK ]]; then
        while read -r m; do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || busy=1
        done < <(awk -v w="$WORK" '$2 == w || index($2, w "/") == 1 {print $2}' /proc/self/mounts | sort -r)
    fi
    [[ -n $LOOP ]] && losetup -d "$LOOP" 2>/dev/null
    rm -f -- "$TMP_OUTPUT"
    if [[ -n ${WORK:-} && -d $WORK ]]; then
        if ((busy)) || awk -v w="$WORK" 'index($2, w "/") == 1 {f=1} END {exit !f}' /proc/self/mounts; then
            printf '%s: warning: mounts remain below %s; not deleting it\n' "$PROG" "$WORK" >&2
        else
            rm -rf --one-file-system -- "$WORK"
        fi
    fi
    if ((rc != 0)); then
        printf '%s: FAILED (exit %d) after %ds\n' "$PROG" "$rc" "$((SECONDS - START))" >&2
    fi
    exit "$rc"
}
exec 3>&2
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

log "work dir $WORK, mirror $MIRROR, output $OUTPUT"

# --- debootstrap ----------------------------------------------------------------
log "debootstrap $SUITE (minbase + cloud packages), this takes a minute or two"
t0=$SECONDS
mkdir -p "$ROOTFS"
if ! run_step debootstrap --variant=minbase --include="$INCLUDES" "$SUITE" "$ROOTFS" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1; then
    tail -n 30 "$WORK/debootstrap.log" >&2
    [[ -f $ROOTFS/debootstrap/debootstrap.log ]] && tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" >&2
    die "debootstrap failed"
fi
log "debootstrap done in $((SECONDS - t0))s"

# --- configure the root filesystem ----------------------------------------------
log "configuring the image"
kver=$(cd "$ROOTFS/boot" && ls vmlinuz-* 2>/dev/null | sed 's/^vmlinuz-//' | sort -V | tail -n 1)
[[ -n $kver ]] || die "no kernel in $ROOTFS/boot"
[[ -f $ROOTFS/boot/initrd.img-$kver ]] || die "no initramfs for kernel $kver"

echo "$HOSTNAME_DEFAULT" >"$ROOTFS/etc/hostname"
cat >"$ROOTFS/etc/hosts" <<HOSTS
127.0.0.1	localhost
127.0.1.1	$HOSTNAME_DEFAULT

::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
HOSTS

cat >"$ROOTFS/etc/fstab" <<FSTAB
# <file system>	<mount point>	<type>	<options>		<dump>	<pass>
LABEL=$LABEL	/		ext4	errors=remount-ro	0	1
FSTAB

cat >"$ROOTFS/etc/apt/sources.list" <<APT
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
APT

# Network: DHCP on eth0 (net.ifnames=0 on the kernel command line keeps the
# first NIC named eth0 whatever the bus: virtio-net under QEMU, hv_netvsc on Azure).
cat >"$ROOTFS/etc/network/interfaces" <<'NET'
# See interfaces(5). Interface stanzas live in /etc/network/interfaces.d/.
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback
NET
mkdir -p "$ROOTFS/etc/network/interfaces.d"
cat >"$ROOTFS/etc/network/interfaces.d/eth0" <<'NET'
auto eth0
iface eth0 inet dhcp
NET
# resolv.conf is written by dhclient at boot; do not ship the build host's.
rm -f "$ROOTFS/etc/resolv.conf"
: >"$ROOTFS/etc/resolv.conf"

# cloud-init: NoCloud only (seed ISO labelled "cidata"), None as the fallback
# so that a boot without a seed does not wait for network datasources.
mkdir -p "$ROOTFS/etc/cloud/cloud.cfg.d"
cat >"$ROOTFS/etc/cloud/cloud.cfg.d/95_orchestrator_datasource.cfg" <<'CFG'
# Written by build-base-image.sh: only the NoCloud datasource is probed.
datasource_list: [ NoCloud, None ]
CFG
cat >"$ROOTFS/etc/cloud/cloud.cfg.d/96_orchestrator_base.cfg" <<'CFG'
# Written by build-base-image.sh.
# minbase has no locales package: update-locale would fail.
locale: false
# Keep /etc/hosts in step with the hostname (else sudo: unable to resolve host).
manage_etc_hosts: true
# eth0 is configured by ifupdown (/etc/network/interfaces.d/eth0).
network:
  config: disabled
# Keep the sources.list written at build time (the build's mirror).
apt:
  preserve_sources_list: true
# The image boots with extlinux: there is no GRUB debconf to seed (saves ~4 s).
grub_dpkg:
  enabled: false
# No DSA host key (sshd does not load it anyway).
ssh_genkeytypes: [ rsa, ecdsa, ed25519 ]
CFG

# sshd: keys are generated at first boot (cloud-init's ssh module); fall back to
# ssh-keygen -A so sshd never fails for lack of host keys.
rm -f "$ROOTFS"/etc/ssh/ssh_host_*
mkdir -p "$ROOTFS/etc/systemd/system/ssh.service.d"
cat >"$ROOTFS/etc/systemd/system/ssh.service.d/10-hostkeys.conf" <<'UNIT'
# Written by build-base-image.sh: the image ships without SSH host keys.
[Unit]
After=cloud-init.service

[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1 || /usr/bin/ssh-keygen -A'
ExecStartPre=/usr/sbin/sshd -t
UNIT

chroot "$ROOTFS" systemctl enable ssh.service >/dev/null 2>&1 \
    || chroot "$ROOTFS" systemctl enable ssh.service
chroot "$ROOTFS" systemctl enable networking.service >/dev/null 2>&1 || true
chroot "$ROOTFS" passwd -l root >/dev/null

# Boot loader configuration (extlinux is installed once the disk exists).
# /vmlinuz and /initrd.img are the symlinks Debian keeps pointing at the
# newest kernel, so kernel upgrades inside the image keep booting.
mkdir -p "$ROOTFS/boot/extlinux"
if [[ -e $ROOTFS/vmlinuz && -e $ROOTFS/initrd.img ]]; then
    k_path=/vmlinuz i_path=/initrd.img
else
    k_path=/boot/vmlinuz-$kver i_path=/boot/initrd.img-$kver
fi
cat >"$ROOTFS/boot/extlinux/extlinux.conf" <<EXT
SERIAL 0 115200
DEFAULT debian
PROMPT 0
TIMEOUT 0
LABEL debian
  LINUX $k_path
  INITRD $i_path
  APPEND root=LABEL=$LABEL ro console=tty0 console=ttyS0,115200 net.ifnames=0
EXT

# Make it small and anonymous.
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/debootstrap
mkdir -p "$ROOTFS/var/lib/apt/lists/partial"
find "$ROOTFS/var/log" -type f -exec truncate -s 0 {} +
rm -rf "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/* "$ROOTFS"/var/lib/cloud/* "$ROOTFS"/var/lib/dhcp/*.leases
: >"$ROOTFS/etc/machine-id"
rm -f "$ROOTFS/var/lib/dbus/machine-id"
ln -s /etc/machine-id "$ROOTFS/var/lib/dbus/machine-id"

# --- disk ---------------------------------------------------------------------
log "creating the $IMAGE_SIZE raw disk (MBR, ext4 '$LABEL', extlinux)"
truncate -s "$IMAGE_SIZE" "$RAW"
printf 'label: dos\nstart=%d, type=83, bootable\n' "$PART_START_SECTOR" | sfdisk --quiet "$RAW"
read -r p_start p_size < <(sfdisk --dump "$RAW" | awk -F'[:,]' '/start=/ {
    for (i = 1; i <= NF; i++) { if ($i ~ /start=/) { gsub(/[^0-9]/, "", $i); s = $i } if ($i ~ /size=/) { gsub(/[^0-9]/, "", $i); z = $i } }
    print s, z; exit }')
[[ -n ${p_start:-} && -n ${p_size:-} ]] || die "could not read the partition table back"
dd if="$MBR_BIN" of="$RAW" bs=440 count=1 conv=notrunc status=none

LOOP=$(losetup --find --show --offset $((p_start * 512)) --sizelimit $((p_size * 512)) "$RAW")
mkfs.ext4 -q -F -L "$LABEL" -O ^64bit "$LOOP"
mkdir -p "$MNT"
mount "$LOOP" "$MNT"
log "copying the root filesystem into the disk"
run_step cp -a "$ROOTFS/." "$MNT/"
extlinux --install "$MNT/boot/extlinux" >/dev/null 2>&1 || extlinux --install "$MNT/boot/extlinux"
sync
umount "$MNT"
losetup -d "$LOOP"
LOOP=

# --- qcow2 ----------------------------------------------------------------------
log "converting to qcow2"
run_step qemu-img convert -f raw -O qcow2 "$RAW" "$TMP_OUTPUT"
mv -f -- "$TMP_OUTPUT" "$OUTPUT"
size=$(du -h --apparent-size "$OUTPUT" | cut -f1)
log "done: $OUTPUT ($size, virtual $IMAGE_SIZE, root LABEL=$LABEL, kernel $kver) in $((SECONDS - START))s"
