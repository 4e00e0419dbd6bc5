"""The host side of a disk checkpoint, between two customizers while the build VM waits: what
the run's process does when Packer's shell-local step asks (checkpoint_agent.py), or this
module run on its own (`python -m`, as the tests and a Windows build's Packer test run it):

0. a Linux guest is flushed over SSH (effects/checkpoint_guest.py; a guest a customizer rebooted
   is waited for there), a Windows guest was by its own steps before this;
1. the disk's current top layer gets its name in the checkpoint store (the first is Packer's
   own disk.qcow2, hard-linked there: Packer deletes its output directory when a build fails);
2. a new overlay is made next to it, its backing named relatively (the store can move);
3. over QEMU's monitor (qemu.qmp) the overlay is added and made the disk's new top
   (blockdev-add, blockdev-snapshot on the manifest's drive: `virtio0` for Linux builds,
   `ide0-hd0` for Windows ones): the layer below is now read-only.

A warm checkpoint (manifest "warm") also saves the VM's memory and device state at the same
instant: the VM is stopped before the layer is frozen, its state streamed through zstd next to
the layer (`<layer>.state.zst`, owner-only: it is guest RAM), then it continues; the run's SSH
key is kept with it (the restored guest knows only that key). A failed save leaves a cold
checkpoint and says so: the build goes on.

It appends what it froze to the run's checkpoint log; the engine registers those layers
(sha256, size) when the build ends, whatever the end. Usage (generated into the HCL):
    python -m orchestrator.effects.checkpoint_hook MANIFEST POSITION
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from qemu.qmp.legacy import QEMUMonitorProtocol

from orchestrator.core.checkpoint_steps import HOOK_MARK
from orchestrator.core.warm import KEY_SUFFIX, MAX_BANDWIDTH, STATE_SUFFIX, save_uri
from orchestrator.effects import checkpoint_guest

DRIVE = "virtio0"  # Packer's build disk; node names change with every snapshot, the drive id does not


@dataclass(frozen=True)
class Said:
    """Where the hook's lines go: Packer's output when it runs as a process of its own, the
    answer to the step's request when the run's process serves it (checkpoint_agent.py)."""
    out: Callable[[str], None] = print
    err: Callable[[str], None] = partial(print, file=sys.stderr)


def take(manifest: dict, position: int, said: Said = Said(), guests: checkpoint_guest.Guests | None = None,
         stop: threading.Event | None = None) -> dict:
    started = time.monotonic()
    monitor = QEMUMonitorProtocol(manifest["qmp_socket"])
    monitor.connect()
    try:
        if manifest.get("guest_user"):  # a Linux guest: flushed over SSH first (Windows: by its own steps)
            usernet = monitor.cmd("human-monitor-command", **{"command-line": "info usernet"})
            own = guests is None
            guests = guests or checkpoint_guest.Guests()
            try:
                guest = guests.to(checkpoint_guest.forwarded_ssh_port(str(usernet)), manifest["guest_user"],
                                  manifest["ssh_key"])
                checkpoint_guest.prepare(guest, position, said.out, stop)
            finally:
                if own:
                    guests.close()
        return _take(monitor, manifest, position, started, said)
    finally:
        monitor.close()


def _take(monitor: QEMUMonitorProtocol, manifest: dict, position: int, started: float, said: Said) -> dict:
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
    warm: dict = {}
    if manifest.get("warm"):
        _call(monitor, "migrate-set-parameters", **{"max-bandwidth": MAX_BANDWIDTH})
        _call(monitor, "stop")  # the layer and the state describe one instant
        paused = time.monotonic()
    try:
        _freeze(monitor, manifest, position, overlay)
        if manifest.get("warm"):
            warm = _save_state(monitor, manifest, layer, said)
    finally:
        if manifest.get("warm"):
            _call(monitor, "cont")
            warm["pause_seconds"] = round(time.monotonic() - paused, 3)
    record = {"position": position, "key": layers[position]["key"], "name": layers[position]["name"],
              "path": str(layer), "parent": parent, "seconds": round(time.monotonic() - started, 3)}
    if warm.get("state"):
        record["warm"] = warm
    with open(manifest["log"], "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")
    return record


def _call(monitor: QEMUMonitorProtocol, command: str, **args: object) -> dict:
    """The command's return value; QEMU's error is raised (qemu.qmp's ExecuteError)."""
    reply = monitor.cmd(command, **args)
    return reply if isinstance(reply, dict) else {}


def _freeze(monitor: QEMUMonitorProtocol, manifest: dict, position: int, overlay: Path) -> None:
    node = f"orchestrator-ck{position}"
    _call(monitor, "blockdev-add", driver="qcow2", **{"node-name": node},
          file={"driver": "file", "filename": str(overlay)}, backing=None)
    try:
        _call(monitor, "blockdev-snapshot", node=manifest.get("drive", DRIVE), overlay=node)
    except Exception:
        monitor.cmd("blockdev-del", **{"node-name": node})  # else a second try says "Duplicate node"
        raise


def _save_state(monitor: QEMUMonitorProtocol, manifest: dict, layer: Path, said: Said) -> dict:
    """The stopped VM's state next to the frozen layer; {} with a line on stderr if it fails
    (the checkpoint stays, cold)."""
    state, key = Path(str(layer) + STATE_SUFFIX), Path(str(layer) + KEY_SUFFIX)
    part = Path(str(state) + ".part")
    started = time.monotonic()
    try:
        _call(monitor, "migrate", uri=save_uri(str(part)))
        while True:  # QEMU streams in its own thread; query-migrate reports the end
            status = _call(monitor, "query-migrate")
            if status.get("status") == "completed":
                break
            if status.get("status") in ("failed", "cancelled"):
                raise RuntimeError(f"saving the VM state {status.get('status')}: {status.get('error-desc', '')}")
            time.sleep(0.05)  # polling QEMU's own progress report: there is no event to wait on here
        os.chmod(part, 0o600)
        os.replace(part, state)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(Path(manifest["ssh_key"]).read_bytes())
    except Exception as exc:
        part.unlink(missing_ok=True)
        state.unlink(missing_ok=True)
        said.err(f"{HOOK_MARK} the VM state was not saved ({type(exc).__name__}: {exc}): this checkpoint is cold")
        return {}
    return {"state": str(state), "key": str(key), "save_seconds": round(time.monotonic() - started, 3)}


def answer(manifest_path: str, position: int, said: Said = Said(), guests: checkpoint_guest.Guests | None = None,
           stop: threading.Event | None = None) -> int:
    """Takes the checkpoint after step `position` and says what it did; the step's exit status."""
    try:
        manifest = json.loads(Path(manifest_path).read_text())
        record = take(manifest, position, said, guests, stop)
    except Exception as exc:  # Packer shows this line; the build fails at this step, said so
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        said.err(f"{HOOK_MARK} failed after step {position}: {type(exc).__name__}: {detail}")
        return 1
    warm = record.get("warm")
    extra = f", VM state saved (paused {warm['pause_seconds']:.2f} s)" if warm else ""
    said.out(f"{HOOK_MARK} step {position} ({record['name']}) frozen in {record['seconds']:.2f} s as "
             f"{record['path']}{extra}")
    return 0


def main(argv: list[str]) -> int:
    return answer(argv[0], int(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
