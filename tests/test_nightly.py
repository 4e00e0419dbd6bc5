"""Nightly runs without a build VM: the dependency order of stored templates (edges, ties,
cycles, dependants), what a SourceImage trigger accepts, the trigger and schedule verbs (real
SQLite, real unit files checked by `systemd-analyze verify`), a night whose templates fail
before any VM boots (the failure does not stop the others; dependants are skipped), and when a
trigger is due, against the real image store (libvirtd). The nights that build are
tests/test_nightly_e2e.py."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.core.dependencies import (DependencyCycle, dependants, dependency_graph, ordered,
                                            topological_order, trigger_refusals)
from orchestrator.core.schedule import crontab_line, nightly_command, on_calendar, render_units, systemd_quote
from orchestrator.core.template import load_template
from orchestrator.effects.state import StateStore
from orchestrator.errors import ExitCode, UsageError
from orchestrator.service.runs import Runs
from tests.helpers import dumps, linux_template
from tests.store_helpers import libvirtd, pools, store_config  # noqa: F401 - fixtures

SUB = "/subscriptions/0/resourceGroups/rg/providers/Microsoft.Compute/"
GAL = SUB + "galleries/gal/images/"


def gallery(definition: str, **extra) -> dict:
    return {"type": "SharedImage", "runOutputName": f"to-{definition.split('/')[0]}",
            "galleryImageId": GAL + definition,
            "replicationRegions": ["local"], **extra}


def from_latest(definition: str) -> dict:
    return {"type": "SharedImageVersion", "imageVersionId": GAL + definition + "/versions/latest"}


def model(source: dict | None = None, distribute: list | None = None):
    return load_template(linux_template(**({"source": source} if source else {}),
                                        distribute=distribute or [{"type": "VHD", "runOutputName": "vhd"}]))


# --- order ------------------------------------------------------------------------------------
def chain() -> dict:
    return {"team": model(from_latest("base"), [gallery("team")]),
            "app": model(from_latest("team")),
            "lone": model(),
            "base": model(None, [gallery("base")])}


def test_producers_come_before_consumers_and_ties_go_by_name():
    graph = dependency_graph(chain())
    assert {(e.producer, e.consumer, e.image) for e in graph.edges} == {
        ("base", "team", "gal/base/latest"), ("team", "app", "gal/team/latest")}
    assert topological_order(graph) == ("base", "lone", "team", "app")


def test_dependants_are_transitive():
    graph = dependency_graph(chain())
    assert dependants(graph, ["base"]) == {"team", "app"}
    assert dependants(graph, ["team"]) == {"app"}
    assert dependants(graph, ["lone", "app"]) == frozenset()


def test_edges_by_explicit_version_managed_image_and_case_insensitive_ids():
    managed = SUB + "images/golden"
    templates = {
        "pinned": model({"type": "SharedImageVersion", "imageVersionId": GAL.upper() + "BASE/versions/1.2.3"}),
        "explicit": model(None, [gallery("base/versions/1.2.3")]),
        "generated": model(None, [gallery("base")]),
        "managed-user": model({"type": "ManagedImage", "imageId": managed.lower()}),
        "managed-maker": model(None, [{"type": "ManagedImage", "runOutputName": "m", "imageId": managed,
                                       "location": "local"}]),
    }
    edges = {(e.producer, e.consumer) for e in dependency_graph(templates).edges}
    # a pinned version comes from the template that names it, not from one that generates versions
    assert edges == {("explicit", "pinned"), ("managed-maker", "managed-user")}


def test_exclude_from_latest_publishes_nothing_latest_picks():
    templates = {"hidden": model(None, [gallery("base", excludeFromLatest=True)]),
                 "user": model(from_latest("base"))}
    assert dependency_graph(templates).edges == ()


def test_a_layer_on_its_own_definition_is_no_cycle():
    graph = dependency_graph({"layer": model(from_latest("base"), [gallery("base")])})
    assert graph.edges == () and topological_order(graph) == ("layer",)


def test_a_cycle_is_named_and_what_it_feeds_comes_after_it():
    templates = {"b": model(from_latest("a"), [gallery("b")]), "a": model(from_latest("b"), [gallery("a")]),
                 "c": model(from_latest("a")), "z": model()}
    graph = dependency_graph(templates)
    with pytest.raises(DependencyCycle) as caught:
        topological_order(graph)
    assert "a -> b -> a" in caught.value.message and caught.value.exit_code == ExitCode.INVALID_INPUT
    order, cycles = ordered(graph)
    assert cycles == (("a", "b"),)
    assert order.index("c") > max(order.index("a"), order.index("b")) and set(order) == {"a", "b", "c", "z"}


def test_an_unreadable_template_has_no_edges():
    graph = dependency_graph({"broken": None, "team": model(from_latest("base"))})
    assert graph.edges == () and topological_order(graph) == ("broken", "team")


# --- what a trigger accepts -----------------------------------------------------------------
@pytest.mark.parametrize("source", [from_latest("base"), None])  # None: PlatformImage at latest
def test_a_trigger_fits_a_latest_source_with_generated_versions(source):
    assert trigger_refusals(model(source, [gallery("team"), {"type": "VHD", "runOutputName": "v"}])) == []


@pytest.mark.parametrize("source, distribute, needle", [
    ({"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12", "version": "2026.1.0"},
     None, "pinned to version 2026.1.0"),
    ({"type": "SharedImageVersion", "imageVersionId": GAL + "base/versions/1.0.0"}, None,
     "not a gallery image's `latest`"),
    ({"type": "ManagedImage", "imageId": SUB + "images/x"}, None, "its source is a ManagedImage"),
    (from_latest("base"), [gallery("team/versions/2.0.0")], "names the version 2.0.0"),
    (from_latest("base"), [gallery("BASE")], "the source's own image definition"),
])
def test_a_trigger_is_refused_where_aib_refuses_it(source, distribute, needle):
    reasons = trigger_refusals(model(source, distribute))
    assert len(reasons) == 1 and needle in reasons[0]


# --- schedule text ----------------------------------------------------------------------------
def test_units_run_this_orchestrate_with_this_home_nightly():
    command = nightly_command(["/opt/o b/orchestrate"], "/srv/home", "/etc/o.toml", ("base", "team"))
    assert command == ["/opt/o b/orchestrate", "--home", "/srv/home", "--config", "/etc/o.toml", "nightly",
                       "base", "team"]
    units = render_units(command, on_calendar("3:05", None), "/srv/home", (("ORCHESTRATOR_ACCELERATOR", "tcg"),))
    assert "Type=oneshot\n" in units.service
    assert ('ExecStart="/opt/o b/orchestrate" --home /srv/home --config /etc/o.toml nightly base team\n'
            in units.service)
    assert "Environment=ORCHESTRATOR_ACCELERATOR=tcg\n" in units.service
    assert "OnCalendar=*-*-* 03:05:00\nPersistent=true\n" in units.timer
    assert nightly_command(["/x"], "/h", None, ())[-2:] == ["nightly", "--all"]


def test_systemd_quoting_escapes_specifiers_and_variables():
    assert systemd_quote("/usr/bin/orchestrate") == "/usr/bin/orchestrate"
    assert systemd_quote("/h/100%$HOME") == '"/h/100%%$$HOME"'
    assert systemd_quote('a "b"\\c') == '"a \\"b\\"\\\\c"'


@pytest.mark.parametrize("calendar, fields", [
    ("*-*-* 02:00:00", "0 2 * * *"), ("*-*-* 23:59", "59 23 * * *"), ("daily", "0 0 * * *"),
    ("Mon..Fri 03:15", "15 3 * * 1-5"), ("Sat,Sun *-*-* 04:00:00", "0 4 * * 6,0"), ("weekly", "0 0 * * 1"),
    ("*-*-01 02:00:00", None), ("*-*-* 02:00:30", None), ("Fri..Mon 01:00", None),
])
def test_crontab_line_where_cron_can_say_the_calendar(calendar, fields):
    line = crontab_line(calendar, ["/o", "--home", "/h 1/50%", "nightly", "--all"])
    if fields is None:
        assert line is None
    else:
        assert line == f"{fields} /o --home '/h 1/50\\%' nightly --all"


@pytest.mark.parametrize("at, spec", [("24:00", None), ("7", None), (None, ""), (None, "daily\nExecStart=/bin/x"),
                                      ("02:00", "daily")])
def test_bad_times_are_refused(at, spec):
    with pytest.raises(UsageError):
        on_calendar(at, spec)


# --- the CLI: triggers, schedules, nights that fail early -----------------------------------
def orchestrate(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ORCHESTRATOR_HOME=str(home))
    env.pop("ORCHESTRATOR_CONFIG", None)
    result = subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, env=env,
                            timeout=120)
    assert "Traceback" not in result.stderr + result.stdout
    return result


def store(tmp_path: Path, home: Path, name: str, source: dict | None = None, distribute: list | None = None) -> None:
    path = tmp_path / f"{name}.json"
    path.write_text(dumps(linux_template(**({"source": source} if source else {}),
                                         distribute=distribute or [{"type": "VHD", "runOutputName": "vhd"}])))
    result = orchestrate("template", "create", name, str(path), "--update", home=home)
    assert result.returncode == 0, result.stderr


def error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == int(ExitCode.INVALID_INPUT), result.stdout + result.stderr
    return json.loads(result.stdout)["error"]["message"]


def test_trigger_create_list_delete_and_every_refusal(tmp_path, home):
    store(tmp_path, home, "team", from_latest("base"), [gallery("team")])
    store(tmp_path, home, "pinned", {"type": "ManagedImage", "imageId": SUB + "images/x"})
    created = orchestrate("trigger", "create", "team", "source", "--kind", "sourceimage", "--json", home=home)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["properties"] == {"kind": "SourceImage", "provisioningState": "Succeeded",
                                                        "status": {"code": "Healthy", "message": "Trigger is active."}}
    assert "already ('source'); AIB allows one" in error(
        orchestrate("trigger", "create", "team", "other", "--kind", "SourceImage", "--json", home=home))
    assert "'Weekly' is not a trigger kind" in error(
        orchestrate("trigger", "create", "team", "x", "--kind", "Weekly", "--json", home=home))
    assert "its source is a ManagedImage" in error(
        orchestrate("trigger", "create", "pinned", "source", "--kind", "SourceImage", "--json", home=home))
    assert "no stored template 'nosuch'" in error(
        orchestrate("trigger", "create", "nosuch", "source", "--kind", "SourceImage", "--json", home=home))
    assert "is not a template name" in error(
        orchestrate("trigger", "create", "team", "bad/name", "--kind", "SourceImage", "--json", home=home))
    missing_kind = orchestrate("trigger", "create", "team", "x", home=home)
    assert missing_kind.returncode == 2 and "--kind" in missing_kind.stderr
    listed = json.loads(orchestrate("trigger", "list", "--json", home=home).stdout)
    assert [(t["templateName"], t["name"]) for t in listed] == [("team", "source")]
    assert "has no trigger 'nope'" in error(orchestrate("trigger", "delete", "team", "nope", "--json", home=home))
    assert orchestrate("trigger", "delete", "team", "source", home=home).returncode == 0
    assert json.loads(orchestrate("trigger", "list", "--json", home=home).stdout) == []


def test_a_deleted_template_takes_its_trigger_along(tmp_path, home):
    store(tmp_path, home, "team", from_latest("base"), [gallery("team")])
    assert orchestrate("trigger", "create", "team", "source", "--kind", "SourceImage", home=home).returncode == 0
    assert orchestrate("template", "delete", "team", home=home).returncode == 0
    store(tmp_path, home, "team", from_latest("base"), [gallery("team")])
    assert json.loads(orchestrate("trigger", "list", "--json", home=home).stdout) == []


def test_a_trigger_is_disabled_after_three_failed_runs_and_a_success_revives_it(tmp_path, home):
    store(tmp_path, home, "team", from_latest("base"), [gallery("team")])
    assert orchestrate("trigger", "create", "team", "source", "--kind", "SourceImage", home=home).returncode == 0
    state = StateStore(home / "state.db")

    def ended(event: str) -> None:
        run_id = state.start_run("team", None, lambda rid: home / "runs" / rid / "customization.log")
        Runs(state).end(run_id, event, "seeded")

    def status() -> dict:
        return json.loads(orchestrate("trigger", "list", "team", "--json", home=home).stdout)[0]["properties"]["status"]

    for _ in range(2):
        ended("fail")
    assert status()["code"] == "Healthy"
    ended("fail")
    assert status()["code"] == "Disabled" and "the last 3 runs failed" in status()["message"]
    ended("succeed")
    assert status()["code"] == "Healthy"


def test_a_template_updated_out_of_a_trigger_shows_unhealthy(tmp_path, home):
    store(tmp_path, home, "team", from_latest("base"), [gallery("team")])
    assert orchestrate("trigger", "create", "team", "source", "--kind", "SourceImage", home=home).returncode == 0
    store(tmp_path, home, "team", from_latest("base"), [gallery("team/versions/1.0.0")])
    status = json.loads(orchestrate("trigger", "list", "--json", home=home).stdout)[0]["properties"]["status"]
    assert status["code"] == "Unhealthy" and "names the version 1.0.0" in status["message"]


def test_a_failed_template_skips_its_dependants_and_the_night_goes_on(tmp_path, home):
    """Nothing is imported: every PlatformImage build fails at its plan, before any VM."""
    store(tmp_path, home, "base", None, [gallery("base")])
    store(tmp_path, home, "team", from_latest("base"), [gallery("team")])
    store(tmp_path, home, "app", from_latest("team"))
    store(tmp_path, home, "lone")
    store(tmp_path, home, "cyc-a", from_latest("cyc-b"), [gallery("cyc-a")])
    store(tmp_path, home, "cyc-b", from_latest("cyc-a"), [gallery("cyc-b")])
    result = orchestrate("nightly", "--all", "--json", home=home)
    assert result.returncode == int(ExitCode.NIGHTLY_FAILED), result.stderr
    summary = json.loads(result.stdout)
    by_name = {t["name"]: t for t in summary["templates"]}
    assert [t["name"] for t in summary["templates"]] == ["base", "cyc-a", "cyc-b", "lone", "team", "app"]
    assert by_name["base"]["result"] == "failed" and "not in the local catalog" in by_name["base"]["reason"]
    assert by_name["lone"]["result"] == "failed"  # tried after base failed: one failure does not stop the night
    assert by_name["team"] == {**by_name["team"], "result": "skipped",
                               "reason": "source template base failed: not built on a stale gal/base/latest"}
    assert by_name["app"]["result"] == "skipped" and by_name["app"]["reason"].startswith(
        "source template base failed (through team)")
    assert by_name["cyc-a"]["reason"] == by_name["cyc-b"]["reason"] == "dependency cycle: cyc-a -> cyc-b -> cyc-a"
    assert summary["counts"] == {"built": 0, "skipped": 2, "failed": 4} and summary["ok"] is False
    log = Path(summary["log"])
    assert log.parent == home / "nightly" and log.name.startswith(summary["id"])
    lines = log.read_text()
    assert "team: skipped" in lines and "0 built, 2 skipped, 4 failed" in lines
    # the same night in text: a line per template, then the summary
    text = orchestrate("nightly", "team", "nosuch", "base", home=home)
    assert text.returncode == int(ExitCode.NIGHTLY_FAILED)
    out = text.stdout.splitlines()
    assert out[0].startswith("nosuch: failed") and out[1].startswith("base: failed")
    assert out[2].startswith("team: skipped") and "0 built, 1 skipped, 2 failed" in out[3]


def test_nightly_needs_templates_or_all_and_one_at_a_time(tmp_path, home):
    from orchestrator.effects.locks import exclusive

    assert "name the templates to build, or pass --all" in error(orchestrate("nightly", "--json", home=home))
    store(tmp_path, home, "lone")
    with exclusive(home / "nightly" / "nightly.lock", "test"):
        held = orchestrate("nightly", "--all", "--json", home=home)
    assert held.returncode == int(ExitCode.ENVIRONMENT)
    assert f"already running (pid {os.getpid()}" in json.loads(held.stdout)["error"]["message"]


def test_schedule_install_writes_units_systemd_accepts_and_the_crontab_line(tmp_path, home):
    store(tmp_path, home, "base")
    units = tmp_path / "unit dir"
    odd_home = home.parent / "data 100%"  # quoting: a space and a specifier character
    store(tmp_path, odd_home, "base")
    result = orchestrate("schedule", "install", "base", "--at", "3:30", "--unit-dir", str(units), "--json",
                         home=odd_home)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    service, timer = (units / "orchestrator-nightly.service"), (units / "orchestrator-nightly.timer")
    assert record["units"] == [str(service), str(timer)] and record["onCalendar"] == "*-*-* 03:30:00"
    assert record["crontab"].startswith("30 3 * * * ") and record["crontab"].endswith(
        f"--home '{odd_home}'".replace("%", "\\%") + " nightly base")
    text = service.read_text()
    assert f'--home "{str(odd_home).replace("%", "%%")}" nightly base' in text
    assert oct(service.stat().st_mode & 0o777) == "0o644"
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: the unit files were not verified")
    verified = subprocess.run(["systemd-analyze", "verify", str(service), str(timer)], capture_output=True, text=True)
    assert verified.returncode == 0 and verified.stderr == "", verified.stderr


def test_schedule_show_remove_and_refusals(tmp_path, home):
    store(tmp_path, home, "base")
    units = tmp_path / "units"
    assert "name the templates to run nightly, or pass --all" in error(
        orchestrate("schedule", "install", "--json", home=home))
    assert "no stored template 'nosuch'" in error(
        orchestrate("schedule", "install", "nosuch", "--unit-dir", str(units), "--json", home=home))
    assert "not a calendar specification" in error(orchestrate(
        "schedule", "install", "--all", "--on-calendar", "someday", "--unit-dir", str(units), "--json", home=home))
    if not Path("/run/systemd/system").is_dir():  # no systemd: no unit dir asked for, no units, the crontab line
        bare = orchestrate("schedule", "install", "base", "--json", home=home)
        assert bare.returncode == 0, bare.stderr
        assert json.loads(bare.stdout)["units"] == []
        assert not Path("/etc/systemd/system/orchestrator-nightly.timer").exists()
        assert json.loads(bare.stdout)["crontab"].startswith("0 2 * * * ")
    installed = orchestrate("schedule", "install", "--all", "--on-calendar", "Mon..Fri 04:00", "--unit-dir",
                            str(units), home=home)
    assert installed.returncode == 0 and "0 4 * * 1-5 " in installed.stdout and "nightly --all" in installed.stdout
    shown = json.loads(orchestrate("schedule", "show", "--json", home=home).stdout)
    assert shown["installed"] and shown["templates"] == "all" and all(shown["unitsPresent"].values())
    assert json.loads(orchestrate("schedule", "remove", "--json", home=home).stdout)["removed"] == [
        str(units / "orchestrator-nightly.service"), str(units / "orchestrator-nightly.timer")]
    assert list(units.iterdir()) == []
    assert json.loads(orchestrate("schedule", "show", "--json", home=home).stdout) == {"installed": False}
    (units / "orchestrator-nightly.timer").write_text("[Timer]\nOnCalendar=daily\n")  # someone else's
    assert "was not written by `orchestrate schedule install`" in error(
        orchestrate("schedule", "install", "--all", "--unit-dir", str(units), "--json", home=home))


def test_a_trigger_is_due_when_its_source_has_a_version_its_last_success_did_not_use(store_config, tmp_path):
    """Against the real image store: versions published into a test pool, latest resolved."""
    from orchestrator.effects.store_state import StoreState
    from orchestrator.service import templates as stored_templates, triggers
    from tests.store_helpers import DEFINITION, distribute, gallery_target, make_disk, plan_for

    state = StateStore(store_config.db_path)
    data = linux_template(source={"type": "SharedImageVersion", "imageVersionId": DEFINITION + "/versions/latest"})
    stored_templates.create(state, "team", dumps(data), {}, None)
    template = stored_templates.get(state, "team").load(store_config)
    fires, why = triggers.due(store_config, state, template, "team")
    assert not fires and "cannot be resolved" in why  # nothing published yet
    disk = make_disk(tmp_path / "d")
    distribute(store_config, plan_for([gallery_target()]), disk)
    first = StoreState(state).latest(parse_key(DEFINITION))["version"]
    fires, why = triggers.due(store_config, state, template, "team")
    assert fires and why == (f"triggered: SharedImageVersion {DEFINITION}/versions/latest -> {first} "
                             "(never built successfully)")
    run_id = state.start_run("team", None, lambda rid: tmp_path / rid / "customization.log")
    state.update_run(run_id, resolved_version=first)
    Runs(state).end(run_id, "succeed")
    fires, why = triggers.due(store_config, state, template, "team")
    assert not fires and first in why
    distribute(store_config, plan_for([gallery_target()]), disk)
    second = StoreState(state).latest(parse_key(DEFINITION))["version"]
    fires, why = triggers.due(store_config, state, template, "team")
    assert second != first and fires and why.endswith(f"-> {second}; run {run_id} built from {first}")


def parse_key(resource_id: str) -> str:
    from orchestrator.core.resource_ids import parse

    return parse(resource_id).key
