"""Walks one build: plan -> fetch -> render -> Packer -> distribute, recording every step.

The engine raises OrchestratorError subclasses and reports progress through a callback;
printing and exit codes belong to the CLI.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlparse

from orchestrator.config import Config
from orchestrator.core import model as m
from orchestrator.core.buildable import build_problems
from orchestrator.core.plan import BuildPlan, TargetPlan, make_plan
from orchestrator.core.render import RenderContext, RenderedBuild, render_linux
from orchestrator.effects import qemu_img
from orchestrator.effects.accel import choose_accelerator
from orchestrator.effects.catalog import Catalog
from orchestrator.effects.downloads import DownloadCache
from orchestrator.effects.files import sha256_file, write_atomic
from orchestrator.effects.packer import run_packer
from orchestrator.effects.runlog import RunLog
from orchestrator.effects.sshkeys import make_key_pair
from orchestrator.effects.state import StateStore
from orchestrator.errors import (BuildFailed, BuildTimeout, Canceled, CustomizerFailed, OrchestratorError,
                                 TemplateInvalid)

Progress = Callable[[str], None]


@dataclass
class BuildResult:
    run_id: str
    run_state: str
    outputs: list[dict[str, Any]]
    log_path: Path
    reused_run: str | None = None
    notes: list[str] = field(default_factory=list)


class Engine:
    def __init__(self, config: Config) -> None:
        self.config = config.ensure()
        self.state = StateStore(config.db_path)
        self.catalog = Catalog(self.state, config.images_dir)
        self.cache = DownloadCache(config.cache_dir)

    def run_dir(self, run_id: str) -> Path:
        return self.config.runs_dir / run_id

    def plan(self, template: m.ImageTemplate, name: str) -> BuildPlan:
        problems = build_problems(template)
        if problems:
            raise TemplateInvalid(problems, f"{name} (for `orchestrate build`)")
        assert isinstance(template.source, m.PlatformImageSource)
        return make_plan(template, self.catalog.resolve(template.source), name)

    def build(self, template: m.ImageTemplate, name: str, template_text: str, template_path: str | None,
              progress: Progress = lambda s: None, force: bool = False,
              cancel: threading.Event | None = None) -> BuildResult:
        plan = self.plan(template, name)  # refuses before a run is recorded
        cancel = cancel or threading.Event()
        run_id = self.state.start_run(name, template_path, lambda rid: self.run_dir(rid) / "customization.log")
        work = self.run_dir(run_id)
        work.mkdir(parents=True)
        log = RunLog(work / "customization.log")
        self.state.update_run(run_id, pid=os.getpid(), source=plan.source.description,
                              resolved_version=plan.source.resolved_version)
        deadline = time.monotonic() + plan.timeout_minutes * 60
        restore = _install_cancel_handlers(cancel)
        try:
            write_atomic(work / "template.json", template_text)
            write_atomic(work / "plan.json", json.dumps(plan.to_dict(), indent=2))
            log.write("orchestrator", f"run {run_id}: {name}, source {plan.source.description}, "
                      f"{plan.cpus} vCPU / {plan.memory_mib} MiB ({plan.vm_size}), disk {plan.disk_size_mib} MiB, "
                      f"timeout {plan.timeout_minutes} min")
            result = self._build(plan, run_id, work, log, progress, force, cancel, deadline)
            return result
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
            restore()
            log.close()

    def _build(self, plan: BuildPlan, run_id: str, work: Path, log: RunLog, progress: Progress,
               force: bool, cancel: threading.Event, deadline: float) -> BuildResult:
        self._sub_state(run_id, "Building", progress, "fetching customizer files")
        downloads: dict[str, str] = {}
        digests: dict[str, str] = {}
        for item in plan.downloads:
            if cancel.is_set():
                raise Canceled("the build was canceled while fetching files")
            fetched = self.cache.fetch(item.url, item.sha256, f"customizer {item.customizer!r}, {item.json_path}")
            verified = "sha256 verified" if item.sha256 else "no sha256Checksum given"
            log.write("orchestrator", f"fetched {item.url} for {item.customizer!r}: {fetched.size} bytes, "
                      f"sha256 {fetched.sha256} ({verified}{', from cache' if fetched.from_cache else ''})")
            downloads[item.url] = str(fetched.path)
            digests[item.url] = fetched.sha256
        digest = plan.digest(digests)
        self.state.update_run(run_id, build_digest=digest)
        if not force:
            reused = self._reuse(plan, run_id, digest, log, progress)
            if reused:
                return reused

        accel, why = choose_accelerator(self.config.accelerator, self.config.home / "accelerator.json",
                                        Path(plan.source.path), self.config.qemu_system)
        log.write("orchestrator", f"accelerator: {accel} ({why})")
        plan = fit_to_host(plan, log)
        key_path, public_key = make_key_pair(work, f"orchestrator-{run_id}")
        ctx = RenderContext(work_dir=str(work), output_dir=str(work / "packer-output"),
                            ssh_private_key=str(key_path), ssh_public_key=public_key, accelerator=accel,
                            downloads=downloads)
        rendered = render_linux(plan, ctx)
        _write_rendered(work, rendered)

        self._sub_state(run_id, "Building", progress, f"booting the build VM ({accel})")
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

        def on_line(source: str, line: str) -> None:
            if source == "generalize" and "orchestrator-generalize: running" in line:
                log.write("orchestrator", "generalize: " + line.split("orchestrator-generalize: ", 1)[1])

        result = run_packer(self.config.packer, work / "build.pkr.hcl", log, rendered.provisioners,
                            deadline=deadline, cancel=cancel, cache_dir=self.config.home / "cache" / "packer",
                            vm_marker=str(work), on_source=on_source, on_line=on_line,
                            keep_on_error=plan.on_customizer_error == "abort")
        if result.timed_out:
            raise BuildTimeout(
                f"the build timed out after buildTimeoutInMinutes ({plan.timeout_minutes} min) "
                f"during {_describe(result.last_phase)}: context deadline exceeded",
                hint="raise buildTimeoutInMinutes (at most 960), or see customization.log for the slow step")
        if result.canceled:
            raise Canceled(f"the build was canceled during {_describe(result.last_phase)}")
        if result.exit_code != 0:
            detail = "; ".join(result.errors[-2:]) or f"packer exited with {result.exit_code}"
            if result.last_phase.startswith(("customizer:", "validation:")):
                hint = f"see the [{result.last_phase}] lines in {log.path}"
                kept = work / "packer-output" / "disk.qcow2"
                if plan.on_customizer_error == "abort" and kept.is_file():
                    # AIB keeps the build VM on abort; here its disk stays, with the run's SSH key
                    log.write("orchestrator", f"errorHandling.onCustomizerError is abort: the build VM's disk "
                              f"is kept at {kept} (SSH key {work / 'id_ed25519'}, user packer)")
                    hint += f"; the build VM's disk is kept at {kept} for inspection"
                raise CustomizerFailed(f"{_describe(result.last_phase)} failed: {detail}", hint=hint)
            raise BuildFailed(f"the build failed during {_describe(result.last_phase)}: {detail}",
                              hint=f"see {log.path}")
        disk = work / "packer-output" / "disk.qcow2"
        if not disk.is_file():
            raise BuildFailed(f"Packer finished but left no disk at {disk}", hint=f"see {log.path}")

        self._sub_state(run_id, "Distributing", progress, "distributing")
        for target in plan.targets:
            if cancel.is_set():
                raise Canceled("the build was canceled while distributing")
            self._distribute_vhd(plan, target, run_id, disk, log, progress)
        shutil.rmtree(work / "packer-output", ignore_errors=True)
        self.state.finish_run(run_id, "Succeeded", "")
        log.write("orchestrator", "Succeeded")
        return BuildResult(run_id, "Succeeded", self.state.outputs(run_id), log.path)

    def _distribute_vhd(self, plan: BuildPlan, target: TargetPlan, run_id: str, disk: Path, log: RunLog,
                        progress: Progress) -> None:
        progress(f"writing VHD {target.run_output_name!r}")
        dest = vhd_destination(self.config, plan.name, target, run_id)
        dest.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        size = qemu_img.export_fixed_vhd(disk, dest)
        converted = time.monotonic()
        digest = sha256_file(dest)
        log.write("orchestrator", f"VHD {target.run_output_name!r}: {dest} ({size // 2**20} MiB fixed, "
                  f"sha256 {digest}; converted in {converted - started:.1f} s, "
                  f"hashed in {time.monotonic() - converted:.1f} s)")
        self.state.set_output(run_id, target.run_output_name, "VHD", "Succeeded", artifact_id=str(dest),
                              artifact_uri=dest.as_uri(), details={
                                  "path": str(dest), "sizeBytes": size, "fileBytes": dest.stat().st_size,
                                  "sha256": digest, "format": "vpc", "subformat": "fixed",
                                  "artifactTags": dict(target.artifact_tags)})

    def _reuse(self, plan: BuildPlan, run_id: str, digest: str, log: RunLog,
               progress: Progress) -> BuildResult | None:
        previous = self.state.last_success(plan.name, digest)
        if previous is None:
            return None
        outputs = self.state.outputs(previous["id"])
        if len(outputs) != len(plan.targets) or not all(_output_intact(o) for o in outputs):
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


def _describe(phase: str) -> str:
    if phase == "boot":
        return "boot of the build VM (waiting for SSH)"
    if ":" in phase:
        kind, name = phase.split(":", 1)
        return f"{kind} {name!r}"
    return phase


def vhd_destination(config: Config, name: str, target: TargetPlan, run_id: str) -> Path:
    if target.uri:
        parsed = urlparse(target.uri)
        return Path(unquote(parsed.path) if parsed.scheme == "file" else target.uri)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "template"
    return config.artifacts_dir / safe / target.run_output_name / f"{run_id}.vhd"


def _output_intact(output: dict[str, Any]) -> bool:
    props = output["properties"]
    path = props.get("path")
    if output["type"] != "VHD" or not path or not Path(path).is_file():
        return False
    return Path(path).stat().st_size == props.get("fileBytes")


def _write_rendered(work: Path, rendered: RenderedBuild) -> None:
    for rel, content in rendered.files.items():
        write_atomic(work / rel, content, mode=0o755 if rel.endswith(".sh") else 0o644)
    write_atomic(work / "build.pkr.hcl", rendered.hcl)


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
