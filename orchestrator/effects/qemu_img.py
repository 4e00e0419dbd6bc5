"""qemu-img: image facts and the fixed-VHD export (Azure's rules: fixed, whole MiB)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from orchestrator.effects.files import temp_name
from orchestrator.effects.proc import run
from orchestrator.errors import BuildFailed

MIB = 1024 * 1024
MAX_VHD_BYTES = 1023 * 1024**3


@dataclass(frozen=True)
class ImageInfo:
    format: str
    virtual_size: int
    backing_file: str | None


def info(path: Path, fmt: str | None = None) -> ImageInfo:
    argv = ["qemu-img", "info", "--output=json"] + (["-f", fmt] if fmt else []) + [str(path)]
    data = json.loads(run(argv, f"reading {path}").stdout)
    return ImageInfo(data["format"], int(data["virtual-size"]), data.get("backing-filename"))


def convert(src: Path, dst: Path, out_format: str, what: str, options: str | None = None) -> None:
    """Converts to a temporary name and renames: `dst` is complete or absent."""
    tmp = temp_name(dst)
    argv = ["qemu-img", "convert", "-O", out_format] + (["-o", options] if options else []) + [str(src), str(tmp)]
    try:
        run(argv, what, timeout=3600)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def export_fixed_vhd(src: Path, dst: Path) -> int:
    """Writes a fixed VHD and returns its virtual size (a whole number of MiB)."""
    size = info(src).virtual_size
    if size % MIB:
        raise BuildFailed(f"{src} is {size} bytes, not a whole number of MiB: Azure would reject the VHD",
                          hint="set osDiskSizeGB, or import a base image whose size is whole MiB")
    if size > MAX_VHD_BYTES:
        raise BuildFailed(f"the disk is {size / 1024**3:.0f} GiB; an Azure VHD is at most 1023 GiB",
                          hint="lower osDiskSizeGB")
    # force_size keeps the exact size; without it qemu-img rounds to CHS geometry.
    convert(src, dst, "vpc", f"exporting VHD {dst.name}", "subformat=fixed,force_size")
    return size
