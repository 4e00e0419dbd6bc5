"""A fleet on this machine: PostgreSQL and RabbitMQ from Debian (started here on 127.0.0.1, as
the tests start them), workers with data homes of their own, each with capacity for one 1-vCPU
build, and a submitting data home. Prints, in one run:

- four small builds (bench_queue.py's template: Standard_B1ms, 1 vCPU, four customizers, a VHD)
  submitted at once to ONE worker, then to TWO: total wall time of each and the throughput ratio
  two/one (target >= 1.6 where the host's cores allow: two TCG guests on two cores share them);
- dispatch latency, submitted to admitted (the run's start_time to its admitted_at, from the
  database), of the fleet (submit, broker, worker, its build process) against the single-host
  queue (`orchestrate build` on one host), each on an idle host, three samples each (target: the
  fleet adds at most 1 s a run). Those runs are canceled once admitted.

Usage: .venv/bin/python bench/bench_fleet.py     (as root, after scripts/setup-host.sh and
       scripts/test-services.sh)
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE), str(ROOT / "tests")]

from orchestrator.config import Config, FleetConfig, default_home  # noqa: E402
from orchestrator.effects.catalog import Catalog, version_key  # noqa: E402
from orchestrator.effects.state import StateStore  # noqa: E402

from bench_build import PAGE, SCRIPT  # noqa: E402
from bench_queue import template  # noqa: E402
from fleet_services import start_postgresql, start_rabbitmq  # noqa: E402

ORCHESTRATE = [sys.executable, "-m", "orchestrator"]
BUILDS = 4


def fleet_home(path: Path, database: str, broker: str, host: str, worker: bool) -> Config:
    path.mkdir(parents=True)
    text = f'[fleet]\nbroker = "{broker}"\ndatabase = "{database}"\nhost = "{host}"\n'
    if worker:
        text += "\n[capacity]\ncpus = 1\nmemory_mib = 2048\n"  # one Standard_B1ms at a time
    (path / "config.toml").write_text(text)
    (path / "config.toml").chmod(0o600)
    return Config(home=path, fleet=FleetConfig(broker, database, host), config_file=path / "config.toml").ensure()


def wait_until(condition, timeout: float = 3600.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit("timed out")


def submit(home: Path, path: Path, name: str, env: dict) -> str:
    result = subprocess.run(ORCHESTRATE + ["--home", str(home), "build", str(path), "--name", name, "--force",
                                           "--no-wait", "--json"], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"submit failed: {result.stderr}")
    return json.loads(result.stdout)["runId"]


def ended(state: StateStore, ids: list[str]) -> bool:
    runs = [state.run(i) for i in ids]
    failed = [r for r in runs if r["run_state"] in ("Failed", "Canceled")]
    if failed:
        raise SystemExit(f"run {failed[0]['id']} {failed[0]['run_state']}: {failed[0]['message']}")
    return all(r["run_state"] == "Succeeded" for r in runs)


def main() -> int:
    records = StateStore(default_home() / "state.db").images("Debian", "debian-12", "12")
    if not records:
        print("no Debian 12 base image imported: run scripts/setup-host.sh first", file=sys.stderr)
        return 1
    base = max(records, key=lambda r: version_key(r.version)).path
    work = Path(tempfile.mkdtemp(prefix="orchestrator-bench-fleet-", dir="/var/tmp"))
    services = [Path(tempfile.mkdtemp(prefix=f"orchestrator-bench-{kind}-")) for kind in ("pg", "rmq")]
    postgresql = start_postgresql(services[0])  # each its own directory: they run as postgres / rabbitmq
    rabbitmq = start_rabbitmq(services[1])
    workers: dict[str, subprocess.Popen] = {}
    env = dict(os.environ, ORCHESTRATOR_ACCELERATOR="tcg", ORCHESTRATOR_PROOF="off")
    env.pop("ORCHESTRATOR_CONFIG", None)
    try:
        files = work / "files"
        files.mkdir()
        (files / "setup.sh").write_text(SCRIPT)
        (files / "page.html").write_text(PAGE)
        path = work / "t.json"
        path.write_text(json.dumps(template(files)))
        database, broker = postgresql.create_database("bench"), rabbitmq.url()
        homes = {name: fleet_home(work / name, database, broker, name, name != "client")
                 for name in ("w1", "w2", "client")}
        state = StateStore.for_config(homes["client"])
        Catalog(StateStore.for_config(homes["w1"]), homes["w1"].images_dir).import_image(Path(base), "Debian",
                                                                                          "debian-12", "12", "1")

        def start(name: str) -> None:
            log = open(work / f"{name}.log", "a")
            workers[name] = subprocess.Popen(ORCHESTRATE + ["--home", str(homes[name].home), "worker"], env=env,
                                             stdout=log, stderr=log, start_new_session=True)
            wait_until(lambda: any(h.name == name and h.alive(time.time()) for h in _hosts(state)), 120)

        def round_of(label: str) -> float:
            started = time.monotonic()
            ids = [submit(homes["client"].home, path, f"bench-{label}-{i}", env) for i in range(BUILDS)]
            wait_until(lambda: ended(state, ids))
            seconds = time.monotonic() - started
            hosts = sorted(state.run(i)["host"] for i in ids)
            print(f"{BUILDS} builds, {label}: {seconds:.1f} s (hosts {', '.join(hosts)})", flush=True)
            return seconds

        start("w1")
        one = round_of("one worker")
        start("w2")
        two = round_of("two workers")
        print(f"throughput: one worker {BUILDS * 3600 / one:.1f} builds/h, two {BUILDS * 3600 / two:.1f} builds/h; "
              f"ratio two/one {one / two:.2f} (target >= 1.6 where the cores allow; this host has "
              f"{os.cpu_count()} CPUs)", flush=True)

        def latency(submit_one, state_of) -> list[float]:
            samples = []
            for i in range(3):
                run_id, home = submit_one(i)
                st = state_of()
                run = wait_until(lambda: (lambda r: r if r["admitted_at"] else None)(st.run(run_id)), 600)
                samples.append(run["admitted_at"] - run["start_time"])
                subprocess.run(ORCHESTRATE + ["--home", str(home), "cancel", run_id], capture_output=True, env=env)
                wait_until(lambda: st.run(run_id)["run_state"] not in ("Running", "Canceling"), 600)
            return samples

        fleet_samples = latency(lambda i: (submit(homes["client"].home, path, f"lat-{i}", env), homes["client"].home),
                                lambda: state)
        single = work / "single"
        (single).mkdir()
        Catalog(StateStore(single / "state.db"), single / "images").import_image(Path(base), "Debian", "debian-12",
                                                                                  "12", "1")
        local: dict[str, subprocess.Popen] = {}

        def single_submit(i: int) -> tuple[str, Path]:
            proc = subprocess.Popen(ORCHESTRATE + ["--home", str(single), "build", str(path), "--name", f"lat-{i}",
                                                   "--force", "--progress", "none"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            st = StateStore(single / "state.db")
            run = wait_until(lambda: (st.runs(f"lat-{i}") or [None])[0], 120)
            local[run["id"]] = proc
            return run["id"], single

        single_samples = latency(single_submit, lambda: StateStore(single / "state.db"))
        for proc in local.values():
            proc.wait()
        f, s = statistics.median(fleet_samples), statistics.median(single_samples)
        print(f"dispatch latency (submitted to admitted), median of 3: fleet {f:.2f} s, single host {s:.2f} s; "
              f"the fleet adds {f - s:.2f} s a run (target <= 1 s); samples fleet "
              f"{[round(x, 2) for x in fleet_samples]}, single {[round(x, 2) for x in single_samples]}", flush=True)
        return 0
    finally:
        for proc in workers.values():
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in workers.values():
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        rabbitmq.stop()
        postgresql.stop()
        for directory in services:
            shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _hosts(state):
    from orchestrator.effects import fleet_state

    return fleet_state.hosts(state)


if __name__ == "__main__":
    sys.exit(main())
