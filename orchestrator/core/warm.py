"""Warm checkpoints (no I/O): the build VM's memory and device state saved with a disk
checkpoint, so that a later build continues the saved VM instead of booting it.

A state only fits the exact machine it was saved from: QEMU refuses a state whose RAM size or
devices differ (and Packer then reports only "Qemu failed to start"), and a state restored onto
another disk layer runs without an error and corrupts the file system. So each state is bound
to its layer's sha256 and to a MachineConfig, and any other pairing is refused before QEMU
starts (`refusal`); the build then resumes cold from the layer.

What the restored guest needs before any step runs (`warm_resume_script`): its clock from the
host (it is behind by the state's age), its kernel random state reseeded from the host (every
restore of one state starts from one RNG state) and a check that it is the guest the
checkpoint recorded (the marker the checkpoint step wrote)."""
from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass

from orchestrator.core.checkpoint_steps import HOOK_MARK, MARKER

STATE_SUFFIX = ".state.zst"  # next to the layer: <layer>.state.zst
KEY_SUFFIX = ".key"  # the saved run's SSH key: the restored guest knows only that one
# bumped whenever the rendered QEMU devices change (qemuargs, disk or network devices)
DEVICES = "virtio-blk+cdrom;virtio-net(user);serial(file);qmp;vnc(none);global(migration.store-global-state=off)"
MAX_BANDWIDTH = 100 * 1024**3  # bytes/s: QEMU's default of 128 MiB/s makes the pause seconds long
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07): the kernel reseeds its CRNG from its input pool now


@dataclass(frozen=True)
class MachineConfig:
    """Everything a saved state must agree with: QEMU refuses (or silently misreads) another."""

    qemu: str  # `qemu-system-x86_64 --version`, first line
    accelerator: str
    cpus: int
    memory_mib: int
    disk_size_mib: int
    disk_interface: str = "virtio"
    net_device: str = "virtio-net"
    machine: str = "pc"
    devices: str = DEVICES

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "MachineConfig":
        return cls(**json.loads(text))


_WORDS = {"qemu": "QEMU", "accelerator": "accelerator", "cpus": "vCPUs", "memory_mib": "memory (MiB)",
          "disk_size_mib": "disk size (MiB)", "disk_interface": "disk interface", "net_device": "network device",
          "machine": "machine type", "devices": "device list"}


def machine_mismatch(saved: MachineConfig, now: MachineConfig) -> str | None:
    """Why a state saved on `saved` cannot be loaded by `now`, or None."""
    saved_fields, now_fields = asdict(saved), asdict(now)
    differ = [f"{_WORDS[k]} {saved_fields[k]!r}, this build {now_fields[k]!r}" for k in saved_fields
              if saved_fields[k] != now_fields[k]]
    return "saved with " + "; ".join(differ) if differ else None


@dataclass(frozen=True)
class WarmState:
    """A saved state as the store recorded it."""

    path: str
    sha256: str
    size_bytes: int
    layer_sha256: str  # the layer it was saved with
    machine: MachineConfig
    key_path: str
    public_key: str
    pause_seconds: float


def refusal(state: WarmState, layer_sha256: str, machine: MachineConfig, state_sha256_now: str | None,
            key_present: bool) -> str | None:
    """Why this state may not be restored for a build on `machine` from the layer whose sha256
    is `layer_sha256` (None: it may). `state_sha256_now`: the state file's digest now (None:
    it is gone)."""
    if state_sha256_now is None:
        return f"its state file {state.path} is gone"
    if state_sha256_now != state.sha256:
        return f"its state file {state.path} changed since it was saved (truncated or overwritten)"
    if state.layer_sha256 != layer_sha256:
        return "its state was saved with another disk layer than the one registered now (the layer was replaced)"
    if not key_present:
        return f"the SSH key saved with it ({state.key_path}) is gone"
    return machine_mismatch(state.machine, machine)


def save_uri(part: str) -> str:
    """QEMU's migration target: the state, compressed, written owner-only (it is guest RAM)."""
    return f"exec:umask 077 && exec zstd -1 -q -T0 -o {shlex.quote(part)}"


def incoming_uri(state: str) -> str:
    return f"exec:zstd -dc -q {shlex.quote(state)}"


def warm_resume_script(position: int, random_hex: str) -> str:
    """Runs as root first in a build restored from a warm checkpoint. `random_hex`: bytes from
    the host's random source, made for this run."""
    return f"""#!/bin/sh
# The restored guest: the checkpoint's own, its clock from the host, its RNG reseeded.
set -e
marker=$(cat {MARKER} 2>/dev/null || true)
if [ "$marker" != "{position}" ]; then
    echo "{HOOK_MARK} warm restore: the guest's checkpoint marker is '$marker', not {position}" >&2
    exit 1
fi
# the new QEMU's RTC is the host's time; the guest's clock is behind by the state's age
if command -v hwclock >/dev/null 2>&1; then
    hwclock --hctosys --utc
else
    date -u -s "@$(cat /sys/class/rtc/rtc0/since_epoch)" >/dev/null
fi
# host bytes into the input pool, then a reseed of the CRNG from it (perl starts in a tenth of
# python's time in a TCG guest; Debian's perl-base is essential, other guests may lack it)
if command -v perl >/dev/null 2>&1; then
    perl -e 'open(my $f, ">", "/dev/urandom") or die "$!"; syswrite($f, pack("H*", "{random_hex}")) or die "$!";
             ioctl($f, {RNDRESEEDCRNG:#x}, 0) or die "RNDRESEEDCRNG: $!"'
else
    python3 - <<'RESEED'
import fcntl, os
fd = os.open("/dev/urandom", os.O_WRONLY)
os.write(fd, bytes.fromhex({random_hex!r}))
fcntl.ioctl(fd, {RNDRESEEDCRNG:#x})
os.close(fd)
RESEED
fi
echo "{HOOK_MARK} warm restore of checkpoint {position}: clock $(date -u +%s.%N), RNG reseeded from the host"
"""
