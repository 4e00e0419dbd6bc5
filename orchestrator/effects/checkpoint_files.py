"""The files of the checkpoint store (checkpoints/ under the data home): where a layer goes,
what a qcow2 layer stands on, and which files in the directory nobody needs any more."""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, Iterable

from orchestrator.config import Config, make_private_dir
from orchestrator.core.warm import KEY_SUFFIX, STATE_SUFFIX

QCOW2_MAGIC = b"QFI\xfb"
# a layer, an overlay still being written, a layer's warm state (and one being saved) and SSH key
SUFFIXES = (".qcow2", ".qcow2.part", ".qcow2.state.zst", ".qcow2.state.zst.part", ".qcow2.key")
COMPANIONS = (STATE_SUFFIX, STATE_SUFFIX + ".part", KEY_SUFFIX)  # a layer's name plus these: its own files


def layer_path(config: Config, key: str, run_id: str) -> Path:
    """Where the layer of `key` made by `run_id` lives (checkpoints/ is created owner-only).
    The run id at the end of the name is what keeps `sweep` off a running build's files."""
    make_private_dir(config.checkpoints_dir)
    return config.checkpoints_dir / f"{key}-{run_id}.qcow2"


def norm(path: str | Path) -> str:
    """How the store names a file: its real path (the data home may be reached by a link)."""
    return os.path.realpath(path)


def stat_key(info: os.stat_result) -> tuple[int, int, int]:
    return (info.st_size, info.st_mtime_ns, info.st_ino)


def backing_file(path: str | Path) -> str | None:
    """The qcow2 image's backing file (absolute: a relative name is taken from the image's
    directory, as QEMU does), None when it has none. Reads the header: no lock is taken, so it
    works on a layer a running QEMU holds. ValueError: not a qcow2 image."""
    with open(path, "rb") as handle:
        head = handle.read(20)
        if len(head) < 20 or head[:4] != QCOW2_MAGIC:
            raise ValueError(f"{path} is not a qcow2 image")
        offset, size = struct.unpack(">QI", head[8:20])
        if not offset or not size:
            return None
        handle.seek(offset)
        name = handle.read(size).decode("utf-8", "replace")
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), name))


def kept_disks(config: Config) -> dict[str, str]:
    """The layers a kept build VM's disk stands on (errorHandling abort leaves the staging of the
    failed run, with its disk: top.qcow2, or Packer's disk before the first checkpoint) -> the
    kept disk. They stay while the disk does: removing the staging directory frees them."""
    below: dict[str, str] = {}
    for disk in [*config.home.glob("staging/*/top.qcow2"), *config.home.glob("staging/*/packer-output/disk.qcow2")]:
        try:
            backing = backing_file(disk)
        except (OSError, ValueError):
            continue
        if backing is not None:
            below.setdefault(norm(backing), str(disk))
    return below


def companions(layer: str) -> list[str]:
    """The warm state (saved, or being saved) and SSH key files that belong to a layer."""
    return [layer + suffix for suffix in COMPANIONS]


def source_missing(bottom: str) -> str | None:
    """Why the source image the bottom layer of a chain stands on is unusable, or None."""
    try:
        source = backing_file(bottom)
    except (OSError, ValueError) as exc:
        return f"its layer {bottom} cannot be read ({exc})"
    if source is not None and not os.path.exists(source):
        return f"the source image it stands on, {source}, is gone"
    return None


def listed(root: Path) -> list[str]:
    """The layer and overlay files in `root` (regular files only), as real paths."""
    try:
        return [norm(e.path) for e in os.scandir(root) if e.name.endswith(SUFFIXES) and e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def orphans(files: Iterable[str], registered: Iterable[str], active_runs: Iterable[dict[str, Any]]) -> list[str]:
    """Of `files` (listed *before* `registered` and `active_runs` were read), those nobody needs:
    not registered, not what an active run started from, not named for an active run (a run
    records itself before it makes files and registers its layers before it ends, so a file
    listed is either registered by the time the rows are read or its run is still active),
    and not below any of those (following the qcow2 backing files)."""
    runs = list(active_runs)
    keep = {norm(p) for p in registered} | {norm(r["started_from"]) for r in runs if r.get("started_from")}
    names = [f"-{r['id']}" for r in runs]
    files = list(files)
    for path in files:
        stem = os.path.basename(_layer_of(path)).removesuffix(".part").removesuffix(".qcow2")
        if any(stem.endswith(name) for name in names):
            keep.add(path)
    frontier = list(keep)
    while frontier:  # and everything a kept file stands on
        try:
            below = backing_file(frontier.pop())
        except (OSError, ValueError):
            continue
        if below is not None and norm(below) not in keep:
            keep.add(norm(below))
            frontier.append(norm(below))
    return [path for path in files if path not in keep and _layer_of(path) not in keep]


def _layer_of(path: str) -> str:
    """The layer a file belongs to: itself, or the layer whose state or key it is."""
    for suffix in COMPANIONS:
        if path.endswith(".qcow2" + suffix):
            return path[: -len(suffix)]
    return path


def unlink(path: str) -> str | None:
    """Removes the file; None, or why it could not be removed (a file already gone is fine)."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None
