"""An exclusive lock on a file (flock): one holder at a time, released when the holder's process
ends, however it ends. The holder's pid is written into the file for the message of the next."""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from orchestrator.errors import EnvironmentProblem


@contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Holds `path` locked, or raises EnvironmentProblem at once if another process holds it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise EnvironmentProblem(f"{what} is already running (pid {holder}; lock {path})",
                                     hint="wait for it to finish; its summary goes to its log") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock
