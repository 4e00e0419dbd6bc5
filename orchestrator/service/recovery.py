"""Runs whose process died (SIGKILL, a crash, a host reboot) are found and cleaned up by the
next orchestrate command that touches the state: marked Failed (Canceled if a cancel was under
way) with a message saying so, their orphaned Packer/QEMU/qemu-img killed, their staging and
half-written artifacts removed, their unfinished publishes swept. Stored images, the cache and
other runs are not touched."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from orchestrator.config import Config
from orchestrator.effects.files import temp_name
from orchestrator.effects.proc import kill_run_processes, process_start_time
from orchestrator.effects.runlog import RunLog
from orchestrator.errors import OrchestratorError
from orchestrator.service.runs import Runs


def is_dead(run: dict[str, Any]) -> bool:
    """An active run whose recorded process is not running (a pid alone may be reused)."""
    pid = run.get("pid")
    if not pid:
        return True
    started = process_start_time(pid)
    if run.get("pid_start_time") is None:  # recorded by an older orchestrator: only a gone pid is sure
        return started is None
    return started != run["pid_start_time"]


def recover(config: Config, state: Any, say: Callable[[str], None] = lambda s: None) -> list[str]:
    """Cleans up every dead run; returns their ids. Cheap when there is none (one query and a
    /proc read per active run). The run is ended first, in a transaction that checks it is
    still active and dead, and only then are its processes and files touched: a run that
    ended meanwhile (its kept disk, say) is never cleaned up by mistake."""
    recovered = []
    for run in state.active_runs():
        if not state.is_local(run) or not is_dead(run):  # another host's run: its pid is not ours
            continue
        message = (f"the orchestrate process of this run (pid {run.get('pid')}) ended without recording a result "
                   "(killed, or the host restarted)")
        new = Runs(state).end_if_dead(run["id"], lambda row: state.is_local(row) and is_dead(row), message)
        if new is None:
            continue  # another process recovered it first, or it ended meanwhile
        killed = kill_run_processes(run["id"], host=state.host)
        proof_vms = _stop_proof_vm(config, run)  # libvirtd's child, not the run's: by its name
        kept = _register_checkpoints(config, state, run)  # its QEMU is gone: what it froze stays
        removed = _remove_leftovers(config, run)
        extra = [f"{killed} orphaned process(es) stopped"] if killed else []
        extra += [f"deploy proof VM {', '.join(proof_vms)} stopped"] if proof_vms else []
        extra += [f"{kept} checkpoint(s) it took kept for a resume"] if kept else []
        extra += [f"removed {', '.join(removed)}"] if removed else []
        if extra:
            message += "; " + "; ".join(extra)
            state.update_run(run["id"], message=message)
        state.update_run(run["id"], pid=None, pid_start_time=None)
        _note(run, f"{new}: {message}; recovered by pid {os.getpid()}")
        say(f"run {run['id']} ({run['template_name']}): {new}, {message}")
        recovered.append(run["id"])
    if recovered:
        _sweep_publishes(config, state, say)
    return recovered


def sweep_host_leftovers(config: Config, state: Any) -> list[str]:
    """A fleet's build host, as its worker starts: the staging (and orphaned Packer/QEMU) of runs
    it built that are not building here now (dispatched to another host after this one died,
    or ended). Only this data home's staging, and only processes this host started."""
    from orchestrator.pipeline.staging import TEMP_POINTER

    said = []
    staging = config.home / "staging"
    for root in sorted(staging.iterdir()) if staging.is_dir() else []:
        run = state.run(root.name)
        if run is not None and state.is_local(run) and run["run_state"] in ("Running", "Canceling"):
            continue
        killed = kill_run_processes(root.name, host=state.host)
        pointer = root / TEMP_POINTER
        if pointer.is_file():
            shutil.rmtree(pointer.read_text().strip(), ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        where = f"now on host {run['host']}" if run and run.get("host") else (run or {}).get("run_state", "unknown")
        said.append(f"run {root.name} ({where}): its staging here removed"
                    + (f", {killed} orphaned process(es) stopped" if killed else ""))
    return said


def _stop_proof_vm(config: Config, run: dict[str, Any]) -> list[str]:
    """The transient domain of a run that died during its deploy proof; only a run that got
    that far (its proof column is written when the proof ends; its sub-state says Validating)."""
    if run.get("run_sub_state") != "Validating":
        return []
    from orchestrator.core.proof import DOMAIN_PREFIX
    from orchestrator.effects.proof_vm import destroy_proof_domains

    try:
        return destroy_proof_domains(config.libvirt_uri, [DOMAIN_PREFIX + run["id"]])
    except OrchestratorError:  # no libvirt-python: no proof VM can have been started either
        return []


def _register_checkpoints(config: Config, state: Any, run: dict[str, Any]) -> int:
    """The checkpoints a killed run froze (its staging's journal), so that `--resume` of it
    starts where it was, as after any other failure."""
    if not run.get("staging_dir"):
        return 0
    from orchestrator.pipeline.checkpoints import JOURNAL, register_journal

    journal = Path(run["staging_dir"]) / JOURNAL
    if not journal.exists():
        return 0
    lines: list[str] = []
    kept = register_journal(config, state, journal, run["id"], run["template_name"], lines.append)
    _note(run, "; ".join(lines))
    return kept


def _remove_leftovers(config: Config, run: dict[str, Any]) -> list[str]:
    """Its staging and Packer temporaries (recorded, or where a run of this id puts them: it may
    have died before recording them) and the VHDs it was writing under their temporary names."""
    removed = []
    dirs = {run.get("staging_dir"), run.get("temp_dir"), str(config.home / "staging" / run["id"])}
    for base in {tempfile.gettempdir(), "/tmp"}:  # pipeline/staging.py: $TMPDIR, or /tmp if that is long
        dirs |= {str(p) for p in Path(base).glob(f"orchestrator-{run['id']}-*")}
    for path in sorted(d for d in dirs if d):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    pid = run.get("pid")
    if not pid:
        return removed
    # every VHD it writes is among its claims (recorded at admission, before any is written)
    partials = [temp_name(Path(claim[5:]), pid) for claim in json.loads(run.get("claims") or "[]")
                if claim.startswith("file:")]
    for partial in partials:
        if partial.exists():
            partial.unlink(missing_ok=True)
            removed.append(str(partial))
    return removed


def _note(run: dict[str, Any], line: str) -> None:
    if run.get("log_path") and os.path.isdir(os.path.dirname(run["log_path"])):
        try:
            with RunLog(Path(run["log_path"])) as log:
                log.write("orchestrator", line)
        except OSError:
            pass


def _sweep_publishes(config: Config, state: Any, say: Callable[[str], None]) -> None:
    """Gallery and managed-image volumes a dead run left half written."""
    from orchestrator.distribute.publish import sweep

    try:
        sweep(config, state, say)
    except OrchestratorError as exc:  # libvirt down: `orchestrate store sweep` tries again
        say(f"could not sweep unfinished publishes yet: {exc.message}")
