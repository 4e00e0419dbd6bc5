"""Checkpoint phase: before the build, where it starts (the deepest stored checkpoint whose
whole prefix of customizers is unchanged: incremental rebuild and resume) and what it will
freeze after each remaining customizer (a manifest the host hook reads); after the build,
whatever its end, the layers it froze are registered in the checkpoint store and the store is
kept under its cap."""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config import Config
from orchestrator.core.checkpoint_steps import CheckpointPlan
from orchestrator.core.fingerprint import step_keys
from orchestrator.core.plan import BuildPlan, ResolvedSource
from orchestrator.core.render_windows import CHECKPOINT_DRIVE
from orchestrator.effects.checkpoint_store import CheckpointStore
from orchestrator.effects.files import write_atomic
from orchestrator.effects.runlog import RunLog
from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.pipeline.staging import Staging

MIB = 1024 * 1024


@dataclass
class CheckpointRun:
    render: CheckpointPlan
    plan: BuildPlan  # the plan to render: its source is the checkpoint it starts on, if any
    manifest: dict[str, Any]
    start_after: int
    started_from: str | None

    @property
    def disk(self) -> Path:
        """The finished disk: the overlay after the last checkpoint (Packer's own disk.qcow2
        holds only the state at the first one)."""
        return Path(self.manifest["top"] if self.manifest["first"] <= self.manifest["last"]
                    else self.manifest["packer_disk"])


def check_resume(state: Any, run_id: str, template_name: str, template_sha256: str | None) -> list[str]:
    """Refuses a resume that makes no sense; the notes say what happens instead."""
    run = state.run(run_id)
    if run is None:
        raise UsageError(f"no run {run_id} to resume", hint="`orchestrate runs` lists the runs")
    if run["template_name"].lower() != template_name.lower():
        raise UsageError(f"run {run_id} is of template {run['template_name']!r}, not {template_name!r}",
                         hint=f"resume it with its own template, or build {template_name} without --resume")
    if run["run_state"] in ("Running", "Canceling"):
        raise UsageError(f"run {run_id} is still {run['run_state']}", hint=f"wait for it or `orchestrate cancel {run_id}`")
    if run["run_state"] in ("Succeeded", "PartiallySucceeded"):
        raise UsageError(f"run {run_id} {run['run_state']}: there is nothing to resume",
                         hint="build again without --resume: an unchanged template reuses its outputs, a changed "
                              "one starts from the checkpoint of its last unchanged customizer")
    notes = [f"resuming run {run_id} ({run['run_state']}: {run.get('message') or ''})"]
    if template_sha256 and run.get("template_sha256") and run["template_sha256"] != template_sha256:
        notes.append(f"run {run_id} was of another version of {template_name}: its checkpoints are used up to the "
                     "last customizer that is unchanged, the rest is built again")
    return notes


def prepare(config: Config, state: Any, plan: BuildPlan, parts: dict[str, Any], run_id: str, staging: Staging,
            log: RunLog, use_stored: bool, resume: str | None = None, secrets: bool = False) -> CheckpointRun | None:
    """`secrets`: the template has secure parameters or signed URLs. A checkpoint is the build
    VM's disk at that step, with whatever the guest held (step scripts that carry the secret
    among it), kept after the run: such a run takes none, and says so."""
    if secrets and config.checkpoints_enabled:
        log.write("orchestrator", "no checkpoints for this run: the template has secure parameters or signed URLs, "
                  "and a checkpoint keeps the build disk (their step scripts included) after the run")
        return None
    # Windows plans render checkpoints too (render_windows, the drive ide0-hd0), but this host
    # builds Linux only (core/buildable.py): there is no Windows render_build to hand them to
    if not config.checkpoints_enabled or plan.os_type != "Linux":
        return None
    customizers = [s for s in plan.steps if s.phase == "customize"]
    if not customizers:
        return None
    keys = step_keys(parts)
    store = CheckpointStore(config, state)
    start, start_after = None, 0
    if use_stored:
        for position in range(len(keys), 0, -1):
            found, reasons = store.find(keys[position - 1])
            for reason in reasons:
                log.write("orchestrator", f"checkpoint not usable: {reason}")
            if found is not None and store.claim(run_id, found.path):  # in use from now: never evicted
                start, start_after = found, position
                break
    if resume and start is None:
        log.write("orchestrator", f"run {resume} left no usable checkpoint (none was taken, or it was pruned): "
                  "this is a full build")
    render_plan = plan
    if start is not None:
        skipped = ", ".join(repr(s.name) for s in customizers[:start_after])
        log.write("orchestrator", f"starting from the checkpoint after customizer {start_after} "
                  f"({customizers[start_after - 1].name!r}) of run {start.run_id}: {start.path}; skipped: {skipped}")
        render_plan = dataclasses.replace(plan, source=ResolvedSource(
            description=f"checkpoint after customizer {start_after} of run {start.run_id} ({plan.source.description})",
            path=start.path, format="qcow2", virtual_size=plan.disk_size_mib * MIB, sha256=start.sha256,
            resolved_version=plan.source.resolved_version, os_type=plan.source.os_type))
    store_dir = config.checkpoints_dir
    store_dir.mkdir(mode=0o700, exist_ok=True)
    manifest = {
        "qmp_socket": str(staging.temp / "qmp.sock"),
        "drive": CHECKPOINT_DRIVE if plan.os_type == "Windows" else "virtio0",  # the disk QMP freezes
        "packer_disk": str(staging.packer_output / "disk.qcow2"),
        "top": str(staging.root / "top.qcow2"),
        "virtual_size": plan.disk_size_mib * MIB,
        "first": start_after + 1, "last": len(customizers),
        "started_from": start.path if start else None,
        "log": str(staging.root / "checkpoints.jsonl"),
        "layers": {str(i): {"key": keys[i - 1], "name": customizers[i - 1].name,
                            "path": str(store_dir / f"{keys[i - 1]}-{run_id}.qcow2")}
                   for i in range(start_after + 1, len(customizers) + 1)},
    }
    path = staging.root / "checkpoints.json"
    write_atomic(path, json.dumps(manifest, indent=2))
    hook = (sys.executable, "-m", "orchestrator.effects.checkpoint_hook", str(path))
    return CheckpointRun(CheckpointPlan(hook, start_after, manifest["qmp_socket"]), render_plan, manifest,
                         start_after, start.path if start else None)


def register(config: Config, state: Any, run: CheckpointRun, run_id: str, template_name: str, log: RunLog) -> None:
    """The layers this build froze, into the store (hashed now that QEMU is gone), then the
    store is kept under its cap. Never fails the run: a checkpoint is a saving, not a result."""
    store = CheckpointStore(config, state)
    journal = Path(run.manifest["log"])
    try:
        records = [json.loads(line) for line in journal.read_text().splitlines()] if journal.exists() else []
        for record in records:
            store.register(run_id, template_name, record["key"], record["position"], record["name"], record["path"],
                           record["parent"])
            log.write("orchestrator", f"checkpoint after customizer {record['position']} ({record['name']!r}) kept: "
                      f"{record['path']} (frozen in {record['seconds']:.2f} s)")
        for removed in store.evict():
            log.write("orchestrator", f"checkpoint removed: {removed.path} ({removed.reason})")
    except (OSError, OrchestratorError, ValueError) as exc:
        log.write("orchestrator", f"checkpoints not registered: {exc}")
    for leftover in config.checkpoints_dir.glob(f"*-{run_id}.qcow2.part"):
        leftover.unlink(missing_ok=True)  # an overlay made for a step that never finished
