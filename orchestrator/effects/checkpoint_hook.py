"""The host side of a disk checkpoint, run by Packer (shell-local) between two customizers
while the build VM waits, its file systems flushed:

1. the disk's current top layer gets its name in the checkpoint store (the first is Packer's
   own disk.qcow2, hard-linked there: Packer deletes its output directory when a build fails);
2. a new overlay is made next to it, its backing named relatively (the store can move);
3. over QEMU's monitor (qemu.qmp) the overlay is added and made the disk's new top
   (blockdev-add, blockdev-snapshot on the manifest's drive: `virtio0` for Linux builds,
   `ide0-hd0` for Windows ones): the layer below is now read-only.

It appends what it froze to the run's checkpoint log; the engine registers those layers
(sha256, size) when the build ends, whatever the end. Usage (generated into the HCL):
    python -m orchestrator.effects.checkpoint_hook MANIFEST POSITION
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from qemu.qmp.legacy import QEMUMonitorProtocol

from orchestrator.core.checkpoint_steps import HOOK_MARK

DRIVE = "virtio0"  # Packer's build disk; node names change with every snapshot, the drive id does not


def take(manifest: dict, position: int) -> dict:
    started = time.monotonic()
    layers = {int(k): v for k, v in manifest["layers"].items()}
    layer = Path(layers[position]["path"])
    if position == manifest["first"]:
        parent = manifest.get("started_from")
        os.link(manifest["packer_disk"], layer)
    else:
        parent = layers[position - 1]["path"]
        os.rename(str(layer) + ".part", layer)
    if position < manifest["last"]:
        overlay = Path(str(layers[position + 1]["path"]) + ".part")
    else:
        overlay = Path(manifest["top"])
    backing = layer.name if overlay.parent == layer.parent else str(layer)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-u", "-b", backing, str(overlay),
                    str(manifest["virtual_size"])], check=True, capture_output=True, text=True, cwd=overlay.parent)
    monitor = QEMUMonitorProtocol(manifest["qmp_socket"])
    monitor.connect()
    try:
        node = f"orchestrator-ck{position}"
        monitor.cmd("blockdev-add", driver="qcow2", **{"node-name": node},
                    file={"driver": "file", "filename": str(overlay)}, backing=None)
        try:
            monitor.cmd("blockdev-snapshot", node=manifest.get("drive", DRIVE), overlay=node)
        except Exception:
            monitor.cmd("blockdev-del", **{"node-name": node})  # else a second try says "Duplicate node"
            raise
    finally:
        monitor.close()
    record = {"position": position, "key": layers[position]["key"], "name": layers[position]["name"],
              "path": str(layer), "parent": parent, "seconds": round(time.monotonic() - started, 3)}
    with open(manifest["log"], "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")
    return record


def main(argv: list[str]) -> int:
    manifest_path, position = argv[0], int(argv[1])
    manifest = json.loads(Path(manifest_path).read_text())
    try:
        record = take(manifest, position)
    except Exception as exc:  # Packer shows this line; the build fails at this step, said so
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        print(f"{HOOK_MARK} failed after step {position}: {type(exc).__name__}: {detail}", file=sys.stderr)
        return 1
    print(f"{HOOK_MARK} step {position} ({record['name']}) frozen in {record['seconds']:.2f} s as {record['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
