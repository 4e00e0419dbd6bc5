"""What the REST API (orchestrate serve) keeps in the state database: bearer tokens (only a
sha256 of each: a token is shown once, when it is made), the Azure resource each stored
template is (subscription, resource group, location, tags, identity) and the long-running
operations it answered with an Azure-AsyncOperation URL. Each function is one transaction."""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from orchestrator.effects.state import template_record

TOKEN_PREFIX = "orch_"  # a token says what it is when it turns up in a shell history or a log


@dataclass(frozen=True)
class Token:
    name: str
    role: str  # reader | contributor
    scope: str  # /subscriptions/S or /subscriptions/S/resourceGroups/RG
    created_at: float
    revoked_at: float | None = None


@dataclass(frozen=True)
class Resource:
    name: str
    subscription: str
    resource_group: str
    location: str
    tags: dict[str, str]
    identity: dict[str, Any]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- tokens ------------------------------------------------------------------------------------
def create_token(state: Any, name: str, role: str, scope: str) -> str | None:
    """A new token (returned once; only its hash is stored), or None if the name is taken."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with state.immediate() as db:
        if db.execute("SELECT 1 FROM api_tokens WHERE name = ?", (name,)).fetchone():
            return None
        db.execute("INSERT INTO api_tokens VALUES (?,?,?,?,?,NULL)", (name, role, scope, _digest(token), time.time()))
    return token


def tokens(state: Any) -> list[Token]:
    with state._connect() as db:
        rows = db.execute("SELECT name, role, scope, created_at, revoked_at FROM api_tokens ORDER BY name")
        return [Token(**dict(row)) for row in rows]


def revoke_token(state: Any, name: str) -> bool:
    with state.immediate() as db:
        changed = db.execute("UPDATE api_tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                             (time.time(), name)).rowcount
        return bool(changed) or db.execute("SELECT 1 FROM api_tokens WHERE name = ?", (name,)).fetchone() is not None


def token_for(state: Any, token: str) -> Token | None:
    """The live token this bearer value is, or None. The stored hashes are compared in
    constant time, each of them, so the time taken says nothing about which one matched."""
    wanted = _digest(token)
    found = None
    with state._connect() as db:
        for row in db.execute("SELECT * FROM api_tokens"):
            if hmac.compare_digest(row["sha256"], wanted) and row["revoked_at"] is None:
                found = Token(row["name"], row["role"], row["scope"], row["created_at"])
    return found


# --- template resources ------------------------------------------------------------------------
def put_resource(db: Any, resource: Resource) -> None:
    """In the caller's transaction (the template's own write)."""
    db.replace("template_resources", {
        "name": resource.name, "subscription": resource.subscription, "resource_group": resource.resource_group,
        "location": resource.location, "tags": json.dumps(resource.tags), "identity": json.dumps(resource.identity)},
        key=("name",))


def resource(state: Any, name: str) -> Resource | None:
    with state._connect() as db:
        row = db.execute("SELECT * FROM template_resources WHERE name = ?", (name,)).fetchone()
    return _resource(row) if row else None


def resources(state: Any) -> dict[str, Resource]:
    with state._connect() as db:
        return {row["name"]: _resource(row) for row in db.execute("SELECT * FROM template_resources")}


def lookup(state: Any, name: str) -> tuple[dict[str, Any] | None, Resource | None, dict[str, Any] | None]:
    """A template's row, its resource and its newest run, in one read (a GET's whole question)."""
    with state._connect() as db:
        row = db.execute("SELECT * FROM templates WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None, None, None
        where = db.execute("SELECT * FROM template_resources WHERE name = ?", (row["name"],)).fetchone()
        run = db.execute("SELECT * FROM runs WHERE template_name = ? COLLATE NOCASE "
                         "ORDER BY start_time DESC, rowid DESC LIMIT 1", (row["name"],)).fetchone()
    return template_record(dict(row)), (_resource(where) if where else None), (dict(run) if run else None)


def last_runs(state: Any) -> dict[str, dict[str, Any]]:
    """The newest run of each template, by its name in lower case (as `runs(name, limit=1)`)."""
    with state._connect() as db:
        rows = db.execute("SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY lower(template_name) "
                          "ORDER BY start_time DESC, rowid DESC) AS newest FROM runs) WHERE newest = 1")
        return {row["template_name"].lower(): {k: row[k] for k in row.keys() if k != "newest"} for row in rows}


def _resource(row: Any) -> Resource:
    return Resource(row["name"], row["subscription"], row["resource_group"], row["location"],
                    json.loads(row["tags"]), json.loads(row["identity"]))


# --- long-running operations -------------------------------------------------------------------
def start_operation(state: Any, kind: str, template_name: str, scope: str, *, status: str = "InProgress",
                    run_id: str | None = None, error: dict[str, Any] | None = None) -> str:
    """`scope`: the template's resource group path (who may read the operation)."""
    operation_id = secrets.token_hex(16)
    now = time.time()
    with state.immediate() as db:
        db.execute("INSERT INTO operations (id, kind, template_name, scope, status, error, run_id, created_at, "
                   "ended_at) VALUES (?,?,?,?,?,?,?,?,?)", (operation_id, kind, template_name, scope, status,
                                                json.dumps(error) if error else None, run_id, now,
                                                None if status == "InProgress" else now))
    return operation_id


def update_operation(state: Any, operation_id: str, **fields: Any) -> None:
    if "error" in fields and fields["error"] is not None:
        fields["error"] = json.dumps(fields["error"])
    if fields.get("status", "InProgress") != "InProgress":
        fields.setdefault("ended_at", time.time())
    columns = ", ".join(f"{name} = ?" for name in fields)
    with state.immediate() as db:
        db.execute(f"UPDATE operations SET {columns} WHERE id = ?", (*fields.values(), operation_id))


def operation(state: Any, operation_id: str) -> dict[str, Any] | None:
    with state._connect() as db:
        row = db.execute("SELECT * FROM operations WHERE id = ?", (operation_id,)).fetchone()
    if row is None:
        return None
    found = dict(row)
    found["error"] = json.loads(found["error"]) if found["error"] else None
    return found
