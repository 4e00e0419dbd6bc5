"""The image store's metadata in the state database: managed images, galleries, image
definitions, image versions, their volumes (one per region) and the runs that use them.

Every change is one transaction. A published object is recorded `Creating` before any
volume is written and becomes `Succeeded` (with its sha256 and the run output) in one
transaction once every volume is complete: only `Succeeded` objects are sources, and
`latest` picks among `Succeeded` versions not excluded from latest. A version number is
allocated inside a write transaction (BEGIN IMMEDIATE), so two publishes never get the same.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable

from orchestrator.core.resource_ids import ResourceId, format_version, parse_version
from orchestrator.effects.state import StateStore, output_row



@dataclass(frozen=True)
class Volume:
    region: str
    pool: str
    volume: str  # the name it has once complete
    partial: str  # the name it is written under
    path: str | None
    replica_count: int = 1
    storage_account_type: str | None = None


class DuplicateObject(Exception):
    """The object (an explicit version, a managed image) exists already."""

    def __init__(self, existing: dict[str, Any]) -> None:
        super().__init__(existing["resource_id"])
        self.existing = existing


class StoreState:
    def __init__(self, state: StateStore) -> None:
        self.state = state
        self._ready = not state.read_only  # a read-only database made before schema 8 lacks the tables

    def _db(self):
        return self.state._connect()

    def _has_tables(self, db) -> bool:
        if self._ready:
            return True
        self._ready = db.has_table("store_objects")
        return self._ready

    # --- creating an object --------------------------------------------------------------
    def begin(self, rid: ResourceId, run_id: str, run_output: str, volumes: Callable[[str, str], list[Volume]],
              *, source: str, tags: dict[str, str], location: str | None, exclude_from_latest: bool = False,
              storage_account_type: str | None = None, os_type: str | None = None,
              version_for: Callable[[list[tuple[int, int, int]]], tuple[int, int, int]] | None = None,
              ) -> tuple[ResourceId, list[Volume]]:
        """Records a managed image or image version as Creating, with the volumes it will have,
        in one write transaction. For a definition ID, `version_for` picks the version from every
        version the definition has (in any state) inside that transaction. Raises DuplicateObject."""
        with self.state.immediate() as db:
            if rid.kind == "ImageDefinition":
                rows = db.execute("SELECT v_major, v_minor, v_patch FROM store_objects WHERE parent_key = ?",
                                  (rid.key,)).fetchall()
                assert version_for is not None
                rid = rid.with_version(format_version(version_for([tuple(r) for r in rows])))
            existing = db.execute("SELECT * FROM store_objects WHERE key = ?", (rid.key,)).fetchone()
            if existing is not None:
                raise DuplicateObject(dict(existing))
            now = time.time()
            parts = parse_version(rid.version or "") if rid.kind == "ImageVersion" else None
            parent = rid.image_definition.key if rid.kind == "ImageVersion" else None
            if parent is not None:
                for container in (rid.gallery, rid.image_definition):
                    db.execute("INSERT INTO store_containers VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING", (
                        container.key, container.kind, container.resource_id,
                        rid.gallery.key if container.kind == "ImageDefinition" else None, now))
            db.execute(
                "INSERT INTO store_objects (key, kind, resource_id, parent_key, version, v_major, v_minor, v_patch, "
                "state, run_id, run_output, source, location, exclude_from_latest, storage_account_type, os_type, "
                "tags, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (rid.key, rid.kind, rid.resource_id, parent, rid.version, *(parts or (None, None, None)),
                 "Creating", run_id, run_output, source, location, int(exclude_from_latest), storage_account_type,
                 os_type, json.dumps(tags), now))
            planned = volumes(rid.key, rid.short)
            for v in planned:
                db.execute("INSERT INTO store_volumes VALUES (?,?,?,?,?,?,?,?)", (
                    rid.key, v.region, v.pool, v.volume, v.partial, v.path, v.replica_count, v.storage_account_type))
        return rid, planned

    def finish(self, key: str, sha256: str, size: int, virtual_size: int, volumes: list[Volume],
               output: tuple[str, str, str, str | None, str | None, dict[str, Any]]) -> None:
        """The object becomes Succeeded (its volumes' paths recorded) and its run output is
        recorded: one transaction."""
        run_id, name, kind, artifact_id, artifact_uri, details = output
        with self._db() as db:
            for v in volumes:
                db.execute("UPDATE store_volumes SET path = ? WHERE object_key = ? AND region = ?",
                           (v.path, key, v.region))
            db.execute("UPDATE store_objects SET state = 'Succeeded', sha256 = ?, size = ?, virtual_size = ?, "
                       "finished_at = ? WHERE key = ?", (sha256, size, virtual_size, time.time(), key))
            db.replace("run_outputs", output_row(run_id, name, kind, artifact_id, artifact_uri, "Succeeded", details),
                       key=("run_id", "name"))

    def forget(self, key: str) -> None:
        """Removes an object and its volume records (its volumes are gone)."""
        with self._db() as db:
            db.execute("DELETE FROM store_volumes WHERE object_key = ?", (key,))
            db.execute("DELETE FROM store_objects WHERE key = ?", (key,))

    def mark(self, key: str, state: str) -> None:
        with self._db() as db:
            db.execute("UPDATE store_objects SET state = ? WHERE key = ?", (state, key))

    # --- reading -------------------------------------------------------------------------
    def get(self, key: str) -> dict[str, Any] | None:
        with self._db() as db:
            if not self._has_tables(db):
                return None
            row = db.execute("SELECT * FROM store_objects WHERE key = ?", (key,)).fetchone()
            return _object(db, dict(row)) if row else None

    def objects(self, kind: str | None = None, parent_key: str | None = None,
                states: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM store_objects WHERE 1=1", []
        if kind:
            query += " AND kind = ?"
            args.append(kind)
        if parent_key:
            query += " AND parent_key = ?"
            args.append(parent_key)
        if states:
            query += f" AND state IN ({','.join('?' * len(states))})"
            args += list(states)
        query += " ORDER BY parent_key, v_major, v_minor, v_patch, key"
        with self._db() as db:
            if not self._has_tables(db):
                return []
            return [_object(db, dict(row)) for row in db.execute(query, args)]

    def latest(self, definition_key: str) -> dict[str, Any] | None:
        """The highest Succeeded version not excluded from latest."""
        with self._db() as db:
            if not self._has_tables(db):
                return None
            row = db.execute(
                "SELECT * FROM store_objects WHERE parent_key = ? AND state = 'Succeeded' AND exclude_from_latest = 0 "
                "ORDER BY v_major DESC, v_minor DESC, v_patch DESC LIMIT 1", (definition_key,)).fetchone()
            return _object(db, dict(row)) if row else None

    def containers(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self._db() as db:
            if not self._has_tables(db):
                return []
            query = "SELECT * FROM store_containers" + (" WHERE kind = ?" if kind else "") + " ORDER BY key"
            return [dict(row) for row in db.execute(query, (kind,) if kind else ())]

    def container(self, key: str) -> dict[str, Any] | None:
        with self._db() as db:
            if not self._has_tables(db):
                return None
            row = db.execute("SELECT * FROM store_containers WHERE key = ?", (key,)).fetchone()
            return dict(row) if row else None

    def forget_container(self, key: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM store_containers WHERE key = ? OR parent_key = ?", (key, key))

    # --- which runs use what -------------------------------------------------------------
    def use(self, run_id: str, key: str, role: str) -> None:
        with self._db() as db:
            db.execute("INSERT INTO store_uses VALUES (?,?,?) ON CONFLICT DO NOTHING", (run_id, key, role))

    def users(self, key: str) -> list[dict[str, Any]]:
        """The runs (with pid and state) recorded as using `key` or anything under it."""
        with self._db() as db:
            if not self._has_tables(db):
                return []
            rows = db.execute(
                "SELECT u.role, u.object_key, r.id, r.run_state, r.pid, r.pid_start_time FROM store_uses u "
                "JOIN runs r ON r.id = u.run_id WHERE (u.object_key = ? OR u.object_key LIKE ?) "
                "AND r.run_state IN ('Running', 'Canceling')", (key, key + "/%")).fetchall()
            return [dict(row) for row in rows]


def _object(db, row: dict[str, Any]) -> dict[str, Any]:
    row["tags"] = json.loads(row.get("tags") or "{}")
    row["exclude_from_latest"] = bool(row["exclude_from_latest"])
    row["volumes"] = [Volume(r["region"], r["pool"], r["volume"], r["partial"], r["path"], r["replica_count"],
                             r["storage_account_type"])
                      for r in db.execute("SELECT * FROM store_volumes WHERE object_key = ? ORDER BY rowid",
                                          (row["key"],))]
    return row
