"""Walks one build: plan -> fetch -> (reuse?) -> build -> distribute, recording every step.

A short sequencer: each phase lives in its own module (pipeline/fetch.py, pipeline/build.py,
distribute/). The engine raises OrchestratorError subclasses and reports progress through a
callback; printing and exit codes belong to the CLI.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from orchestrator.config import Config
from orchestrator.core import model as m
from orchestrator.core.buildable import build_problems
from orchestrator.core.plan import BuildPlan, make_plan
from orchestrator.distribute import DistributeJob, distributor_for
from orchestrator.effects.accel import choose_accelerator
from orchestrator.effects.catalog import Catalog
from orchestrator.effects.downloads import DownloadCache, display_url
from orchestrator.effects.files import write_atomic
from orchestrator.effects.hostpolicy import HostPolicy, template_problems
from orchestrator.effects.proc import process_start_time
from orchestrator.effects.runlog import RunLog
from orchestrator.effects.state import StateStore
from orchestrator.errors import Canceled, OrchestratorError, TemplateInvalid
from orchestrator.pipeline.build import BuildVm, render_build, run_build
from orchestrator.pipeline.fetch import fetch_all
from orchestrator.pipeline.sources import resolve as resolve_source
from orchestrator.pipeline.store_phase import prepare as prepare_store

Progress = Callable[[str], None]


@dataclass
class BuildResult:
    run_id: str
    run_state: str
    outputs: list[dict[str, Any]]
    log_path: Path
    reused_run: str | None = None


class Engine:
    def __init__(self, config: Config) -> None:
        self.config = config.ensure()
        self.state = StateStore(config.db_path)
        self.catalog = Catalog(self.state, config.images_dir)
        self.cache = DownloadCache(config.cache_dir)

    def run_dir(self, run_id: str) -> Path:
        return self.config.runs_dir / run_id

    def plan(self, template: m.ImageTemplate, name: str, policy: HostPolicy) -> BuildPlan:
        """The plan, or every reason this host will not build the template (with JSON paths)."""
        problems = build_problems(template)
        problems += template_problems(template, policy, self.state.wrote_artifact)
        if problems:
            raise TemplateInvalid(problems, f"{name} (for `orchestrate build`)")
        return make_plan(template, resolve_source(template.source, self.config, self.state, template.location), name)

    def build(self, template: m.ImageTemplate, name: str, template_text: str, template_path: str | None,
              progress: Progress = lambda s: None, force: bool = False,
              cancel: threading.Event | None = None) -> BuildResult:
        policy = HostPolicy.of(self.config, Path(template_path).parent if template_path else None)
        plan = self.plan(template, name, policy)  # refuses before a run is recorded
        cancel = cancel or threading.Event()
        run_id = self.state.start_run(name, template_path, lambda rid: self.run_dir(rid) / "customization.log")
        work = self.run_dir(run_id)
        work.mkdir(mode=0o700, parents=True)
        log = RunLog(work / "customization.log")
        self.state.update_run(run_id, pid=os.getpid(), pid_start_time=process_start_time(os.getpid()),
                              source=plan.source.description,
                              resolved_version=plan.source.resolved_version)
        deadline = time.monotonic() + plan.timeout_minutes * 60
        restore = _install_cancel_handlers(cancel)
        vm: BuildVm | None = None
        try:
            write_atomic(work / "template.json", template_text)
            write_atomic(work / "plan.json", json.dumps(shown_plan(plan), indent=2))
            for warning in template.warnings:  # what AIB would ignore or coerce, as validate said it
                log.write("orchestrator", f"{warning.severity}: {warning.path}: {warning.message}")
            log.write("orchestrator", f"run {run_id}: {name}, source {plan.source.description}, "
                      f"{plan.cpus} vCPU / {plan.memory_mib} MiB ({plan.vm_size}), disk {plan.disk_size_mib} MiB, "
                      f"timeout {plan.timeout_minutes} min")
            self._sub_state(run_id, "Building", progress, "fetching customizer files")
            fetched = fetch_all(plan, self.cache, self.config, policy, log, cancel, deadline)
            digest = plan.digest(fetched.digests)
            self.state.update_run(run_id, build_digest=digest)
            reused = None if force else self._reuse(plan, run_id, digest, log, progress)
            if reused:
                return reused
            prepare_store(self.config, self.state, template, plan, run_id, work / "packer-output" / "disk.qcow2",
                          log, progress, cancel, self.state.wrote_artifact)  # pools, uses, checks: before boot

            accel, why = choose_accelerator(self.config.accelerator, self.config.home / "accelerator.json",
                                            Path(plan.source.path), self.config.qemu_system)
            log.write("orchestrator", f"accelerator: {accel} ({why})")
            plan = fit_to_host(plan, log)
            rendered, vm = render_build(plan, work, run_id, accel, fetched.paths, self.config.vnc)
            self._sub_state(run_id, "Building", progress, f"booting the build VM ({accel})")
            run_build(plan, self.config, work, rendered, vm, log, deadline, cancel,
                      self._step_reporter(run_id, progress, rendered))

            self._sub_state(run_id, "Distributing", progress, "distributing")
            for target in plan.targets:
                if cancel.is_set():
                    raise Canceled("the build was canceled while distributing")
                distributor_for(target.kind).distribute(DistributeJob(
                    self.config, self.state, plan, target, run_id, vm.disk, log, progress, cancel,
                    self.state.wrote_artifact))
            shutil.rmtree(work / "packer-output", ignore_errors=True)
            self.state.finish_run(run_id, "Succeeded", "")
            log.write("orchestrator", "Succeeded")
            return BuildResult(run_id, "Succeeded", self.state.outputs(run_id), log.path)
        except OrchestratorError as exc:
            state = "Canceled" if isinstance(exc, Canceled) else "Failed"
            log.write("orchestrator", f"{state}: {exc.message}")
            self.state.finish_run(run_id, state, exc.message)
            for target in plan.targets:
                if not any(o["name"] == target.run_output_name for o in self.state.outputs(run_id)):
                    self.state.set_output(run_id, target.run_output_name, target.kind, state)
            raise
        except BaseException as exc:
            self.state.finish_run(run_id, "Failed", f"internal error: {exc!r}")
            log.write("orchestrator", f"internal error: {exc!r}")
            raise
        finally:
            if vm is not None:
                vm.discard_key()
                if vm.kept:
                    log.write("orchestrator", f"the run's SSH key is kept with the build VM's disk: {vm.key}")
            restore()
            log.close()

    def _step_reporter(self, run_id: str, progress: Progress, rendered) -> Callable[[str], None]:
        customizers = [b.source for b in rendered.provisioners if b.source.startswith("customizer:")]
        order = list(dict.fromkeys(customizers))

        def on_source(source: str) -> None:
            if source.startswith("customizer:"):
                position = order.index(source) + 1
                self._sub_state(run_id, "Customizing", progress,
                                f"customizer {source.split(':', 1)[1]!r} ({position}/{len(order)})")
            elif source.startswith("validation:"):
                self._sub_state(run_id, "Validating", progress, f"validation {source.split(':', 1)[1]!r}")
            elif source == "generalize":
                self._sub_state(run_id, "Customizing", progress, "generalizing (deprovision)")
            elif source == "shutdown":
                progress("shutting down the build VM")

        return on_source

    def _reuse(self, plan: BuildPlan, run_id: str, digest: str, log: RunLog,
               progress: Progress) -> BuildResult | None:
        """An earlier run with the same digest, if each of its artifacts is still what it recorded."""
        previous = self.state.last_success(plan.name, digest)
        if previous is None:
            return None
        outputs = self.state.outputs(previous["id"], internal=True)
        if len(outputs) != len(plan.targets):
            return None
        for output in outputs:
            verdict = distributor_for(output["type"]).reusable(output)
            if verdict.why:
                log.write("orchestrator", f"run output {output['name']!r} of run {previous['id']}: {verdict.why}")
            if not verdict.ok:
                log.write("orchestrator", "not up to date: building again")
                return None
        for output in outputs:
            props = output["properties"]
            extra = {k: v for k, v in props.items() if k not in ("artifactId", "artifactUri", "provisioningState")}
            self.state.set_output(run_id, output["name"], output["type"], "Succeeded",
                                  props["artifactId"], props["artifactUri"], {**extra, "reusedFromRun": previous["id"]})
        note = f"up to date: nothing changed since run {previous['id']}; its outputs are reused (--force rebuilds)"
        log.write("orchestrator", note)
        progress(note)
        self.state.finish_run(run_id, "Succeeded", note)
        return BuildResult(run_id, "Succeeded", self.state.outputs(run_id), log.path, reused_run=previous["id"])

    def _sub_state(self, run_id: str, sub_state: str, progress: Progress, what: str) -> None:
        self.state.update_run(run_id, run_sub_state=sub_state)
        progress(what)


def shown_plan(plan: BuildPlan) -> dict[str, Any]:
    """The plan as files and output show it: download URLs without credentials or query."""
    data = plan.to_dict()
    for step in data["steps"]:
        if step.get("download"):
            step["download"]["url"] = display_url(step["download"]["url"])
    return data


def host_resources() -> tuple[int, int]:
    """(CPUs, MiB of memory) this host can give a build VM."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return cpus, memory


def fit_to_host(plan: BuildPlan, log: RunLog) -> BuildPlan:
    """An Azure size may ask for more than this host has: QEMU would fail or crawl. The VM gets
    at most the host's CPUs and three quarters of its memory; the build's identity (digest)
    stays that of the template."""
    host_cpus, host_memory = host_resources()
    cpus = min(plan.cpus, host_cpus)
    memory = min(plan.memory_mib, host_memory * 3 // 4)
    if (cpus, memory) == (plan.cpus, plan.memory_mib):
        return plan
    log.write("orchestrator", f"{plan.vm_size} asks for {plan.cpus} vCPU / {plan.memory_mib} MiB; this host has "
              f"{host_cpus} CPUs / {host_memory} MiB: the build VM gets {cpus} vCPU / {memory} MiB")
    return dataclasses.replace(plan, cpus=cpus, memory_mib=memory)


def _install_cancel_handlers(cancel: threading.Event) -> Callable[[], None]:
    """SIGTERM (orchestrate cancel) and SIGINT (Ctrl-C) stop the build cleanly."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, frame: object) -> None:
        cancel.set()

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
