"""The run state machine, in one place: which runState follows which, on what event.

    Running --cancel--> Canceling --cancel-undone--> Running   (the signal could not be sent)
    Running | Canceling --succeed--> Succeeded      (a cancel that came too late loses)
    Running | Canceling --partial--> PartiallySucceeded
    Running | Canceling --fail--> Failed
    Running | Canceling --canceled--> Canceled
    Running --process-gone--> Failed;  Canceling --process-gone--> Canceled

runSubState (Queued, Building, Customizing, Validating, Distributing) moves only while the run
is active. Every transition is applied in one write transaction that reads the current state
first, so a cancel and the run's own end never overwrite each other.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from orchestrator.errors import OrchestratorError, UsageError

RUNNING, CANCELING = "Running", "Canceling"
SUCCEEDED, PARTIALLY_SUCCEEDED, FAILED, CANCELED = "Succeeded", "PartiallySucceeded", "Failed", "Canceled"
ACTIVE = (RUNNING, CANCELING)
ENDED = (SUCCEEDED, PARTIALLY_SUCCEEDED, FAILED, CANCELED)
SUB_STATES = ("Queued", "Building", "Customizing", "Validating", "Distributing")

_ENDINGS = {"succeed": SUCCEEDED, "partial": PARTIALLY_SUCCEEDED, "fail": FAILED, "canceled": CANCELED}


class RunEnded(UsageError):
    """The run is not active any more: a cancel or another end finds nothing to change."""


class AlreadyCanceling(UsageError):
    pass


def last_run_status(run: dict[str, Any] | None) -> dict[str, Any] | None:
    """A run as AIB's `lastRunStatus` shows it (the CLI's `template show`, the REST API)."""
    if run is None:
        return None

    def stamp(t: float | None) -> str | None:
        return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

    return {"startTime": stamp(run["start_time"]), "endTime": stamp(run["end_time"]), "runState": run["run_state"],
            "runSubState": run["run_sub_state"], "message": run["message"] or ""}


def next_state(current: str, event: str, run_id: str = "the run") -> str:
    """The runState after `event`; an event that does not apply raises with what to do."""
    if current in ENDED:
        raise RunEnded(f"run {run_id} has already ended ({current})",
                       hint="`orchestrate status RUN` shows how it ended; `orchestrate run TEMPLATE` starts another")
    if current not in ACTIVE:
        raise OrchestratorError(f"run {run_id} has an unknown runState {current!r}")
    if event == "cancel":
        if current == CANCELING:
            raise AlreadyCanceling(f"run {run_id} is already being canceled",
                                   hint=f"`orchestrate logs -f {run_id}` follows it until it ends")
        return CANCELING
    if event == "cancel-undone":
        if current != CANCELING:
            raise ValueError(f"run {run_id} is {current}, not Canceling: there is no cancel to undo")
        return RUNNING
    if event == "process-gone":
        return CANCELED if current == CANCELING else FAILED
    if event in _ENDINGS:
        return _ENDINGS[event]
    raise ValueError(f"unknown run event {event!r}")


def set_sub_state(current_state: str, sub_state: str) -> bool:
    """Whether runSubState may become `sub_state` now."""
    if sub_state not in SUB_STATES:
        raise ValueError(f"unknown runSubState {sub_state!r}")
    return current_state in ACTIVE


class Runs:
    """Transitions of the runs in a state database."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def transition(self, run_id: str, event: str, message: str | None = None) -> str:
        """Applies `event` to the run; returns the new runState."""
        with self.state.immediate() as db:
            row = db.execute("SELECT run_state FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise UsageError(f"no run {run_id!r}", hint="`orchestrate runs` lists them")
            new = next_state(row["run_state"], event, run_id)
            if new in ENDED:
                db.execute("UPDATE runs SET run_state = ?, message = ?, end_time = ?, pid = NULL, "
                           "pid_start_time = NULL WHERE id = ?", (new, message or "", time.time(), run_id))
            else:
                db.execute("UPDATE runs SET run_state = ? WHERE id = ?", (new, run_id))
        return new

    def end_if_dead(self, run_id: str, dead: Callable[[dict[str, Any]], bool], message: str) -> str | None:
        """Ends the run by `process-gone` if, read again inside the transaction, it is still
        active and `dead`; returns the new runState, or None when it was not (it ended, or
        its process was seen alive): only then may recovery touch its files."""
        with self.state.immediate() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None or row["run_state"] not in ACTIVE or not dead(dict(row)):
                return None
            new = next_state(row["run_state"], "process-gone", run_id)
            db.execute("UPDATE runs SET run_state = ?, message = ?, end_time = ? WHERE id = ?",
                       (new, message, time.time(), run_id))
        return new

    def sub_state(self, run_id: str, sub_state: str) -> None:
        with self.state.immediate() as db:
            row = db.execute("SELECT run_state FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is not None and set_sub_state(row["run_state"], sub_state):
                db.execute("UPDATE runs SET run_sub_state = ? WHERE id = ?", (sub_state, run_id))

    def end(self, run_id: str, event: str, message: str = "") -> str:
        """The run's own end. A run already ended (recovered as dead by another process while
        this one was stopped, say) keeps the end it was given."""
        try:
            return self.transition(run_id, event, message)
        except RunEnded:
            return self.state.run(run_id)["run_state"]
