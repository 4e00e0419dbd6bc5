"""A fleet's service functions, for every front (`orchestrate run|build` on any host, the worker,
`fleet status`): submit a run to the fleet, dispatch what waits, take over the runs of a host
that stopped answering, and say what each host is doing.

The database is the truth and the broker a wake-up: a run is recorded Queued before a message
is sent, a worker records itself as the run's host in a transaction before it builds, so a
message handed out twice (a broker timeout, a dead worker's redelivery) never builds a run twice.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable

from orchestrator.config import Config
from orchestrator.core import model as m
from orchestrator.core.fleet import STALE_SECONDS, Host, Needs, needs_of, why_unplaceable
from orchestrator.effects import fleet_state
from orchestrator.errors import EnvironmentProblem

WAITING = "queued: waiting for a build host of the fleet"


@dataclass(frozen=True)
class Submitted:
    run_id: str
    message: str  # why it waits, as recorded
    published: bool


def submit(config: Config, state: Any, template: m.ImageTemplate, name: str, template_path: str | None,
           template_sha256: str | None, options: dict[str, Any], *, body: str | None = None,
           parameters: dict[str, Any] | None = None) -> Submitted:
    """Records the run Queued and sends it to its label's queue. A run no live host can take is
    recorded with why, and sent when one can (its worker's dispatch round). The broker down:
    the run stays recorded, EnvironmentProblem says so. `body`/`parameters`: a one-shot build's
    template (a stored template is read by name when the run starts)."""
    needs = needs_of(template)
    request = {"options": options}
    if body is not None:
        request.update(body=body, parameters=parameters or {})
    why = why_unplaceable(needs, fleet_state.hosts(state), time.time())
    run_id = fleet_state.queue_run(state, name, template_path, needs, request, template_sha256, why or WAITING)
    if why:
        return Submitted(run_id, why, False)
    return Submitted(run_id, _send(config, state, run_id, needs), True)


BROKER_AWAY = "the broker could not be reached; a worker sends it when it is back"


def _send(config: Config, state: Any, run_id: str, needs: Needs, reason: str | None = None) -> str:
    from orchestrator.effects.broker import publish

    try:
        publish(config, run_id, needs.label)
    except EnvironmentProblem as exc:
        reason = reason if reason and BROKER_AWAY not in reason else "queued"
        fleet_state.set_message(state, run_id, f"{reason}; {BROKER_AWAY}")
        exc.hint = (f"run {run_id} is recorded Queued; " + (exc.hint or "")).strip()
        raise
    message = f"queued: sent to the {needs.label} queue"
    fleet_state.mark_published(state, run_id, message)
    return message


def dispatch_round(config: Config, state: Any, me: Host, say: Callable[[str], None]) -> None:
    """What each worker does every heartbeat: the runs of hosts that stopped answering go back
    to Queued (or fail, the second time), and the runs no message is out for that this host can
    take are sent (to its queue: any host with the label may take them)."""
    now = time.time()
    for run in fleet_state.orphaned(state, now, STALE_SECONDS):
        if (run["host"] or "").lower() == me.name.lower():
            continue  # this host's own: its recovery knows whether the process lives
        new = fleet_state.release_gone(state, run["id"], run["host"])
        if new:
            say(f"run {run['id']}: its host {run['host']} stopped answering: "
                + ("dispatched again" if new == "Running" else new))
    hosts = None
    for run in fleet_state.unpublished(state):
        needs = Needs.of(json.loads(run["needs"]))
        if me.can_take(needs):
            try:
                _send(config, state, run["id"], needs, run["message"])
            except EnvironmentProblem:
                return  # the broker is down: the next round tries again
            say(f"run {run['id']} ({run['template_name']}): sent to the {needs.label} queue")
            continue
        hosts = hosts if hosts is not None else fleet_state.hosts(state)
        why = why_unplaceable(needs, hosts, now)
        if why and why != run["message"]:
            fleet_state.set_message(state, run["id"], why)


def cancel(config: Config, state: Any, run: dict[str, Any]) -> Any:
    """Cancel of a run another host builds (or none yet): Canceling, then a control message to
    that host's worker, which SIGTERMs the build (its clean-up as on one host); the worker also
    sees Canceling in the database within a heartbeat, should the message not reach it."""
    from orchestrator.effects.broker import send_cancel
    from orchestrator.service.cancel import CancelResult
    from orchestrator.service.runs import AlreadyCanceling, Runs

    run_id = run["id"]
    if fleet_state.cancel_queued(state, run_id):
        return CancelResult(run_id, False, "canceled while queued (no host had taken it)")
    again = False
    try:
        Runs(state).transition(run_id, "cancel")
    except AlreadyCanceling:
        again = True
    host = (state.run(run_id) or run)["host"]
    try:
        answered = send_cancel(config, host, run_id)
    except EnvironmentProblem:
        answered = False
    said = (f"the worker on {host} signalled the build" if answered else
            f"the worker on {host} did not answer; it sees Canceling in the database within {STALE_SECONDS:.0f} s")
    return CancelResult(run_id, again, ("already being canceled; " if again else "cancel requested; ") + said)


def status(config: Config, state: Any, broker_depths: dict[str, int | None] | None = None) -> dict[str, Any]:
    """Hosts (labels, capacity and what is in use, their runs, the last heartbeat) and queues."""
    now = time.time()
    active = state.active_runs()
    hosts = []
    for host in fleet_state.hosts(state):
        runs = [r for r in active if (r.get("host") or "").lower() == host.name.lower()]
        hosts.append({
            "name": host.name, "labels": list(host.labels), "alive": host.alive(now),
            "lastHeartbeat": _stamp(host.heartbeat_at) if host.heartbeat_at else None,
            "heartbeatAgeSeconds": round(now - host.heartbeat_at, 1) if host.heartbeat_at else None,
            "capacity": {"cpus": host.cpus, "memoryMiB": host.memory_mib}, "servesImages": host.images_url,
            "inUse": {"cpus": sum(r.get("cpus") or 0 for r in runs if r.get("admitted_at")),
                      "memoryMiB": sum(r.get("memory_mib") or 0 for r in runs if r.get("admitted_at"))},
            "runs": [{"id": r["id"], "templateName": r["template_name"], "runState": r["run_state"],
                      "runSubState": r["run_sub_state"]} for r in runs]})
    queues: dict[str, dict[str, Any]] = {}
    for run in fleet_state.waiting(state):
        label = json.loads(run["needs"])["label"] if run.get("needs") else "linux"
        entry = queues.setdefault(label, {"label": label, "queued": 0, "runs": []})
        entry["queued"] += 1
        entry["runs"].append({"id": run["id"], "templateName": run["template_name"], "message": run["message"]})
    for label, depth in (broker_depths or {}).items():
        queues.setdefault(label, {"label": label, "queued": 0, "runs": []})["brokerMessages"] = depth
    return {"hosts": hosts, "queues": sorted(queues.values(), key=lambda q: q["label"])}


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
