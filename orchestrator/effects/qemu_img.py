"""qemu-img: image facts and the fixed-VHD export (Azure's rules: fixed, whole MiB)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from orchestrator.effects.files import temp_name
from orchestrator.effects.proc import output_tail, run
from orchestrator.errors import BuildFailed, UsageError

MIB = 1024 * 1024
MAX_VHD_BYTES = 1023 * 1024**3
IMPORT_FORMATS_HINT = ("import a qcow2 or raw disk image (VHD, VHDX, VMDK and VDI are converted too); "
                       "`qemu-img info FILE` shows what qemu-img makes of a file")
_BOOT_SIGNATURE = b"\x55\xaa"  # the last two bytes of an MBR, a GPT disk's protective MBR too


@dataclass(frozen=True)
class ImageInfo:
    format: str
    virtual_size: int
    backing_file: str | None


def info(path: Path, fmt: str | None = None) -> ImageInfo:
    argv = ["qemu-img", "info", "--output=json"] + (["-f", fmt] if fmt else []) + [str(path)]
    return _facts(run(argv, f"reading {path}").stdout)


def _facts(info_json: str) -> ImageInfo:
    data = json.loads(info_json)
    return ImageInfo(data["format"], int(data["virtual-size"]), data.get("backing-filename"))


def importable(path: Path) -> ImageInfo:
    """The facts of a disk image a user imports. A file qemu-img cannot read, a qcow2 whose
    metadata is corrupt, and a raw file that is no disk (qemu-img takes any file for raw) are
    invalid input, with what qemu-img said."""
    result = run(["qemu-img", "info", "--output=json", str(path)], f"reading {path}", check=False)
    if result.returncode != 0:
        raise UsageError(f"{path} is not a disk image qemu-img can read: {_said(result)}", hint=IMPORT_FORMATS_HINT)
    facts = _facts(result.stdout)
    if facts.format == "qcow2":
        # 0: clean, 3: leaked clusters only (harmless); 1: not checked for errors, 2: corrupt
        check = run(["qemu-img", "check", "-f", "qcow2", str(path)], f"checking {path}", check=False)
        if check.returncode in (1, 2):
            raise UsageError(f"{path} is a corrupt qcow2 image: `qemu-img check` says {_check_said(check)}",
                             hint="`qemu-img check -r all` may repair a copy of it; else build or fetch the "
                                  "image again")
    elif facts.format == "raw":
        with open(path, "rb") as handle:
            first = handle.read(512)
        if first[510:512] != _BOOT_SIGNATURE:
            raise UsageError(f"{path} is not a disk image: qemu-img reads it as raw, but it has no partition "
                             "table (no MBR or GPT boot signature in its first sector)", hint=IMPORT_FORMATS_HINT)
    return facts


def _said(result: subprocess.CompletedProcess[str]) -> str:
    return "; ".join(line.removeprefix("qemu-img: ") for line in output_tail(result, 3).splitlines()) \
        or f"qemu-img exited with {result.returncode}"


def _check_said(result: subprocess.CompletedProcess[str]) -> str:
    """`qemu-img check` prints one line per bad cluster: its summary and the first error."""
    summary = [line.rstrip(".") for line in result.stdout.splitlines() if "were found" in line and "leaked" not in line]
    errors = [line for line in result.stderr.splitlines() if line.startswith(("ERROR", "qemu-img:"))]
    return "; ".join(summary[:1] + [e.removeprefix("qemu-img: ") for e in errors[:1]]) or _said(result)


def convert(src: Path, dst: Path, out_format: str, what: str, options: str | None = None) -> None:
    """Converts to a temporary name and renames: `dst` is complete or absent."""
    tmp = temp_name(dst)
    argv = ["qemu-img", "convert", "-O", out_format] + (["-o", options] if options else []) + [str(src), str(tmp)]
    try:
        run(argv, what, timeout=3600)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def rebase_unsafe(path: Path, backing: Path | str, backing_format: str = "qcow2") -> None:
    """Names another path for the same backing image (the data is not touched): an overlay
    moved away from its backing file's directory keeps its relative name otherwise."""
    run(["qemu-img", "rebase", "-u", "-F", backing_format, "-b", str(backing), str(path)], f"rebasing {path}")


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
    try:
        convert(src, dst, "vpc", f"exporting VHD {dst.name}", "subformat=fixed,force_size")
    except BuildFailed as exc:
        if "No space left on device" not in exc.message:
            raise
        free = shutil.disk_usage(dst.parent).free
        raise BuildFailed(f"exporting VHD {dst}: the file system is full (a fixed VHD of this disk takes "
                          f"{(size + 512) / MIB:,.0f} MiB; {free / MIB:,.0f} MiB are free); nothing was left behind",
                          hint=f"free space in {dst.parent}, or give the target a `uri` on another file system") from None
    return size
