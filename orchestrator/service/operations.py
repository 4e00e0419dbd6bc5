"""Long-running operations of the REST API: a run of a stored template is its own
`orchestrate run NAME --json` process (started in a new session, so the server's end does not
end the build, and the build's signals are its own, as on the CLI); the operation follows the
run that process records. Its status is derived when asked, from the run's state and, once
the process has gone, from what it printed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from orchestrator.config import Config
from orchestrator.effects import api_state
from orchestrator.effects.proc import process_start_time

# an operation's status, as ARM reports it, for its run's runState
STATUS_OF_RUN = {"Running": "InProgress", "Canceling": "InProgress", "Succeeded": "Succeeded",
                 "PartiallySucceeded": "Failed", "Failed": "Failed", "Canceled": "Canceled"}
_CHILDREN: dict[int, subprocess.Popen] = {}  # reaped when their operation is next looked at


def start_run(config: Config, state: Any, template_name: str, scope: str) -> str:
    operation_id = api_state.start_operation(state, "run", template_name, scope)
    folder = config.home / "operations"
    folder.mkdir(mode=0o700, exist_ok=True)
    output = folder / f"{operation_id}.json"
    argv = [sys.executable, "-m", "orchestrator", "--home", str(config.home)]
    if config.config_file:
        argv += ["--config", str(config.config_file)]
    with open(output, "wb") as out, open(folder / f"{operation_id}.stderr", "wb") as err:
        child = subprocess.Popen([*argv, "run", template_name, "--json", "--progress", "none"],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
    _CHILDREN[child.pid] = child
    api_state.update_operation(state, operation_id, pid=child.pid, pid_start_time=process_start_time(child.pid),
                               output_path=str(output))
    return operation_id


def refresh(state: Any, operation: dict[str, Any]) -> dict[str, Any]:
    """The operation with its status brought up to date (and stored once it has ended)."""
    if operation["status"] != "InProgress" or operation["kind"] not in ("run", "cancel"):
        return operation
    if operation["kind"] == "cancel":
        run = state.run(operation["run_id"])
        if run is None or run["run_state"] not in ("Running", "Canceling"):
            return _end(state, operation, "Succeeded", None)
        return operation
    child = _CHILDREN.get(operation["pid"] or -1)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(child.pid, None)
    alive = operation["pid"] and process_start_time(operation["pid"]) == operation["pid_start_time"] and \
        not _zombie(operation["pid"])
    run = _run_of(state, operation)
    if run is not None and operation.get("run_id") != run["id"]:
        api_state.update_operation(state, operation["id"], run_id=run["id"])
        operation = {**operation, "run_id": run["id"]}
    if alive or (run is not None and run["run_state"] in ("Running", "Canceling")):
        return operation  # a run whose process died is ended by recovery; the next look reports it
    if run is not None:
        status = STATUS_OF_RUN[run["run_state"]]
        error = None if status in ("Succeeded", "Canceled") else {
            "code": run["run_state"] if run["run_state"] == "PartiallySucceeded" else "RunFailed",
            "message": run["message"] or run["run_state"], "target": run["id"]}
        return _end(state, operation, status, error)
    printed = _printed(operation.get("output_path"))
    message = (printed.get("error") or {}).get("message") or "the run ended before it was recorded"
    return _end(state, operation, "Failed", {"code": "RunFailed", "message": message})


def _run_of(state: Any, operation: dict[str, Any]) -> dict[str, Any] | None:
    if operation.get("run_id"):
        return state.run(operation["run_id"])
    printed = _printed(operation.get("output_path"))
    if printed.get("runId"):
        return state.run(printed["runId"])
    for run in state.runs(operation["template_name"], limit=5):  # the one its process recorded
        if run.get("pid_start_time") == operation["pid_start_time"] and run["pid"] in (operation["pid"], None):
            return run
    return None


def _printed(path: str | None) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text()) if path else {}
    except (OSError, ValueError):
        return {}


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _end(state: Any, operation: dict[str, Any], status: str, error: dict[str, Any] | None) -> dict[str, Any]:
    api_state.update_operation(state, operation["id"], status=status, error=error)
    return api_state.operation(state, operation["id"]) or operation
