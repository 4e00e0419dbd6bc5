#!/usr/bin/env bash
# setup-host.sh - make this Debian 12 machine a build host, idempotently (fast when done):
#   1. Debian packages: Packer 1.6.6, QEMU, qemu-img, zstd (warm checkpoints), xorriso (cloud-init seed ISO),
#      debootstrap + extlinux (base image), fdisk/e2fsprogs (tests read the built VHD).
#   2. The orchestrator package in a virtualenv at .venv, `orchestrate` on PATH.
#   3. A Debian 12 base image imported as PlatformImage Debian:debian-12:12, built with
#      debootstrap only if none is imported yet.
#   4. libvirt (the image store): virtlogd and libvirtd started when they are not running (no
#      systemd here), and the storage pools the configuration names (`orchestrate store init`).
#      With [libvirt] uri naming another host, nothing is started here.
# Usage: scripts/setup-host.sh            (as root)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it installs Debian packages and builds a disk image with loop devices)"

packages=(packer qemu-system-x86 qemu-utils xorriso debootstrap fdisk extlinux syslinux-common
          e2fsprogs dosfstools python3 python3-venv ca-certificates zstd
          libvirt-daemon-system libvirt-clients libvirt-dev pkg-config gcc python3-dev)
# shellcheck source=scripts/apt-missing.sh
. "$here/scripts/apt-missing.sh"
apt_install_missing "${packages[@]}"

venv="$here/.venv"
if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    python3 -m venv "$venv"
fi
extras="test,libvirt"  # libvirt-python builds against libvirt-dev (installed above)
stamp="$venv/.installed-$( (cat "$here/pyproject.toml"; echo "$extras") | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
    say "installing the orchestrator package and test tools"
    "$venv/bin/pip" install -q --disable-pip-version-check -e "$here[$extras]"
    touch "$stamp"
fi
ln -sf "$venv/bin/orchestrate" /usr/local/bin/orchestrate
# The provenance signing key (data home keys/, owner-only): made once, kept after.
orchestrate keys init >/dev/null || die "cannot make the provenance signing key (see the error above)"

# The base image is built again only when none is imported or build-base-image.sh changed.
home=$("$venv/bin/python" -c 'from orchestrator.config import default_home; print(default_home())')
stamp_file="$home/base-build/script.sha256"
script_sum=$(sha256sum "$here/scripts/build-base-image.sh" | cut -d' ' -f1)
if orchestrate image list --json | "$venv/bin/python" -c '
import json, sys
images = json.load(sys.stdin)
sys.exit(0 if any(i["publisher"].lower() == "debian" and i["offer"] == "debian-12" and i["sku"] == "12" for i in images) else 1)' \
    && [ "$(cat "$stamp_file" 2>/dev/null)" = "$script_sum" ]
then
    say "base image Debian:debian-12:12 already imported"
else
    out="$home/base-build/debian-12.qcow2"
    mkdir -p "$(dirname "$out")"
    say "building the Debian 12 base image (debootstrap, about 2 minutes)"
    "$here/scripts/build-base-image.sh" "$out"
    orchestrate image import "$out" --publisher Debian --offer debian-12 --sku 12 \
        --version "0.$(date -u +%Y%m%d.%H%M%S)"
    rm -f "$out"  # the catalog keeps its own link to the file
    echo "$script_sum" > "$stamp_file"
fi
# /dev/kvm as Debian's udev rules leave it (root:kvm 0660), where no udev ran: libvirt checks
# KVM as libvirt-qemu (group kvm), and finding it closed re-probes QEMU's capabilities before
# every domain start (~40 s each here; the deploy proof starts one per build).
if [ -c /dev/kvm ] && getent group kvm >/dev/null && [ "$(stat -c %G:%a /dev/kvm)" != "kvm:660" ]; then
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi
# libvirt: start the daemons where nothing else does (no systemd), then the configured pools.
uri=$("$venv/bin/python" -c 'from orchestrator.config import load_config; print(load_config().libvirt_uri)')
case "$uri" in
    qemu:///system|qemu:///session|"")
        pgrep -x virtlogd >/dev/null || { say "starting virtlogd"; virtlogd -d; }
        if ! pgrep -x libvirtd >/dev/null; then
            say "starting libvirtd"
            libvirtd -d
            for _ in $(seq 50); do virsh -c "$uri" version >/dev/null 2>&1 && break; sleep 0.1; done
        fi ;;
esac
orchestrate store init >/dev/null || die "cannot create the storage pools at $uri (see the error above)"
say "ready: $(packer version | head -1), $(qemu-system-x86_64 --version | head -1), libvirt $uri"
