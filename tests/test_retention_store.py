"""Retention of gallery versions against a real libvirtd (qemu:///system) and real qcow2
volumes, without a build VM: versions published from small real disks into test-unique pools,
then pruned; the right ones leave the pools and the store, the protected ones stay."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from orchestrator.cli import main
from orchestrator.core import model as m
from orchestrator.core.resource_ids import parse
from orchestrator.distribute.publish import run_alive
from orchestrator.effects.libvirt_store import LibvirtStore
from orchestrator.effects.proc import process_start_time
from orchestrator.effects.retention_state import RetentionState
from orchestrator.effects.state import StateStore
from orchestrator.effects.store_state import StoreState
from orchestrator.pipeline.sources import resolve
from orchestrator.service import templates
from orchestrator.service.retention import prune
from orchestrator.service.runs import Runs
from tests.helpers import dumps, linux_template
from tests.store_helpers import (DEFINITION, distribute, gallery_target, libvirtd, make_disk, plan_for,  # noqa: F401
                                 pool_files, pools, store_config, write_config_file)


def _publish(config, disk, version: str, **extra) -> str:
    """Publishes DEFINITION/versions/VERSION from `disk` by a run of template store-test; its run id."""
    _, run_id = distribute(config, plan_for([gallery_target(gallery_id=f"{DEFINITION}/versions/{version}", **extra)]),
                           disk)
    return run_id


def _versions(state) -> list[str]:
    return [o["version"] for o in StoreState(state).objects("ImageVersion")]


def _record(state, version: str) -> dict:
    return StoreState(state).get(parse(f"{DEFINITION}/versions/{version}").key)


def _gone_everywhere(config, record: dict) -> None:
    """None of the version's volumes is left: not in libvirt, not in the pool's directory."""
    with LibvirtStore(config.libvirt_uri) as lv:
        for volume in record["volumes"]:
            assert lv.volume_path(volume.pool, volume.volume) is None
            assert volume.volume not in pool_files(config, volume.pool)
            assert not Path(volume.path).exists()


def _outcomes(report) -> dict[str, tuple[str, str]]:
    return {o.decision.id.rsplit("/", 1)[1]: (o.action, "; ".join(o.decision.reasons) + o.note)
            for o in report.outcomes}


def test_four_versions_pruned_to_two_keep_the_protected_ones(store_config, tmp_path, pools, capsys):
    disk = make_disk(tmp_path / "d", overlay=False)
    runs = {v: _publish(store_config, disk, v) for v in ("1.0.0", "1.0.1", "1.0.2", "1.0.3")}
    state = StateStore(store_config.db_path)
    records = {v: _record(state, v) for v in runs}
    assert all(Path(r["volumes"][0].path).is_file() for r in records.values())
    # a stored template builds from 1.0.0, by its exact ID
    consumer = linux_template(source={"type": "SharedImageVersion", "imageVersionId": f"{DEFINITION}/versions/1.0.0"})
    templates.create(state, "consumer", dumps(consumer), {}, None)
    config = dataclasses.replace(store_config, retention_keep_versions=2)

    [dry] = prune(config, state, ["store-test"], dry_run=True)
    assert [o.action for o in dry.outcomes] == ["kept", "kept", "would-delete", "kept"]
    assert _versions(state) == ["1.0.0", "1.0.1", "1.0.2", "1.0.3"]  # a dry run changes nothing

    [report] = prune(config, state, ["store-test"])
    got = _outcomes(report)
    latest = f"the highest version not excluded from latest: {DEFINITION}/versions/latest resolves to it"
    assert got["1.0.3"] == ("kept", f"one of the last 2 of template store-test in {DEFINITION} (#1); {latest}")
    assert got["1.0.2"] == ("kept", f"one of the last 2 of template store-test in {DEFINITION} (#2)")
    assert got["1.0.1"] == ("deleted", f"older than the last 2 of template store-test in {DEFINITION} (#3)")
    assert got["1.0.0"] == ("kept", "the source of stored template consumer")
    assert _versions(state) == ["1.0.0", "1.0.2", "1.0.3"]
    _gone_everywhere(config, records["1.0.1"])
    for kept in ("1.0.0", "1.0.2", "1.0.3"):
        assert all(Path(v.path).is_file() for v in records[kept]["volumes"])
    [output] = state.outputs(runs["1.0.1"])
    assert output["properties"]["provisioningState"] == "Deleted"
    assert output["properties"]["deleted"]["reason"] == got["1.0.1"][1]
    assert [o["properties"]["provisioningState"] for o in state.outputs(runs["1.0.2"])] == ["Succeeded"]
    assert resolve(m.SharedImageVersionSource(f"{DEFINITION}/versions/1.0.0"), config, state).path  # still builds

    # two newer versions excluded from latest, and a live run building from 1.0.2
    for version in ("1.0.4", "1.0.5"):
        _publish(store_config, disk, version, excludeFromLatest=True)
    records.update({v: _record(state, v) for v in ("1.0.4", "1.0.5")})
    active = state.start_run("consumer", None, lambda rid: config.runs_dir / rid / "customization.log",
                             pid=os.getpid(), pid_start_time=process_start_time(os.getpid()))
    StoreState(state).use(active, records["1.0.2"]["key"], "source")
    assert RetentionState(state).claim_version(records["1.0.2"]["key"], run_alive) == f"in use by active run {active}"
    config_file = write_config_file(config, tmp_path / "config.toml", "[retention]\nkeep_versions = 2\n")
    cli = ["--home", str(config.home), "--config", str(config_file)]
    assert main([*cli, "prune", "--json"]) == 0  # every template: consumer (no artifacts) and store-test
    shown = {t["template"]: t for t in json.loads(capsys.readouterr().out)["templates"]}
    assert set(shown) == {"consumer", "store-test"} and shown["consumer"]["artifacts"] == []
    assert shown["store-test"]["counts"] == {"deleted": 0, "would-delete": 0, "kept": 5, "failed": 0}
    got = {a["id"].rsplit("/", 1)[1]: "; ".join(a["reasons"]) for a in shown["store-test"]["artifacts"]}
    assert got["1.0.5"].endswith("(#1)") and got["1.0.4"].endswith("(#2)")  # excluded, yet the last two
    assert got["1.0.3"].endswith("versions/latest resolves to it")  # the newest not excluded
    assert got["1.0.2"] == f"in use by active run {active}"
    assert got["1.0.0"] == "the source of stored template consumer"
    assert resolve(m.SharedImageVersionSource(f"{DEFINITION}/versions/latest"), config, state).resolved_version == \
        "1.0.3"

    Runs(state).end(active, "succeed")  # the run ends: 1.0.2 is used no more
    [report] = prune(config, state, ["store-test"])
    assert {v for v, (action, _) in _outcomes(report).items() if action == "deleted"} == {"1.0.2"}
    assert _versions(state) == ["1.0.0", "1.0.3", "1.0.4", "1.0.5"]
    _gone_everywhere(config, records["1.0.2"])
    assert not [f for pool in pools.values() for f in pool_files(config, pool) if f.startswith("partial-")]


def test_a_deletion_libvirt_refuses_is_reported_and_the_sweep_finishes_it(store_config, tmp_path, pools, capsys):
    from orchestrator.distribute.publish import sweep

    disk = make_disk(tmp_path / "d", overlay=False)
    runs = {v: _publish(store_config, disk, v) for v in ("1.0.0", "1.0.1")}
    state = StateStore(store_config.db_path)
    old = _record(state, "1.0.0")
    down = dataclasses.replace(store_config, libvirt_uri="qemu+tcp://127.0.0.1:9/system")
    config_file = write_config_file(down, tmp_path / "config.toml", "[retention]\nkeep_versions = 1\n")
    assert main(["--home", str(store_config.home), "--config", str(config_file), "prune", "--json"]) == 6
    shown = json.loads(capsys.readouterr().out)
    assert shown["ok"] is False
    [failed] = [a for a in shown["templates"][0]["artifacts"] if a["action"] == "failed"]
    assert failed["id"].endswith("/versions/1.0.0") and "qemu+tcp://127.0.0.1:9/system" in failed["note"]
    assert "orchestrate store sweep" in failed["note"]
    # never a source again, its output says so, and the sweep removes its volumes once libvirt answers
    assert _record(state, "1.0.0")["state"] == "Deleting"
    assert state.outputs(runs["1.0.0"])[0]["properties"]["provisioningState"] == "Deleted"
    assert resolve(m.SharedImageVersionSource(f"{DEFINITION}/versions/latest"), store_config, state).resolved_version \
        == "1.0.1"
    assert sweep(store_config, state) == [old["resource_id"]]
    _gone_everywhere(store_config, old)
    assert _versions(state) == ["1.0.1"]
