"""Chooses the QEMU accelerator: KVM only if a guest really runs under it here, else TCG.

/dev/kvm can open and still fail to run a guest (nested or restricted hosts: here SeaBIOS
runs, then the first 32-bit `iret` stops with "KVM internal error ... emulation failure"
and QEMU sits forever). Packer picks KVM whenever /dev/kvm opens, which hangs the build.
So the probe boots the build's own source image under KVM, read-only, and waits for the
guest kernel to announce itself on the serial console.
"""
from __future__ import annotations

import functools

import json
import os
import queue
import subprocess
import time
from pathlib import Path

from orchestrator.effects.proc import SETUP_HINT, line_queue
from orchestrator.errors import EnvironmentProblem

PROBE_TIMEOUT = 30.0
_BOOTED = b"Linux version"
_FAILED = (b"KVM internal error", b"emulation failure", b"failed to set MSR")


def guest_boots(image: Path, accel: str, qemu: str = "qemu-system-x86_64",
                timeout: float = PROBE_TIMEOUT) -> bool:
    """True once the guest kernel prints its banner under `accel`; False on error or timeout.
    A QEMU that cannot be started is a host problem, not a verdict on the accelerator."""
    argv = [qemu, "-accel", accel, "-m", "512", "-display", "none", "-nodefaults", "-no-reboot",
            "-serial", "stdio", "-drive", f"file={image},if=virtio,snapshot=on,readonly=off"]
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise EnvironmentProblem(f"the accelerator probe cannot run: `{qemu}` is not installed",
                                 hint=SETUP_HINT) from exc
    except OSError as exc:
        raise EnvironmentProblem(f"the accelerator probe cannot start `{qemu}`: {exc.strerror}",
                                 hint=f"check that {qemu} is an executable QEMU; {SETUP_HINT}") from exc
    assert proc.stdout is not None
    lines = line_queue(proc.stdout)
    deadline = time.monotonic() + timeout
    verdict = False
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                break
            if not line or any(mark in line for mark in _FAILED):
                break
            if _BOOTED in line:
                verdict = True
                break
    finally:
        proc.kill()
        proc.wait()
    return verdict


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def choose_accelerator(setting: str, cache_file: Path, probe_image: Path,
                       qemu: str = "qemu-system-x86_64") -> tuple[str, str]:
    """Returns (accelerator, why). The probe's answer is kept until the host reboots; a probe
    that could not run (EnvironmentProblem) is raised and nothing is kept."""
    if setting in ("kvm", "tcg"):
        return setting, "set by ORCHESTRATOR_ACCELERATOR"
    boot = _boot_id()
    try:
        cached = json.loads(cache_file.read_text())
        if cached.get("boot_id") == boot and cached.get("accelerator") in ("kvm", "tcg"):
            return cached["accelerator"], f"probed since this host booted ({cached.get('why', '')})"
    except (OSError, ValueError):
        pass
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        accel, why = "tcg", "/dev/kvm is not usable"
    elif guest_boots(probe_image, "kvm", qemu):
        accel, why = "kvm", "a probe guest booted under KVM"
    else:
        accel, why = "tcg", "a probe guest did not boot under KVM"
    try:
        cache_file.write_text(json.dumps({"boot_id": boot, "accelerator": accel, "why": why}))
    except OSError:
        pass
    return accel, why


@functools.lru_cache(maxsize=4)
def qemu_version(qemu: str = "qemu-system-x86_64") -> str:
    """The first line of `qemu --version`: a saved VM state loads only in the QEMU that saved it."""
    try:
        result = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return (result.stdout.splitlines() or ["unknown"])[0].strip()
