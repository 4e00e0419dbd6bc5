"""Small file helpers: hashing, and writing so that nobody ever sees half a file."""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

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


def temp_name(final: Path) -> Path:
    """A sibling name for writing `final`, renamed into place when complete."""
    return final.with_name(f".{final.name}.part-{os.getpid()}")


def write_atomic(path: Path, content: str | bytes, mode: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    data = content.encode() if isinstance(content, str) else content
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-links when on the same filesystem (instant), else copies; atomic either way."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(dst)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
