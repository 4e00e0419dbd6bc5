"""The service's pieces against a real SQLite state and real processes: the run state machine,
admission by capacity, recovery of dead runs, stored templates, schema versions, redaction,
progress views. The real-build paths (cancel in each sub-state, SIGKILL, a queue of two) are
in test_service_e2e.py."""
from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import threading
import time

import pytest

from helpers import dumps, linux_template
from orchestrator.cli import main
from orchestrator.core.redact import Redactor, scrub, secure_parameter_values, url_secrets
from orchestrator.effects.proc import RUN_ENV, RUN_HOST_ENV, Stop, process_start_time, run_processes
from orchestrator.effects.state import StateStore
from orchestrator.effects.state_schema import SCHEMA_VERSION
from orchestrator.errors import Canceled, EnvironmentProblem, UsageError
from orchestrator.service import templates
from orchestrator.service.progress import Event, Reporter
from orchestrator.service.queue import Capacity, Demand, LocalAdmission
from orchestrator.service.recovery import recover
from orchestrator.service.runs import AlreadyCanceling, RunEnded, Runs, next_state
from orchestrator.views import open_view


@pytest.fixture
def config(any_config):
    """The state tests run on SQLite and on PostgreSQL (a fleet's database)."""
    return any_config


def _log(config):
    return lambda rid: config.runs_dir / rid / "customization.log"


def _start(state, config, name="t", pid=None):
    pid = pid or os.getpid()
    return state.start_run(name, None, _log(config), pid=pid, pid_start_time=process_start_time(pid))


# --- the state machine ------------------------------------------------------------------------
@pytest.mark.parametrize("current,event,expected", [
    ("Running", "cancel", "Canceling"), ("Running", "succeed", "Succeeded"), ("Running", "partial", "PartiallySucceeded"),
    ("Running", "fail", "Failed"), ("Running", "canceled", "Canceled"), ("Canceling", "canceled", "Canceled"),
    ("Canceling", "succeed", "Succeeded"), ("Canceling", "fail", "Failed"),
    ("Running", "process-gone", "Failed"), ("Canceling", "process-gone", "Canceled"),
    ("Canceling", "cancel-undone", "Running")])
def test_transitions(current, event, expected):
    assert next_state(current, event) == expected


@pytest.mark.parametrize("ended", ["Succeeded", "PartiallySucceeded", "Failed", "Canceled"])
@pytest.mark.parametrize("event", ["cancel", "succeed", "fail", "process-gone"])
def test_an_ended_run_takes_no_event(ended, event):
    with pytest.raises(RunEnded, match=f"has already ended \\({ended}\\)"):
        next_state(ended, event, "r1")


def test_a_second_cancel_is_told_so():
    with pytest.raises(AlreadyCanceling, match="already being canceled"):
        next_state("Canceling", "cancel", "r1")


def test_transitions_are_applied_to_the_database(config):
    state = StateStore.for_config(config.ensure())
    runs = Runs(state)
    run_id = _start(state, config)
    runs.sub_state(run_id, "Customizing")
    assert runs.transition(run_id, "cancel") == "Canceling"
    assert state.run(run_id)["run_sub_state"] == "Customizing"  # the sub-state stays what it was
    assert runs.end(run_id, "canceled", "stopped") == "Canceled"
    row = state.run(run_id)
    assert row["end_time"] and row["pid"] is None and row["message"] == "stopped"
    assert runs.end(run_id, "succeed") == "Canceled"  # a later end does not overwrite the first
    runs.sub_state(run_id, "Distributing")
    assert state.run(run_id)["run_sub_state"] == "Customizing"
    with pytest.raises(UsageError, match="no run 'nope'"):
        runs.transition("nope", "cancel")


# --- admission --------------------------------------------------------------------------------
def test_runs_wait_in_fifo_order_for_capacity(config):
    state = StateStore.for_config(config.ensure())
    queue = LocalAdmission(state, Capacity(cpus=2, memory_mib=4096))
    first, second, third = (_start(state, config, f"t{i}") for i in range(3))
    small = lambda name: Demand(1, 1024, (f"template:{name}",))  # noqa: E731
    queue.admit(first, small("t0"), Stop(), lambda why: None)
    said: list[str] = []
    # the second fits beside the first; a third does not, and says why
    queue.admit(second, small("t1"), Stop(), said.append)
    assert said == []
    started = threading.Event()
    admitted = threading.Event()

    def third_run() -> None:
        queue.admit(third, small("t2"), Stop(), lambda why: (said.append(why), started.set()))
        admitted.set()

    thread = threading.Thread(target=third_run)
    thread.start()
    assert started.wait(10)
    assert not admitted.is_set()
    assert "2 run(s) building use 2/2 vCPU" in said[0]
    Runs(state).end(first, "succeed")  # its end gives its share back
    assert admitted.wait(10)
    thread.join()
    assert state.run(third)["admitted_at"] is not None


def test_a_later_smaller_run_does_not_overtake_the_first_in_line(config):
    state = StateStore.for_config(config.ensure())
    queue = LocalAdmission(state, Capacity(cpus=2, memory_mib=8192))
    first, big, small = (_start(state, config, f"t{i}") for i in range(3))
    queue.admit(first, Demand(1, 1024, ()), Stop(), lambda why: None)
    order: list[str] = []
    waiting = {big: threading.Event(), small: threading.Event()}

    def admit(run_id: str, cpus: int) -> None:
        queue.admit(run_id, Demand(cpus, 1024, ()), Stop(), lambda why: waiting[run_id].set())
        order.append(run_id)

    threads = [threading.Thread(target=admit, args=(big, 2))]
    threads[0].start()
    assert waiting[big].wait(10)  # the 2-vCPU run waits for the first
    threads.append(threading.Thread(target=admit, args=(small, 1)))
    threads[1].start()
    assert waiting[small].wait(10)  # the 1-vCPU run would fit beside the first, but is second in line
    assert order == []
    Runs(state).end(first, "succeed")
    threads[0].join(10)
    assert order == [big]  # the big one starts; the small one now waits for it (2 + 1 > 2)
    Runs(state).end(big, "succeed")
    threads[1].join(10)
    assert order == [big, small]


def test_two_runs_of_one_template_never_build_at_once(config):
    state = StateStore.for_config(config.ensure())
    queue = LocalAdmission(state, Capacity(cpus=64, memory_mib=1 << 20))
    first, second = _start(state, config, "web"), _start(state, config, "web")
    queue.admit(first, Demand(1, 512, ("template:web",)), Stop(), lambda why: None)
    stop = Stop()
    said: list[str] = []

    def give_up(why: str) -> None:
        said.append(why)
        stop.request()

    with pytest.raises(Canceled, match="canceled while queued"):
        queue.admit(second, Demand(1, 512, ("template:web",)), stop, give_up)
    assert f"run {first} writes the same output (template:web)" in said[0]


def test_a_run_larger_than_the_capacity_runs_alone(config):
    state = StateStore.for_config(config.ensure())
    queue = LocalAdmission(state, Capacity(cpus=1, memory_mib=512))
    run_id = _start(state, config)
    queue.admit(run_id, Demand(8, 32768, ()), Stop(), lambda why: pytest.fail(why))
    assert state.run(run_id)["admitted_at"] is not None


# --- recovery ---------------------------------------------------------------------------------
@pytest.fixture
def dead_pid():
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def test_recovery_ends_a_dead_run_and_its_orphans(config, dead_pid, tmp_path):
    state = StateStore.for_config(config.ensure())
    run_id = state.start_run("t", None, _log(config), pid=dead_pid, pid_start_time=12345)
    staging = config.home / "staging" / run_id
    (staging / "tmp").mkdir(parents=True)
    (staging / "disk.qcow2").write_bytes(b"x")
    vhd = tmp_path / "out" / "image.vhd"
    vhd.parent.mkdir()
    partial = vhd.with_name(f".image.vhd.part-{dead_pid}")
    partial.write_bytes(b"half")
    other = vhd.with_name(".image.vhd.part-1")  # another writer's: not this run's
    other.write_bytes(b"other")
    default = config.artifacts_dir / "t" / "vhd" / f"{run_id}.vhd"  # a VHD at its default place
    default_partial = default.with_name(f".{run_id}.vhd.part-{dead_pid}")
    default.parent.mkdir(parents=True)
    default_partial.write_bytes(b"half")
    # its claims, as admission records them; it died before recording its staging
    state.update_run(run_id, claims=json.dumps([f"file:{vhd}", f"file:{default}"]))
    host = {RUN_HOST_ENV: config.fleet.host} if config.fleet else {}  # a fleet host's processes carry its name
    orphan = subprocess.Popen(["sleep", "600"], env={**os.environ, RUN_ENV: run_id, **host})
    try:
        # until the child has exec'd, /proc shows the parent's environment: wait for that, not a time
        deadline = time.monotonic() + 30
        while run_processes(run_id) != [orphan.pid] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert run_processes(run_id) == [orphan.pid]
        said: list[str] = []
        assert recover(config, state, said.append) == [run_id]
        assert orphan.wait(timeout=30) == -9
    finally:
        orphan.kill()
    row = state.run(run_id)
    assert row["run_state"] == "Failed" and "ended without recording a result" in row["message"]
    assert "1 orphaned process(es) stopped" in row["message"]
    assert not staging.exists() and not partial.exists() and other.exists() and not default_partial.exists()
    assert said and run_id in said[0]
    assert recover(config, state) == []  # once


def test_recovery_leaves_live_runs_alone(config):
    state = StateStore.for_config(config.ensure())
    run_id = _start(state, config)
    assert recover(config, state) == []
    assert state.run(run_id)["run_state"] == "Running"


def test_a_dead_canceling_run_ends_canceled(config, dead_pid):
    state = StateStore.for_config(config.ensure())
    run_id = state.start_run("t", None, _log(config), pid=dead_pid, pid_start_time=1)
    Runs(state).transition(run_id, "cancel")
    recover(config, state)
    assert state.run(run_id)["run_state"] == "Canceled"


# --- stored templates -------------------------------------------------------------------------
def test_template_create_is_refused_for_another_body_unless_update(config):
    state = StateStore.for_config(config.ensure())
    assert templates.create(state, "web", "{}", {}, None)[0] == "created"
    assert templates.create(state, "web", "{}", {}, None)[0] == "unchanged"
    with pytest.raises(UsageError, match="exists with another body") as err:
        templates.create(state, "WEB", "{ }", {}, None)
    assert "--update" in err.value.hint
    assert templates.create(state, "web", "{ }", {}, None, update=True)[0] == "updated"
    assert templates.get(state, "web").body == "{ }"
    with pytest.raises(UsageError, match="not a template name"):
        templates.create(state, "../x", "{}", {}, None)


def test_two_creates_of_one_name_at_once_store_one_body(config):
    StateStore.for_config(config.ensure())
    results: list[object] = []
    barrier = threading.Barrier(8)

    def create(body: str) -> None:
        barrier.wait()
        try:
            results.append(templates.create(StateStore.for_config(config), "race", body, {}, None)[0])
        except UsageError as exc:
            results.append(exc.message)

    threads = [threading.Thread(target=create, args=(f'{{"n": {i}}}',)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("created") == 1
    assert sum("exists with another body" in str(r) for r in results) == 7


def test_template_delete_refuses_while_a_run_is_active_and_keeps_ownership(config):
    state = StateStore.for_config(config.ensure())
    templates.create(state, "web", "{}", {}, None)
    run_id = _start(state, config, "web")
    with pytest.raises(UsageError, match="has a run in progress"):
        templates.delete(config, state, "web")
    state.set_output(run_id, "vhd", "VHD", "Succeeded", "/srv/images/web.vhd", "file:///srv/images/web.vhd")
    Runs(state).end(run_id, "succeed")
    (config.runs_dir / run_id).mkdir(parents=True)
    assert templates.delete(config, state, "web") == [run_id]
    assert state.run(run_id) is None and not (config.runs_dir / run_id).exists()
    assert state.wrote_artifact("/srv/images/web.vhd")  # still ours: it may be overwritten by a later run
    with pytest.raises(UsageError, match="no stored template 'web'"):
        templates.delete(config, state, "web")


def test_template_verbs_on_the_command_line(config, tmp_path, capsys):
    path = tmp_path / "t.json"
    path.write_text(dumps(linux_template()))
    home = ["--home", str(config.home)]
    assert main([*home, "template", "create", "web", str(path)]) == 0
    assert "template web created" in capsys.readouterr().out
    path.write_text(dumps(linux_template(buildTimeoutInMinutes=45)))
    assert main([*home, "template", "create", "web", str(path)]) == 2
    assert "exists with another body" in capsys.readouterr().err
    assert main([*home, "template", "show", "web", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["name"] == "web" and shown["properties"]["lastRunStatus"] is None
    assert main([*home, "template", "list"]) == 0 and "web" in capsys.readouterr().out
    assert main([*home, "run", "nope"]) == 2
    assert "no stored template 'nope'" in capsys.readouterr().err
    assert main([*home, "template", "delete", "web"]) == 0
    assert main([*home, "template", "show", "web"]) == 2


def test_a_run_of_another_template_is_refused(config, capsys):
    state = StateStore.for_config(config.ensure())
    run_id = _start(state, config, "web")
    Runs(state).end(run_id, "succeed")
    assert main(["--home", str(config.home), "status", run_id, "--template", "db"]) == 2
    assert f"run {run_id} belongs to template 'web', not 'db'" in capsys.readouterr().err
    assert main(["--home", str(config.home), "cancel", run_id]) == 2
    assert "has already ended (Succeeded)" in capsys.readouterr().err


# --- schema -----------------------------------------------------------------------------------
def test_a_database_from_a_newer_orchestrator_is_refused_untouched(config, capsys):
    config.ensure()
    if config.fleet:
        import psycopg
        StateStore.for_config(config)
        with psycopg.connect(config.database_url, autocommit=True) as db:
            db.execute("UPDATE orchestrator_schema SET version = %s", (SCHEMA_VERSION + 1,))
            before = db.execute("SELECT count(*) FROM information_schema.columns").fetchone()
    else:
        with sqlite3.connect(config.db_path) as db:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        before = config.db_path.read_bytes()
    with pytest.raises(EnvironmentProblem, match="made by a newer orchestrator") as err:
        StateStore.for_config(config)
    assert err.value.exit_code == 6
    assert main(["--home", str(config.home), "runs"]) == 6
    assert "newer orchestrator" in capsys.readouterr().err
    if config.fleet:
        with psycopg.connect(config.database_url, autocommit=True) as db:
            assert db.execute("SELECT count(*) FROM information_schema.columns").fetchone() == before
            assert db.execute("SELECT version FROM orchestrator_schema").fetchone()[0] == SCHEMA_VERSION + 1
    else:
        assert config.db_path.read_bytes() == before


def test_a_version_1_database_is_migrated(config):
    if config.fleet:
        pytest.skip("a version 1 database is an SQLite file (PostgreSQL came with version 8)")
    config.ensure()
    with sqlite3.connect(config.db_path) as db:
        db.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, template_name TEXT NOT NULL, template_path TEXT, "
                   "build_digest TEXT, run_state TEXT NOT NULL, run_sub_state TEXT, message TEXT, source TEXT, "
                   "resolved_version TEXT, log_path TEXT, start_time REAL NOT NULL, end_time REAL, pid INTEGER)")
        db.execute("CREATE TABLE run_outputs (run_id TEXT, name TEXT, kind TEXT, artifact_id TEXT, "
                   "artifact_uri TEXT, provisioning_state TEXT, details TEXT, PRIMARY KEY (run_id, name))")
        db.execute("INSERT INTO runs (id, template_name, run_state, start_time) VALUES ('old', 't', 'Succeeded', 1)")
        db.execute("INSERT INTO run_outputs VALUES ('old', 'vhd', 'VHD', '/x.vhd', NULL, 'Succeeded', '{}')")
    state = StateStore(config.db_path)
    assert state.run("old")["run_state"] == "Succeeded" and state.run("old")["claims"] is None
    assert state.wrote_artifact("/x.vhd")
    with sqlite3.connect(config.db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --- redaction --------------------------------------------------------------------------------
def test_secrets_are_redacted_by_value_and_by_shape():
    sas = "sv=2022-11-02&ss=b&srt=o&sp=r&se=2027-01-01&sig=Zm9vYmFyYmF6cXV4cXV1eA%3D%3D"
    document = {"parameters": {"password": {"type": "securestring"}, "cfg": {"type": "secureObject"},
                               "plain": {"type": "string"}},
                "resources": [{"properties": {"customize": [{"scriptUri": f"https://acct.blob/x.sh?{sas}"}]}}]}
    given = {"PASSWORD": "correct-horse", "cfg": {"token": "tok-123456"}, "plain": "visible"}
    assert secure_parameter_values(document, given) == ["correct-horse", "token", "tok-123456"]
    redact = Redactor.of(secure_parameter_values(document, given) + url_secrets(document))
    text = f"pw correct-horse tok-123456 visible https://acct.blob/x.sh?{sas} https://u:hunter22@h/x"
    shown = redact(text)
    for secret in ("correct-horse", "tok-123456", "Zm9vYmFyYmF6cXV4cXV1eA", "hunter22"):
        assert secret not in shown
    assert "visible" in shown and "https://acct.blob/x.sh?***" in shown
    assert scrub("https://h/x?a=1&sig=abc&token=def") == "https://h/x?a=1&sig=***&token=***"
    assert redact.data({"k": ["correct-horse"]}) == {"k": ["***"]}


# --- progress views ---------------------------------------------------------------------------
def test_plain_and_json_progress():
    events = [Event("phase", "fetching files", 0.5, "r1", "Building"), Event("log", "a line", 0.6, "r1", source="x"),
              Event("step", "step 1 of 2: install", 1.0, "r1", "Customizing", 1, 2)]
    plain = io.StringIO()
    sink, close = open_view("plain", plain)
    for event in events:
        sink(event)
    close()
    assert plain.getvalue() == "[   0.5s] fetching files\n"
    lines = io.StringIO()
    sink, close = open_view("json", lines)
    for event in events:
        sink(event)
    parsed = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert [p["kind"] for p in parsed] == ["phase", "log", "step"]
    assert parsed[2] == {"kind": "step", "what": "step 1 of 2: install", "elapsed": 1.0, "runId": "r1",
                         "runSubState": "Customizing", "step": 1, "steps": 2}


def test_the_reporter_redacts_what_it_reports():
    seen: list[Event] = []
    reporter = Reporter(seen.append, Redactor.of(["s3cr3t-value"]))
    reporter.line("customizer:x", "the value is s3cr3t-value")
    reporter.note("https://u:pw12@host/x")
    assert [e.what for e in seen] == ["the value is ***", "https://u:***@host/x"]


def test_the_live_view_draws_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    sink, close = open_view("auto", out)
    sink(Event("phase", "booting the build VM (tcg)", 1.0, "r1", "Building"))
    sink(Event("step", "step 3 of 7: installNginx", 2.0, "r1", "Customizing", 3, 7))
    sink(Event("log", "Setting up nginx", 2.1, "r1", source="customizer:installNginx"))
    close()
    assert "booting the build VM (tcg)" in out.getvalue()


def test_plan_and_render_output_mask_secure_parameters(tmp_path, config, capsys):
    deployment = {"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
                  "contentVersion": "1.0.0.0", "parameters": {"token": {"type": "securestring"}},
                  "resources": [{"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-02-14",
                                 "name": "t", "location": "local", "properties": linux_template(customize=[
                                     {"type": "Shell", "name": "s",
                                      "inline": ["[concat('login --token ', parameters('token'))]"]}])["properties"]}]}
    path = tmp_path / "d.json"
    path.write_text(dumps(deployment))
    home = ["--home", str(config.home)]
    for verb in (["plan", "--json"], ["plan"], ["render"], ["validate", "--json"]):
        assert main([*home, *verb, str(path), "-p", "token=tok-SECRET-9876"]) == 0
        out = capsys.readouterr()
        assert "tok-SECRET-9876" not in out.out + out.err, verb
    assert main([*home, "plan", "--json", str(path), "-p", "token=tok-SECRET-9876"]) == 0
    assert "login --token ***" in capsys.readouterr().out


def test_the_console_copy_is_redacted_and_complete(tmp_path):
    from orchestrator.effects.runlog import RedactedCopy

    source, dest = tmp_path / "console.log", tmp_path / "records.log"
    with RedactedCopy(source, dest, Redactor.of(["hunter2-secret"]), interval=0.01):
        with open(source, "ab") as writer:  # QEMU's side: appends as the guest prints
            writer.write(b"boot line\r\nthe password is hunter2-sec")
            writer.flush()
            writer.write(b"ret\nlast line without newline")
    assert dest.read_bytes() == b"boot line\r\nthe password is ***\nlast line without newline\n"
    assert oct(dest.stat().st_mode & 0o777) == "0o600"


def test_packers_temporaries_go_where_a_socket_path_fits(tmp_path, monkeypatch):
    """Packer's plugin sockets live in its TMPDIR: a long data home gets a TMPDIR in $TMPDIR,
    and a long $TMPDIR one in /tmp (a socket path has at most 107 bytes)."""
    import tempfile

    from orchestrator.config import Config
    from orchestrator.pipeline.staging import Staging

    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    config = Config(home=deep / "home").ensure()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))  # a $TMPDIR too long to hold them
    staging = Staging.create(config, "20261202-000000-abcdef12")
    try:
        assert str(staging.temp).startswith("/tmp/orchestrator-20261202-000000-abcdef12-")
        assert len(str(staging.temp / "packer-plugin1234567890")) < 108
    finally:
        staging.remove()
    assert not staging.temp.exists()


def test_a_long_lived_store_keeps_the_wal_between_its_calls(tmp_path):
    """The REST API's store holds one idle connection: closing a call's own connection is then
    never closing the last one, which in SQLite checkpoints and deletes the WAL (and makes the
    next call's open wait). A one-shot store (the CLI) lets SQLite tidy up as before."""
    from orchestrator.effects import api_state

    wal = tmp_path / "state.db-wal"
    once = StateStore(tmp_path / "state.db")
    assert api_state.create_token(once, "a", "reader", "/")  # a write: the WAL has frames
    assert not wal.exists()  # the last connection closed: checkpointed and deleted
    served = StateStore(tmp_path / "state.db")
    served.hold_open()
    assert api_state.create_token(served, "b", "reader", "/")
    assert wal.exists() and [t.name for t in api_state.tokens(served)] == ["a", "b"]
    served.hold_open()  # twice is once
    assert served._held is not None
