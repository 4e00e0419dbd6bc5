"""Reads files out of a built fixed VHD without mounting it: the VHD is raw data plus a
512-byte footer, so debugfs can open the ext4 root partition at its byte offset."""
from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

MIB = 1024 * 1024


def footer(vhd: Path) -> dict:
    with open(vhd, "rb") as handle:
        handle.seek(-512, 2)
        raw = handle.read(512)
    return {"cookie": raw[0:8], "creator": raw[28:32], "current_size": struct.unpack(">Q", raw[48:56])[0],
            "disk_type": struct.unpack(">I", raw[60:64])[0]}  # 2 = fixed, 3 = dynamic


def root_offset(vhd: Path) -> int:
    table = json.loads(subprocess.run(["sfdisk", "-J", str(vhd)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    return table["partitions"][0]["start"] * table.get("sectorsize", 512)


class Ext4Image:
    def __init__(self, vhd: Path) -> None:
        self.spec = f"{vhd}?offset={root_offset(vhd)}"

    def replay_journal(self) -> None:
        """What a boot would do first: a disk whose VM was killed (not shut down) may hold
        committed changes in the ext4 journal only, which debugfs does not read. e2fsck cannot
        reopen a file system at an offset after recovery, so the partition is copied out first."""
        image, offset = self.spec.split("?offset=")
        part = Path(image + ".root")
        subprocess.run(["dd", f"if={image}", f"of={part}", "bs=4M", f"skip={offset}", "iflag=skip_bytes",
                        "conv=sparse", "status=none"], check=True, timeout=300)
        result = subprocess.run(["e2fsck", "-fy", str(part)], capture_output=True, timeout=120)
        assert result.returncode in (0, 1), result.stdout + result.stderr  # 1: errors corrected
        self.spec = str(part)

    def _debugfs(self, request: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["debugfs", "-R", request, self.spec], capture_output=True, timeout=60)

    def exists(self, path: str) -> bool:
        result = self._debugfs(f"stat {path}")
        return b"not found" not in result.stderr and b"Inode:" in result.stdout

    def read(self, path: str) -> bytes:
        result = self._debugfs(f"cat {path}")
        if b"not found" in result.stderr:
            raise FileNotFoundError(path)
        return result.stdout

    def listdir(self, path: str) -> list[str]:
        result = self._debugfs(f"ls -p {path}")
        names = []
        for line in result.stdout.decode(errors="replace").splitlines():
            parts = line.strip("/").split("/")
            if len(parts) >= 5 and parts[4] not in (".", ".."):
                names.append(parts[4])
        return names
