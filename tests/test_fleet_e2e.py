"""A fleet on this machine, of real parts: PostgreSQL and RabbitMQ from Debian started by the
test on 127.0.0.1, two `orchestrate worker` processes with data homes of their own (capacity for
one build each), a third data home that only submits (as a laptop would), real Packer and QEMU
builds. The broker's consumer_timeout is set shorter than a build, so a run that outlasts it is
handed out a second time: it must not be built twice."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import BASE, fleet_config
from helpers import dumps, linux_template
from orchestrator.effects.proc import run_processes
from orchestrator.effects.state import StateStore
from test_service_e2e import WAIT, wait_for

pytestmark = pytest.mark.integration
CONSUMER_TIMEOUT_MS = 20_000  # shorter than any build here


@pytest.fixture(scope="module")
def broker():
    from fleet_services import rabbitmq_available, start_rabbitmq

    if not rabbitmq_available():
        if os.environ.get("CI"):
            pytest.fail("RabbitMQ is not installed: scripts/test-services.sh installs it", pytrace=False)
        pytest.skip("RabbitMQ is not installed (scripts/test-services.sh installs it)")
    base = Path(tempfile.mkdtemp(prefix="orchestrator-test-rmq-"))
    node = start_rabbitmq(base, consumer_timeout_ms=CONSUMER_TIMEOUT_MS)
    yield node
    node.stop()
    shutil.rmtree(base, ignore_errors=True)


class WorkerProcess:
    def __init__(self, config, log: Path) -> None:
        self.config, self.log = config, log
        self.start()

    def start(self) -> None:
        with open(self.log, "a") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "--home", str(self.config.home),
                                          "worker"], stdout=err, stderr=err, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    @property
    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def fleet(broker, postgresql, base_image, tmp_path_factory):
    """Two workers (w1, w2) and a submitting data home (client), one database and one broker."""
    database = postgresql.create_database("fleet")
    root = tmp_path_factory.mktemp("fleet")
    capacity = {"capacity_cpus": 2, "capacity_memory_mib": 4096}
    homes = {}
    for name in ("w1", "w2", "client"):
        homes[name] = fleet_config(root / name, database, host=name, broker_url=broker.url(),
                                   **(capacity if name != "client" else {}),
                                   **({"serve_images": "127.0.0.1:0"} if name == "w1" else {}))
        if name != "client":  # [capacity] for the worker, as its own configuration says
            with open(homes[name].config_file, "a") as file:
                file.write("\n[capacity]\ncpus = 2\nmemory_mib = 4096\n")
    from orchestrator.effects.catalog import Catalog

    # the base image is w1's alone: w2 fetches it from w1's image server by its sha256
    Catalog(StateStore.for_config(homes["w1"]), homes["w1"].images_dir).import_image(base_image, *BASE, "2026.1.0")
    workers = {name: WorkerProcess(homes[name], root / f"{name}.log") for name in ("w1", "w2")}
    state = StateStore.for_config(homes["client"])
    try:
        wait_for("both workers' heartbeats", lambda: _running(workers) and _alive(state) >= {"w1", "w2"})
        yield homes, workers, state, root
    finally:
        for worker in workers.values():
            worker.stop()


def _running(workers) -> bool:
    """Fails at once, with its log, when a worker has ended instead of waiting for its heartbeat."""
    for name, worker in workers.items():
        if worker.proc.poll() is not None:
            pytest.fail(f"worker {name} ended (exit {worker.proc.returncode}):\n{worker.text[-3000:]}", pytrace=False)
    return True


def _alive(state) -> set[str]:
    from orchestrator.effects import fleet_state

    now = time.time()
    return {h.name for h in fleet_state.hosts(state) if h.alive(now)}


def _client(homes, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", "--home", str(homes["client"].home), *args],
                          capture_output=True, text=True, timeout=WAIT)


def _template(root: Path, name: str, *commands: str, **properties) -> Path:
    path = root / f"{name}.json"
    properties = {"vmProfile": {"vmSize": "Standard_B1s"}, **properties}
    path.write_text(dumps(linux_template(customize=[
        {"type": "Shell", "name": "marker", "inline": [f"echo {name}-MARKER", *commands]}], **properties)))
    return path


def _submit(homes, root: Path, name: str, *commands: str) -> str:
    created = _client(homes, "template", "create", name, str(_template(root, name, *commands)))
    assert created.returncode == 0, created.stderr
    submitted = _client(homes, "run", name, "--no-wait", "--json")
    assert submitted.returncode == 0, submitted.stderr
    return json.loads(submitted.stdout)["runId"]


def _ended(state, run_id: str):
    run = state.run(run_id)
    return run if run["run_state"] not in ("Running", "Canceling") else None


def test_three_runs_on_two_workers_each_built_once(fleet):
    homes, workers, state, root = fleet
    ids = [_submit(homes, root, f"three{i}") for i in range(3)]
    # two build at once, one on each host; the third waits Queued for a free host
    building = wait_for("two runs building on two hosts", lambda: (
        {r["host"] for r in map(state.run, ids) if r["host"] and r["run_sub_state"] != "Queued"} == {"w1", "w2"}))
    assert building
    waiting = [r for r in map(state.run, ids) if r["host"] is None]
    assert len(waiting) == 1 and waiting[0]["run_sub_state"] == "Queued"
    status = _client(homes, "fleet", "status", "--json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert {h["name"]: len(h["runs"]) for h in shown["hosts"]} == {"w1": 1, "w2": 1}
    assert {h["name"]: h["inUse"]["cpus"] for h in shown["hosts"]} == {"w1": 1, "w2": 1}
    [linux] = [q for q in shown["queues"] if q["label"] == "linux"]
    assert linux["queued"] == 1 and linux["brokerMessages"] == 1 and shown["broker"]["reachable"]
    assert "not-used" not in status.stdout and homes["client"].fleet.broker_url.split(":")[2] not in status.stdout
    for run_id in ids:
        run = wait_for(f"run {run_id} to end", lambda: _ended(state, run_id))
        assert run["run_state"] == "Succeeded", run["message"]
        assert run["dispatches"] == 1  # taken once, built once
        [output] = state.outputs(run_id)
        assert output["properties"]["provisioningState"] == "Succeeded"
        vhd = Path(output["properties"]["artifactUri"].removeprefix("file://"))
        assert vhd.is_file() and vhd.is_relative_to(homes[run["host"]].home)
        assert output["properties"]["sha256"]
        # its log, shipped into the database as it grew, is the file its host wrote
        from orchestrator.effects.log_shipping import shipped
        chunks = [text for _, text in shipped(state, run_id)]
        assert chunks[-1] == "" and "".join(chunks) == Path(run["log_path"]).read_text()
    # w2 had no base image: its first build fetched it from w1 and verified it, and kept it
    [digest] = {json.loads(state.run(i)["fingerprint"])["source"]["sha256"] for i in ids}
    fetched = [i for i in ids if "fetched from host w1 and verified"
               in Path(state.run(i)["log_path"]).read_text()]
    assert [state.run(i)["host"] for i in fetched] == ["w2"]
    assert list(homes["w2"].images_dir.glob("*.qcow2")) == [homes["w2"].images_dir / f"{digest}.qcow2"]
    logs = workers["w1"].text + workers["w2"].text
    # each build outlasted the broker's consumer_timeout: no message was held that long (the run
    # is the database's once a worker records itself), so no channel was closed, no worker stopped
    assert "PRECONDITION_FAILED" not in logs
    assert all(worker.proc.poll() is None for worker in workers.values())
    shown = _client(homes, "runs", "--json")
    assert {r["id"]: r["host"] for r in json.loads(shown.stdout) if r["id"] in ids} == {
        r["id"]: r["host"] for r in map(state.run, ids)}


def test_a_run_no_host_can_take_waits_and_says_why(fleet):
    homes, workers, state, root = fleet
    big = _template(root, "big", vmProfile={"vmSize": "Standard_D32s_v5"})
    result = _client(homes, "build", str(big), "--no-wait", "--json")
    assert result.returncode == 0, result.stderr
    run = state.run(json.loads(result.stdout)["runId"])
    assert run["run_sub_state"] == "Queued" and run["host"] is None
    assert "needs 32 vCPU" in run["message"] and "has 2 vCPU" in run["message"]
    canceled = _client(homes, "cancel", run["id"])
    assert canceled.returncode == 0, canceled.stderr
    assert state.run(run["id"])["run_state"] == "Canceled"


def test_cancel_from_a_third_process_stops_the_build_on_its_worker(fleet):
    homes, workers, state, root = fleet
    run_id = _submit(homes, root, "cancelme", "echo SLOW-STARTED", "sleep 600")
    run = wait_for("the customizer on a worker", lambda: (
        (lambda r: r if r["host"] and r["run_sub_state"] == "Customizing" else None)(state.run(run_id))))
    result = _client(homes, "cancel", run_id)
    assert result.returncode == 0, result.stderr
    assert "signalled the build" in result.stdout + result.stderr
    ended = wait_for("the canceled run's end", lambda: _ended(state, run_id))
    assert ended["run_state"] == "Canceled"
    host_home = homes[run["host"]].home
    wait_for("its clean-up", lambda: not (host_home / "staging" / run_id).exists())
    assert run_processes(run_id) == []


def test_a_worker_killed_during_a_customizer_hands_its_run_to_the_other(fleet):
    homes, workers, state, root = fleet
    run_id = _submit(homes, root, "killed", "echo SLOW-STARTED", "sleep 25")
    run = wait_for("the customizer on a worker", lambda: (
        (lambda r: r if r["host"] and r["run_sub_state"] == "Customizing" else None)(state.run(run_id))))
    first, other = run["host"], ({"w1", "w2"} - {run["host"]}).pop()
    os.kill(workers[first].proc.pid, signal.SIGKILL)  # the worker's main process, as a crash would
    workers[first].proc.wait()
    home = str(homes[first].home).encode()
    wait_for("the build process to die with its worker",
             lambda: not any(b"fleet-build" in _cmdline(pid) and home in _cmdline(pid) for pid in _all_pids()))
    assert run_processes(run_id, host=first)  # its Packer and QEMU live on, orphaned, until it restarts
    done = wait_for("the run's end", lambda: _ended(state, run_id))
    assert done["run_state"] == "Succeeded", done["message"]
    assert done["host"] == other and done["dispatches"] == 2
    workers[first].start()  # the killed host comes back: its recovery removes what it left
    wait_for("the restarted worker's sweep", lambda: f"run {run_id} (now on host {other}): its staging here removed"
             in workers[first].text)
    assert run_processes(run_id, host=first) == []
    assert not (homes[first].home / "staging" / run_id).exists()
    wait_for("its heartbeat", lambda: first in _alive(state))


def test_a_submission_while_the_broker_is_unreachable_is_kept_and_dispatched_later(fleet, tmp_path):
    homes, workers, state, root = fleet
    _template(root, "later")
    away = fleet_config(tmp_path / "away", homes["client"].database_url, host="away",
                        broker_url="amqp://orchestrator:s3cret-pw@127.0.0.1:9/builds")
    result = subprocess.run([sys.executable, "-m", "orchestrator", "--home", str(away.home), "build",
                             str(root / "later.json"), "--no-wait"], capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 6, result.stderr
    assert "amqp://orchestrator:***@127.0.0.1:9/builds" in result.stderr and "s3cret-pw" not in result.stderr
    [run] = [r for r in state.runs("later") if r["run_state"] == "Running"]
    assert f"run {run['id']} is recorded Queued" in result.stderr
    # a worker, which reaches the broker, sends it at its next heartbeat: a host takes it
    assert wait_for("a host to take it", lambda: state.run(run["id"])["host"]) in ("w1", "w2")
    _client(homes, "cancel", run["id"])
    assert wait_for("its end", lambda: _ended(state, run["id"]))["run_state"] in ("Canceled", "Succeeded")


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""

