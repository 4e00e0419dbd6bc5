"""One wrapper for running host tools: missing tools and failures become clear errors."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, AnyStr, Callable, Iterator, Sequence

from orchestrator.errors import BuildFailed, EnvironmentProblem

SETUP_HINT = "run scripts/setup-host.sh (as root) to install Packer, QEMU and the other host tools"


_children: set[subprocess.Popen] = set()
_children_lock = threading.RLock()  # reentrant: Stop.request runs in a signal handler too
RUN_ENV = "ORCHESTRATOR_RUN"  # every process a run starts carries its id: recovery finds them by it
RUN_HOST_ENV = "ORCHESTRATOR_RUN_HOST"  # and, in a fleet, the build host's name


def run(argv: Sequence[str], what: str, timeout: float | None = 600,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Runs a host tool; a missing tool or a timeout raises. A non-zero exit raises BuildFailed,
    unless `check` is false: then the caller judges the result (see `output_tail`). A stopped
    run (Stop.request) kills the tools it is running."""
    try:
        proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL,
                                umask=0o077)  # what host tools write (VHDs, images) is owner-only
    except FileNotFoundError as exc:
        raise EnvironmentProblem(f"{what}: `{argv[0]}` is not installed", hint=SETUP_HINT) from exc
    with _children_lock:
        _children.add(proc)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.communicate()
        raise BuildFailed(f"{what}: `{argv[0]}` did not finish within {timeout:.0f} s") from exc
    finally:
        with _children_lock:
            _children.discard(proc)
    result = subprocess.CompletedProcess(list(argv), proc.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise BuildFailed(f"{what}: `{' '.join(argv[:2])}` failed (exit {result.returncode}): {output_tail(result)}")
    return result


def stop_children() -> None:
    """Kills the host tools `run` is running (qemu-img converting a disk, say)."""
    with _children_lock:
        for proc in list(_children):
            try:
                proc.kill()
            except OSError:
                pass


class Stop(threading.Event):
    """A run's stop signal: set by cancel (SIGTERM, Ctrl-C) or by the run's deadline, with the
    reason. Setting it kills the host tools the run is waiting on; Packer and downloads watch it
    and stop themselves (Packer gets the chance to shut its VM down)."""

    reason: str | None = None

    def request(self, reason: str = "cancel") -> None:
        if not self.is_set():
            self.reason = reason
            self.set()
        stop_children()

    @property
    def timed_out(self) -> bool:
        return self.reason == "timeout"


def run_processes(run_id: str, host: str | None = None) -> list[int]:
    """The live processes started for run `run_id` (Packer, its plugins, QEMU, qemu-img): found
    by the ORCHESTRATOR_RUN variable they inherited, so they are found after their parent died.
    `host`: only those a fleet's build host of this name started (two hosts of a test fleet may
    share one machine, and a run dispatched again may be building on the other)."""
    marker = f"{RUN_ENV}={run_id}".encode() + b"\0"
    host_marker = f"{RUN_HOST_ENV}={host}".encode() + b"\0" if host else b""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        environ += b"\0"
        if marker in environ and host_marker in environ:
            found.append(int(entry.name))
    return found


def kill_run_processes(run_id: str, patience: float = 30.0, host: str | None = None) -> int:
    """SIGKILLs every process of the run until none is left; returns how many there were."""
    return kill_until_gone(lambda: run_processes(run_id, host), patience)


def kill_until_gone(find: Callable[[], list[int]], patience: float) -> int:
    """SIGKILLs the processes `find` names until it names no live one (a loaded host can take a
    while to tear down a guest's memory); returns how many there were."""
    killed: set[int] = set()
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        pids = [pid for pid in find() if alive(pid)]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        killed.update(pids)
        time.sleep(0.05)  # not ours to wait() on (Packer's children, or an orphan)
    return len(killed)


def lower_priority(pid: int, nice: int) -> None:
    """Gives a child a lower CPU priority (a higher nice value); what it starts afterwards
    inherits it. A process that is already gone has nothing left to slow down."""
    if nice <= 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, pid, max(nice, os.getpriority(os.PRIO_PROCESS, pid)))
    except ProcessLookupError:
        pass


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


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


@contextmanager
def run_environment(run_id: str, host: str | None = None) -> Iterator[None]:
    """Every process the run starts inherits its id in RUN_ENV (recovery finds orphans by it),
    and in a fleet the build host's name in RUN_HOST_ENV."""
    values = {RUN_ENV: run_id, RUN_HOST_ENV: host}
    before = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is not None:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def stop_on_signals(stop: Stop) -> Iterator[None]:
    """SIGTERM (orchestrate cancel) and SIGINT (Ctrl-C) stop the run cleanly; only the main
    thread can take signals, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: stop.request("cancel"))
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
