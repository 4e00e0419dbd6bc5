"""Before the build VM boots: what the image store needs. Publishes that dead runs left
unfinished are swept, the store objects this run reads or writes are recorded as in use (a
delete is refused while the run lives), and every target is checked (regions with pools,
libvirt reachable, pools present or created, no duplicate version or image)."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from orchestrator.config import Config
from orchestrator.core import model as m
from orchestrator.core.plan import BuildPlan
from orchestrator.core.resource_ids import parse
from orchestrator.distribute import DistributeJob, distributor_for
from orchestrator.distribute.publish import sweep
from orchestrator.effects.runlog import RunLog
from orchestrator.effects.state import StateStore
from orchestrator.effects.store_state import StoreState
from orchestrator.pipeline.sources import resolver_for

STORE_KINDS = ("ManagedImage", "SharedImage")


def prepare(config: Config, state: StateStore, template: m.ImageTemplate, plan: BuildPlan, run_id: str,
            disk: Path, log: RunLog, progress: Callable[[str], None], cancel: threading.Event,
            owned: Callable[[str], bool]) -> None:
    store = StoreState(state)
    uses_store = any(t.kind in STORE_KINDS for t in plan.targets)
    if uses_store:
        for swept in sweep(config, state, lambda line: log.write("orchestrator", line)):
            progress(f"removed the unfinished {swept}")
    source_key = resolver_for(template.source, config, state, template.location).store_key(template.source)
    if source_key:
        store.use(run_id, source_key, "source")
    for target in plan.targets:
        rid = parse(target.artifact_id) if target.kind in STORE_KINDS else None
        if rid is not None:
            store.use(run_id, (rid.image_definition if rid.kind == "ImageVersion" else rid).key, "target")
        distributor_for(target.kind).check(DistributeJob(config, state, plan, target, run_id, disk, log, progress,
                                                         cancel, owned))
