"""What retention reads and writes in the state database: a template's finished gallery
versions and VHD outputs, what other templates and active runs still point at, and the
record that an output's artifact was deleted (its provisioningState becomes `Deleted`, with
when, by what and why, so `status` never shows a removed file as Succeeded).

A VHD file is removed inside a write transaction (BEGIN IMMEDIATE) that first reads the
active runs' claims: no run can be admitted to write that path meanwhile (admission takes the
same lock), and the outputs are marked in the same transaction as the file goes.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from orchestrator.effects.state import StateStore
from orchestrator.effects.store_state import StoreState

DELETED = "Deleted"


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class RetentionState:
    def __init__(self, state: StateStore) -> None:
        self.state = state
        self.store = StoreState(state)  # its tables exist from here on

    # --- reading -------------------------------------------------------------------------
    def template_names(self) -> list[str]:
        """Every template that has runs or is stored, each once (names compare without case)."""
        with self.state._connect() as db:
            rows = db.execute("SELECT name FROM templates UNION ALL SELECT template_name FROM runs").fetchall()
        names: dict[str, str] = {}
        for row in rows:  # a stored template's spelling first
            names.setdefault(row[0].lower(), row[0])
        return sorted(names.values(), key=str.lower)

    def stored_templates(self) -> list[dict[str, Any]]:
        return self.state.templates()

    def versions(self) -> list[dict[str, Any]]:
        """Every Succeeded gallery image version, with the template whose run published it
        (`template`, None when that run's record is gone)."""
        with self.state._connect() as db:
            rows = db.execute(
                "SELECT o.key, o.resource_id, o.parent_key, o.v_major, o.v_minor, o.v_patch, o.exclude_from_latest, "
                "COALESCE(o.finished_at, o.created_at) AS published_at, r.template_name AS template "
                "FROM store_objects o LEFT JOIN runs r ON r.id = o.run_id "
                "WHERE o.kind = 'ImageVersion' AND o.state = 'Succeeded'").fetchall()
            containers = {r["key"]: r["resource_id"] for r in db.execute(
                "SELECT key, resource_id FROM store_containers WHERE kind = 'ImageDefinition'")}
        found = []
        for row in rows:
            item = dict(row)
            item["definition"] = containers.get(item["parent_key"], item["parent_key"])
            found.append(item)
        return found

    def recorded_at(self, template: str) -> dict[str, float]:
        """Store key -> the newest start of a run of `template` that recorded it as a Succeeded
        output (a run that reused an earlier run's outputs records them too)."""
        with self.state._connect() as db:
            rows = db.execute(
                "SELECT lower(o.artifact_id) AS key, max(r.start_time) AS at FROM run_outputs o "
                "JOIN runs r ON r.id = o.run_id WHERE r.template_name = ? COLLATE NOCASE "
                "AND o.kind = 'SharedImage' AND o.provisioning_state = 'Succeeded' "
                "AND o.artifact_id IS NOT NULL GROUP BY lower(o.artifact_id)", (template,)).fetchall()
        return {r["key"]: r["at"] for r in rows}

    def vhd_outputs(self, template: str | None = None, *, other_than: str | None = None) -> list[dict[str, Any]]:
        """Succeeded VHD outputs (of `template`'s runs, or of every template but `other_than`),
        each with its run's start and template and the internal details (the file's stat)."""
        query = ("SELECT o.run_id, o.name, o.artifact_id AS path, o.details, r.start_time, r.template_name "
                 "FROM run_outputs o JOIN runs r ON r.id = o.run_id WHERE o.kind = 'VHD' "
                 "AND o.provisioning_state = 'Succeeded' AND o.artifact_id IS NOT NULL")
        args: tuple[str, ...] = ()
        if template is not None:
            query, args = query + " AND r.template_name = ? COLLATE NOCASE", (template,)
        elif other_than is not None:
            query, args = query + " AND r.template_name <> ? COLLATE NOCASE", (other_than,)
        with self.state._connect() as db:
            rows = db.execute(query + " ORDER BY r.start_time DESC, o.rowid DESC", args).fetchall()
        return [{**dict(r), "details": json.loads(r["details"] or "{}")} for r in rows]

    def owned(self, path: str) -> bool:
        """Whether orchestrator recorded writing the file at `path` (owned_artifacts)."""
        real = os.path.realpath(path)
        with self.state._connect() as db:
            row = db.execute("SELECT 1 FROM owned_artifacts WHERE path IN (?, ?) LIMIT 1", (path, real)).fetchone()
        return row is not None

    def active_uses(self, alive: Callable[[dict[str, Any]], bool]) -> dict[str, list[str]]:
        """Store key or VHD real path -> the live active runs that use or write it: the store
        objects they recorded using, the version their recorded source resolved to (recorded
        before the use is), and the VHD files they claim."""
        versions = {(v["parent_key"], f"{v['v_major']}.{v['v_minor']}.{v['v_patch']}"): v["key"]
                    for v in self.versions()}
        uses: dict[str, list[str]] = {}
        with self.state._connect() as db:
            store_uses = db.execute("SELECT run_id, object_key FROM store_uses").fetchall()
        by_run: dict[str, list[str]] = {}
        for row in store_uses:
            by_run.setdefault(row["run_id"], []).append(row["object_key"])
        for run in self.state.active_runs():
            if not alive(run):
                continue
            keys = list(by_run.get(run["id"], []))
            source = (run.get("source") or "").lower()
            for (definition, version), key in versions.items():
                if definition and definition in source and run.get("resolved_version") == version:
                    keys.append(key)
            keys += [os.path.realpath(c[5:]) for c in json.loads(run.get("claims") or "[]") if c.startswith("file:")]
            for key in keys:
                uses.setdefault(key, []).append(run["id"])
        return uses

    # --- changing ------------------------------------------------------------------------
    def claim_version(self, key: str, alive: Callable[[dict[str, Any]], bool]) -> str | None:
        """Marks a Succeeded version Deleting (no run resolves it from then on) unless a live
        run uses it; returns why not, or None once it is marked. One write transaction."""
        with self.state.immediate() as db:
            row = db.execute("SELECT state FROM store_objects WHERE key = ?", (key,)).fetchone()
            if row is None or row["state"] != "Succeeded":
                return f"it is {row['state'] if row else 'gone'} now"
            users = db.execute(
                "SELECT r.* FROM store_uses u JOIN runs r ON r.id = u.run_id WHERE (u.object_key = ? OR "
                "u.object_key LIKE ?) AND r.run_state IN ('Running', 'Canceling')", (key, key + "/%")).fetchall()
            live = [dict(r)["id"] for r in users if alive(dict(r))]
            if live:
                return f"in use by active run {', '.join(live)}"
            db.execute("UPDATE store_objects SET state = 'Deleting' WHERE key = ?", (key,))
        return None

    def unclaim_version(self, key: str) -> None:
        self.store.mark(key, "Succeeded")

    def mark_version_outputs(self, key: str, how: dict[str, Any]) -> list[str]:
        """Every Succeeded run output (any run) of the deleted version becomes Deleted; returns
        the run ids."""
        with self.state.immediate() as db:
            marked = _mark(db, "SELECT rowid, run_id, details FROM run_outputs WHERE lower(artifact_id) = ? "
                               "AND kind = 'SharedImage' AND provisioning_state = 'Succeeded'", (key,), how)
        return [run_id for run_id, _ in marked]

    def remove_vhd(self, path: str, how: dict[str, Any], alive: Callable[[dict[str, Any]], bool],
                   template: str) -> tuple[str | None, list[str]]:
        """Removes the file (and the provenance statement recorded beside it) and marks the
        template's outputs that point at it Deleted, in one write transaction that first checks
        no live active run claims it: (why not, or None; the run ids marked). A file already gone
        is only marked."""
        real = os.path.realpath(path)
        with self.state.immediate() as db:
            for run in db.execute("SELECT * FROM runs WHERE run_state IN ('Running', 'Canceling')").fetchall():
                claims = json.loads(run["claims"] or "[]")
                if f"file:{real}" in claims and alive(dict(run)):
                    return f"active run {run['id']} writes it", []
            marked = _mark(db, "SELECT o.rowid, o.run_id, o.details FROM run_outputs o JOIN runs r ON r.id = o.run_id "
                               "WHERE o.artifact_id = ? AND o.kind = 'VHD' AND o.provisioning_state = 'Succeeded' "
                               "AND r.template_name = ? COLLATE NOCASE", (path, template), how)
            Path(path).unlink(missing_ok=True)  # an error here rolls the marks back
        for sidecar in {d.get("provenanceSidecar") for _, d in marked} - {None}:
            if os.path.dirname(sidecar) == os.path.dirname(path) and sidecar.startswith(path):
                Path(sidecar).unlink(missing_ok=True)
        return None, [run_id for run_id, _ in marked]


def deletion(by: str, reason: str, gone: bool = False) -> dict[str, Any]:
    """What a Deleted output records about its artifact's removal."""
    return {"time": _stamp(time.time()), "by": by, "reason": reason,
            **({"note": "the file was already gone"} if gone else {})}


def _mark(db: Any, query: str, args: tuple[Any, ...], how: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Marks the outputs the query selects (rowid, run_id, details) Deleted; (run id, details) of each."""
    marked = []
    for row in db.execute(query, args).fetchall():
        details = json.loads(row["details"] or "{}")
        db.execute("UPDATE run_outputs SET provisioning_state = ?, details = ? WHERE rowid = ?",
                   (DELETED, json.dumps({**details, "deleted": how}), row["rowid"]))
        marked.append((row["run_id"], details))
    return marked
