"""Issue 11's bullets that only the real-build tests checked, now checked fast with real
components (a real SQLite state, real `orchestrate` processes, real signals): `template show`
in AIB's shape after a run, a cancel in the CLI (first, second, of an ended run), `logs -f`
ending with its run, the live view's content, a timeout while distributing."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from orchestrator.cli import main
from orchestrator.effects.proc import Stop, process_start_time
from orchestrator.effects.state import StateStore
from orchestrator.errors import BuildTimeout
from orchestrator.service import templates
from orchestrator.service.progress import Event
from orchestrator.service.runs import Runs
from orchestrator.views import LiveView, open_view

AIB_KEYS = {"startTime", "endTime", "runState", "runSubState", "message"}


def _start(state, config, name, pid):
    run_id = state.start_run(name, None, lambda rid: config.runs_dir / rid / "customization.log",
                             pid=pid, pid_start_time=process_start_time(pid))
    (config.runs_dir / run_id).mkdir(parents=True)
    return run_id


def test_template_show_prints_last_run_status_in_aibs_shape_and_the_run_outputs(config, capsys):
    state = StateStore(config.db_path)
    templates.create(state, "web", "{}", {}, None)
    run_id = _start(state, config, "web", os.getpid())
    Runs(state).sub_state(run_id, "Distributing")
    state.set_output(run_id, "vhd", "VHD", "Succeeded", "/srv/web.vhd", "file:///srv/web.vhd")
    home = ["--home", str(config.home)]
    assert main([*home, "template", "show", "web", "--json"]) == 0
    running = json.loads(capsys.readouterr().out)["properties"]["lastRunStatus"]
    assert set(running) == AIB_KEYS and running["endTime"] is None
    assert (running["runState"], running["runSubState"]) == ("Running", "Distributing")
    Runs(state).end(run_id, "partial", "1 of 2 distribution target(s) failed")
    assert main([*home, "template", "show", "web", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    status = shown["properties"]["lastRunStatus"]
    assert set(status) == AIB_KEYS and status["runState"] == "PartiallySucceeded"
    assert status["startTime"].endswith("Z") and status["endTime"].endswith("Z")
    assert status["message"] == "1 of 2 distribution target(s) failed"
    [output] = shown["runOutputs"]
    assert output["name"] == "vhd"
    assert output["properties"]["provisioningState"] == "Succeeded"
    assert output["properties"]["artifactUri"] == "file:///srv/web.vhd"
    assert main([*home, "template", "show", "web"]) == 0
    text = capsys.readouterr().out
    assert "lastRunStatus: PartiallySucceeded (Distributing)" in text and "vhd: Succeeded file:///srv/web.vhd" in text


@pytest.fixture
def build_process(tmp_path):
    """A process standing in for a run's orchestrate: it reports each SIGTERM on stdout."""
    code = ("import signal, sys\n"
            "signal.signal(signal.SIGTERM, lambda *a: (print('TERM', flush=True)))\n"
            "print('ready', flush=True)\n"
            "while True: signal.pause()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    yield proc
    proc.kill()
    proc.wait()


def test_cancel_then_a_second_cancel_then_a_cancel_of_the_ended_run(config, capsys, build_process):
    state = StateStore(config.db_path)
    run_id = _start(state, config, "web", build_process.pid)
    home = ["--home", str(config.home)]
    assert main([*home, "cancel", run_id]) == 0
    assert f"cancel requested for {run_id} (Canceling)" in capsys.readouterr().out
    assert build_process.stdout.readline() == "TERM\n"  # the run's process got the signal
    assert main([*home, "status", run_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lastRunStatus"]["runState"] == "Canceling"
    assert main([*home, "cancel", run_id, "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["ok"] and second["runState"] == "Canceling" and "already being canceled" in second["message"]
    assert build_process.stdout.readline() == "TERM\n"  # signalled again
    Runs(state).end(run_id, "canceled", "the build was canceled")
    assert main([*home, "cancel", run_id]) == 2
    assert "has already ended (Canceled)" in capsys.readouterr().err
    assert main([*home, "cancel", run_id, "--json"]) == 2
    error = json.loads(capsys.readouterr().out)
    assert not error["ok"] and error["error"]["exitCode"] == 2 and "already ended" in error["error"]["message"]


def _follow(config, run_id):
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "--home", str(config.home), "logs", "-f", run_id],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_logs_follow_prints_lines_as_they_come_and_ends_when_the_run_ends(config):
    state = StateStore(config.db_path)
    run_id = _start(state, config, "web", os.getpid())  # this test is the run's process
    log_path = config.runs_dir / run_id / "customization.log"
    follow = _follow(config, run_id)
    try:
        with open(log_path, "a") as log:
            log.write("first line\n")
            log.flush()
            assert follow.stdout.readline() == "first line\n"  # seen while the run is still Running
            assert follow.poll() is None
            log.write("last line\n")
        Runs(state).end(run_id, "succeed")
        rest, err = follow.communicate(timeout=60)
    finally:
        follow.kill()
    assert follow.returncode == 0, err
    assert rest == "last line\n"


def test_logs_follow_ends_when_the_runs_process_dies(config):
    gone = subprocess.Popen(["sleep", "600"])
    state = StateStore(config.db_path)
    run_id = _start(state, config, "web", gone.pid)
    (config.runs_dir / run_id / "customization.log").write_text("before the kill\n")
    follow = _follow(config, run_id)
    try:
        assert follow.stdout.readline() == "before the kill\n"
        gone.kill()
        gone.wait()
        rest, err = follow.communicate(timeout=60)
    finally:
        follow.kill()
        gone.kill()
    assert follow.returncode == 0, err
    row = state.run(run_id)
    assert row["run_state"] == "Failed" and "ended without recording a result" in row["message"]  # recovered


def test_the_live_view_shows_phase_step_elapsed_time_and_last_line():
    out = io.StringIO()
    view = LiveView(out)
    try:
        view.take(Event("phase", "booting the build VM (tcg)", 1.0, "r1", "Building"))
        view.take(Event("step", "step 3 of 7: installNginx", 2.0, "r1", "Customizing", 3, 7))
        view.take(Event("log", "Setting up nginx", 2.1, "r1", source="customizer:installNginx"))
        drawn = view._render().plain
    finally:
        view.close()
    assert drawn.startswith("r1 Customizing  step 3 of 7: installNginx  00:0")
    assert drawn.endswith("Setting up nginx")
    plain = io.StringIO()  # not a terminal: `auto` is plain lines
    sink, close = open_view("auto", plain)
    sink(Event("phase", "booting the build VM (tcg)", 1.0, "r1", "Building"))
    close()
    assert plain.getvalue() == "[   1.0s] booting the build VM (tcg)\n"


def test_a_timeout_while_distributing_is_a_timeout(config):
    from orchestrator.pipeline.distribute_phase import distribute_all
    from tests.store_helpers import plan_for

    stop = Stop()
    stop.request("timeout")
    with pytest.raises(BuildTimeout, match="timed out after buildTimeoutInMinutes while distributing"):
        distribute_all(lambda target: pytest.fail("no target starts after the deadline"),
                       plan_for([{"type": "VHD", "runOutputName": "one"}]), stop)
    assert not list(config.artifacts_dir.rglob("*.vhd"))
