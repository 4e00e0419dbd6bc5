"""The run's customization.log: every line with a UTC timestamp and its source."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable, TextIO


class RunLog:
    """`redact` is applied to every line before it is written (secrets never reach the file);
    `listener` sees each line as written (a live view shows the last one)."""

    def __init__(self, path: Path, redact: Callable[[str], str] = lambda text: text,
                 listener: Callable[[str, str], None] | None = None) -> None:
        self.redact = redact
        self.listener = listener
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = path
        # owner-only from the first instant: a log names paths, keys and what customizers printed
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._handle: TextIO = open(fd, "a", encoding="utf-8", errors="replace")
        self._lock = threading.Lock()

    def write(self, source: str, line: str) -> None:
        now = time.time()  # one reading: two could straddle a second and be a second off
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
        text = self.redact(line.rstrip())
        with self._lock:
            self._handle.write(f"{stamp} [{source}] {text}\n")
            self._handle.flush()
        if self.listener is not None:
            self.listener(source, text)

    def close(self) -> None:
        with self._lock:
            self._handle.close()

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedactedCopy:
    """Copies a file another process writes (QEMU's serial console, in the run's staging) into
    the run's records as it grows, line by line through `redact`: what a guest prints to its
    console is kept with the run, without the run's secrets."""

    def __init__(self, source: Path, dest: Path, redact: Callable[[str], str], interval: float = 0.5) -> None:
        self.source, self.dest, self.redact, self.interval = source, dest, redact, interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._copy, daemon=True, name=f"copy {source.name}")

    def __enter__(self) -> "RedactedCopy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=30)

    def _copy(self) -> None:
        fd = os.open(self.dest, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        position, pending = 0, b""
        with open(fd, "ab") as out:
            while True:
                finished = self._done.wait(self.interval)  # the writer is another process: look again
                try:
                    with open(self.source, "rb") as handle:
                        handle.seek(position)
                        data = handle.read()
                except FileNotFoundError:
                    data = b""
                position += len(data)
                *lines, pending = (pending + data).split(b"\n")
                if finished and pending:
                    lines, pending = lines + [pending], b""
                for line in lines:
                    out.write(self.redact(line.decode("utf-8", errors="replace")).encode() + b"\n")
                out.flush()
                if finished:
                    return
