"""Runs `packer build`: streams every line to the run log tagged with the step it belongs to,
enforces the build deadline, honours cancel, and leaves no QEMU behind."""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from orchestrator.core.render import ProvisionerBlock
from orchestrator.effects.proc import kill_until_gone, line_queue, lower_priority
from orchestrator.effects.runlog import RunLog
from orchestrator.errors import EnvironmentProblem

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
GRACE_SECONDS = 30.0


@dataclass
class PackerResult:
    exit_code: int | None
    timed_out: bool = False
    canceled: bool = False
    last_phase: str = "boot"
    errors: list[str] = field(default_factory=list)


def packer_env(cache_dir: Path, temp_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "CHECKPOINT_DISABLE": "1",  # no version check over the network
        "PACKER_NO_COLOR": "1",
        "PACKER_CACHE_DIR": str(cache_dir),
        "PACKER_PLUGIN_PATH": str(cache_dir / "plugins"),
    })
    if temp_dir is not None:  # Packer leaves a packer_to_cdrom* directory in $TMPDIR per build
        env["TMPDIR"] = str(temp_dir)
    return env


class SourceTracker:
    """Maps Packer's output lines to the customizer (or phase) they belong to."""

    def __init__(self, blocks: Sequence[ProvisionerBlock]) -> None:
        self.blocks = blocks
        self.current = "packer"  # the source of the line being logged
        self.phase = "boot"  # the last step that started: what a failure or timeout interrupted

    def feed(self, line: str) -> str | None:
        """Returns the new source when this line starts one, else None."""
        if "Provisioning with" in line or "Uploading" in line or "Running local shell script" in line:
            for block in self.blocks:
                if any(key in line for key in block.log_keys):
                    if block.source != self.current:
                        self.current = self.phase = block.source
                        return block.source
                    return None
        if "Gracefully halting" in line and self.current != "shutdown":
            self.current = self.phase = "shutdown"
            return "shutdown"
        if line.startswith(("Build '", "==> Wait completed")):
            self.current = "packer"  # Packer's summary, not the step's output
        return None


def run_packer(packer: str, hcl_path: Path, log: RunLog, blocks: Sequence[ProvisionerBlock], *,
               deadline: float, cancel: threading.Event, cache_dir: Path, vm_marker: str,
               on_source: Callable[[str], None] = lambda s: None,
               on_line: Callable[[str, str], None] = lambda s, l: None,
               keep_on_error: bool = False, temp_dir: Path | None = None, nice: int = 0) -> PackerResult:
    # abort: Packer leaves the build VM's disk in place (the VM itself is stopped below)
    on_error = "abort" if keep_on_error else "cleanup"
    argv = [packer, "build", "-color=false", f"-on-error={on_error}", str(hcl_path)]
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=packer_env(cache_dir, temp_dir), cwd=hcl_path.parent, start_new_session=True,
                                text=True, errors="replace", bufsize=1, umask=0o077)
    except FileNotFoundError as exc:
        raise EnvironmentProblem("Packer is not installed", hint="run scripts/setup-host.sh as root") from exc
    lower_priority(proc.pid, nice)  # before Packer starts QEMU (ms later): its VM and hooks inherit it
    assert proc.stdout is not None
    lines = line_queue(proc.stdout)
    tracker = SourceTracker(blocks)
    result = PackerResult(exit_code=None)
    try:
        stopped_phase = _follow(proc, lines, tracker, result, log, deadline, cancel, on_source, on_line)
    except BaseException:
        # an error of ours (a full disk under the log, a closed progress pipe) must not leave
        # Packer and its VM running: Packer is in a session of its own
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
        kill_leftover_qemu(vm_marker)
        raise
    result.exit_code = proc.wait()
    log.write("orchestrator", f"packer exited with {result.exit_code}")
    result.last_phase = stopped_phase or tracker.phase
    killed = kill_leftover_qemu(vm_marker)
    if killed:
        log.write("orchestrator", f"killed {killed} leftover QEMU process(es) of this build")
    return result


def _follow(proc: subprocess.Popen, lines: "queue.Queue[str | None]", tracker: SourceTracker, result: PackerResult,
            log: RunLog, deadline: float, cancel: threading.Event, on_source: Callable[[str], None],
            on_line: Callable[[str, str], None]) -> str | None:
    """Reads Packer's output until it exits, stopping it on deadline or cancel; returns the step
    a stop interrupted, if one did."""
    stopping_since: float | None = None
    stopped_phase: str | None = None
    while True:
        if stopping_since is None and (time.monotonic() >= deadline or cancel.is_set()):
            # the run's deadline (set by the engine's timer, or reached here first) or a cancel
            result.timed_out = not cancel.is_set() or getattr(cancel, "timed_out", False)
            result.canceled = not result.timed_out
            reason = "build timeout reached" if result.timed_out else "cancel requested"
            log.write("orchestrator", f"{reason} during {tracker.phase}: stopping Packer (it cleans up the build VM)")
            # What was interrupted is the step running now: once interrupted, Packer may still
            # start the next provisioner (a step with expect_disconnect takes the interrupt for
            # a reboot) before it stops, and that must not be reported as the canceled step.
            stopped_phase = tracker.phase
            _signal_group(proc, signal.SIGINT)
            stopping_since = time.monotonic()
        if stopping_since is not None and time.monotonic() - stopping_since > GRACE_SECONDS:
            log.write("orchestrator", f"Packer did not stop within {GRACE_SECONDS:.0f} s: killing it")
            _signal_group(proc, signal.SIGKILL)
            stopping_since = float("inf")  # killed; wait for the pipe to close
        try:
            raw = lines.get(timeout=0.5)
        except queue.Empty:
            # A build VM that Packer left running (-on-error=abort) holds our pipe open: Packer's
            # own exit is the end, not the pipe's.
            if proc.poll() is not None:
                break
            continue
        if raw is None:
            break
        _take_line(raw, tracker, result, log, on_source, on_line)
    while True:  # what was read before Packer exited
        try:
            raw = lines.get_nowait()
        except queue.Empty:
            break
        if raw is not None:
            _take_line(raw, tracker, result, log, on_source, on_line)
    return stopped_phase


def _take_line(raw: str, tracker: SourceTracker, result: PackerResult, log: RunLog,
               on_source: Callable[[str], None], on_line: Callable[[str, str], None]) -> None:
    line = _ANSI.sub("", raw.rstrip("\n"))
    started = tracker.feed(line)
    if started:
        on_source(started)
    log.write(tracker.current, line)
    on_line(tracker.current, line)
    if "errored" in line or line.startswith("==> qemu: Error") or "Script exited with non-zero" in line:
        result.errors.append(line.strip())


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def qemu_pids(marker: str) -> list[int]:
    """PIDs of QEMU processes whose command line holds `marker` (a path unique to the run)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\x00", b" ").decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline and marker in cmdline:
            pids.append(int(entry.name))
    return pids


def kill_leftover_qemu(marker: str, patience: float = 60.0) -> int:
    """SIGKILLs every QEMU of the run and waits until none is left; returns how many there were."""
    return kill_until_gone(lambda: qemu_pids(marker), patience)
