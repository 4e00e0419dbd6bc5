"""Small file helpers: hashing, and writing so that nobody ever sees half a file."""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

from orchestrator.effects.proc import process_start_time

CHUNK = 1024 * 1024


_ZEROS = bytes(CHUNK)


def sha256_file(path: Path) -> str:
    """sha256 of a file; holes of a sparse file (most of a fresh VHD) are hashed from memory
    instead of being read, which is several times faster than reading zero pages."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        fd = handle.fileno()
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            data_at, hole_at = _next_extent(fd, offset, size)
            _update_zeros(digest, data_at - offset)
            handle.seek(data_at)
            remaining = hole_at - data_at
            while remaining > 0:
                block = handle.read(min(CHUNK, remaining))
                if not block:
                    raise OSError(f"{path} shrank while it was hashed")
                digest.update(block)
                remaining -= len(block)
            offset = hole_at
    return digest.hexdigest()


def _next_extent(fd: int, offset: int, size: int) -> tuple[int, int]:
    """(start, end) of the next data extent at or after offset; (size, size) if only a hole is left."""
    try:
        data_at = os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return size, size
        return offset, size  # the filesystem cannot tell: read everything
    try:
        return data_at, min(os.lseek(fd, data_at, os.SEEK_HOLE), size)
    except OSError:
        return data_at, size


def _update_zeros(digest: "hashlib._Hash", count: int) -> None:
    while count > 0:
        step = min(count, CHUNK)
        digest.update(_ZEROS[:step] if step < CHUNK else _ZEROS)
        count -= step


PRIVATE_FILE = 0o600
_PART = ".part-"


def temp_name(final: Path, pid: int | None = None) -> Path:
    """A sibling name for writing `final`, renamed into place when complete; it names the
    writing process (`pid`, default this one), so a dead writer's leftover is known."""
    return final.with_name(f".{final.name}{_PART}{pid or os.getpid()}")


def open_private(path: Path, mode: int = PRIVATE_FILE) -> int:
    """Creates `path` (which must not exist) with `mode` from the first instant: a key or a
    script with secrets is never on disk with wider permissions, not even between open and chmod."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


def write_atomic(path: Path, content: str | bytes, mode: int = PRIVATE_FILE) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = temp_name(path)
    tmp.unlink(missing_ok=True)  # a leftover of this same pid, killed before
    data = content.encode() if isinstance(content, str) else content
    try:
        with os.fdopen(open_private(tmp, mode), "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it further than asked; never wider
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-links when on the same filesystem (instant), else copies; atomic either way."""
    dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = temp_name(dst)
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            with open(src, "rb") as source, os.fdopen(open_private(tmp), "wb") as out:
                shutil.copyfileobj(source, out, CHUNK)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_parts(directory: Path) -> list[Path]:
    """Removes the temporaries (`.NAME.part-PID`) of writers that are gone (a killed
    download or conversion); returns what it removed."""
    removed = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not name.startswith(".") or _PART not in name:
            continue
        pid = name.rsplit(_PART, 1)[1]
        if pid.isdigit() and process_start_time(int(pid)) is None:  # no such process: the writer is gone
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed

