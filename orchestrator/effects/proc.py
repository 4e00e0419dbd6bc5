"""One wrapper for running host tools: missing tools and failures become clear errors."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
from pathlib import Path
from typing import IO, AnyStr, Sequence

from orchestrator.errors import BuildFailed, EnvironmentProblem

SETUP_HINT = "run scripts/setup-host.sh (as root) to install Packer, QEMU and the other host tools"


def run(argv: Sequence[str], what: str, timeout: float | None = 600,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Runs a host tool; a missing tool or a timeout raises. A non-zero exit raises BuildFailed,
    unless `check` is false: then the caller judges the result (see `output_tail`)."""
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                                umask=0o077)  # what host tools write (VHDs, images) is owner-only
    except FileNotFoundError as exc:
        raise EnvironmentProblem(f"{what}: `{argv[0]}` is not installed", hint=SETUP_HINT) from exc
    except subprocess.TimeoutExpired as exc:
        raise BuildFailed(f"{what}: `{argv[0]}` did not finish within {timeout:.0f} s") from exc
    if check and result.returncode != 0:
        raise BuildFailed(f"{what}: `{' '.join(argv[:2])}` failed (exit {result.returncode}): {output_tail(result)}")
    return result


def output_tail(result: subprocess.CompletedProcess[str], lines: int = 5) -> str:
    """The last lines a tool printed (its errors, else its output)."""
    return "\n".join((result.stderr or result.stdout).strip().splitlines()[-lines:])


def process_start_time(pid: int) -> int | None:
    """When process `pid` started, in clock ticks after boot (/proc/PID/stat field 22), or None
    if there is no such process. With the pid it identifies the process: pids are reused, a
    (pid, start time) pair is not until the host reboots."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # field 2 (comm) is in parentheses and may hold spaces and ')': the rest follows the last ')'
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])  # fields[0] is field 3 (state)


def signal_process(pid: int, start_time: int, signum: int) -> bool:
    """Sends `signum` to the process `pid` only if it is the one that started at `start_time`;
    False if that process is gone (its pid may now be another's). A pidfd pins the process
    between the check and the signal."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):  # no pidfd on this kernel: check, then signal
        if process_start_time(pid) != start_time:
            return False
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return False
        return True
    try:
        if process_start_time(pid) != start_time:
            return False
        signal.pidfd_send_signal(fd, signum)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)


def line_queue(stream: IO[AnyStr]) -> "queue.Queue[AnyStr | None]":
    """The lines of a child's output, read by a thread, so the reader can wait with a timeout;
    None marks the end of the stream."""
    lines: queue.Queue[AnyStr | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines
