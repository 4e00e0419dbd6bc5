"""The fleet's pieces on a real PostgreSQL (started by the test on 127.0.0.1): [fleet]
configuration, placement, who takes a run, hosts that stop answering, a database that cannot be
reached. The broker's paths (dispatch, cancel by control message, a worker killed mid-build)
are in test_fleet_e2e.py, on a real RabbitMQ."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from conftest import fleet_config
from helpers import dumps, linux_template
from orchestrator.cli import main
from orchestrator.config import load_config
from orchestrator.core.fleet import MAX_DISPATCHES, STALE_SECONDS, Host, Needs, after_host_gone, why_unplaceable
from orchestrator.effects import fleet_state
from orchestrator.effects.state import StateStore
from orchestrator.errors import EnvironmentProblem, UsageError
from orchestrator.service import fleet

GOOD = {"broker": "amqp://orchestrator:b-pw-123@control:5672/builds",
        "database": "postgresql://orchestrator:d-pw-456@control:5432/orchestrator"}


def _write(home: Path, text: str, mode: int = 0o600) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)
    (home / "config.toml").chmod(mode)


def _fleet_toml(**values) -> str:
    values = {**GOOD, **values}
    return "[fleet]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items() if v is not None)


# --- configuration ------------------------------------------------------------------------------
def test_a_fleet_section_is_read_and_its_passwords_never_shown(tmp_path):
    _write(tmp_path, _fleet_toml(host="build-7", labels=["linux", "kvm"]))
    config = load_config(str(tmp_path))
    assert config.fleet.host == "build-7" and config.fleet.labels == ("linux", "kvm")
    assert config.database_url == GOOD["database"]
    shown = json.dumps(config.fleet.redacted())
    assert "b-pw-123" not in shown and "d-pw-456" not in shown and "orchestrator:***@control" in shown


def test_a_host_that_serves_images_says_where_the_others_reach_it(tmp_path):
    _write(tmp_path, _fleet_toml(host="build-7", serve_images="0.0.0.0:0"))
    fleet_settings = load_config(str(tmp_path)).fleet
    assert fleet_settings.serve_images == ("0.0.0.0", 0)
    assert fleet_settings.advertised_images_url(8471) == "http://build-7:8471"  # all addresses: by its name
    _write(tmp_path, _fleet_toml(serve_images="[::1]:8470", images_url="https://build-7.example/img/"))
    fleet_settings = load_config(str(tmp_path)).fleet
    assert fleet_settings.serve_images == ("::1", 8470)
    assert fleet_settings.advertised_images_url(8470) == "https://build-7.example/img"
    assert load_config(str(tmp_path)).fleet.redacted()["serveImages"] == "::1:8470"


def test_no_fleet_section_is_one_host():
    from orchestrator.config import Config

    assert Config(home=Path("/nonexistent")).fleet is None


@pytest.mark.parametrize("values,expected", [
    ({"broker": None}, "[fleet] needs broker"),
    ({"database": "sqlite:///x.db"}, "is not a postgresql or postgres:// URL"),
    ({"broker": "amqp://control/builds"}, "has no user and password"),
    ({"broker": "amqp://guest:guest@control/"}, "uses the guest account"),
    ({"database": "postgresql://orchestrator:@control/o"}, "has no user and password"),
    ({"labels": ["Linux!"]}, "is not a list of labels"),
    ({"labels": []}, "is not a list of labels"),
    ({"host": "a b"}, "is not a host name"),
    ({"queue": "x"}, "unknown setting 'queue' in [fleet]"),
    ({"broker": "amqp://u:p@control:port/"}, "is not a URL"),
    ({"serve_images": "8470"}, "fleet.serve_images = '8470' is not ADDRESS:PORT"),
    ({"serve_images": "0.0.0.0:99999"}, "is not ADDRESS:PORT"),
    ({"images_url": "http://build-7:8470"}, "fleet.images_url without fleet.serve_images"),
    ({"serve_images": "0.0.0.0:8470", "images_url": "http://u:p@build-7:8470"}, "is not an http(s) URL without"),
])
def test_bad_fleet_settings_are_refused_with_the_setting_named(tmp_path, values, expected, capsys):
    _write(tmp_path, _fleet_toml(**values))
    with pytest.raises(UsageError) as err:
        load_config(str(tmp_path))
    assert expected in err.value.message
    assert "b-pw-123" not in err.value.message and "d-pw-456" not in err.value.message
    assert main(["--home", str(tmp_path), "runs"]) == 2
    assert expected in capsys.readouterr().err


def test_a_configuration_with_fleet_passwords_must_be_owner_only(tmp_path):
    _write(tmp_path, _fleet_toml(), mode=0o644)
    with pytest.raises(UsageError, match="holds the fleet's passwords and others may read it") as err:
        load_config(str(tmp_path))
    assert "chmod 600" in err.value.hint


def test_an_unreachable_database_is_exit_6_and_names_it_without_its_password(tmp_path, capsys):
    from fleet_services import free_port

    database = f"postgresql://orchestrator:d-pw-456@127.0.0.1:{free_port()}/orchestrator"
    _write(tmp_path, _fleet_toml(database=database))
    assert main(["--home", str(tmp_path), "runs"]) == 6
    err = capsys.readouterr().err
    assert "the state database postgresql://orchestrator:***@127.0.0.1" in err and "cannot be reached" in err
    assert "d-pw-456" not in err and "start PostgreSQL" in err


def test_commands_of_a_fleet_refuse_a_host_without_one(config, capsys):
    assert main(["--home", str(config.home), "fleet", "status"]) == 2
    assert "has no [fleet] section" in capsys.readouterr().err
    assert main(["--home", str(config.home), "worker"]) == 2


def test_the_worker_writes_its_systemd_unit(tmp_path, postgresql, capsys):
    config = fleet_config(tmp_path / "home", postgresql.create_database("unit"), host="b1")
    unit = tmp_path / "orchestrate-worker.service"
    assert main(["--home", str(config.home), "worker", "--unit", str(unit), "--concurrency", "2"]) == 0
    text = unit.read_text()
    assert f"--home {config.home}" in text and "worker --concurrency 2" in text and "Restart=on-failure" in text
    assert "TimeoutStopSec=infinity" in text  # a warm shutdown waits for the builds


# --- placement ----------------------------------------------------------------------------------
def test_why_a_run_waits():
    now = time.time()
    hosts = [Host("small", ("linux",), 8, 32768, now), Host("old", ("windows",), 64, 1 << 20, now - 3600)]
    assert why_unplaceable(Needs("linux", 2, 4096), hosts, now) is None
    assert "needs 32 vCPU / 131072 MiB and the largest linux host, small, has 8 vCPU" in why_unplaceable(
        Needs("linux", 32, 131072), hosts, now)
    assert "no running build host has the label 'windows'" in why_unplaceable(Needs("windows", 2, 4096), hosts, now)
    assert "no build host of the fleet is running" in why_unplaceable(Needs("linux", 1, 1), [], now)


def test_a_run_whose_host_died_twice_is_not_dispatched_a_third_time():
    assert after_host_gone({"dispatches": 1}, "h", 20)[0] == "again"
    verdict, message = after_host_gone({"dispatches": MAX_DISPATCHES}, "h", 20)
    assert verdict == "fail" and "already dispatched 2 times" in message


# --- who builds a run ---------------------------------------------------------------------------
@pytest.fixture
def fleet_state_store(tmp_path, postgresql):
    config = fleet_config(tmp_path / "home", postgresql.create_database("f" + os.urandom(5).hex()), host="a")
    return config, StateStore.for_config(config)


def _queued(config, state, **template) -> str:
    from orchestrator.core.document import load_document

    loaded = load_document(dumps(linux_template(**template)), "t.json", {}, {})
    return fleet.submit(config, state, loaded, "t", None, None, {}).run_id


def test_a_submitted_run_no_host_can_take_is_recorded_with_why(fleet_state_store):
    config, state = fleet_state_store
    fleet_state.register_host(state, "a", ("linux",), 2, 4096, 1)
    run = state.run(_queued(config, state, vmProfile={"vmSize": "Standard_D32s_v5"}))
    assert run["run_state"] == "Running" and run["run_sub_state"] == "Queued" and run["host"] is None
    assert "needs 32 vCPU" in run["message"] and "a, has 2 vCPU" in run["message"]
    assert run["published_at"] is None  # no message is out: a host that can take it sends it


def test_a_submission_with_the_broker_away_is_kept_queued(fleet_state_store):
    config, state = fleet_state_store
    fleet_state.register_host(state, "a", ("linux",), 2, 4096, 1)
    with pytest.raises(EnvironmentProblem, match="broker amqp://orchestrator:\\*\\*\\*@127.0.0.1:9") as err:
        _queued(config, state)
    assert "is recorded Queued" in err.value.hint and err.value.exit_code == 6
    [run] = fleet_state.unpublished(state)
    assert "broker could not be reached" in run["message"]


def test_two_hosts_claiming_one_run_at_once_one_wins(fleet_state_store):
    config, state = fleet_state_store
    for host in ("a", "b"):
        fleet_state.register_host(state, host, ("linux",), 2, 4096, 1)
    with pytest.raises(EnvironmentProblem):
        _queued(config, state)  # recorded; the broker is away
    [run] = fleet_state.unpublished(state)
    verdicts: dict[str, str] = {}
    barrier = threading.Barrier(2)

    def take(host: str) -> None:
        barrier.wait()
        verdicts[host] = fleet_state.claim(state, run["id"], host, os.getpid(), None)[0]

    threads = [threading.Thread(target=take, args=(h,)) for h in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(verdicts.values()) == ["busy", "claimed"]
    winner = next(h for h, v in verdicts.items() if v == "claimed")
    assert state.run(run["id"])["host"] == winner and state.run(run["id"])["dispatches"] == 1


def test_the_runs_of_a_host_that_stopped_answering_go_back_to_the_queue(fleet_state_store):
    config, state = fleet_state_store
    fleet_state.register_host(state, "a", ("linux",), 2, 4096, 1)
    fleet_state.register_host(state, "dead", ("linux",), 2, 4096, 1)
    with pytest.raises(EnvironmentProblem):
        _queued(config, state)
    [run] = fleet_state.unpublished(state)
    assert fleet_state.claim(state, run["id"], "dead", 1, None)[0] == "claimed"
    with state.immediate() as db:  # its heartbeat is old
        db.execute("UPDATE fleet_hosts SET heartbeat_at = ? WHERE name = 'dead'", (time.time() - STALE_SECONDS - 5,))
    said: list[str] = []
    me = Host("a", ("linux",), 2, 4096, time.time())
    fleet.dispatch_round(config, state, me, said.append)  # the broker is away: released, not yet sent
    again = state.run(run["id"])
    assert again["host"] is None and again["run_sub_state"] == "Queued" and again["run_state"] == "Running"
    assert "build host dead stopped answering" in again["message"]
    assert said == [f"run {run['id']}: its host dead stopped answering: dispatched again"]
    # taken and lost once more: it fails, and says why
    assert fleet_state.claim(state, run["id"], "dead", 1, None)[0] == "claimed"
    fleet.dispatch_round(config, state, me, said.append)
    ended = state.run(run["id"])
    assert ended["run_state"] == "Failed" and "already dispatched 2 times" in ended["message"]


def test_a_queued_run_is_canceled_at_once(fleet_state_store, capsys):
    config, state = fleet_state_store
    fleet_state.register_host(state, "b", ("linux",), 2, 4096, 1)
    run_id = _queued(config, state, vmProfile={"vmSize": "Standard_D32s_v5"})
    assert main(["--home", str(config.home), "cancel", run_id]) == 0
    assert f"{run_id}: canceled while queued" in capsys.readouterr().out
    run = state.run(run_id)
    assert run["run_state"] == "Canceled" and "before a build host took it" in run["message"]
    assert fleet_state.claim(state, run_id, "b", 1, None)[0] == "ended"  # a late message builds nothing


def test_logs_of_a_run_on_another_host_come_from_the_database(fleet_state_store, tmp_path, capsys):
    from orchestrator.effects.log_shipping import LogShipper

    config, state = fleet_state_store
    fleet_state.register_host(state, "elsewhere", ("linux",), 2, 4096, 1)
    with pytest.raises(EnvironmentProblem):
        _queued(config, state)
    [run] = fleet_state.unpublished(state)
    assert fleet_state.claim(state, run["id"], "elsewhere", 1, None)[0] == "claimed"
    state.update_run(run["id"], log_path="/nonexistent/on/this/host/customization.log")
    written = tmp_path / "customization.log"  # the file on the building host
    written.write_text("2026-12-03T00:00:00.000Z [orchestrator] first line\n")
    with LogShipper(state, run["id"], written):
        with open(written, "a") as log:
            log.write("2026-12-03T00:00:01.000Z [packer] second line\n")
        state.update_run(run["id"], run_state="Succeeded")
    assert main(["--home", str(config.home), "logs", "-f", run["id"]]) == 0
    assert capsys.readouterr().out == written.read_text()
