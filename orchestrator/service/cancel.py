"""Canceling a run, for every front (the CLI's `cancel`, the REST API's POST .../cancel):
Canceling first (visible at once), then SIGTERM to the run's process, identified by pid and
start time (pids are reused). A second cancel signals again and says so; an ended run is an
error (RunEnded)."""
from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any, Callable

from orchestrator.errors import UsageError
from orchestrator.service.runs import AlreadyCanceling, Runs


@dataclass(frozen=True)
class CancelResult:
    run_id: str
    again: bool  # it was already Canceling
    message: str


def cancel_run(state: Any, run: dict[str, Any], recover: Callable[[], object]) -> CancelResult:
    """`recover`: what the front does to end runs whose process is gone (called when the
    process died between the caller's recovery and the signal)."""
    from orchestrator.effects.proc import process_start_time, signal_process

    run_id, pid, started = run["id"], run["pid"], run.get("pid_start_time")
    if started is None and pid and process_start_time(pid) is not None:
        raise UsageError(f"run {run_id} did not record which process pid {pid} was; "
                         "it may be another process now, so it is not signalled",
                         hint=f"check `ps -o pid,lstart,args -p {pid}`; if it is the build, `kill {pid}`")
    try:
        Runs(state).transition(run_id, "cancel")
    except AlreadyCanceling as exc:
        try:  # the signal again: harmless, and it reaches a process an earlier cancel could not
            if pid and started is not None:
                signal_process(pid, started, signal.SIGTERM)
        except PermissionError:
            pass
        return CancelResult(run_id, True, exc.message)
    try:
        signalled = bool(pid) and signal_process(pid, started, signal.SIGTERM)
    except PermissionError:
        Runs(state).transition(run_id, "cancel-undone")  # not canceling after all: the signal never went
        raise UsageError(f"not allowed to signal the build process of run {run_id} (pid {pid})",
                         hint="run `orchestrate cancel` as the user that started the build") from None
    if not signalled:  # it died between recovery and now: recovery ends it
        recover()
    return CancelResult(run_id, False, "cancel requested")
