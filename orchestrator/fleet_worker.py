"""`orchestrate worker`: this build host's Celery worker. It consumes its labels' queues, one run
per build slot; each run is built by `orchestrate fleet-build RUN` in a process of its own (the
same engine, logs, staging, cancel and recovery as on one host), which dies with the worker: a
worker killed with SIGKILL leaves its run to be dispatched to another host, never built on
behind the fleet's back. A heartbeat in the database says the host lives; each beat also
dispatches what waits and takes back the runs of hosts that stopped answering.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from typing import Any, Callable, Iterator

from orchestrator.config import Config
from orchestrator.core.fleet import HEARTBEAT_SECONDS, Host, Needs, queue_name
from orchestrator.effects import fleet_state
from orchestrator.effects.broker import BUILD_TASK, CANCEL_COMMAND, celery_app, worker_name
from orchestrator.effects.proc import process_start_time
from orchestrator.effects.state import StateStore
from orchestrator.errors import EnvironmentProblem, OrchestratorError
from orchestrator.service import fleet
from orchestrator.service.queue import capacity
from orchestrator.service.recovery import recover

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """The build process ends (SIGKILL) when the worker does: a run whose worker died is
    dispatched again, so it must not go on building here."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the worker died before prctl took effect
        os._exit(1)


class Worker:
    def __init__(self, config: Config, concurrency: int, say: Callable[[str], None]) -> None:
        assert config.fleet is not None
        self.config = config.ensure()
        self.say = say
        self.concurrency = concurrency
        self.state = StateStore.for_config(self.config)
        cap = capacity(self.config)
        self.me = Host(config.fleet.host, config.fleet.labels, cap.cpus, cap.memory_mib, time.time())
        self.builds: dict[str, subprocess.Popen] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.started = process_start_time(os.getpid())
        self.app: Any = None
        self.consuming = True
        self.draining = False
        self.threads: list[threading.Thread] = []

    # --- the worker's life ----------------------------------------------------------------------
    def run(self) -> int:
        self._recover()
        with self._image_server() as images_url:
            fleet_state.register_host(self.state, self.me.name, self.me.labels, self.me.cpus, self.me.memory_mib,
                                      os.getpid(), images_url)
            if images_url:
                self.say(f"serving this host's base images to the fleet at {images_url}")
            return self._take_runs()

    @contextlib.contextmanager
    def _image_server(self) -> Iterator[str | None]:
        """[fleet] serve_images: this host's images/ for the hosts that lack a run's base image."""
        assert self.config.fleet is not None
        if self.config.fleet.serve_images is None:
            yield None
            return
        from orchestrator.effects.image_transfer import ImageServer

        try:
            server = ImageServer(self.config.images_dir, self.config.fleet.serve_images)
        except OSError as exc:
            address = ":".join(map(str, self.config.fleet.serve_images))
            raise EnvironmentProblem(f"cannot serve images on {address}: {exc.strerror}",
                                     hint="choose a free port in [fleet] serve_images") from None
        with server:
            yield self.config.fleet.advertised_images_url(server.port)

    def _take_runs(self) -> int:
        beat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        beat.start()
        app = celery_app(self.config)
        worker = self

        @app.task(name=BUILD_TASK)
        def build(run_id: str) -> None:
            worker.take(run_id)

        self.app = app

        self._control()
        from celery.platforms import SecurityWarning
        warnings.filterwarnings("ignore", category=SecurityWarning)  # a build host's worker is root by design (QEMU, libvirt)
        self.say(f"worker {worker_name(self.me.name)}: labels {list(self.me.labels)}, capacity {self.me.cpus} vCPU / "
                 f"{self.me.memory_mib} MiB, {self.concurrency} build slot(s), broker {fleet_state_label(self.config)}")
        try:
            app.Worker(hostname=worker_name(self.me.name), queues=[queue_name(label) for label in self.me.labels],
                       concurrency=self.concurrency, pool="threads", loglevel="INFO", without_mingle=True,
                       without_gossip=True, quiet=True, optimization="fair").start()
        finally:  # a warm shutdown (SIGTERM) waits for the builds; SIGKILL leaves them to the fleet
            self.draining = True
            for thread in list(self.threads):
                thread.join()
            self.stopping.set()
            fleet_state.leave(self.state, self.me.name)
        return 0

    def _recover(self) -> None:
        """Before taking runs: this host's runs whose build process died with an earlier worker
        go back to the fleet's queue (or end, the second time), their QEMU and staging removed."""
        for run in self.state.active_runs():
            if self.state.is_local(run):
                self._requeue_if_dead(run)
        recover(self.config, self.state, lambda line: self.say(f"recovered: {line}"))
        from orchestrator.service.recovery import sweep_host_leftovers

        for line in sweep_host_leftovers(self.config, self.state):
            self.say(line)

    def _requeue_if_dead(self, run: dict[str, Any]) -> None:
        from orchestrator.service.recovery import is_dead

        if is_dead(run):
            new = fleet_state.release_gone(self.state, run["id"], run["host"])
            if new:
                self.say(f"run {run['id']}: its build here ended with an earlier worker: "
                         + ("dispatched again" if new == "Running" else new))

    def _heartbeat(self) -> None:
        while not self.stopping.wait(HEARTBEAT_SECONDS):
            try:
                fleet_state.beat(self.state, self.me.name)
                fleet.dispatch_round(self.config, self.state, self.me, self.say)
            except OrchestratorError as exc:  # the database is away: the next beat tries again
                self.say(f"heartbeat: {exc.message}")

    def _control(self) -> None:
        from celery.worker.control import control_command

        worker = self

        @control_command(args=[("run_id", str)], signature="<run_id>")
        def orchestrator_cancel(panel: Any, run_id: str) -> dict[str, Any]:
            return {"ok": worker.signal_build(run_id)}

        assert orchestrator_cancel.__name__ == CANCEL_COMMAND

    # --- one run ------------------------------------------------------------------------------
    def take(self, run_id: str) -> None:
        """A message for run `run_id`. The build starts in a thread of its own and the message is
        acknowledged once the run is recorded as this host's: from then on the database, not the
        broker, holds it (a message held for a 16-hour build would outlive RabbitMQ's
        consumer_timeout, which closes the channel and stops the worker). A host that dies
        mid-build is found by its stale heartbeat instead (`service.fleet.dispatch_round`)."""
        from celery.exceptions import Reject

        with self.lock:
            if len(self.builds) >= self.concurrency:  # a message that came before the pause took effect
                raise Reject("every build slot is busy", requeue=True)
        for _ in range(2):
            verdict, run = fleet_state.claim(self.state, run_id, self.me.name, os.getpid(), self.started)
            if verdict in ("missing", "ended"):
                self.say(f"run {run_id}: {verdict}; nothing to build")
                return
            if verdict == "busy":  # handed out again (a timeout, a redelivery): it has its host
                self.say(f"run {run_id} is being built by {run['host']}: not built twice")
                return
            if verdict == "gone":
                if fleet_state.release_gone(self.state, run_id, run["host"]) != "Running":
                    return
                self.say(f"run {run_id}: its host {run['host']} stopped answering; built here instead")
                continue
            needs = Needs.of(json.loads(run["needs"]))
            if not self.me.can_take(needs):  # sent by a host that thought it fitted: back, for a larger one
                fleet_state.unclaim(self.state, run_id, f"queued: host {self.me.name} is too small for it "
                                    f"({needs.cpus} vCPU / {needs.memory_mib} MiB); waiting for a larger one")
                return
            started = threading.Event()
            thread = threading.Thread(target=self._build, args=(run_id, started), name=f"build-{run_id}", daemon=True)
            self.threads = [t for t in self.threads if t.is_alive()] + [thread]
            thread.start()
            started.wait()
            return

    def _build(self, run_id: str, started: threading.Event) -> None:
        argv = [sys.executable, "-m", "orchestrator", "--home", str(self.config.home)]
        if self.config.config_file:
            argv += ["--config", str(self.config.config_file)]
        argv += ["fleet-build", run_id]
        self.say(f"run {run_id}: building")
        # started from this thread, which lives as long as the build: PDEATHSIG follows the thread
        process = subprocess.Popen(argv, preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL)
        with self.lock:
            self.builds[run_id] = process
            full = len(self.builds) >= self.concurrency
        if full:
            self._consume(False)
        started.set()
        try:
            signalled = False
            while True:
                try:
                    code = process.wait(timeout=HEARTBEAT_SECONDS)
                    break
                except subprocess.TimeoutExpired:  # a cancel whose control message did not reach us
                    if not signalled and (self.state.run(run_id) or {}).get("run_state") == "Canceling":
                        signalled = self.signal_build(run_id)
        finally:
            with self.lock:
                self.builds.pop(run_id, None)
                free = len(self.builds) < self.concurrency
            if free and not self.draining:
                self._consume(True)
        run = self.state.run(run_id) or {}
        self.say(f"run {run_id}: {run.get('run_state')} (exit {code}) {run.get('message') or ''}".rstrip())

    def _consume(self, on: bool) -> None:
        """Takes messages from this host's queues again, or pauses: a message a busy worker holds
        would wait unacknowledged, and RabbitMQ closes the channel of a consumer that does."""
        if self.app is None or on == self.consuming:
            return
        self.consuming = on
        for label in self.me.labels:
            if on:
                self.app.control.add_consumer(queue_name(label), destination=[worker_name(self.me.name)])
            else:
                self.app.control.cancel_consumer(queue_name(label), destination=[worker_name(self.me.name)])

    def signal_build(self, run_id: str) -> bool:
        with self.lock:
            process = self.builds.get(run_id)
        if process is None or process.poll() is not None:
            return False
        process.send_signal(signal.SIGTERM)  # the build's own cancel: clean-up as on one host
        return True


def fleet_state_label(config: Config) -> str:
    from orchestrator.core.redact import scrub

    assert config.fleet is not None
    return scrub(config.fleet.broker_url)
