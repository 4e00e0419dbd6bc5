"""Writing one image into several volumes: flatten a build disk with qemu-img, then copy it
to every replica in one pass that also hashes it.

The copy reads the source once (data extents only: holes stay holes, as `cp --sparse=always`
keeps them), writes each block to every destination and feeds the same block to SHA-256 on
another thread (hashlib releases the GIL), so N replicas cost one read, one hash and N writes.
A cancel is seen between blocks and ends a qemu-img run at once.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from concurrent.futures import Future, ThreadPoolExecutor
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
    """Copies `src` into every path of `dests` (created or truncated, sparse) and returns
    (sha256, size) of the bytes copied. With no destinations it only hashes."""
    digest = hashlib.sha256()
    outs: list[int] = []
    hashing: Future | None = None
    with open(src, "rb", buffering=0) as handle, ThreadPoolExecutor(1) as pool:
        fd = handle.fileno()
        size = os.fstat(fd).st_size
        try:
            for dest in dests:
                out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                outs.append(out)
                os.ftruncate(out, size)
            offset = 0
            buffers = [bytearray(BLOCK), bytearray(BLOCK)]
            turn = 0
            while offset < size:
                data_at, hole_at = _next_extent(fd, offset, size)
                if data_at > offset:
                    if hashing is not None:
                        hashing.result()
                    hashing = pool.submit(_update_zeros, digest, data_at - offset)
                position = data_at
                while position < hole_at:
                    if cancel is not None and cancel.is_set():
                        raise Canceled(f"the build was canceled while {what}")
                    buffer = buffers[turn]
                    turn ^= 1
                    view = memoryview(buffer)[:min(BLOCK, hole_at - position)]
                    count = os.preadv(fd, [view], position)
                    if count <= 0:
                        raise BuildFailed(f"{src} shrank while {what}")
                    block = view[:count]
                    if hashing is not None:
                        hashing.result()  # the other buffer is free again, and the digest in order
                    hashing = pool.submit(digest.update, block)
                    for out in outs:
                        _write_all(out, block, position)
                    position += count
                offset = hole_at
            if hashing is not None:
                hashing.result()
            for out in outs:
                os.fsync(out)
        finally:
            for out in outs:
                os.close(out)
    return digest.hexdigest(), size


def _write_all(fd: int, block: memoryview, position: int) -> None:
    while block:
        written = os.pwrite(fd, block, position)
        block = block[written:]
        position += written
