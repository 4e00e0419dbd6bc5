"""Publishing a build disk into the image store, atomically, and removing what is not finished.

A publish records the object `Creating` (with the volumes it will have) before it writes,
writes each volume under a partial name (`partial-RUN-…`), renames it to its final name when
complete and only then marks the object `Succeeded` together with its run output, in one
transaction. Whatever fails, is canceled or times out removes its volumes and its record;
what a killed run left (`Creating` of a run whose process is gone) is swept at the next start.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from orchestrator.config import Config
from orchestrator.core.paths import safe_component
from orchestrator.core.resource_ids import ResourceId
from orchestrator.effects import qemu_img
from orchestrator.effects.libvirt_store import LibvirtStore, StoreError
from orchestrator.effects.proc import process_start_time
from orchestrator.effects.replicate import copy_hashed, flatten
from orchestrator.effects.state import StateStore
from orchestrator.effects.store_state import StoreState, Volume


@dataclass(frozen=True)
class Placement:
    region: str
    pool: str
    replica_count: int = 1
    storage_account_type: str | None = None


@dataclass(frozen=True)
class Published:
    rid: ResourceId
    sha256: str
    size: int
    virtual_size: int
    volumes: list[Volume]


def connect(config: Config) -> LibvirtStore:
    return LibvirtStore(config.libvirt_uri, config.setting_source())


def volume_names(rid_key: str, short: str, run_id: str) -> tuple[str, str]:
    """(final, partial) volume names of an object: readable, and unique by its key's hash."""
    tag = hashlib.sha256(rid_key.encode()).hexdigest()[:12]
    readable = safe_component(short.replace("/", "_"))[:80]
    return f"{readable}-{tag}.qcow2", f"partial-{safe_component(run_id)}-{tag}.qcow2"


def publish(config: Config, state: StateStore, rid: ResourceId, disk: Path, placements: list[Placement],
            run_id: str, run_output: str, kind: str, *, source: str, tags: dict[str, str],
            location: str | None, cancel: threading.Event, output: Callable[[Published], tuple],
            exclude_from_latest: bool = False, storage_account_type: str | None = None, os_type: str | None = None,
            version_for: Callable[[list[tuple[int, int, int]]], tuple[int, int, int]] | None = None,
            log: Callable[[str], None] = lambda s: None) -> Published:
    """Writes `disk` (a build disk, maybe an overlay) as one standalone qcow2 volume per
    distinct pool of `placements`; returns what was published once it is recorded Succeeded."""
    store = StoreState(state)
    with connect(config) as lv:
        pools = {p.pool: lv.pool(p.pool, create_in=config.pool_directory) for p in placements}

        def planned(key: str, short: str) -> list[Volume]:
            final, partial = volume_names(key, short, run_id)
            return [Volume(p.region, p.pool, final, partial, None, p.replica_count, p.storage_account_type)
                    for p in placements]

        rid, volumes = store.begin(rid, run_id, run_output, planned, source=source, tags=tags, location=location,
                                   exclude_from_latest=exclude_from_latest,
                                   storage_account_type=storage_account_type, os_type=os_type,
                                   version_for=version_for)
        try:
            published = _write(lv, pools, rid, disk, volumes, cancel, log, local=lv.local, work=disk.parent)
            store.finish(rid.key, published.sha256, published.size, published.virtual_size, published.volumes,
                         output(published))
            return published
        except BaseException:
            _remove_volumes(lv, store, rid.key, volumes)
            raise


def _write(lv: LibvirtStore, pools: dict[str, Any], rid: ResourceId, disk: Path, volumes: list[Volume],
           cancel: threading.Event, log: Callable[[str], None], *, local: bool, work: Path) -> Published:
    distinct: dict[str, Volume] = {}
    for v in volumes:
        distinct.setdefault(v.pool, v)
    facts = qemu_img.info(disk)
    # a local pool's volume is renamed when complete; a remote one (no rename) is written under
    # its final name, and only the record says whether it is finished
    paths = {pool: Path(lv.create_volume(pools[pool], v.partial if local else v.volume, facts.virtual_size))
             for pool, v in distinct.items()}
    what = f"publishing {rid.short}"
    if local:
        first, *rest = list(paths.values())
        if facts.backing_file or facts.format != "qcow2":
            flatten(disk, first, cancel, what)
            digest, size = copy_hashed(first, rest, cancel, what)
        else:
            digest, size = copy_hashed(disk, [first, *rest], cancel, what)
        final_paths = {pool: lv.rename_in_pool(pools[pool], v.partial, v.volume) for pool, v in distinct.items()}
    else:  # a remote libvirt: stream a standalone copy into each volume
        flat = work / f"publish-{volume_names(rid.key, rid.short, 'x')[0]}"
        try:
            flatten(disk, flat, cancel, what)
            digest, size = copy_hashed(flat, [], cancel, what)
            for pool, v in distinct.items():
                lv.upload(pools[pool], v.volume, flat, cancel)
        finally:
            flat.unlink(missing_ok=True)
        final_paths = {pool: str(path) for pool, path in paths.items()}  # remote volumes keep their name
    log(f"{rid.short}: {size} bytes, sha256 {digest}, in pool(s) {', '.join(distinct)}")
    done = [Volume(v.region, v.pool, v.volume, v.partial, str(final_paths[v.pool]),
                   v.replica_count, v.storage_account_type) for v in volumes]
    return Published(rid, digest, size, facts.virtual_size, done)


def _remove_volumes(lv: LibvirtStore, store: StoreState, key: str, volumes: list[Volume]) -> None:
    """Both names of every volume, then the record: nothing that looks finished stays."""
    for v in volumes:
        try:
            pool = lv.pool(v.pool)
            lv.refresh(pool)
            for name in (v.partial, v.volume):
                lv.delete_volume(pool, name)
        except StoreError:
            return  # the record stays (Creating or Deleting): the sweep tries again
    store.forget(key)


def run_alive(run: dict[str, Any] | None) -> bool:
    """Whether a run's build process is still the one that recorded it."""
    if not run or run.get("run_state") not in ("Running", "Canceling") or not run.get("pid"):
        return False
    started = process_start_time(run["pid"])
    return started is not None and started == run.get("pid_start_time")


def sweep(config: Config, state: StateStore, log: Callable[[str], None] = lambda s: None) -> list[str]:
    """Removes the volumes and records of publishes whose run is dead (killed, host crash);
    returns the resource IDs swept. Connects to libvirt only when there is something to sweep."""
    store = StoreState(state)
    dead = [o for o in store.objects(states=("Creating", "Deleting")) if not run_alive(state.run(o["run_id"] or ""))]
    if not dead:
        return []
    swept = []
    with connect(config) as lv:
        for obj in dead:
            _remove_volumes(lv, store, obj["key"], obj["volumes"])
            if store.get(obj["key"]) is None:
                swept.append(obj["resource_id"])
                log(f"removed {obj['resource_id']} ({obj['state']}), left unfinished by run {obj['run_id']}")
    return swept


def delete(config: Config, state: StateStore, obj: dict[str, Any]) -> None:
    """Deletes a finished object's volumes, then its record (Deleting in between)."""
    store = StoreState(state)
    store.mark(obj["key"], "Deleting")
    with connect(config) as lv:
        _remove_volumes(lv, store, obj["key"], obj["volumes"])
    if store.get(obj["key"]) is not None:
        raise StoreError(f"could not delete every volume of {obj['resource_id']}",
                         hint="see `virsh vol-list POOL`; `orchestrate store sweep` tries again")
