"""Checkpoint phase: before the build, where it starts (the deepest stored checkpoint whose
whole prefix of customizers is unchanged: incremental rebuild and resume) and what it will
freeze after each remaining customizer (a manifest the host hook reads); after the build,
whatever its end, the layers it froze are registered in the checkpoint store and the store is
kept under its cap."""
from __future__ import annotations

import dataclasses
import json
import os
import secrets as secrets_module
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from orchestrator.config import Config
from orchestrator.core.checkpoint_steps import BASE_NAME, CheckpointPlan
from orchestrator.core.fingerprint import base_key, step_keys
from orchestrator.core.plan import BuildPlan, ResolvedSource
from orchestrator.core.render import BUILD_USER
from orchestrator.core.render_windows import CHECKPOINT_DRIVE
from orchestrator.core.warm import MachineConfig, WarmState
from orchestrator.effects import warm_states
from orchestrator.effects.accel import qemu_version
from orchestrator.effects.checkpoint_agent import CheckpointAgent
from orchestrator.effects.checkpoint_files import companions
from orchestrator.effects.checkpoint_store import CheckpointStore
from orchestrator.effects.files import write_atomic
from orchestrator.effects.qemu_img import rebase_unsafe
from orchestrator.effects.runlog import RunLog
from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.pipeline.build import KEY_NAME
from orchestrator.pipeline.staging import Staging

MIB = 1024 * 1024
JOURNAL = "checkpoints.jsonl"  # in the run's staging: the hook appends each layer it froze


@dataclass
class CheckpointRun:
    render: CheckpointPlan
    plan: BuildPlan  # the plan to render: its source is the checkpoint it starts on, if any
    manifest: dict[str, Any]
    start_after: int
    started_from: str | None
    machine: MachineConfig | None = None  # what a state saved by this build is bound to
    warm_from: WarmState | None = None  # the state a warm start restores

    def agent(self) -> CheckpointAgent:
        """What serves this build's checkpoint steps: `with run.agent():` around Packer."""
        return CheckpointAgent(Path(self.manifest["manifest"]), Path(self.manifest["agent_socket"]))

    @property
    def start_mode(self) -> str:
        return "warm" if self.warm_from else ("cold" if self.started_from else "full")

    @property
    def saved_key(self) -> tuple[Path, str] | None:
        return (Path(self.warm_from.key_path), self.warm_from.public_key) if self.warm_from else None

    def cold(self) -> "CheckpointRun":
        """The same start from the same layer, booted: when a warm start did not come up."""
        return dataclasses.replace(self, render=dataclasses.replace(self.render, incoming="", random_hex=""),
                                   warm_from=None)

    @property
    def disk(self) -> Path:
        """The finished disk: the overlay after the last checkpoint (Packer's own disk.qcow2
        holds only the state at the first one)."""
        return Path(self.manifest["top"] if self.manifest["first"] <= self.manifest["last"]
                    else self.manifest["packer_disk"])

    def keep_current_disk(self) -> Path:
        """errorHandling abort: the layer the failed VM was writing (Packer's disk before the
        first checkpoint; else the overlay after the last one the journal names), out of the
        store's reach: an overlay in the store is renamed into the staging as top.qcow2, its
        backing named absolutely. The layers below stay while it exists (kept_disks)."""
        frozen = [json.loads(line)["position"] for line in _journal_lines(Path(self.manifest["log"]))]
        if not frozen:
            return Path(self.manifest["packer_disk"])
        position, top = max(frozen), Path(self.manifest["top"])
        if position >= self.manifest["last"]:
            return top
        overlay = Path(self.manifest["layers"][str(position + 1)]["path"] + ".part")
        below = self.manifest["layers"][str(position)]["path"]
        if overlay.exists():
            rebase_unsafe(overlay, below)
            os.replace(overlay, top)
        return top


def _journal_lines(journal: Path) -> list[str]:
    return journal.read_text().splitlines() if journal.exists() else []


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


def machine_for(config: Config, plan: BuildPlan, accelerator: str) -> MachineConfig:
    return MachineConfig(qemu_version(config.qemu_system), accelerator, plan.cpus, plan.memory_mib,
                         plan.disk_size_mib)


def prepare(config: Config, state: Any, plan: BuildPlan, parts: dict[str, Any], run_id: str, staging: Staging,
            log: RunLog, use_stored: bool, resume: str | None = None, secrets: bool = False,
            accelerator: str = "tcg") -> CheckpointRun | None:
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
    machine = machine_for(config, plan, accelerator) if config.checkpoints_warm else None
    base = base_key(parts, machine.to_json()) if machine is not None else None
    warm_from = _warm_start(store, start, machine, log) if start is not None and machine is not None else None
    if start is None and base is not None and use_stored:
        start, warm_from = _warm_base(store, base, machine, run_id, log)
    if resume and start is None:
        log.write("orchestrator", f"run {resume} left no usable checkpoint (none was taken, or it was pruned): "
                  "this is a full build")
    render_plan = plan
    if start is not None:
        if start_after:
            skipped = ", ".join(repr(s.name) for s in customizers[:start_after])
            log.write("orchestrator", f"starting from the checkpoint after customizer {start_after} "
                      f"({customizers[start_after - 1].name!r}) of run {start.run_id}: {start.path}; skipped: {skipped}")
        where = (f"checkpoint after customizer {start_after}" if start_after else "warm base") + f" of run {start.run_id}"
        render_plan = dataclasses.replace(plan, source=ResolvedSource(
            description=f"{where} ({plan.source.description})",
            path=start.path, format="qcow2", virtual_size=plan.disk_size_mib * MIB, sha256=start.sha256,
            resolved_version=plan.source.resolved_version, os_type=plan.source.os_type))
    take_base = start is None and base is not None  # this build boots the source: its boot is kept
    first = 0 if take_base else start_after + 1
    names = {0: (base, BASE_NAME), **{i: (keys[i - 1], customizers[i - 1].name) for i in range(1, len(keys) + 1)}}
    store_dir = config.checkpoints_dir
    store_dir.mkdir(mode=0o700, exist_ok=True)
    manifest = {
        "warm": machine is not None,  # save the VM's state with each checkpoint
        "ssh_key": str(staging.root / KEY_NAME),
        # a Linux guest is flushed by the run's process over SSH (the build user, sudo); Windows by its own steps
        "guest_user": None if plan.os_type == "Windows" else BUILD_USER,
        "qmp_socket": str(staging.temp / "qmp.sock"),
        "agent_socket": str(staging.temp / "checkpoint.sock"),  # the run's process takes the checkpoints
        "manifest": str(staging.root / "checkpoints.json"),
        "drive": CHECKPOINT_DRIVE if plan.os_type == "Windows" else "virtio0",  # the disk QMP freezes
        "packer_disk": str(staging.packer_output / "disk.qcow2"),
        "top": str(staging.root / "top.qcow2"),
        "virtual_size": plan.disk_size_mib * MIB,
        "first": first, "last": len(customizers),
        "started_from": start.path if start else None,
        "log": str(staging.root / JOURNAL),
        "layers": {str(i): {"key": names[i][0], "name": names[i][1],
                            "path": str(store_dir / f"{names[i][0]}-{run_id}.qcow2")}
                   for i in range(first, len(customizers) + 1)},
    }
    write_atomic(Path(manifest["manifest"]), json.dumps(manifest, indent=2))
    hook = (sys.executable, "-m", "orchestrator.effects.checkpoint_call", manifest["agent_socket"])
    render = CheckpointPlan(hook, start_after, manifest["qmp_socket"], warm=machine is not None,
                            incoming=warm_from.path if warm_from else "",
                            random_hex=secrets_module.token_hex(64) if warm_from else "", base=take_base,
                            from_base=start is not None and not start_after)
    return CheckpointRun(render, render_plan, manifest, start_after, start.path if start else None, machine, warm_from)


def _warm_start(store: CheckpointStore, start: Any, machine: MachineConfig, log: RunLog) -> WarmState | None:
    """The state saved with the checkpoint a build starts on, if it may be restored: checked
    here, before QEMU starts; else the line says why and the build boots the layer (cold)."""
    state = store.warm_state(start.path)
    if state is None:
        log.write("orchestrator", "the checkpoint has no VM state saved with it: a cold start (the VM boots)")
        return None
    why = warm_states.usable(state, start.sha256, machine)
    if why:
        log.write("orchestrator", f"the checkpoint's VM state is not used: {why}; a cold start from its disk layer "
                  "instead")
        return None
    log.write("orchestrator", f"a warm start: the VM saved with the checkpoint continues ({state.path}, "
              f"{state.size_bytes / MIB:.0f} MiB)")
    return state


def _warm_base(store: CheckpointStore, key: str, machine: MachineConfig, run_id: str,
               log: RunLog) -> tuple[Any, WarmState | None]:
    """The warm base of this source and machine (its boot, kept by an earlier build), if its
    state may be restored; else (None, None): the build boots and keeps a new base."""
    found, reasons = store.find(key)
    for reason in reasons:
        log.write("orchestrator", f"warm base not usable: {reason}")
    if found is None:
        log.write("orchestrator", "no warm base of this source and machine yet: this build boots it and keeps one")
        return None, None
    state = store.warm_state(found.path)
    why = "it has no VM state saved with it" if state is None else warm_states.usable(state, found.sha256, machine)
    if why or not store.claim(run_id, found.path):
        log.write("orchestrator", f"the warm base {found.path} is not used ({why or 'it was just removed'}): "
                  "this build boots the source and keeps a new one")
        return None, None
    log.write("orchestrator", f"starting from the warm base of this source and machine (run {found.run_id}): "
              f"the booted VM continues ({state.path}, {state.size_bytes / MIB:.0f} MiB), every customizer runs")
    return found, state


def register(config: Config, state: Any, run: CheckpointRun, run_id: str, template_name: str, log: RunLog,
             public_key: str = "") -> None:
    """The layers this build froze, into the store (hashed now that QEMU is gone), then the
    store is kept under its cap. Never fails the run: a checkpoint is a saving, not a result."""
    register_journal(config, state, Path(run.manifest["log"]), run_id, template_name,
                     lambda line: log.write("orchestrator", line), run.machine, public_key)


def register_journal(config: Config, state: Any, journal: Path, run_id: str, template_name: str,
                     say: Callable[[str], None], machine: MachineConfig | None = None,
                     public_key: str = "") -> int:
    """The layers a run's journal (checkpoints.jsonl in its staging) names: the hook appends a
    line only once QEMU writes above the layer, so each is frozen. Also what recovery does for a
    run killed before it could register them, once its QEMU is gone. Returns how many."""
    store = CheckpointStore(config, state)
    kept = 0
    try:
        records = [json.loads(line) for line in _journal_lines(journal)]
        for record in records:
            warm = (record["warm"], machine, public_key) if record.get("warm") and machine and public_key else None
            if record.get("warm") and warm is None:  # a killed run: its machine is not known here
                for companion in companions(record["path"]):
                    Path(companion).unlink(missing_ok=True)
            store.register(run_id, template_name, record["key"], record["position"], record["name"], record["path"],
                           record["parent"], warm)
            kept += 1
            saved = (f", VM state saved (paused {record['warm']['pause_seconds']:.2f} s)" if warm else "")
            what = (f"checkpoint after customizer {record['position']} ({record['name']!r})" if record["position"]
                    else "warm base (the booted source, before any customizer)")
            say(f"{what} kept: {record['path']} (frozen in {record['seconds']:.2f} s{saved})")
        for removed in store.evict():
            say(f"checkpoint removed: {removed.path} ({removed.reason})")
    except (OSError, OrchestratorError, ValueError, KeyError) as exc:
        say(f"checkpoints not registered: {exc}")
    for leftover in config.checkpoints_dir.glob(f"*-{run_id}.qcow2.part"):
        leftover.unlink(missing_ok=True)  # an overlay made for a step that never finished
    return kept
