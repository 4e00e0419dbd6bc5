"""Run state, run outputs and the base image catalog, in one SQLite file under the data home."""
from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from orchestrator.effects.database import Connection, Database, DatabaseError, database_error_text, postgresql_problem
from orchestrator.effects.state_schema import SCHEMA_VERSION, check_version, migrate, needs_migration
from orchestrator.errors import EnvironmentProblem


@dataclass(frozen=True)
class ImageRecord:
    publisher: str
    offer: str
    sku: str
    version: str
    path: str
    format: str
    virtual_size: int
    sha256: str
    imported_at: float


LOCK_TIMEOUT_SECONDS = 30.0


class StateStore:
    """Every method is one transaction. `read_only` opens an existing database without creating
    or changing anything (validate and plan must not create the data home). `path` is the SQLite
    file under the data home; `url`, when given, a fleet's PostgreSQL database instead."""

    def __init__(self, path: Path | None, *, read_only: bool = False, lock_timeout: float = LOCK_TIMEOUT_SECONDS,
                 url: str | None = None) -> None:
        self.path = path
        self.read_only = read_only
        self.lock_timeout = lock_timeout
        self._held: Any = None
        self.host: str | None = None  # a fleet's: the build host this process speaks for
        self.version = SCHEMA_VERSION
        if url is None:
            assert path is not None
            if not read_only and not path.exists():  # owner-only from the start: it names every run and artifact
                try:
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                except FileExistsError:  # another first command made it meanwhile
                    pass
            url = f"sqlite:///{path}"
        self.database = Database(url, read_only=read_only, lock_timeout=lock_timeout)
        self.label = str(path) if self.database.dialect == "sqlite" else self.database.label
        if read_only:
            with self._connect() as db:
                self.version = check_version(db, self.label)
            return
        try:
            with self.database.transaction() as db:
                stale = needs_migration(db, self.label)
            if stale:
                with self.database.transaction(immediate=True) as db:
                    migrate(db, self.label)
            if self.database.dialect == "sqlite":
                with self.database.autocommit() as db:
                    db.execute("PRAGMA journal_mode = WAL")  # persistent: set once, outside a transaction
        except DatabaseError as exc:
            raise self._problem(exc) from None

    @classmethod
    def for_config(cls, config: Any, *, read_only: bool = False) -> "StateStore | None":
        """The state of this data home, or of the fleet's database when [fleet] names one;
        read-only: None if a data home never recorded anything."""
        if config.fleet is not None:
            state = cls(None, url=config.fleet.database_url, read_only=read_only)
            state.host = config.fleet.host
            return None if read_only and state.version == 0 else state  # a fleet that never recorded anything
        if read_only:
            return cls.existing(config.db_path)
        return cls(config.db_path)

    def hold_open(self) -> None:
        """Keeps one idle connection for the life of this store (a long-lived server). Every call
        still has its own connection and transaction, but closing it is never closing the last
        one: SQLite then checkpoints and deletes the WAL (an fsync and an exclusive lock that the
        next call's open waits for) on every call. Idle, it pins no snapshot."""
        if self._held is None and self.database.dialect == "sqlite":
            held = self.database.raw()
            cursor = held.cursor()
            cursor.execute("SELECT count(*) FROM sqlite_master")  # the WAL's shared lock, from now on
            cursor.fetchone()
            self._held = held

    @classmethod
    def existing(cls, path: Path) -> "StateStore | None":
        """The database if there is one, opened read-only; None if nothing was ever recorded."""
        return cls(path, read_only=True) if path.is_file() else None

    @property
    def dialect(self) -> str:
        return self.database.dialect

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        """One transaction; a change takes the write lock, held until it commits."""
        try:
            with self.database.transaction() as db:
                yield db
        except DatabaseError as exc:
            raise self._problem(exc) from None

    def transaction(self):
        """One transaction, for a module that keeps tables of its own (a change takes the lock)."""
        return self._connect()

    @contextmanager
    def immediate(self) -> Iterator[Connection]:
        """A write transaction that takes the write lock before the first read (SQLite's BEGIN
        IMMEDIATE): what it reads cannot change before it writes (admission, template create,
        version allocation)."""
        try:
            with self.database.transaction(immediate=True) as db:
                yield db
        except DatabaseError as exc:
            raise self._problem(exc) from None

    def _problem(self, exc: BaseException) -> EnvironmentProblem:
        text = database_error_text(exc)
        if self.database.dialect == "postgresql":
            return postgresql_problem(self.label, text)
        if "locked" in text or "busy" in text:
            return EnvironmentProblem(
                f"the state database {self.label} is locked: another process held it for more than "
                f"{self.lock_timeout:.0f} s", hint="wait for the other orchestrate process to finish (or stop it), "
                "then run the command again")
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            return EnvironmentProblem(
                f"the state database {self.label} is corrupt ({text})",
                hint=f"move it aside (mv {self.label} {self.label}.broken) to start a new one; "
                     "built images and logs under the data home stay where they are")
        return EnvironmentProblem(f"the state database {self.label} cannot be used: {text}",
                                  hint="check the file, its permissions and the free disk space")

    # --- catalog -------------------------------------------------------------------------
    def add_image(self, record: ImageRecord) -> None:
        with self._connect() as db:
            db.replace("images", dataclasses.asdict(record), key=("publisher", "offer", "sku", "version"))

    def images(self, publisher: str | None = None, offer: str | None = None,
               sku: str | None = None) -> list[ImageRecord]:
        query, args = "SELECT * FROM images WHERE 1=1", []
        for column, value in (("publisher", publisher), ("offer", offer), ("sku", sku)):
            if value is not None:
                query += f" AND {column} = ?"
                args.append(value)
        with self._connect() as db:
            return [ImageRecord(**dict(row)) for row in db.execute(query, args)]

    # --- runs ----------------------------------------------------------------------------
    def start_run(self, template_name: str, template_path: str | None, log_path_for: Any, *,
                  pid: int | None = None, pid_start_time: int | None = None,
                  template_sha256: str | None = None) -> str:
        """A new run, Running/Queued, with the process that runs it from its first instant (so
        that recovery never takes a run being started for a dead one)."""
        run_id = new_run_id()
        with self._connect() as db:
            db.execute(
                "INSERT INTO runs (id, template_name, template_path, run_state, run_sub_state, "
                "log_path, start_time, pid, pid_start_time, template_sha256, host) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, template_name, template_path, "Running", "Queued", str(log_path_for(run_id)),
                 time.time(), pid, pid_start_time, template_sha256, self.host))
        return run_id

    def is_local(self, run: dict[str, Any]) -> bool:
        """Whether this host builds the run (its pid means something here): every run on one
        host; in a fleet, the runs recorded with this host's name."""
        return self.host is None or (run.get("host") or "").lower() == self.host.lower()

    def update_run(self, run_id: str, **fields: Any) -> None:
        if not fields:
            return
        columns = ", ".join(f"{name} = ?" for name in fields)
        with self._connect() as db:
            db.execute(f"UPDATE runs SET {columns} WHERE id = ?", (*fields.values(), run_id))

    def run(self, run_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return dict(row) if row else None

    def runs(self, template_name: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM runs", []
        if template_name:
            query += " WHERE template_name = ? COLLATE NOCASE"
            args.append(template_name)
        query += " ORDER BY start_time DESC, rowid DESC LIMIT ?"
        args.append(limit)
        with self._connect() as db:
            return [dict(row) for row in db.execute(query, args)]

    def active_runs(self) -> list[dict[str, Any]]:
        """Runs not ended (Running or Canceling), oldest first: the queue's order."""
        with self._connect() as db:
            return [dict(row) for row in db.execute(
                "SELECT * FROM runs WHERE run_state IN ('Running', 'Canceling') ORDER BY rowid")]

    def last_success(self, template_name: str, build_digest: str | None = None) -> dict[str, Any] | None:
        """The newest successful run of a template (with this build digest, if given)."""
        digest_rule, args = ("AND build_digest = ? ", (template_name, build_digest)) if build_digest else ("", (template_name,))
        with self._connect() as db:
            row = db.execute(
                f"SELECT * FROM runs WHERE template_name = ? {digest_rule}AND run_state = 'Succeeded' "
                "ORDER BY start_time DESC LIMIT 1", args).fetchone()
        return dict(row) if row else None

    def set_output(self, run_id: str, name: str, kind: str, state: str, artifact_id: str | None = None,
                   artifact_uri: str | None = None, details: dict[str, Any] | None = None) -> None:
        with self._connect() as db:
            db.replace("run_outputs", output_row(run_id, name, kind, artifact_id, artifact_uri, state, details),
                       key=("run_id", "name"))
            if artifact_id and state == "Succeeded":
                db.execute("INSERT INTO owned_artifacts VALUES (?,?,?) ON CONFLICT DO NOTHING",
                           (artifact_id, run_id, time.time()))

    def outputs(self, run_id: str, internal: bool = False) -> list[dict[str, Any]]:
        """The run outputs in AIB's shape; `internal` adds orchestrator's own bookkeeping keys
        (those starting with `_`, such as a file's recorded stat)."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM run_outputs WHERE run_id = ? ORDER BY rowid", (run_id,)).fetchall()
        return [_output(dict(row), internal) for row in rows]

    def wrote_artifact(self, path: str) -> bool:
        """Whether a run output of orchestrator's is (or was) the file at `path`."""
        with self._connect() as db:
            row = db.execute("SELECT 1 FROM owned_artifacts WHERE path = ? UNION ALL "
                             "SELECT 1 FROM run_outputs WHERE artifact_id = ? LIMIT 1", (path, path)).fetchone()
        return row is not None

    def latest_output(self, template_name: str, name: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT o.* FROM run_outputs o JOIN runs r ON r.id = o.run_id "
                "WHERE r.template_name = ? AND o.name = ? COLLATE NOCASE ORDER BY r.start_time DESC LIMIT 1",
                (template_name, name)).fetchone()
        return _output(dict(row)) if row else None


    # --- stored templates ------------------------------------------------------------------
    def put_template(self, name: str, body: str, parameters: dict[str, Any], file_path: str | None,
                     sha256: str, *, update: bool,
                     also: Callable[[Connection], None] | None = None) -> str:
        """Stores a template: "created", "unchanged" (same hash), "updated" (`update`), or
        "conflict" (another body is stored and `update` is false). One write transaction, so
        two concurrent creates of one name store one body; `also` writes with it (the REST
        API's resource row), unless the verdict is "conflict"."""
        now = time.time()
        with self.immediate() as db:
            row = db.execute("SELECT sha256 FROM templates WHERE name = ?", (name,)).fetchone()
            if row is not None and row["sha256"] != sha256 and not update:
                return "conflict"
            if also is not None:
                also(db)
            if row is None:
                db.execute("INSERT INTO templates VALUES (?,?,?,?,?,?,?)",
                           (name, body, json.dumps(parameters), file_path, sha256, now, now))
                return "created"
            if row["sha256"] == sha256:
                return "unchanged"
            db.execute("UPDATE templates SET body = ?, parameters = ?, file_path = ?, sha256 = ?, updated_at = ? "
                       "WHERE name = ?", (body, json.dumps(parameters), file_path, sha256, now, name))
            return "updated"

    def template(self, name: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM templates WHERE name = ?", (name,)).fetchone()
        return template_record(dict(row)) if row else None

    def templates(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            return [template_record(dict(row)) for row in db.execute("SELECT * FROM templates ORDER BY name")]

    def delete_template(self, name: str) -> tuple[str, list[dict[str, Any]]]:
        """Removes a stored template and its run records in one transaction: ("deleted", runs),
        ("active", runs still running) or ("missing", []). Artifacts and their ownership stay."""
        with self.immediate() as db:
            row = db.execute("SELECT name FROM templates WHERE name = ?", (name,)).fetchone()
            if row is None:
                return "missing", []
            runs = [dict(r) for r in db.execute("SELECT * FROM runs WHERE template_name = ? COLLATE NOCASE",
                                                (row["name"],))]
            active = [r for r in runs if r["run_state"] in ("Running", "Canceling")]
            if active:
                return "active", active
            ids = [r["id"] for r in runs]
            db.executemany("DELETE FROM run_outputs WHERE run_id = ?", [(i,) for i in ids])
            db.executemany("DELETE FROM run_log WHERE run_id = ?", [(i,) for i in ids])
            db.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in ids])
            db.execute("DELETE FROM templates WHERE name = ?", (row["name"],))
            db.execute("DELETE FROM template_resources WHERE name = ?", (row["name"],))  # its REST resource
            return "deleted", runs


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]


def output_row(run_id: str, name: str, kind: str, artifact_id: str | None, artifact_uri: str | None,
               state: str, details: dict[str, Any] | None) -> dict[str, Any]:
    """A run_outputs row, as `Connection.replace` takes it."""
    return {"run_id": run_id, "name": name, "kind": kind, "artifact_id": artifact_id, "artifact_uri": artifact_uri,
            "provisioning_state": state, "details": json.dumps(details or {})}


def _output(row: dict[str, Any], internal: bool = False) -> dict[str, Any]:
    """A run output in AIB's shape."""
    details = json.loads(row.get("details") or "{}")
    if not internal:
        details = {k: v for k, v in details.items() if not k.startswith("_")}
    return {
        "name": row["name"],
        "runId": row["run_id"],
        "type": row["kind"],
        "properties": {
            "artifactId": row["artifact_id"],
            "artifactUri": row["artifact_uri"],
            "provisioningState": row["provisioning_state"],
            **details,
        },
    }


def template_record(row: dict[str, Any]) -> dict[str, Any]:
    """A templates row with its parameters decoded."""
    return {**row, "parameters": json.loads(row["parameters"] or "{}")}
