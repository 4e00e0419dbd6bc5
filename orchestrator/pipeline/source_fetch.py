"""A fleet's build host that lacks a run's base image fetches it from a host of the fleet that
serves it (effects/image_transfer.py), verified by its sha256 before the build uses it, and
keeps it in images/ for the next run. One host alone never fetches: its catalog is its own."""
from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from orchestrator.config import Config
from orchestrator.core.plan import BuildPlan
from orchestrator.effects import fleet_state
from orchestrator.effects.files import remove_stale_parts
from orchestrator.effects.image_transfer import fetch_image
from orchestrator.effects.runlog import RunLog
from orchestrator.errors import Canceled

LOCK_POLL_SECONDS = 0.5


def ensure_source(plan: BuildPlan, config: Config, state, log: RunLog, cancel: threading.Event) -> None:
    path = Path(plan.source.path)
    if config.fleet is None or path.is_file() or path.parent != config.images_dir or not plan.source.sha256:
        return  # here already, or not a catalog image (a store volume is in a pool, shared by NFS)
    lock = os.open(path.with_name(f".{plan.source.sha256}.fetching"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        while True:  # another build on this host may be fetching the same image: wait for it
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if cancel.wait(LOCK_POLL_SECONDS):
                    raise Canceled("the build was canceled while waiting for its base image") from None
        if path.is_file():
            log.write("orchestrator", f"base image sha256:{plan.source.sha256[:12]} fetched by another run here")
            return
        for part in remove_stale_parts(config.images_dir):
            log.write("orchestrator", f"removed {part.name}, left by a fetch that was killed")
        fetch_image(plan.source.sha256, path, fleet_state.hosts(state), config.fleet.host, cancel,
                    lambda line: log.write("orchestrator", line))
    finally:
        os.close(lock)  # the lock file stays: removing it would race the next fetch's open
