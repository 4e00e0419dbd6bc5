"""The state database behind one small interface: an SQLite file under the data home (the
embedded default) or PostgreSQL that every host of a fleet reaches, through SQLAlchemy Core.

The state modules write one SQL dialect, the part SQLite and PostgreSQL share (`?` parameters,
`ON CONFLICT DO NOTHING`, `COLLATE NOCASE`, a `rowid` column for insertion order); what differs
is kept here: parameter style, the write lock, DDL types, the schema version, the catalog.

Transactions keep SQLite's guarantees on both: a transaction that writes holds the database's
one write lock until it ends (on PostgreSQL a transaction-scoped advisory lock, taken before its
first change), and `immediate` takes it before the first read.
"""
from __future__ import annotations

import re
import sqlite3
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

import sqlalchemy
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import NullPool, QueuePool

from orchestrator.core.redact import scrub
from orchestrator.errors import EnvironmentProblem

# one key for the whole database: SQLite has one writer at a time, and so has this
WRITE_LOCK_KEY = 0x6F726368  # "orch"


def redact_url(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    return scrub(url)


class Row(tuple):
    """A result row as the state modules use sqlite3.Row: by index, by name, and `dict(row)`."""

    _names: tuple[str, ...] = ()

    def __new__(cls, values: Sequence[Any], names: tuple[str, ...]) -> "Row":
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names.index(key))
        return tuple.__getitem__(self, key)

    def keys(self) -> tuple[str, ...]:
        return self._names


class Result:
    def __init__(self, result: sqlalchemy.CursorResult) -> None:
        self.rowcount = result.rowcount
        if result.returns_rows:
            names = tuple(result.keys())
            self._rows = [Row(tuple(r), names) for r in result.fetchall()]
        else:
            self._rows = []

    def fetchone(self) -> Row | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Row]:
        return list(self._rows)

    def __iter__(self) -> Iterator[Row]:
        return iter(self._rows)


_READS = ("SELECT", "WITH", "PRAGMA")


class Connection:
    """One transaction's connection: `execute(sql, params)` as sqlite3 has it."""

    def __init__(self, conn: sqlalchemy.Connection, dialect: str, *, locked: bool) -> None:
        self._conn = conn
        self.dialect = dialect
        self._locked = locked or dialect == "sqlite"  # SQLite upgrades its own lock on the first write

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        self._before(sql)
        return Result(self._conn.exec_driver_sql(self._native(sql), tuple(params)))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = [tuple(r) for r in rows]
        if rows:
            self._before(sql)
            self._conn.exec_driver_sql(self._native(sql), rows)

    def replace(self, table: str, row: dict[str, Any], key: Sequence[str]) -> None:
        """SQLite's INSERT OR REPLACE: the row with this key (if any) goes, the new one is
        inserted (last, in insertion order)."""
        self.execute(f"DELETE FROM {table} WHERE " + " AND ".join(f"{k} = ?" for k in key), [row[k] for k in key])
        self.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                     list(row.values()))

    def lock(self) -> None:
        """Takes the database's write lock now (held to the end of the transaction)."""
        if not self._locked:
            self._conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
            self._locked = True

    def _before(self, sql: str) -> None:
        if not self._locked and not sql.lstrip().upper().startswith(_READS):
            self.lock()

    def _native(self, sql: str) -> str:
        if self.dialect == "sqlite":
            return sql
        return postgresql_sql(sql)

    # --- the catalog, as each dialect keeps it -----------------------------------------------
    def columns(self, table: str) -> set[str]:
        if self.dialect == "sqlite":
            return {row[1] for row in self.execute(f"PRAGMA table_info({table})")}
        return {row[0] for row in self.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = ?", (table,))}

    def has_table(self, table: str) -> bool:
        if self.dialect == "sqlite":
            return self.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone() is not None
        return self.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() "
                            "AND table_name = ?", (table,)).fetchone() is not None

    def ddl(self, statement: str) -> None:
        """A schema statement written for SQLite, in this dialect (types PostgreSQL sizes
        differently: REAL is a 4-byte float there, INTEGER 4 bytes)."""
        if self.dialect == "postgresql":
            statement = re.sub(r"\bREAL\b", "DOUBLE PRECISION", statement)
            statement = re.sub(r"\bINTEGER\b", "BIGINT", statement)
        self.execute(statement)

    def add_rowid(self, table: str) -> None:
        """Insertion order, as SQLite's implicit rowid gives it (PostgreSQL: a serial column)."""
        if self.dialect == "postgresql" and "rowid" not in self.columns(table):
            self.execute(f"ALTER TABLE {table} ADD COLUMN rowid BIGSERIAL")


_PLACEHOLDER = re.compile(r"'[^']*'|\?|%")


def postgresql_sql(sql: str) -> str:
    """`?` parameters as psycopg's `%s` (a literal % doubled), outside quoted strings."""
    def swap(match: re.Match[str]) -> str:
        text = match.group(0)
        return "%s" if text == "?" else "%%" if text == "%" else text
    return _PLACEHOLDER.sub(swap, sql)


class Database:
    """An engine and how to open transactions on it. `url` is `sqlite:///PATH` or
    `postgresql://USER:PASSWORD@HOST[:PORT]/NAME`; `label` names it in messages (no password)."""

    def __init__(self, url: str, *, read_only: bool = False, lock_timeout: float = 30.0) -> None:
        self.url = url
        self.label = redact_url(url)
        self.read_only = read_only
        scheme = url.split(":", 1)[0].split("+", 1)[0]
        if scheme == "sqlite":
            self.dialect = "sqlite"
            path = url.split(":///", 1)[1]
            if read_only:
                from pathlib import Path
                target, uri = f"{Path(path).resolve().as_uri()}?mode=ro", True
            else:
                target, uri = path, False

            def connect() -> sqlite3.Connection:
                db = sqlite3.connect(target, uri=uri, timeout=lock_timeout, isolation_level=None,
                                     check_same_thread=False)
                return db
            # a connection per transaction, as the processes that share the file expect
            self.engine = sqlalchemy.create_engine("sqlite://", creator=connect, poolclass=NullPool)
            sqlalchemy.event.listen(self.engine, "begin", _sqlite_begin)
        elif scheme in ("postgresql", "postgres"):
            self.dialect = "postgresql"
            driver_url = re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)
            options = "-c default_transaction_read_only=on" if read_only else ""
            self.engine = sqlalchemy.create_engine(
                driver_url, poolclass=QueuePool, pool_size=2, max_overflow=8, pool_pre_ping=True,
                connect_args={"connect_timeout": max(1, int(lock_timeout // 3)), "options": options,
                              "application_name": "orchestrator"})
        else:
            raise ValueError(f"not a database URL orchestrator knows: {self.label}")

    @contextmanager
    def transaction(self, *, immediate: bool = False) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        with self.engine.connect() as conn:
            if immediate:
                conn = conn.execution_options(orchestrator_immediate=True)
            with conn.begin():
                db = Connection(conn, self.dialect, locked=False)
                if immediate:
                    db.lock()
                yield db

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """Statements outside a transaction (SQLite's PRAGMAs that cannot run inside one)."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            yield Connection(conn, self.dialect, locked=True)

    def raw(self) -> Any:
        """A DBAPI connection of the engine's (held idle by a long-lived server)."""
        return self.engine.raw_connection()

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_begin(conn: sqlalchemy.Connection) -> None:
    # sqlite3 runs in autocommit (isolation_level None) and the transaction is begun here, so
    # that BEGIN IMMEDIATE and a plain BEGIN are both SQLAlchemy's transaction
    options = conn.get_execution_options()
    if options.get("isolation_level") == "AUTOCOMMIT":
        return
    immediate = options.get("orchestrator_immediate")
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def postgresql_problem(label: str, text: str) -> EnvironmentProblem:
    """What a PostgreSQL error means to the person who ran the command (exit 6, with a hint)."""
    lowered = text.lower()
    if "connection" in lowered and ("refused" in lowered or "timeout" in lowered or "timed out" in lowered
                                    or "could not" in lowered or "no route" in lowered or "closed" in lowered):
        return EnvironmentProblem(
            f"the state database {label} cannot be reached: {text}",
            hint="start PostgreSQL (or check [fleet] database: host, port, database name); a run "
                 "submitted meanwhile was not recorded, so submit it again once the database is back")
    if "password authentication failed" in lowered or "authentication" in lowered:
        return EnvironmentProblem(
            f"the state database {label} refused the credentials: {text}",
            hint="check the user and password in [fleet] database (or the file it names)")
    if "does not exist" in lowered and "database" in lowered:
        return EnvironmentProblem(f"the state database {label} does not exist: {text}",
                                  hint="create it (createdb -O USER NAME on the control host), then run the command again")
    return EnvironmentProblem(f"the state database {label} cannot be used: {text}",
                              hint="check PostgreSQL's log on the control host")


def database_error_text(exc: BaseException) -> str:
    """The driver's own message of a SQLAlchemy error (without SQLAlchemy's SQL echo)."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        return str(exc.orig).strip()
    return str(exc).strip()


DatabaseError = (sa_exc.SQLAlchemyError, sqlite3.Error)
