"""Writing one image into several volumes: flatten a build disk with qemu-img, then copy it
to every replica in one pass that also hashes it.

The copy takes the data extents only (holes stay holes, as `cp --sparse=always` keeps them),
copies them into every destination in the kernel (copy_file_range, as cp does) while another
thread hashes the same extents (hashlib releases the GIL), then flushes the destinations (in
parallel): the sha256 and a durable copy are what a Succeeded record promises.
A cancel is seen between blocks and ends a qemu-img run at once.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import shutil
import os
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from orchestrator.effects.files import _next_extent, _update_zeros
from orchestrator.errors import BuildFailed, Canceled

BLOCK = 8 * 1024 * 1024


def flatten(src: Path, dst: Path, cancel: threading.Event | None, what: str) -> None:
    """`qemu-img convert -O qcow2` of a build disk (an overlay on its source) into a
    standalone qcow2 at `dst` (which may exist: it is overwritten)."""
    argv = ["qemu-img", "convert", "-O", "qcow2", str(src), str(dst)]
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        raise BuildFailed("qemu-img is not installed", hint="run scripts/setup-host.sh") from None
    while True:
        try:
            proc.wait(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            if cancel is not None and cancel.is_set():
                proc.kill()
                proc.wait()
                raise Canceled(f"the build was canceled while {what}") from None
    if proc.returncode != 0:
        err = (proc.stderr.read() if proc.stderr else "").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise BuildFailed(f"qemu-img failed while {what}: {err[0]}", hint="check the free space of the pool")


def copy_hashed(src: Path, dests: list[Path], cancel: threading.Event | None, what: str) -> tuple[str, int]:
    """Copies `src` into every path of `dests` (created or truncated, sparse, flushed to disk)
    and returns (sha256, size) of the source. With no destinations it only hashes.

    The data extents go to each destination with copy_file_range (in the kernel, as cp does);
    meanwhile another thread reads the same extents (from the page cache) into SHA-256."""
    outs: list[int] = []
    with open(src, "rb", buffering=0) as handle, ThreadPoolExecutor(1) as pool:
        fd = handle.fileno()
        size = os.fstat(fd).st_size
        extents = _extents(fd, size)
        stop = threading.Event()
        hashing = pool.submit(_hash_extents, src, extents, size, stop)
        try:
            for dest in dests:
                out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                outs.append(out)
                os.ftruncate(out, size)
            for start, end in extents:
                position = start
                while position < end:
                    if cancel is not None and cancel.is_set():
                        raise Canceled(f"the build was canceled while {what}")
                    step = min(BLOCK * 8, end - position)
                    for out in outs:
                        _copy_range(fd, out, position, step, src)
                        _start_writeback(out, position, step)
                    position += step
            _parallel(os.fdatasync, outs)
            digest = hashing.result()
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            free = min((shutil.disk_usage(d.parent).free for d in dests), default=0)
            raise BuildFailed(f"{what}: the file system of {', '.join(str(d.parent) for d in dests)} is full "
                              f"({size / 2**20:.0f} MiB to write, {free / 2**20:.0f} MiB free)",
                              hint="free space there, or map the region to another pool ([libvirt] pools)") from None
        finally:
            stop.set()
            for out in outs:
                os.close(out)
    return digest, size


def _extents(fd: int, size: int) -> list[tuple[int, int]]:
    found, offset = [], 0
    while offset < size:
        data_at, hole_at = _next_extent(fd, offset, size)
        if data_at < hole_at:
            found.append((data_at, hole_at))
        offset = hole_at
    return found


def _hash_extents(src: Path, extents: list[tuple[int, int]], size: int, stop: threading.Event) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(BLOCK)
    offset = 0
    with open(src, "rb", buffering=0) as handle:
        fd = handle.fileno()
        for start, end in extents:
            _update_zeros(digest, start - offset)
            position = start
            while position < end:
                if stop.is_set():
                    return ""
                view = memoryview(buffer)[:min(BLOCK, end - position)]
                count = os.preadv(fd, [view], position)
                if count <= 0:
                    raise BuildFailed(f"{src} shrank while it was hashed")
                digest.update(view[:count])
                position += count
            offset = end
        _update_zeros(digest, size - offset)
    return digest.hexdigest()


def _copy_range(src_fd: int, out: int, position: int, count: int, src: Path) -> None:
    """count bytes at `position` of src into the same place of out (in the kernel; a plain
    read and write where copy_file_range is not supported)."""
    while count > 0:
        try:
            copied = os.copy_file_range(src_fd, out, count, position, position)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            block = os.pread(src_fd, min(count, BLOCK), position)
            copied = len(block) and _write_all(out, memoryview(block), position) or len(block)
        if copied <= 0:
            raise BuildFailed(f"{src} shrank while it was copied")
        position += copied
        count -= copied


def _libc_sync_file_range():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    return function


_SYNC_FILE_RANGE = _libc_sync_file_range()
SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int, position: int, count: int) -> None:
    """Starts writing a copied range to disk now (sync_file_range, asynchronous), so that the
    final flush does not wait for the whole image to be written back at once."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, position, count, SYNC_FILE_RANGE_WRITE)


def _parallel(function, items: list) -> None:
    if not items:
        return
    with ThreadPoolExecutor(len(items)) as pool:
        list(pool.map(function, items))


def _write_all(fd: int, block: memoryview, position: int) -> int:
    total = len(block)
    while block:
        written = os.pwrite(fd, block, position)
        block = block[written:]
        position += written
    return total
