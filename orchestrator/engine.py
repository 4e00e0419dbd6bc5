"""Walks one run: record -> queue -> fetch -> (reuse?) -> build -> distribute -> end.

A short sequencer: each phase lives in its own module (pipeline/, distribute/), the run state
machine and the queue in service/. The engine raises OrchestratorError subclasses and reports
progress through a Reporter; printing and exit codes belong to the fronts.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from orchestrator.config import Config
from orchestrator.core import model as m
from orchestrator.core.buildable import build_problems
from orchestrator.core.plan import BuildPlan, make_plan
from orchestrator.core.redact import Redactor
from orchestrator.distribute import DistributeJob
from orchestrator.effects.accel import choose_accelerator
from orchestrator.effects.catalog import Catalog
from orchestrator.effects.downloads import DownloadCache, display_url
from orchestrator.effects.files import write_atomic
from orchestrator.effects.hostpolicy import HostPolicy, template_problems
from orchestrator.effects.proc import (Stop, kill_run_processes, lower_priority, process_start_time, run_environment,
                                       stop_on_signals)
from orchestrator.effects.runlog import RedactedCopy, RunLog
from orchestrator.effects.state import StateStore
from orchestrator.core.fingerprint import digest_of, fingerprint_parts
from orchestrator.core.proof import ProofResult
from orchestrator.errors import (BuildFailed, BuildTimeout, Canceled, OrchestratorError, ProofFailed, TemplateInvalid,
                                 ValidationFailed)
from orchestrator.pipeline.build import BuildVm, render_build, run_build
from orchestrator.pipeline.checkpoints import CheckpointRun, check_resume
from orchestrator.pipeline.checkpoints import prepare as prepare_checkpoints
from orchestrator.pipeline.checkpoints import register as register_checkpoints
from orchestrator.pipeline.distribute_phase import distribute_all, stopped
from orchestrator.pipeline.fetch import fetch_all
from orchestrator.pipeline.reuse import adopt_outputs, reusable_run
from orchestrator.pipeline.sizing import fit_to_host
from orchestrator.pipeline.source_fetch import ensure_source
from orchestrator.pipeline.sources import resolve as resolve_source
from orchestrator.pipeline.staging import Staging
from orchestrator.pipeline.store_phase import prepare as prepare_store
from orchestrator.service.progress import Reporter
from orchestrator.service.queue import Admission, LocalAdmission, capacity, demand
from orchestrator.service.recovery import recover
from orchestrator.service.retention import prune_after_run
from orchestrator.service.runs import Runs


@dataclass
class BuildResult:
    run_id: str
    run_state: str
    outputs: list[dict[str, Any]]
    log_path: Path
    reused_run: str | None = None
    message: str = ""


class Engine:
    def __init__(self, config: Config, admission: Admission | None = None) -> None:
        self.config = config.ensure()
        self.state = StateStore.for_config(config)
        self.runs = Runs(self.state)
        self.catalog = Catalog(self.state, config.images_dir)
        self.cache = DownloadCache(config.cache_dir)
        self.admission = admission or LocalAdmission(self.state, capacity(config), reap=self.recover)

    def recover(self) -> list[str]:
        return recover(self.config, self.state)

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
              progress: Reporter | Callable[[str], None] | None = None, force: bool = False,
              cancel: Stop | None = None, template_sha256: str | None = None,
              proof: bool | None = None, resume: str | None = None, checkpoints: bool = True,
              run_id: str | None = None) -> BuildResult:
        """`proof`: boot and check the finished image before distributing it (None: as the
        configuration says, [proof] deploy). `resume`: a failed run whose checkpoints the build
        starts from; `checkpoints` False: no stored checkpoint is started from (one is still
        taken after each customizer). `run_id`: a run a fleet's worker took (recorded Queued
        when it was submitted) instead of a new one."""
        policy = HostPolicy.of(self.config, Path(template_path).parent if template_path else None)
        plan = self.plan(template, name, policy)  # refuses before a run is recorded
        resume_notes = check_resume(self.state, resume, name, template_sha256) if resume else []
        stop = cancel or Stop()
        reporter = progress if isinstance(progress, Reporter) else _text_reporter(progress)
        redact = reporter.redact = Redactor.of(template.secrets)
        self.recover()  # runs that died give back their share of the host first
        with stop_on_signals(stop):  # before the run is recorded: a cancel may come at once
            me = {"pid": os.getpid(), "pid_start_time": process_start_time(os.getpid())}
            if run_id is None:
                run_id = self.state.start_run(name, template_path, lambda rid: self.run_dir(rid) / "customization.log",
                                              template_sha256=template_sha256, **me)
            else:
                self.state.update_run(run_id, log_path=str(self.run_dir(run_id) / "customization.log"), **me)
            reporter.run_id = run_id
            records = self.run_dir(run_id)
            records.mkdir(mode=0o700, parents=True, exist_ok=True)  # a fleet run dispatched here again
            log = RunLog(records / "customization.log", redact, listener=reporter.line)
            run = _Run(run_id, plan, log, reporter, stop, records,
                       prove=self.config.proof_deploy if proof is None else proof,
                       resume=resume, use_checkpoints=checkpoints or bool(resume))
            for note in resume_notes:
                log.write("orchestrator", note)
            with run_environment(run_id, self.state.host):
                return self._run(run, template, template_text, policy, force)

    def _run(self, run: "_Run", template: m.ImageTemplate, template_text: str, policy: HostPolicy,
             force: bool) -> BuildResult:
        """The run's walk, its errors as the run's end, and its clean-up whatever happens."""
        redact, stop, log = run.reporter.redact, run.stop, run.log
        outcome: tuple[str, str] = ("fail", "internal error")
        try:
            result = self._walk(run, template, template_text, policy, force)
            outcome = (result.run_state, result.message)
            return result
        except OrchestratorError as exc:
            error = _as_stop(exc, stop, run.phase)
            error.message, error.hint = redact(error.message), error.hint and redact(error.hint)
            error.run_id, error.log_path = run.id, str(log.path)  # for the fronts' --json
            outcome = ("canceled" if isinstance(error, Canceled) else "fail", error.message)
            log.write("orchestrator", f"{'Canceled' if isinstance(error, Canceled) else 'Failed'}: {error.message}")
            if error is exc:
                raise
            raise error from None
        except BaseException as exc:
            outcome = ("fail", redact(f"internal error: {exc!r}"))
            log.write("orchestrator", outcome[1])
            raise
        finally:
            self._finish(run, outcome)

    def _walk(self, run: "_Run", template: m.ImageTemplate, template_text: str, policy: HostPolicy,
              force: bool) -> BuildResult:
        plan, log, stop, redact = run.plan, run.log, run.stop, run.reporter.redact
        self.state.update_run(run.id, source=plan.source.description, resolved_version=plan.source.resolved_version,
                              console_path=str(run.records / "console.log"))
        write_atomic(run.records / "template.json", redact(template_text))
        write_atomic(run.records / "plan.json", json.dumps(redact.data(shown_plan(plan)), indent=2))
        for warning in template.warnings:  # what AIB would ignore or coerce, as validate said it
            log.write("orchestrator", f"{warning.severity}: {warning.path}: {warning.message}")
        plan = run.plan = fit_to_host(plan, log)
        log.write("orchestrator", f"run {run.id}: {plan.name}, source {plan.source.description}, "
                  f"{plan.cpus} vCPU / {plan.memory_mib} MiB ({plan.vm_size}), disk {plan.disk_size_mib} MiB, "
                  f"timeout {plan.timeout_minutes} min")

        def waiting(why: str) -> None:
            log.write("orchestrator", why)
            run.reporter.phase("Queued", why)

        self.admission.admit(run.id, demand(plan, self.config, run.id), stop, waiting)
        # from here on, this process (its VHD conversion and hashing) and what it starts build at
        # the lower CPU priority: the REST API and the CLI answer at once beside it
        lower_priority(os.getpid(), self.config.build_nice)
        # buildTimeoutInMinutes counts from admission: downloads, build and distribution
        deadline = time.monotonic() + plan.timeout_minutes * 60
        run.timer = threading.Timer(plan.timeout_minutes * 60, stop.request, args=("timeout",))
        run.timer.daemon = True
        run.timer.start()
        run.staging = Staging.create(self.config, run.id)
        self.state.update_run(run.id, staging_dir=str(run.staging.root), temp_dir=str(run.staging.temp))
        self._phase(run, "Building", "fetching customizer files", "fetching files")
        ensure_source(plan, self.config, self.state, log, stop)  # a fleet host's missing base image
        fetched = fetch_all(plan, self.cache, self.config, policy, log, stop, deadline)
        parts = fingerprint_parts(plan, dict(fetched.digests))
        digest = digest_of(parts)
        self.state.update_run(run.id, build_digest=digest, fingerprint=json.dumps(parts))
        previous = None if force else reusable_run(self.state, plan, digest, log)
        if previous is not None:
            adopt_outputs(self.state, run.id, previous)
            note = f"up to date: nothing changed since run {previous['id']}; its outputs are reused (--force rebuilds)"
            log.write("orchestrator", note)
            run.reporter.note(note)
            return BuildResult(run.id, "Succeeded", self.state.outputs(run.id), log.path, previous["id"], note)
        accel, why = choose_accelerator(self.config.accelerator, self.config.home / "accelerator.json",
                                        Path(plan.source.path), self.config.qemu_system)
        checkpointing = prepare_checkpoints(self.config, self.state, plan, parts, run.id, run.staging, log,
                                            use_stored=run.use_checkpoints and not force, resume=run.resume,
                                            secrets=bool(template.secrets), accelerator=accel)
        disk = checkpointing.disk if checkpointing else run.staging.packer_output / "disk.qcow2"
        run.phase = "preparing the image store"
        prepare_store(self.config, self.state, template, plan, run.id, disk, log, run.reporter, stop,
                      self.state.wrote_artifact)  # pools, uses, checks: before boot
        log.write("orchestrator", f"accelerator: {accel} ({why})")
        try:
            self._build(run, plan, fetched, accel, disk, checkpointing, deadline)
        finally:  # the checkpoints taken before a failure are what a resume starts from
            if checkpointing:
                register_checkpoints(self.config, self.state, checkpointing, run.id, plan.name, log,
                                     run.vm.public_key if run.vm else "")
        self._prove(run, accel)
        self._phase(run, "Distributing", "distributing", "distributing")
        done = distribute_all(lambda target: DistributeJob(
            self.config, self.state, plan, target, run.id, run.vm.disk, log, run.reporter, stop,
            self.state.wrote_artifact), plan, stop, redact)
        event, message = done.outcome(plan)
        run.phase = "signing provenance"
        from orchestrator.pipeline.attest import attest_outputs  # the signing stack: only a build needs it

        attest_outputs(self.config, self.state, run.id, plan, fetched.digests, None, log)
        if run.vm.validation_failures:  # AIB: distributed, and still the run failed
            failed = ", ".join(f"{name!r} (exit {status})" for name, status in run.vm.validation_failures)
            raise ValidationFailed(f"validation {failed} failed; continueDistributeOnFailure is true, so the "
                                   "outputs were distributed anyway" + (f" ({message})" if message else ""),
                                   hint=f"see the [validation:...] lines in {log.path}")
        state = "Succeeded" if event == "succeed" else "PartiallySucceeded"
        log.write("orchestrator", state + (f": {message}" if message else ""))
        return BuildResult(run.id, state, self.state.outputs(run.id), log.path, message=message)

    def _build(self, run: "_Run", plan: BuildPlan, fetched: Any, accel: str, disk: Path,
               checkpointing: CheckpointRun | None, deadline: float) -> None:
        """Renders and runs the Packer build; a warm start that does not come up (QEMU refused
        the state, or the restored VM did not answer) is run again, cold, from the same layer."""
        assert run.staging is not None
        while True:
            console = run.staging.root / "console.log"  # QEMU writes it; the records get it redacted
            rendered, run.vm = render_build(checkpointing.plan if checkpointing else plan, run.staging.root, run.id,
                                            accel, fetched.paths, self.config.vnc, console_log=console,
                                            checkpoints=checkpointing.render if checkpointing else None,
                                            saved_key=checkpointing.saved_key if checkpointing else None)
            run.vm.disk = disk
            run.vm.keep_current_disk = checkpointing.keep_current_disk if checkpointing else None
            mode = checkpointing.start_mode if checkpointing else "full"
            self._phase(run, "Building", f"booting the build VM ({accel})" if mode != "warm" else
                        "restoring the build VM from its warm checkpoint", "booting the build VM")
            started, restored = time.monotonic(), []
            steps = self._step_reporter(run, rendered)

            def on_source(source: str) -> None:
                if not restored:  # the first step started: the VM was up
                    restored.append(round(time.monotonic() - started, 2))
                    self.state.update_run(run.id, start_mode=mode, restore_seconds=restored[0])
                    run.log.write("orchestrator", f"{mode} start: the build VM answered after {restored[0]:.1f} s")
                steps(source)

            try:
                with RedactedCopy(console, run.records / "console.log", run.reporter.redact), \
                        (checkpointing.agent() if checkpointing else contextlib.nullcontext()):
                    run_build(plan, self.config, run.staging.root, rendered, run.vm, run.log, deadline, run.stop,
                              on_source, temp=run.staging.temp)
                return
            except BuildFailed as exc:
                if mode != "warm" or run.stop.is_set() or run.vm.last_phase not in ("boot", "resume"):
                    raise
                assert checkpointing is not None
                run.log.write("orchestrator", f"the warm start did not come up ({exc.message}): a cold start from "
                              "the same checkpoint instead")
                checkpointing = checkpointing.cold()
                shutil.rmtree(run.staging.packer_output, ignore_errors=True)

    def _finish(self, run: "_Run", outcome: tuple[str, str]) -> None:
        """Cleans up before the run is marked ended: a crash in between leaves an active run
        whose staging recovery still knows."""
        if run.timer is not None:
            run.timer.cancel()
        if run.vm is not None:
            run.vm.discard_key()
            if run.vm.kept and run.staging is not None:
                run.staging.kept = True
                run.log.write("orchestrator", f"errorHandling abort: the build VM's disk and SSH key stay in "
                              f"{run.staging.root} (remove it when done)")
        kill_run_processes(run.id, host=self.state.host)  # none should be left; if an error cut Packer short, none will be
        if run.staging is not None:
            run.staging.remove()
        event, message = outcome
        event = {"Succeeded": "succeed", "PartiallySucceeded": "partial"}.get(event, event)
        if event in ("fail", "canceled"):
            kind = "Canceled" if event == "canceled" else "Failed"
            recorded = {o["name"] for o in self.state.outputs(run.id)}
            for target in run.plan.targets:
                if target.run_output_name not in recorded:
                    self.state.set_output(run.id, target.run_output_name, target.kind, kind)
        self.runs.end(run.id, event, message)
        self.admission.release(run.id)
        if event == "succeed":  # [retention]: the template's older gallery versions and VHDs go
            prune_after_run(self.config, self.state, run.plan.name, run.log)
        run.log.close()

    def _prove(self, run: "_Run", accelerator: str) -> None:
        """The deploy proof (pipeline/prove.py), recorded on the run; a failed one fails the run
        before anything is distributed."""
        assert run.vm is not None and run.staging is not None
        if not run.prove or run.plan.os_type != "Linux":
            why = ("turned off (--no-proof or [proof] deploy = false)" if not run.prove
                   else "Windows images are not booted here (no Windows guest runs on this host)")
            self.state.update_run(run.id, proof=json.dumps(ProofResult((), None, 0.0, skipped=why).to_dict()))
            run.log.write("proof", f"deploy proof skipped: {why}")
            return
        self._phase(run, "Validating", "deploy proof: booting the image as a fresh VM", "the deploy proof")
        from orchestrator.pipeline.prove import prove  # paramiko and libvirt: only a proof needs them

        result = prove(self.config, run.plan, run.id, run.vm, run.staging.root, run.records, accelerator, run.log,
                       run.stop, run.reporter.redact)
        self.state.update_run(run.id, proof=json.dumps(result.to_dict()))
        if not result.passed:
            failed = "; ".join(f"{c.name}: {c.detail}" for c in result.failures)
            raise ProofFailed(f"the deploy proof failed, nothing was distributed: {failed}",
                              hint=f"see the [proof] lines in {run.log.path} and {run.records / 'proof-console.log'}; "
                                   "`orchestrate status RUN` lists every check")

    def _phase(self, run: "_Run", sub_state: str, what: str, phase: str) -> None:
        run.phase = phase
        self.runs.sub_state(run.id, sub_state)
        run.reporter.phase(sub_state, what)

    def _step_reporter(self, run: "_Run", rendered) -> Callable[[str], None]:
        customizers = [b.source for b in rendered.provisioners if b.source.startswith("customizer:")]
        order = list(dict.fromkeys(customizers))

        def on_source(source: str) -> None:
            kind, _, name = source.partition(":")
            if kind == "customizer":
                self._phase(run, "Customizing", f"customizer {name!r} ({order.index(source) + 1}/{len(order)})",
                            f"customizer {name!r}")
                run.reporter.step(order.index(source) + 1, len(order), name)
            elif kind == "validation":
                self._phase(run, "Validating", f"validation {name!r}", f"validation {name!r}")
            elif source == "generalize":
                self._phase(run, "Customizing", "generalizing (deprovision)", "generalizing")
            elif source == "shutdown":
                run.phase = "shutting down the build VM"
                run.reporter.note("shutting down the build VM")

        return on_source


@dataclass
class _Run:
    """The mutable state of one run while it runs (the plan and template stay frozen)."""

    id: str
    plan: BuildPlan
    log: RunLog
    reporter: Reporter
    stop: Stop
    records: Path
    prove: bool = True  # boot and check the image before distributing it
    resume: str | None = None  # the failed run this one resumes
    use_checkpoints: bool = True  # start from a stored checkpoint where the steps are unchanged
    phase: str = "queued"  # what the run was doing, as a cancel or timeout message says
    staging: Staging | None = None
    vm: BuildVm | None = None
    timer: threading.Timer | None = None


def shown_plan(plan: BuildPlan) -> dict[str, Any]:
    """The plan as files and output show it: download URLs without credentials or query."""
    data = plan.to_dict()
    for step in data["steps"]:
        if step.get("download"):
            step["download"]["url"] = display_url(step["download"]["url"])
    return data


def _text_reporter(progress: Callable[[str], None] | None) -> Reporter:
    if progress is None:
        return Reporter()
    return Reporter(lambda event: progress(event.what) if event.kind in ("phase", "note") else None)


def _as_stop(exc: OrchestratorError, stop: Stop, phase: str) -> OrchestratorError:
    """A step that failed because the run was stopped (a killed qemu-img, a download that saw
    the stop) failed by the stop: a timeout is a timeout, a cancel a cancel."""
    if not stop.is_set() or isinstance(exc, BuildTimeout if stop.timed_out else Canceled):
        return exc
    try:
        stopped(stop, phase)
    except OrchestratorError as error:
        return error
    return exc
