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
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
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
