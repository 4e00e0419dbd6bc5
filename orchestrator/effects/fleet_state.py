"""The fleet's records in the state database: the build hosts and their heartbeats, runs
waiting for a host, which host builds which run. Every change is one transaction; the ones that
decide who builds a run take the write lock first, so two hosts never both take one."""
from __future__ import annotations

import json
import time
from typing import Any

from orchestrator.core.fleet import STALE_SECONDS, Host, Needs, after_host_gone
from orchestrator.effects.state import new_run_id


def register_host(state: Any, name: str, labels: tuple[str, ...], cpus: int, memory_mib: int, pid: int,
                  images_url: str | None = None) -> None:
    now = time.time()
    with state.immediate() as db:
        db.replace("fleet_hosts", {"name": name, "labels": json.dumps(list(labels)), "cpus": cpus,
                                   "memory_mib": memory_mib, "pid": pid, "started_at": now, "heartbeat_at": now,
                                   "images_url": images_url},
                   key=("name",))


def beat(state: Any, name: str) -> None:
    with state.immediate() as db:
        db.execute("UPDATE fleet_hosts SET heartbeat_at = ? WHERE name = ?", (time.time(), name))


def leave(state: Any, name: str) -> None:
    """A worker that stops cleanly: its host takes no runs until it starts again."""
    with state.immediate() as db:
        db.execute("UPDATE fleet_hosts SET heartbeat_at = 0, pid = NULL WHERE name = ?", (name,))


def hosts(state: Any) -> list[Host]:
    with state.transaction() as db:
        rows = db.execute("SELECT * FROM fleet_hosts ORDER BY name").fetchall()
    return [Host(r["name"], tuple(json.loads(r["labels"])), r["cpus"], r["memory_mib"], r["heartbeat_at"],
                 r["images_url"]) for r in rows]


def queue_run(state: Any, template_name: str, template_path: str | None, needs: Needs, request: dict[str, Any],
              template_sha256: str | None, message: str) -> str:
    """A run recorded Queued with no host: a worker that takes it records itself."""
    run_id = new_run_id()
    with state.immediate() as db:
        db.execute(
            "INSERT INTO runs (id, template_name, template_path, run_state, run_sub_state, message, start_time, "
            "template_sha256, needs, request, dispatches, cpus, memory_mib) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (run_id, template_name, template_path, "Running", "Queued", message, time.time(), template_sha256,
             json.dumps(needs.as_dict()), json.dumps(request), 0, needs.cpus, needs.memory_mib))
    return run_id


def mark_published(state: Any, run_id: str, message: str) -> None:
    with state.immediate() as db:
        db.execute("UPDATE runs SET published_at = ?, message = ? WHERE id = ? AND host IS NULL",
                   (time.time(), message, run_id))


def set_message(state: Any, run_id: str, message: str) -> None:
    with state.immediate() as db:
        db.execute("UPDATE runs SET message = ? WHERE id = ? AND host IS NULL", (message, run_id))


def claim(state: Any, run_id: str, host: str, pid: int, pid_start_time: int | None) -> tuple[str, dict[str, Any] | None]:
    """Takes the run for `host`: ("claimed", run); ("ended", run) if it is over; ("busy", run)
    if another host that is alive builds it (a message handed out again); ("gone", run) if
    the host recorded for it stopped answering (the caller decides whether to take it over)."""
    with state.immediate() as db:
        row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            return "missing", None
        run = dict(row)
        if run["run_state"] not in ("Running", "Canceling"):
            return "ended", run
        if run["host"] and run["host"].lower() != host.lower():
            other = db.execute("SELECT heartbeat_at FROM fleet_hosts WHERE name = ?", (run["host"],)).fetchone()
            if other is not None and time.time() - other["heartbeat_at"] <= STALE_SECONDS:
                return "busy", run
            return "gone", run
        if run["host"]:  # this host's own, handed to it again: it is being built here, or it died here
            return "busy", run
        db.execute("UPDATE runs SET host = ?, pid = ?, pid_start_time = ?, dispatches = COALESCE(dispatches, 0) + 1, "
                   "admitted_at = NULL WHERE id = ?", (host, pid, pid_start_time, run_id))
        run.update(host=host, pid=pid, pid_start_time=pid_start_time, dispatches=(run["dispatches"] or 0) + 1)
        return "claimed", run


def cancel_queued(state: Any, run_id: str) -> bool:
    """Ends a run no host has taken yet (Canceled); False if one has (or it ended)."""
    with state.immediate() as db:
        changed = db.execute("UPDATE runs SET run_state = 'Canceled', end_time = ?, message = ? WHERE id = ? "
                             "AND host IS NULL AND run_state IN ('Running', 'Canceling')",
                             (time.time(), "canceled while queued, before a build host took it", run_id)).rowcount
    return changed == 1


def unclaim(state: Any, run_id: str, message: str) -> None:
    """A run a host took and may not build, back to Queued with no message out for it."""
    with state.immediate() as db:
        db.execute("UPDATE runs SET host = NULL, pid = NULL, pid_start_time = NULL, published_at = NULL, "
                   "dispatches = dispatches - 1, message = ? WHERE id = ?", (message, run_id))


def release_gone(state: Any, run_id: str, gone_host: str) -> str | None:
    """The run of a host that stopped answering, back to Queued with no host (to be dispatched
    again) or Failed when it was dispatched twice already; None if meanwhile it is not that
    host's any more. Returns the new runState."""
    with state.immediate() as db:
        row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None or row["run_state"] not in ("Running", "Canceling") or (row["host"] or "") != gone_host:
            return None
        beat_row = db.execute("SELECT heartbeat_at FROM fleet_hosts WHERE name = ?", (gone_host,)).fetchone()
        age = time.time() - (beat_row["heartbeat_at"] if beat_row else 0)
        verdict, message = after_host_gone(dict(row), gone_host, age)
        if verdict == "fail" or row["run_state"] == "Canceling":
            state_after = "Canceled" if row["run_state"] == "Canceling" else "Failed"
            db.execute("UPDATE runs SET run_state = ?, message = ?, end_time = ?, pid = NULL, pid_start_time = NULL "
                       "WHERE id = ?", (state_after, message, time.time(), run_id))
            return state_after
        db.execute("UPDATE runs SET host = NULL, pid = NULL, pid_start_time = NULL, admitted_at = NULL, "
                   "run_sub_state = 'Queued', message = ?, published_at = NULL WHERE id = ?", (message, run_id))
        return "Running"


def orphaned(state: Any, now: float, stale_after: float) -> list[dict[str, Any]]:
    """Active runs whose host stopped answering."""
    with state.transaction() as db:
        rows = db.execute(
            "SELECT r.*, h.heartbeat_at AS host_heartbeat FROM runs r LEFT JOIN fleet_hosts h ON h.name = r.host "
            "WHERE r.run_state IN ('Running', 'Canceling') AND r.host IS NOT NULL").fetchall()
    return [dict(r) for r in rows if now - (r["host_heartbeat"] or 0) > stale_after]


def unpublished(state: Any) -> list[dict[str, Any]]:
    """Queued runs that no message is out for (the broker was down, or no host could take it)."""
    with state.transaction() as db:
        rows = db.execute("SELECT * FROM runs WHERE run_state = 'Running' AND host IS NULL AND published_at IS NULL "
                          "ORDER BY rowid").fetchall()
    return [dict(r) for r in rows]


def waiting(state: Any) -> list[dict[str, Any]]:
    """Runs without a host yet, oldest first (the queues' depth, per label)."""
    with state.transaction() as db:
        rows = db.execute("SELECT * FROM runs WHERE run_state IN ('Running', 'Canceling') AND host IS NULL "
                          "ORDER BY rowid").fetchall()
    return [dict(r) for r in rows]
