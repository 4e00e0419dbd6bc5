"""Retention: the pure selection (every rule), its configuration, and VHD pruning against real
VHD files written by the VHD target (real qemu-img, real SQLite), through the service and
the `orchestrate prune` command. Gallery versions in real libvirt pools: test_retention_store.py."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.config import load_config
from orchestrator.core.retention import (VERSION, VHD, GalleryVersion, Policy, Protected, VhdOutput,
                                         latest_versions, select, select_versions, select_vhds)
from orchestrator.effects.state import StateStore
from orchestrator.errors import UsageError
from orchestrator.service.retention import prune
from tests.store_helpers import distribute, make_disk, plan_for

SUB = "/subscriptions/0/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/"
DEF_A, DEF_B = SUB + "a", SUB + "b"


def ver(n: int, definition: str = DEF_A, *, excluded: bool = False, template: str | None = "t",
        at: float | None = None, recorded: float | None = None, version: tuple[int, int, int] | None = None):
    number = version or (1, 0, n)
    rid = f"{definition}/versions/{'.'.join(map(str, number))}"
    return GalleryVersion(rid.lower(), rid, definition, number, float(at if at is not None else n), excluded,
                          template, recorded)


def decided(decisions) -> dict[str, tuple[bool, str]]:
    """resource ID's version (or VHD path) -> (deleted?, its reasons joined)."""
    return {d.id.rsplit("/", 1)[-1]: (d.delete, "; ".join(d.reasons)) for d in decisions}


# --- gallery versions ------------------------------------------------------------------------
def test_the_last_n_per_image_definition_are_kept_and_the_older_deleted():
    versions = [ver(n) for n in range(1, 6)] + [ver(n, DEF_B) for n in range(1, 4)]
    decisions = select_versions("t", versions, Protected(), keep=2)
    a = decided(d for d in decisions if d.group == DEF_A)
    b = decided(d for d in decisions if d.group == DEF_B)
    assert {v for v, (gone, _) in a.items() if gone} == {"1.0.1", "1.0.2", "1.0.3"}
    assert {v for v, (gone, _) in b.items() if gone} == {"1.0.1"}  # counted per definition
    latest = f"the highest version not excluded from latest: {DEF_A}/versions/latest resolves to it"
    assert a["1.0.5"] == (False, f"one of the last 2 of template t in {DEF_A} (#1); {latest}")
    assert a["1.0.4"] == (False, f"one of the last 2 of template t in {DEF_A} (#2)")
    assert a["1.0.2"][1] == f"older than the last 2 of template t in {DEF_A} (#4)"
    assert all(d.kind == VERSION and d.key == d.id.lower() for d in decisions)


def test_the_newest_version_not_excluded_from_latest_is_kept_when_newer_ones_are_excluded():
    versions = [ver(1), ver(2), ver(3), ver(4, excluded=True), ver(5, excluded=True)]
    got = decided(select_versions("t", versions, Protected(), keep=1))
    assert got["1.0.5"] == (False, f"one of the last 1 of template t in {DEF_A} (#1)")
    assert got["1.0.4"][0] is True  # excluded and older than the last one: nothing keeps it
    latest = f"the highest version not excluded from latest: {DEF_A}/versions/latest resolves to it"
    assert got["1.0.3"] == (False, latest)
    assert got["1.0.2"][0] and got["1.0.1"][0]


def test_latest_is_the_highest_version_number_not_the_newest_publish():
    explicit = ver(0, at=1.0, version=(9, 0, 0))  # published first, yet the highest version
    versions = [explicit, ver(1, at=2.0), ver(2, at=3.0), ver(3, at=4.0)]
    assert latest_versions(versions) == {DEF_A.lower(): explicit.key}
    got = decided(select_versions("t", versions, Protected(), keep=1))
    assert got["9.0.0"][0] is False and "versions/latest resolves to it" in got["9.0.0"][1]
    assert got["1.0.3"][0] is False and got["1.0.2"][0] and got["1.0.1"][0]


def test_latest_is_the_whole_definitions_and_only_the_templates_own_versions_are_decided():
    mine = [ver(1), ver(2), ver(3, excluded=True)]
    theirs = ver(4, template="other")  # latest of the definition belongs to another template
    decisions = select_versions("t", mine + [theirs], Protected(), keep=1)
    got = decided(decisions)
    assert set(got) == {"1.0.1", "1.0.2", "1.0.3"}  # never a decision about another template's version
    assert got["1.0.3"][0] is False and got["1.0.2"][0] is True and got["1.0.1"][0] is True


def test_a_stored_templates_exact_source_and_a_version_in_use_are_kept():
    versions = [ver(n) for n in range(1, 6)]
    protected = Protected(sources={versions[0].key: ["consumer", "consumer", "other"]},
                          in_use={versions[1].key: ["20260101-000000-abcd1234"]})
    got = decided(select_versions("t", versions, protected, keep=2))
    assert got["1.0.1"] == (False, "the source of stored template consumer, other")
    assert got["1.0.2"] == (False, "in use by active run 20260101-000000-abcd1234")
    assert got["1.0.3"][0] is True


def test_keep_absent_or_zero_keeps_every_version_and_vhd():
    versions = [ver(n) for n in range(1, 5)]
    vhds = [VhdOutput(f"r{n}", "vhd", f"/a/r{n}.vhd", float(n)) for n in range(1, 5)]
    for policy in (Policy(), Policy(0, 0)):
        decisions = select("t", versions, vhds, Protected(), policy)
        assert len(decisions) == 8 and not any(d.delete for d in decisions)
        assert {d.reasons[0] for d in decisions} == {"keep_versions is not set: every version is kept",
                                                     "keep_vhds is not set: every VHD is kept"}
    mixed = select("t", versions, vhds, Protected(), Policy(keep_vhds=1))
    assert [d.id for d in mixed if d.delete] == ["/a/r3.vhd", "/a/r2.vhd", "/a/r1.vhd"]


def test_a_version_a_later_run_reused_counts_as_that_runs():
    versions = [ver(1, recorded=10.0), ver(2), ver(3)]  # run at t=10 reused 1.0.1's outputs
    got = decided(select_versions("t", versions, Protected(), keep=1))
    assert got["1.0.1"][0] is False and "(#1)" in got["1.0.1"][1]
    assert got["1.0.2"][0] is True and got["1.0.3"][0] is False  # 1.0.3: latest


# --- VHD files ---------------------------------------------------------------------------------
def test_the_last_n_vhd_files_per_output_name_are_kept():
    outs = [VhdOutput(f"r{n}", "vhd", f"/a/vhd/r{n}.vhd", float(n)) for n in range(1, 5)]
    outs += [VhdOutput(f"r{n}", "second", f"/a/second/r{n}.vhd", float(n)) for n in range(1, 5)]
    decisions = select_vhds("t", outs, Protected(), keep=2)
    assert sorted(d.id for d in decisions if d.delete) == ["/a/second/r1.vhd", "/a/second/r2.vhd",
                                                           "/a/vhd/r1.vhd", "/a/vhd/r2.vhd"]
    kept = {d.id: d.reasons for d in decisions if not d.delete}
    assert kept["/a/vhd/r4.vhd"] == ("one of the last 2 VHD files of output 'vhd' (#1, newest: run r4)",)
    assert all(d.kind == VHD and d.runs == (d.id.rsplit("/", 1)[1][:-4],) for d in decisions)


def test_a_vhd_path_a_newer_run_output_still_points_at_is_kept():
    # a `uri` every run overwrites: runs 1-3 wrote /x.vhd; then the template moved to /y.vhd (run 4),
    # and back to /x.vhd (run 5): /x.vhd is as new as run 5
    outs = [VhdOutput(f"r{n}", "vhd", "/x.vhd", float(n)) for n in (1, 2, 3, 5)]
    outs.append(VhdOutput("r4", "vhd", "/y.vhd", 4.0))
    decisions = select_vhds("t", outs, Protected(), keep=1)
    assert [(d.id, d.delete) for d in decisions] == [("/x.vhd", False), ("/y.vhd", True)]
    assert decisions[0].runs == ("r5", "r3", "r2", "r1")
    assert "4 run outputs point at this file" in decisions[0].reasons[0]
    only = select_vhds("t", [o for o in outs if o.path == "/x.vhd"], Protected(), keep=1)
    assert [d.delete for d in only] == [False]  # one file, however many runs: nothing to prune


def test_a_vhd_another_template_points_at_or_an_active_run_writes_is_kept():
    outs = [VhdOutput(f"r{n}", "vhd", f"/a/r{n}.vhd", float(n)) for n in range(1, 5)]
    protected = Protected(elsewhere={"/a/r1.vhd": ["run q1 (vhd) of other"]}, in_use={"/a/r2.vhd": ["q2"]})
    got = {d.id: d for d in select_vhds("t", outs, protected, keep=1)}
    assert got["/a/r1.vhd"].reasons == ("a run output of another template still points at it: run q1 (vhd) of other",)
    assert got["/a/r2.vhd"].reasons == ("active run q2 writes it",)
    assert got["/a/r3.vhd"].delete and not got["/a/r4.vhd"].delete


def test_a_file_two_output_names_share_is_decided_once_by_its_best_rank():
    outs = [VhdOutput("r1", "one", "/s.vhd", 1.0), VhdOutput("r2", "one", "/n.vhd", 2.0),
            VhdOutput("r1", "two", "/s.vhd", 1.0)]
    decisions = select_vhds("t", outs, Protected(), keep=1)
    assert sorted((d.id, d.delete) for d in decisions) == [("/n.vhd", False), ("/s.vhd", False)]
    assert decisions[0].line().startswith("keep VHD ")


# --- configuration -------------------------------------------------------------------------------
def test_retention_settings_are_read_and_checked(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text("[retention]\nkeep_versions = 3\nkeep_vhds = 0\n")
    config = load_config(str(home))
    assert (config.retention_keep_versions, config.retention_keep_vhds) == (3, None)
    assert load_config(str(tmp_path)).retention_keep_versions is None  # no file: keep all
    for bad in ("keep_versions = -1", "keep_versions = true", 'keep_vhds = "2"', "keep_vhds = 1.5"):
        (home / "config.toml").write_text(f"[retention]\n{bad}\n")
        with pytest.raises(UsageError) as err:
            load_config(str(home))
        assert "retention." in err.value.message and "0 keeps all" in err.value.message
    (home / "config.toml").write_text("[retention]\nkeep = 2\n")
    with pytest.raises(UsageError, match="unknown setting 'keep' in .retention.") as unknown:
        load_config(str(home))
    assert unknown.value.hint == "[retention] takes keep_versions, keep_vhds"


# --- VHD files, for real ---------------------------------------------------------------------------
def _vhd_runs(config, tmp_path, count: int, targets: list[dict]) -> tuple[StateStore, list[str]]:
    disk = make_disk(tmp_path / "disk", overlay=False)
    runs = []
    for _ in range(count):
        state, run_id = distribute(config, plan_for(targets), disk)
        runs.append(run_id)
    return state, runs


def _props(state, run_id, name="vhd"):
    return {o["name"]: o["properties"] for o in state.outputs(run_id)}[name]


def test_vhd_files_are_pruned_for_real_and_their_outputs_say_so(config, tmp_path, capsys):
    fixed = tmp_path / "vhds" / "fixed.vhd"
    config = dataclasses.replace(config, vhd_dirs=(tmp_path / "vhds",))
    (tmp_path / "vhds").mkdir()
    state, runs = _vhd_runs(config, tmp_path, 4, [{"type": "VHD", "runOutputName": "vhd"},
                                                   {"type": "VHD", "runOutputName": "fixed", "uri": fixed.as_uri()}])
    paths = [Path(_props(state, r)["path"]) for r in runs]
    assert all(p.is_file() for p in paths) and len(set(paths)) == 4 and runs[0] in paths[0].name
    # a file someone replaced since the run wrote it is not the run's any more: it stays
    paths[1].write_bytes(b"someone else's file")
    # the oldest has a provenance statement beside it, recorded on its output (as the attest phase does)
    sidecar = Path(f"{paths[0]}.intoto.json")
    sidecar.write_text("{}")
    [first] = [o for o in state.outputs(runs[0], internal=True) if o["name"] == "vhd"]
    details = {k: v for k, v in first["properties"].items() if k not in ("artifactId", "artifactUri",
                                                                          "provisioningState")}
    state.set_output(runs[0], "vhd", "VHD", "Succeeded", first["properties"]["artifactId"],
                     first["properties"]["artifactUri"], {**details, "provenanceSidecar": str(sidecar)})
    config_file = tmp_path / "config.toml"
    config_file.write_text("[paths]\nvhd_dirs = [\"%s\"]\n[retention]\nkeep_vhds = 2\n" % (tmp_path / "vhds"))
    cli = ["--home", str(config.home), "--config", str(config_file)]
    assert main([*cli, "prune", "store-test", "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["dryRun"] and dry["templates"][0]["counts"]["would-delete"] == 2
    assert all(p.is_file() for p in paths)  # a dry run changes nothing
    assert main([*cli, "prune", "store-test"]) == 0
    printed = capsys.readouterr().out
    assert f"store-test: deleted VHD {paths[0]}: older than the last 2 VHD files of output 'vhd' (#4" in printed
    assert f"store-test: kept VHD {paths[1]}: older than the last 2" in printed and "changed since" in printed
    assert f"store-test: kept VHD {fixed}: one of the last 2 VHD files of output 'fixed' (#1, newest: run " \
           f"{runs[3]}; 4 run outputs point at this file)" in printed
    assert "store-test: 1 deleted, 4 kept" in printed
    assert not paths[0].exists() and paths[1].is_file() and paths[2].is_file() and paths[3].is_file()
    assert not sidecar.exists()
    assert fixed.is_file()  # one file every run overwrote: nothing to prune
    # the pruned output says so, in status
    assert main([*cli, "status", runs[0], "--json"]) == 0
    shown = {o["name"]: o["properties"] for o in json.loads(capsys.readouterr().out)["runOutputs"]}
    assert shown["vhd"]["provisioningState"] == "Deleted" and shown["fixed"]["provisioningState"] == "Succeeded"
    assert shown["vhd"]["deleted"]["by"] == "orchestrate prune"
    assert shown["vhd"]["deleted"]["reason"].startswith("older than the last 2 VHD files of output 'vhd'")
    assert main([*cli, "status", runs[0]]) == 0
    assert f"vhd: Deleted {paths[0].as_uri()}" in capsys.readouterr().out
    # a second prune finds nothing more to delete (the replaced file still stays)
    assert main([*cli, "prune", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)["templates"]
    assert [t["counts"]["deleted"] for t in again] == [0]


def test_a_vhd_an_active_run_claims_or_another_template_points_at_stays(config, tmp_path):
    state, runs = _vhd_runs(config, tmp_path, 3, [{"type": "VHD", "runOutputName": "vhd"}])
    paths = [_props(state, r)["path"] for r in runs]
    # another template's run output names the oldest file (the output of a copied run record)
    other = state.start_run("other", None, lambda rid: config.runs_dir / rid / "customization.log")
    state.set_output(other, "vhd", "VHD", "Succeeded", artifact_id=paths[0], artifact_uri=Path(paths[0]).as_uri())
    # a live run (this process) claims the second file
    active = state.start_run("writer", None, lambda rid: config.runs_dir / rid / "customization.log",
                             pid=os.getpid(), pid_start_time=_start_time())
    state.update_run(active, claims=json.dumps([f"file:{os.path.realpath(paths[1])}"]))
    [report] = prune(config, state, ["store-test"], policy=Policy(keep_vhds=1))
    by_id = {o.decision.id: o for o in report.outcomes}
    assert by_id[paths[0]].action == "kept" and "another template" in by_id[paths[0]].decision.reasons[0]
    assert by_id[paths[1]].action == "kept" and by_id[paths[1]].decision.reasons == (f"active run {active} writes it",)
    assert by_id[paths[2]].action == "kept"
    assert all(Path(p).is_file() for p in paths)
    with pytest.raises(UsageError, match="no template 'nope'"):
        prune(config, state, ["nope"], policy=Policy(keep_vhds=1))


def test_prune_after_run_logs_each_deletion_and_keep_reason(config, tmp_path):
    from orchestrator.effects.runlog import RunLog
    from orchestrator.service.retention import prune_after_run

    state, runs = _vhd_runs(config, tmp_path, 3, [{"type": "VHD", "runOutputName": "vhd"}])
    paths = [_props(state, r)["path"] for r in runs]
    log_path = tmp_path / "run.log"
    with RunLog(log_path) as log:
        prune_after_run(config, state, "store-test", log)  # not configured: nothing happens
        assert log_path.read_text() == ""
        prune_after_run(dataclasses.replace(config, retention_keep_vhds=2), state, "store-test", log)
    lines = log_path.read_text().splitlines()
    assert len(lines) == 3 and all("[orchestrator] retention: " in line for line in lines)
    assert f"retention: deleted VHD {paths[0]}: older than the last 2" in lines[2]
    assert not Path(paths[0]).exists() and Path(paths[2]).is_file()
    assert _props(state, runs[0])["provisioningState"] == "Deleted"
    assert _props(state, runs[0])["deleted"]["by"] == "retention after a run"


def _start_time() -> int:
    from orchestrator.effects.proc import process_start_time

    return process_start_time(os.getpid())


def test_stored_template_sources_are_exact_versions_and_a_broken_one_protects_what_it_names(config):
    from orchestrator.service.retention import source_versions
    from tests.helpers import dumps, linux_template

    state = StateStore(config.db_path)
    exact, latest = f"{DEF_A}/versions/2.0.1", f"{DEF_B}/versions/latest"
    for name, version_id in (("exact", exact), ("follows-latest", latest)):
        body = dumps(linux_template(source={"type": "SharedImageVersion", "imageVersionId": version_id}))
        state.put_template(name, body, {}, None, name, update=False)
    broken = '{"properties": {"source": {"imageVersionId": "%s"}}, "oops": ' % f"{DEF_B}/versions/3.1.4".upper()
    state.put_template("broken", broken, {}, None, "broken", update=False)  # no longer loads
    found = source_versions(config, state.templates())
    assert found == {exact.lower(): ["exact"], f"{DEF_B}/versions/3.1.4".lower(): ["broken"]}
