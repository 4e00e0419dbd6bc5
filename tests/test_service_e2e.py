"""The service with real builds (Packer, QEMU under TCG, a real HTTP server on 127.0.0.1):
cancel in every sub-state, SIGKILL and recovery, a capacity queue, live logs, redaction.

Each test starts `orchestrate` as its own process and waits for what it does (a request to
the test's server, a line in the run's log, a file a wrapper writes): conditions, never a
fixed sleep. Cancel during a customizer is in test_build_e2e.py.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from helpers import dumps, linux_template
from orchestrator.effects.proc import run_processes
from orchestrator.effects.state import StateStore
from orchestrator.errors import ExitCode

pytestmark = pytest.mark.integration
WAIT = 600.0  # seconds a real build step may take on a loaded TCG host


def _env(home: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, ORCHESTRATOR_HOME=str(home), **extra)


def _cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                          env=_env(home, **env), timeout=1800)


class Started:
    """An `orchestrate` process whose output goes to files (a pipe nobody reads would block it)."""

    def __init__(self, home: Path, tmp: Path, name: str, *args: str, **env: str) -> None:
        self.out, self.err = tmp / f"{name}.out", tmp / f"{name}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "orchestrator", *args], stdout=out, stderr=err,
                                         env=_env(home, **env), stdin=subprocess.DEVNULL)

    def wait(self) -> int:
        return self.proc.wait(timeout=WAIT)

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_for(what: str, condition: Callable[[], object], timeout: float = WAIT, process: Started | None = None):
    """Waits until `condition()` is true (returns it); fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.proc.poll() is not None:
            value = condition()
            if value:
                return value
            pytest.fail(f"orchestrate ended ({process.proc.returncode}) before {what}: {process.stderr[-3000:]}")
        time.sleep(0.1)  # polling a condition, not waiting a guessed time
    pytest.fail(f"timed out waiting for {what}")


def stop_outside_a_transaction(process: Started, db_path: Path) -> None:
    """SIGSTOPs the process at a moment it holds no write lock on the state database (a queued
    run takes one four times a second): stopped inside one, it would block every command."""
    for _ in range(100):
        os.kill(process.proc.pid, signal.SIGSTOP)
        try:
            with sqlite3.connect(db_path, timeout=0.2, isolation_level=None) as db:
                db.execute("BEGIN IMMEDIATE")
                db.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:  # stopped holding the lock: let it go on, and again
            os.kill(process.proc.pid, signal.SIGCONT)
    pytest.fail("the queued run held the database's write lock every time")


def run_of(config, template_name: str, process: Started | None = None) -> dict:
    return wait_for(f"a run of {template_name}", lambda: (StateStore(config.db_path).runs(template_name) or [None])[0],
                    process=process)


def log_has(run: dict, text: str) -> Callable[[], bool]:
    path = Path(run["log_path"])
    return lambda: path.exists() and text in path.read_text(errors="replace")


def assert_cleaned_up(config, run_id: str) -> None:
    assert run_processes(run_id) == [], "a process of the run survived"
    assert not (config.home / "staging" / run_id).exists()
    assert not list(Path("/tmp").glob(f"orchestrator-{run_id}-*"))  # Packer's temporaries, if they were there
    assert not list(config.artifacts_dir.rglob("*.vhd")) and not list(config.artifacts_dir.rglob(".*part*"))


def canceled(config, home: Path, process: Started, run_id: str) -> dict:
    result = _cli(home, "cancel", run_id)
    assert result.returncode == 0, result.stderr
    assert f"cancel requested for {run_id} (Canceling)" in result.stdout
    assert process.wait() == ExitCode.CANCELED, process.stderr[-3000:]
    again = _cli(home, "cancel", run_id)  # a cancel of a finished run: a clear answer
    assert again.returncode == ExitCode.INVALID_INPUT and "has already ended (Canceled)" in again.stderr
    row = StateStore(config.db_path).run(run_id)
    assert row["run_state"] == "Canceled" and row["end_time"] is not None
    assert_cleaned_up(config, run_id)
    return row


# --- a blocking server: a download that waits until the test lets it go --------------------------
class _Blocking(http.server.SimpleHTTPRequestHandler):
    requested: threading.Event
    release: threading.Event

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.startswith("/block"):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"#")
            self.wfile.flush()
            type(self).requested.set()
            type(self).release.wait(WAIT)
            return
        super().do_GET()


@pytest.fixture
def blocking_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = type("Handler", (_Blocking,), {"requested": threading.Event(), "release": threading.Event()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    server.handle_error = lambda request, address: None  # a client that gives up on purpose
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        handler.release.set()
        server.shutdown()
        server.server_close()


SECRET = "Correct-Horse-Battery-42"
SIGNATURE = "c2VjcmV0LXNpZ25hdHVyZS1vZi1hLXNhcw%3D%3D"


def _deployment(properties: dict) -> dict:
    """An ARM deployment holding the image template, with a securestring parameter."""
    return {"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
            "contentVersion": "1.0.0.0",
            "parameters": {"adminSecret": {"type": "securestring"}},
            "resources": [{"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-02-14",
                           "name": "queued", "location": "local", "properties": properties}]}


def test_a_capacity_queue_cancel_while_queued_and_fetching_and_secrets_never_shown(
        tmp_path, imported_home, blocking_server):
    """Capacity 1: A holds it (its download blocks), B and C wait in FIFO order; C is canceled
    while queued (Canceling is visible meanwhile), A while fetching; B then starts by itself and
    succeeds. B is a stored template with a securestring and a SAS-signed scriptUri: neither
    appears in any file, record or output but the stored template."""
    root, url, server = blocking_server
    home = imported_home.home
    (home / "config.toml").write_text("[capacity]\ncpus = 1\n")
    (root / "hello.sh").write_text("#!/bin/sh\necho hello from a signed URL\n")
    blocker = tmp_path / "blocker.json"
    blocker.write_text(dumps(linux_template(customize=[
        {"type": "Shell", "name": "blocked", "scriptUri": f"{url}/block.sh"}])))
    signed = f"{url}/hello.sh?sv=2022-11-02&ss=b&sp=r&sig={SIGNATURE}"
    queued_props = linux_template(customize=[
        {"type": "Shell", "name": "useSecret", "inline": [
            "[concat('echo the secret is ', parameters('adminSecret'))]",
            "[concat('echo on the console ', parameters('adminSecret'), ' | sudo tee /dev/ttyS0')]"]},
        {"type": "Shell", "name": "signed", "scriptUri": signed}])["properties"]
    deployment = tmp_path / "queued.json"
    deployment.write_text(dumps(_deployment(queued_props)))
    created = _cli(home, "template", "create", "queued", str(deployment), "-p", f"adminSecret={SECRET}", "--json")
    assert created.returncode == 0, created.stderr
    third = tmp_path / "third.json"
    third.write_text(dumps(linux_template()))

    a = Started(home, tmp_path, "a", "build", str(blocker), "--name", "blocker")
    b = c = None
    try:
        assert server.requested.wait(WAIT), a.stderr
        run_a = run_of(imported_home, "blocker")
        assert StateStore(imported_home.db_path).run(run_a["id"])["run_sub_state"] == "Building"
        b = Started(home, tmp_path, "b", "run", "queued", "--progress", "json")
        run_b = run_of(imported_home, "queued", b)
        wait_for("B queued", log_has(run_b, "queued: 1 run(s) building use"), process=b)
        # once admitted a run builds at the lower CPU priority ([capacity] nice, 10); a queued one not yet
        assert (os.getpriority(os.PRIO_PROCESS, a.proc.pid), os.getpriority(os.PRIO_PROCESS, b.proc.pid)) == (10, 0)
        c = Started(home, tmp_path, "c", "build", str(third), "--name", "third")
        run_c = run_of(imported_home, "third", c)
        wait_for("C queued behind B", log_has(run_c, f"queued: 1 run(s) ahead ({run_b['id']})"), process=c)
        status = json.loads(_cli(home, "status", run_c["id"], "--json").stdout)["lastRunStatus"]
        assert (status["runState"], status["runSubState"]) == ("Running", "Queued")

        stop_outside_a_transaction(c, imported_home.db_path)  # C cannot act on the cancel yet
        try:
            result = _cli(home, "cancel", run_c["id"])
            assert result.returncode == 0, result.stderr
            shown = json.loads(_cli(home, "status", run_c["id"], "--json").stdout)["lastRunStatus"]
            assert shown["runState"] == "Canceling"
            second = _cli(home, "cancel", run_c["id"])
            assert second.returncode == 0 and "already being canceled" in second.stderr
        finally:
            os.kill(c.proc.pid, signal.SIGCONT)
        assert c.wait() == ExitCode.CANCELED, c.stderr
        row_c = StateStore(imported_home.db_path).run(run_c["id"])
        assert row_c["run_state"] == "Canceled" and "canceled while queued" in row_c["message"]

        row_a = canceled(imported_home, home, a, run_a["id"])
        assert "canceled while fetching" in row_a["message"], row_a["message"]
        # A's partial download is gone (B, admitted now, may be writing its own this moment)
        assert not list(imported_home.cache_dir.rglob(f"*.part-{a.proc.pid}"))

        assert b.wait() == 0, b.stderr[-3000:]
        assert not list(imported_home.cache_dir.rglob("*.part*"))
    finally:
        for process in (a, b, c):
            if process is not None:
                process.kill()
    store = StateStore(imported_home.db_path)
    row_b = store.run(run_b["id"])
    assert row_b["run_state"] == "Succeeded"
    assert row_b["admitted_at"] >= store.run(run_a["id"])["end_time"]  # it started when A gave the host back
    events = [json.loads(line) for line in b.stderr.splitlines() if line.startswith("{")]
    assert any(e["kind"] == "phase" and e.get("runSubState") == "Queued" for e in events)
    assert any(e["kind"] == "step" and e["what"] == "step 1 of 2: useSecret" for e in events)
    log = Path(row_b["log_path"]).read_text()
    assert "the secret is ***" in log and "hello from a signed URL" in log
    assert "no checkpoints for this run: the template has secure parameters" in log  # its disk is not kept
    console = Path(row_b["console_path"]).read_text(errors="replace")
    assert "on the console ***" in console  # the guest printed it there; the copy kept is masked

    outputs = [created.stdout, b.out.read_text(), b.stderr]
    for args in (("runs", "--json"), ("status", run_b["id"], "--json"), ("template", "show", "queued", "--json"),
                 ("logs", run_b["id"]), ("template", "show-runs", "queued")):
        result = _cli(home, *args)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout + result.stderr)
    secrets = (SECRET, SIGNATURE, "c2VjcmV0LXNpZ25hdHVyZS1vZi1hLXNhcw==")
    for text in outputs:
        assert not any(s in text for s in secrets), text[:2000]
    for path in home.rglob("*"):
        if path.is_file() and not path.name.startswith("state.db") and path.stat().st_size < 64 * 2**20:
            data = path.read_bytes()
            assert not any(s.encode() in data for s in secrets), path
    with sqlite3.connect(imported_home.db_path) as db:  # the stored template holds them, nothing else
        assert SECRET in db.execute("SELECT parameters FROM templates").fetchone()[0]
        for table in ("runs", "run_outputs"):
            dump = json.dumps([list(r) for r in db.execute(f"SELECT * FROM {table}")])
            assert not any(s in dump for s in secrets), table
    assert imported_home.db_path.stat().st_mode & 0o077 == 0


def test_cancel_while_booting(tmp_path, imported_home):
    path = tmp_path / "boot.json"
    path.write_text(dumps(linux_template()))
    build = Started(imported_home.home, tmp_path, "boot", "build", str(path), "--progress", "plain")
    try:
        run = run_of(imported_home, "boot", build)
        wait_for("the boot", lambda: "booting the build VM" in build.stderr, process=build)
        row = canceled(imported_home, imported_home.home, build, run["id"])
    finally:
        build.kill()
    assert "canceled during boot of the build VM" in row["message"], row["message"]


def test_cancel_while_generalizing(tmp_path, imported_home):
    override = "echo GENERALIZE-STARTED; sleep 600"
    path = tmp_path / "gen.json"
    path.write_text(dumps(linux_template(customize=[
        {"type": "Shell", "name": "override", "inline": [f"echo '{override}' > /tmp/DeprovisioningScript.sh"]}])))
    build = Started(imported_home.home, tmp_path, "gen", "build", str(path))
    try:
        run = run_of(imported_home, "gen", build)
        wait_for("the generalize step", log_has(run, "GENERALIZE-STARTED\n"), process=build)
        assert StateStore(imported_home.db_path).run(run["id"])["run_sub_state"] == "Customizing"
        row = canceled(imported_home, imported_home.home, build, run["id"])
    finally:
        build.kill()
    assert "canceled during generalize" in row["message"], row["message"]


def test_cancel_while_distributing_removes_the_half_written_vhd(tmp_path, imported_home):
    """A qemu-img on PATH that writes the VHD (under its temporary name) and then hangs: the
    cancel comes while the artifact is half done."""
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    ready = tmp_path / "converting"
    real = subprocess.run(["sh", "-c", "command -v qemu-img"], capture_output=True, text=True).stdout.strip()
    (wrappers / "qemu-img").write_text(f"""#!/bin/sh
case "$*" in
  *subformat=fixed*) {real} "$@" || exit $?; touch {ready}; exec sleep 600 ;;
esac
exec {real} "$@"
""")
    (wrappers / "qemu-img").chmod(0o755)
    path = tmp_path / "dist.json"
    path.write_text(dumps(linux_template()))
    build = Started(imported_home.home, tmp_path, "dist", "build", str(path),
                    PATH=f"{wrappers}:{os.environ['PATH']}")
    try:
        run = run_of(imported_home, "dist", build)
        wait_for("the VHD export", ready.exists, process=build)
        assert list(imported_home.artifacts_dir.rglob(".*.vhd.part-*"))  # the half-written VHD
        assert StateStore(imported_home.db_path).run(run["id"])["run_sub_state"] == "Distributing"
        row = canceled(imported_home, imported_home.home, build, run["id"])
    finally:
        build.kill()
    assert "canceled while distributing" in row["message"], row["message"]
    [output] = StateStore(imported_home.db_path).outputs(run["id"])
    assert output["properties"]["provisioningState"] == "Canceled"


def test_sigkill_during_a_customizer_is_recovered_by_the_next_command(tmp_path, imported_home):
    path = tmp_path / "killed.json"
    path.write_text(dumps(linux_template(customize=[
        {"type": "Shell", "name": "slow", "inline": ["echo SLOW-STARTED", "sleep 600"]}])))
    build = Started(imported_home.home, tmp_path, "killed", "build", str(path))
    try:
        run = run_of(imported_home, "killed", build)
        wait_for("the customizer", log_has(run, "SLOW-STARTED"), process=build)
        os.kill(build.proc.pid, signal.SIGKILL)
        build.proc.wait()
        assert run_processes(run["id"])  # Packer and QEMU live on, orphaned
    finally:
        build.kill()
    result = _cli(imported_home.home, "runs", "--json")
    assert result.returncode == 0, result.stderr
    assert f"recovered: run {run['id']} (killed): Failed" in result.stderr
    [shown] = [r for r in json.loads(result.stdout) if r["id"] == run["id"]]
    assert shown["lastRunStatus"]["runState"] == "Failed"
    assert "ended without recording a result" in shown["lastRunStatus"]["message"]
    assert_cleaned_up(imported_home, run["id"])
    assert "recovered by pid" in Path(run["log_path"]).read_text()
    images = _cli(imported_home.home, "image", "list", "--json")
    assert images.returncode == 0 and len(json.loads(images.stdout)) == 1  # the catalog is intact
    with sqlite3.connect(imported_home.db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    again = _cli(imported_home.home, "runs")
    assert "recovered" not in again.stderr  # once


def test_the_timeout_covers_downloads(tmp_path, imported_home, blocking_server):
    """buildTimeoutInMinutes (1) runs out while a download hangs: the run ends Failed by the
    timeout (exit 5), with the same clean-up as a cancel."""
    _, url, server = blocking_server
    (imported_home.home / "config.toml").write_text("[downloads]\nstall_timeout_seconds = 600\n")
    path = tmp_path / "late.json"
    path.write_text(dumps(linux_template(buildTimeoutInMinutes=1, customize=[
        {"type": "Shell", "name": "hangs", "scriptUri": f"{url}/block.sh"}])))
    build = Started(imported_home.home, tmp_path, "late", "build", str(path))
    try:
        assert server.requested.wait(WAIT)
        assert build.wait() == ExitCode.TIMEOUT, build.stderr
    finally:
        build.kill()
    [run] = StateStore(imported_home.db_path).runs()
    assert run["run_state"] == "Failed" and "timed out after buildTimeoutInMinutes" in run["message"]
    assert "block.sh" in run["message"]
    assert_cleaned_up(imported_home, run["id"])
    assert not list(imported_home.cache_dir.rglob("*.part*"))
