"""The state database's schema and its migrations, numbered: SQLite keeps the number in its
`user_version`, PostgreSQL in the one-row table `orchestrator_schema`.

A database is brought up to SCHEMA_VERSION in one write transaction when it is opened; one
made by a newer orchestrator (a higher version) is refused rather than changed, since this
version does not know what the newer columns mean. The statements are SQLite's; the database
layer (effects/database.py) gives PostgreSQL its sizes of the same types, and its tables that
are read in insertion order a `rowid` column. On SQLite, WAL lets readers (status, logs -f, the
admission queue) work while a build writes.
"""
from __future__ import annotations

from orchestrator.effects.database import Connection
from orchestrator.errors import EnvironmentProblem

_V1 = """
CREATE TABLE IF NOT EXISTS images (
    publisher TEXT NOT NULL COLLATE NOCASE,
    offer TEXT NOT NULL COLLATE NOCASE,
    sku TEXT NOT NULL COLLATE NOCASE,
    version TEXT NOT NULL,
    path TEXT NOT NULL,
    format TEXT NOT NULL,
    virtual_size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    imported_at REAL NOT NULL,
    PRIMARY KEY (publisher, offer, sku, version)
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    template_name TEXT NOT NULL,
    template_path TEXT,
    build_digest TEXT,
    run_state TEXT NOT NULL,
    run_sub_state TEXT,
    message TEXT,
    source TEXT,
    resolved_version TEXT,
    log_path TEXT,
    start_time REAL NOT NULL,
    end_time REAL,
    pid INTEGER,
    pid_start_time INTEGER
);
CREATE TABLE IF NOT EXISTS run_outputs (
    run_id TEXT NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    artifact_id TEXT,
    artifact_uri TEXT,
    provisioning_state TEXT NOT NULL,
    details TEXT,
    PRIMARY KEY (run_id, name)
);
"""

# Version 2: stored templates, what a run holds while it runs (its staging, its share of the
# host, the outputs it claims), and which files orchestrator wrote, kept apart from run
# records so that deleting a template's runs does not make its VHDs foreign files.
_V2 = """
CREATE TABLE IF NOT EXISTS templates (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    body TEXT NOT NULL,
    parameters TEXT NOT NULL,
    file_path TEXT,
    sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS owned_artifacts (
    path TEXT PRIMARY KEY,
    run_id TEXT,
    written_at REAL NOT NULL
);
INSERT INTO owned_artifacts (path, run_id, written_at)
    SELECT artifact_id, run_id, 0 FROM run_outputs WHERE artifact_id IS NOT NULL ON CONFLICT DO NOTHING;
CREATE INDEX IF NOT EXISTS runs_by_template ON runs(template_name);
CREATE INDEX IF NOT EXISTS runs_by_state ON runs(run_state);
"""
_V2_COLUMNS = (("runs", "staging_dir", "TEXT"), ("runs", "temp_dir", "TEXT"), ("runs", "cpus", "INTEGER"),
               ("runs", "memory_mib", "INTEGER"), ("runs", "claims", "TEXT"), ("runs", "admitted_at", "REAL"),
               ("runs", "console_path", "TEXT"), ("runs", "template_sha256", "TEXT"))

# v3: the deploy proof's result (JSON: each check, pass/fail, boot time) and the fingerprint's
# parts (JSON: what the build digest was made of, so `plan` can say what changed)
_V3_COLUMNS = (("runs", "proof", "TEXT"), ("runs", "fingerprint", "TEXT"))

# v4: SourceImage triggers of stored templates (`orchestrate trigger create`); a nightly run
# builds a triggered template when its source has a version its last successful run did not use
_V4 = """
CREATE TABLE IF NOT EXISTS triggers (
    template_name TEXT NOT NULL COLLATE NOCASE,
    name TEXT NOT NULL COLLATE NOCASE,
    kind TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (template_name, name)
);
"""

# v5: disk checkpoints after each customizer (one qcow2 layer each, keyed by the fingerprint
# of everything up to that step; `parent` is the layer below, NULL for one on the source image)
# and where a run started from (a checkpoint's layer: never evicted while the run is active)
_V5 = """
CREATE TABLE IF NOT EXISTS checkpoints (
    path TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    parent TEXT,
    run_id TEXT NOT NULL,
    template_name TEXT NOT NULL,
    step_index INTEGER NOT NULL,
    step_name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    stat TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_used_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS checkpoints_by_key ON checkpoints(key)
"""
_V5_COLUMNS = (("runs", "started_from", "TEXT"),)

# v6: warm checkpoints: the VM state saved with a checkpoint's layer, bound to the layer's
# sha256 and the machine it was saved from; how each run started (full, cold, warm)
_V6 = """
CREATE TABLE IF NOT EXISTS warm_states (
    layer_path TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    layer_sha256 TEXT NOT NULL,
    machine TEXT NOT NULL,
    key_path TEXT NOT NULL,
    public_key TEXT NOT NULL,
    pause_seconds REAL NOT NULL,
    created_at REAL NOT NULL
)
"""
_V6_COLUMNS = (("runs", "start_mode", "TEXT"), ("runs", "restore_seconds", "REAL"))

# v7: the REST API (orchestrate serve): its bearer tokens (a hash each, never the token), the
# Azure resource each stored template is (subscription, resource group, tags, identity), and the
# long-running operations it answered with Azure-AsyncOperation
_V7 = """
CREATE TABLE IF NOT EXISTS api_tokens (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    scope TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS template_resources (
    name TEXT PRIMARY KEY,
    subscription TEXT NOT NULL,
    resource_group TEXT NOT NULL,
    location TEXT NOT NULL,
    tags TEXT NOT NULL,
    identity TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS operations (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    template_name TEXT NOT NULL,
    scope TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    run_id TEXT,
    pid INTEGER,
    pid_start_time INTEGER,
    output_path TEXT,
    created_at REAL NOT NULL,
    ended_at REAL
)
"""

# v8: the image store's tables (managed images, galleries, definitions, versions, their volumes
# and who uses them), made until now by the store on its first use
_V8 = """
CREATE TABLE IF NOT EXISTS store_objects (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    parent_key TEXT,
    version TEXT,
    v_major INTEGER, v_minor INTEGER, v_patch INTEGER,
    state TEXT NOT NULL,
    run_id TEXT,
    run_output TEXT,
    source TEXT,
    sha256 TEXT,
    size INTEGER,
    virtual_size INTEGER,
    location TEXT,
    exclude_from_latest INTEGER NOT NULL DEFAULT 0,
    storage_account_type TEXT,
    tags TEXT,
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS store_objects_parent ON store_objects(parent_key);
CREATE TABLE IF NOT EXISTS store_volumes (
    object_key TEXT NOT NULL,
    region TEXT NOT NULL,
    pool TEXT NOT NULL,
    volume TEXT NOT NULL,
    partial TEXT NOT NULL,
    path TEXT,
    replica_count INTEGER NOT NULL DEFAULT 1,
    storage_account_type TEXT,
    PRIMARY KEY (object_key, region)
);
CREATE TABLE IF NOT EXISTS store_containers (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    parent_key TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS store_uses (
    run_id TEXT NOT NULL,
    object_key TEXT NOT NULL,
    role TEXT NOT NULL,
    PRIMARY KEY (run_id, object_key, role)
)
"""
_V8_COLUMNS = (("store_objects", "os_type", "TEXT"),)

# Version 9: a fleet of build hosts sharing one database. Each host's row says what it builds
# and that it is alive (its heartbeat); a run records the host that builds it, what it needs of
# one (labels, vCPUs, memory), how often it was dispatched, and, for a one-shot `build`, the
# template it builds (a stored template's body is in `templates`); a host that serves its base
# images to the others says where (`images_url`). A fleet run's log is also
# shipped into `run_log`, in chunks, so that `logs -f` works from any host.
_V9 = """
CREATE TABLE IF NOT EXISTS fleet_hosts (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    labels TEXT NOT NULL,
    cpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    pid INTEGER,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    images_url TEXT
);
CREATE TABLE IF NOT EXISTS run_log (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
"""
_V9_COLUMNS = (("runs", "host", "TEXT"), ("runs", "needs", "TEXT"), ("runs", "dispatches", "INTEGER"),
               ("runs", "request", "TEXT"), ("runs", "published_at", "REAL"))

SCHEMA_VERSION = 9

# PostgreSQL's comparison that SQLite calls NOCASE: an ICU collation at the level that ignores case
_NOCASE = ("CREATE COLLATION IF NOT EXISTS nocase "
           "(provider = icu, locale = 'und-u-ks-level2', deterministic = false)")


def _add_columns(db: Connection, columns: tuple[tuple[str, str, str], ...]) -> None:
    for table, column, declaration in columns:
        if column not in db.columns(table):
            db.ddl(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def _script(db: Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            db.ddl(statement)


def _to_v1(db: Connection) -> None:
    if db.dialect == "postgresql":
        db.execute(_NOCASE)
    _script(db, _V1)
    # pid_start_time: with pid it identifies the build process (pids are reused); databases
    # made before it existed lack it
    _add_columns(db, (("runs", "pid_start_time", "INTEGER"),))
    db.add_rowid("runs")
    db.add_rowid("run_outputs")


def _to_v2(db: Connection) -> None:
    _add_columns(db, _V2_COLUMNS)
    _script(db, _V2)


def _to_v3(db: Connection) -> None:
    _add_columns(db, _V3_COLUMNS)


def _to_v4(db: Connection) -> None:
    _script(db, _V4)


def _to_v5(db: Connection) -> None:
    _script(db, _V5)
    _add_columns(db, _V5_COLUMNS)
    db.add_rowid("checkpoints")


def _to_v6(db: Connection) -> None:
    _script(db, _V6)
    _add_columns(db, _V6_COLUMNS)


def _to_v7(db: Connection) -> None:
    _script(db, _V7)


def _to_v8(db: Connection) -> None:
    _script(db, _V8)
    _add_columns(db, _V8_COLUMNS)
    db.add_rowid("store_volumes")


def _to_v9(db: Connection) -> None:
    _script(db, _V9)
    _add_columns(db, _V9_COLUMNS)


_MIGRATIONS = ((1, _to_v1), (2, _to_v2), (3, _to_v3), (4, _to_v4), (5, _to_v5), (6, _to_v6), (7, _to_v7),
               (8, _to_v8), (9, _to_v9))


def needs_migration(db: Connection, label: str) -> bool:
    return check_version(db, label) < SCHEMA_VERSION


def migrate(db: Connection, label: str) -> None:
    """Brings the database to SCHEMA_VERSION; `db` is a transaction holding the write lock
    (one migrator at a time; the others then find the new version)."""
    version = check_version(db, label)
    if version == SCHEMA_VERSION:
        return
    for number, step in _MIGRATIONS:
        if version < number:
            step(db)
    _set_version(db, SCHEMA_VERSION)


def check_version(db: Connection, label: str) -> int:
    """The database's schema version; a newer one than this orchestrator knows is refused
    (read-only openings read an older one as it is; `migrate` brings it up to date)."""
    version = schema_version(db)
    if version > SCHEMA_VERSION:
        raise EnvironmentProblem(
            f"the state database {label} was made by a newer orchestrator (schema version {version}; "
            f"this one knows up to {SCHEMA_VERSION})",
            hint="run the newer orchestrator, or point --home (or [fleet] database) at another database; "
                 "this version does not change a database it does not understand")
    return version


def schema_version(db: Connection) -> int:
    if db.dialect == "sqlite":
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    if not db.has_table("orchestrator_schema"):
        return 0
    row = db.execute("SELECT version FROM orchestrator_schema").fetchone()
    return int(row[0]) if row else 0


def _set_version(db: Connection, version: int) -> None:
    if db.dialect == "sqlite":
        db.execute(f"PRAGMA user_version = {int(version)}")
        return
    db.execute("CREATE TABLE IF NOT EXISTS orchestrator_schema (version INTEGER NOT NULL)")
    db.execute("DELETE FROM orchestrator_schema")
    db.execute("INSERT INTO orchestrator_schema (version) VALUES (?)", (version,))
