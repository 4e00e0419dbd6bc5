"""The image store against a real libvirtd (qemu:///system) and real qcow2 disks, without a
build VM: publishing managed images and gallery versions into test-unique pools, versions,
latest, replication, sources, atomicity under cancel and kill, bad input."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orchestrator.core import model as m
from orchestrator.core.resource_ids import next_version, parse
from orchestrator.distribute.publish import sweep
from orchestrator.effects.libvirt_store import LibvirtStore, StoreError
from orchestrator.effects.state import StateStore
from orchestrator.effects.store_state import StoreState
from orchestrator.errors import Canceled, ExitCode, SourceNotFound, TemplateInvalid
from orchestrator.pipeline.sources import resolve
from tests.store_helpers import (DEFINITION, MANAGED, distribute, gallery_target, libvirtd, make_disk,  # noqa: F401
                                 plan_for, pool_files, pools, store_config)


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _versions(config) -> list[str]:
    return [o["version"] for o in StoreState(StateStore(config.db_path)).objects("ImageVersion")]


def test_managed_image_and_gallery_version_replicated_to_two_pools(store_config, tmp_path, pools):
    disk = make_disk(tmp_path / "d")
    plan = plan_for([{"type": "ManagedImage", "runOutputName": "mi", "imageId": MANAGED, "location": "westus",
                      "artifactTags": {"team": "base"}},
                     gallery_target(replicationRegions=["eastus", "westus"], excludeFromLatest=False)])
    state, run_id = distribute(store_config, plan, disk)
    outputs = {o["name"]: o for o in state.outputs(run_id)}
    mi = outputs["mi"]["properties"]
    assert mi["artifactId"] == MANAGED and mi["provisioningState"] == "Succeeded"
    assert [r["pool"] for r in mi["replicas"]] == [pools["west"]]
    gallery = outputs["gallery"]["properties"]
    assert gallery["artifactId"] == f"{DEFINITION}/versions/{gallery['version']}"
    assert [(r["region"], r["pool"]) for r in gallery["replicas"]] == [("eastus", pools["east"]),
                                                                         ("westus", pools["west"])]
    paths = [r["path"] for r in gallery["replicas"]]
    assert all(Path(p).is_file() for p in paths) and paths[0] != paths[1]
    assert _sha(paths[0]) == _sha(paths[1]) == gallery["sha256"]
    assert gallery["artifactUri"] == Path(paths[0]).as_uri()
    # standalone: the volume has no backing file, and holds what the overlay showed
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", paths[0]], capture_output=True,
                                     text=True, check=True).stdout)
    assert "backing-filename" not in info and info["format"] == "qcow2"
    assert subprocess.run(["qemu-img", "compare", str(disk), paths[0]], capture_output=True).returncode == 0
    # libvirt knows the volumes by their final names; nothing partial is left
    with LibvirtStore(store_config.libvirt_uri) as lv:
        for r in gallery["replicas"]:
            assert lv.volume_path(r["pool"], r["volume"]) == r["path"]
    assert not [f for pool in pools.values() for f in pool_files(store_config, pool) if f.startswith("partial-")]
    record = StoreState(state).get(parse(MANAGED).key)
    assert record["tags"] == {"team": "base"} and record["run_id"] == run_id and record["location"] == "westus"


def test_versions_increase_explicit_ones_are_honoured_and_latest_skips_excluded(store_config, tmp_path):
    disk = make_disk(tmp_path / "d", overlay=False)
    for _ in range(3):
        distribute(store_config, plan_for([gallery_target()]), disk)
    generated = _versions(store_config)
    keys = [tuple(int(p) for p in v.split(".")) for v in generated]
    assert len(generated) == 3 and keys == sorted(keys) and len(set(keys)) == 3
    distribute(store_config, plan_for([gallery_target(gallery_id=DEFINITION + "/versions/9.0.0")]), disk)
    with pytest.raises(TemplateInvalid) as dup:
        distribute(store_config, plan_for([gallery_target(gallery_id=DEFINITION + "/versions/9.0.0")]), disk)
    assert dup.value.problems[0].path == "$.properties.distribute[0].galleryImageId"
    assert dup.value.problems[0].rule == "version-exists"
    distribute(store_config, plan_for([gallery_target(excludeFromLatest=True)]), disk)  # 9.0.1, excluded
    assert _versions(store_config)[-1] == "9.0.1"
    state = StateStore(store_config.db_path)
    latest = resolve(m.SharedImageVersionSource(DEFINITION + "/versions/latest"), store_config, state)
    assert latest.resolved_version == "9.0.0" and latest.description.endswith("-> 9.0.0")
    explicit = resolve(m.SharedImageVersionSource(DEFINITION + "/versions/9.0.1"), store_config, state)
    assert explicit.resolved_version == "9.0.1" and Path(explicit.path).is_file()
    # newer APIs' versioning: Latest within a major, and Source (the source image's version)
    latest_major = {"versioning": {"scheme": "Latest", "major": 3}}
    distribute(store_config, plan_for([gallery_target(**latest_major)], api="2024-02-01"), disk)
    distribute(store_config, plan_for([gallery_target(**latest_major)], api="2024-02-01"), disk)
    distribute(store_config, plan_for([gallery_target(versioning={"scheme": "Source"})], "7.1.2", api="2024-02-01"),
               disk)
    assert {"3.0.0", "3.0.1", "7.1.2"} <= set(_versions(store_config))


def test_next_version_rules():
    assert next_version([], None, None, (20260102, 30405)) == (0, 20260102, 30405)
    assert next_version([(0, 20260102, 30405)], None, None, (20260102, 30405)) == (0, 20260102, 30406)
    assert next_version([(1, 0, 0)], None, None, (20260102, 1)) == (1, 0, 1)  # never below what exists
    assert next_version([(1, 2, 3), (2, 0, 0)], "Latest", 1, (0, 0)) == (1, 2, 4)
    assert next_version([(1, 2, 3)], "Latest", 4, (0, 0)) == (4, 0, 0)
    assert next_version([(1, 2, 3)], "Latest", -1, (0, 0)) == (1, 2, 4)


def test_concurrent_publishes_get_distinct_versions(store_config, tmp_path):
    disk = make_disk(tmp_path / "d", overlay=False)
    StateStore(store_config.db_path)
    errors: list[BaseException] = []

    def one() -> None:
        try:
            distribute(store_config, plan_for([gallery_target()]), disk)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    versions = _versions(store_config)
    assert len(versions) == 4 and len(set(versions)) == 4


def test_managed_image_source_and_missing_sources_name_the_json_path(store_config, tmp_path):
    disk = make_disk(tmp_path / "d")
    state = StateStore(store_config.db_path)
    with pytest.raises(SourceNotFound) as missing:
        resolve(m.ManagedImageSource(MANAGED), store_config, state)
    assert "$.properties.source.imageId" in missing.value.message and missing.value.exit_code == ExitCode.ENVIRONMENT
    with pytest.raises(SourceNotFound) as no_latest:
        resolve(m.SharedImageVersionSource(DEFINITION + "/versions/latest"), store_config, state)
    assert "$.properties.source.imageVersionId" in no_latest.value.message
    distribute(store_config, plan_for([{"type": "ManagedImage", "runOutputName": "mi", "imageId": MANAGED,
                                        "location": "somewhere-unmapped"}]), disk)
    found = resolve(m.ManagedImageSource(MANAGED.upper().replace("/SUBSCRIPTIONS/", "/subscriptions/")),
                    store_config, state)  # resource IDs compare without case
    assert Path(found.path).is_file() and found.virtual_size == 64 * 2**20 and found.sha256 == _sha(found.path)
    assert found.os_type == "Linux"  # recorded from the build that made it
    # a managed image that exists is not overwritten
    with pytest.raises(TemplateInvalid) as exists:
        distribute(store_config, plan_for([{"type": "ManagedImage", "runOutputName": "mi", "imageId": MANAGED,
                                            "location": "eastus"}]), disk)
    assert exists.value.problems[0].rule == "image-exists" and "store delete" in exists.value.problems[0].hint


def test_a_region_without_a_pool_and_an_unreachable_libvirt_are_clear_errors(store_config, tmp_path):
    disk = make_disk(tmp_path / "d", overlay=False)
    strict = dataclasses.replace(store_config, pool_default=None)
    with pytest.raises(TemplateInvalid) as region:
        distribute(strict, plan_for([gallery_target(replicationRegions=["eastus", "mars"])]), disk)
    problem = region.value.problems[0]
    assert problem.path == "$.properties.distribute[0].replicationRegions[1]" and "mars" in problem.message
    assert "[pools.regions] mars" in problem.hint
    unreachable = dataclasses.replace(store_config, libvirt_uri="qemu+tcp://127.0.0.1:9/system")
    with pytest.raises(StoreError) as down:
        distribute(unreachable, plan_for([gallery_target()]), disk)
    assert "qemu+tcp://127.0.0.1:9/system" in down.value.message and "[libvirt] uri" in down.value.message
    assert down.value.exit_code == ExitCode.ENVIRONMENT
    assert _versions(store_config) == []


def test_cancel_during_distribution_leaves_nothing(store_config, tmp_path, pools):
    disk = make_disk(tmp_path / "d", data_mib=48)
    cancel = threading.Event()

    def progress(what: str) -> None:
        if what.startswith("publishing"):
            cancel.set()

    with pytest.raises(Canceled):
        distribute(store_config, plan_for([gallery_target(replicationRegions=["eastus", "westus"])]), disk, cancel,
                   progress)
    state = StateStore(store_config.db_path)
    assert StoreState(state).objects() == []
    assert [f for pool in pools.values() for f in pool_files(store_config, pool)] == []


KILLED_PUBLISH = """
import sys, dataclasses
from pathlib import Path
from orchestrator.config import Config
from tests.store_helpers import distribute, plan_for, gallery_target
config = Config(home=Path(sys.argv[1]), libvirt_uri="qemu:///system", pool_default=sys.argv[3],
                pool_regions=(("eastus", sys.argv[3]), ("westus", sys.argv[4])), pools_dir=Path(sys.argv[5]))
distribute(config, plan_for([gallery_target(replicationRegions=["eastus", "westus"])]), Path(sys.argv[2]))
"""


def test_a_killed_distribution_is_never_latest_and_is_swept(store_config, tmp_path, pools):
    small = make_disk(tmp_path / "small", overlay=False)
    distribute(store_config, plan_for([gallery_target()]), small)  # one finished version
    [finished] = _versions(store_config)
    disk = make_disk(tmp_path / "d", data_mib=400)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PUBLISH, str(store_config.home), str(disk), pools["east"],
                             pools["west"], str(store_config.pool_directory)], cwd=Path(__file__).parents[1])
    try:
        deadline = time.monotonic() + 60
        while not any(f.startswith("partial-") for f in pool_files(store_config, pools["east"])):
            assert proc.poll() is None and time.monotonic() < deadline, "the publish ended before it was killed"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    state = StateStore(store_config.db_path)
    store = StoreState(state)
    assert sorted(o["state"] for o in store.objects()) == ["Creating", "Succeeded"]
    latest = resolve(m.SharedImageVersionSource(DEFINITION + "/versions/latest"), store_config, state)
    assert latest.resolved_version == finished  # the unfinished one is never picked
    swept = sweep(store_config, state)
    assert len(swept) == 1 and finished not in swept[0]
    assert [o["version"] for o in store.objects()] == [finished]
    assert [f for f in pool_files(store_config, pools["east"]) + pool_files(store_config, pools["west"])
            if f.startswith("partial-")] == []


def test_libvirt_errors_say_what_was_being_done():
    with LibvirtStore("test:///default") as lv:
        with pytest.raises(StoreError) as missing:
            lv.pool("no-such-pool")
        assert "no storage pool 'no-such-pool'" in missing.value.message and "store init" in missing.value.hint
        pool = lv.conn.storagePoolLookupByName("default-pool")
        lv.create_volume(pool, "a.qcow2", 2**20)
        with pytest.raises(StoreError) as twice:
            lv.create_volume(pool, "a.qcow2", 2**20)
        assert "cannot create volume 'a.qcow2' in pool 'default-pool'" in twice.value.message
        assert lv.delete_volume(pool, "a.qcow2") and not lv.delete_volume(pool, "a.qcow2")


def test_storage_account_type_is_honoured_by_its_pool(store_config, tmp_path, pools):
    """[pools.storage] sends the replicas of a storageAccountType to its pool (a storage tier),
    whatever their region; replicas of other types stay in their region's pool."""
    config = dataclasses.replace(store_config, pool_storage=(("premium_lrs", pools["default"]),))
    disk = make_disk(tmp_path / "d")
    target = {"type": "SharedImage", "runOutputName": "gallery", "galleryImageId": DEFINITION, "targetRegions": [
        {"name": "eastus", "storageAccountType": "Premium_LRS"},
        {"name": "westus", "storageAccountType": "Standard_LRS"}]}
    plan = plan_for([target])
    state, run_id = distribute(config, plan, disk)
    [output] = state.outputs(run_id)
    replicas = output["properties"]["replicas"]
    assert [(r["region"], r["pool"]) for r in replicas] == [("eastus", pools["default"]), ("westus", pools["west"])]
    assert all(Path(r["path"]).is_file() for r in replicas)
    record = StoreState(state).get(parse(output["properties"]["artifactId"]).key)
    assert [(v.region, v.storage_account_type) for v in record["volumes"]] == [
        ("eastus", "Premium_LRS"), ("westus", "Standard_LRS")]
