"""SourceImage triggers of stored templates, in the state database (table `triggers`, schema
v4). A trigger belongs to its template: it is created only for a stored template (in the same
transaction that checks it exists), and a template's deletion takes its triggers with it."""
from __future__ import annotations

import time
from dataclasses import dataclass

from orchestrator.effects.state import StateStore


@dataclass(frozen=True)
class TriggerRecord:
    template_name: str
    name: str
    kind: str
    created_at: float


class TriggerState:
    def __init__(self, state: StateStore) -> None:
        self.state = state

    def add(self, template_name: str, name: str, kind: str) -> str:
        """"created", "exists" (that name, on that template), "kind-taken" (the template has a
        trigger of that kind already: AIB allows one SourceImage trigger per template) or
        "no-template"."""
        with self.state.immediate() as db:
            row = db.execute("SELECT name FROM templates WHERE name = ?", (template_name,)).fetchone()
            if row is None:
                return "no-template"
            template_name = row["name"]  # as stored
            if db.execute("SELECT 1 FROM triggers WHERE template_name = ? AND name = ?",
                          (template_name, name)).fetchone():
                return "exists"
            if db.execute("SELECT 1 FROM triggers WHERE template_name = ? AND kind = ?",
                          (template_name, kind)).fetchone():
                return "kind-taken"
            db.execute("INSERT INTO triggers VALUES (?,?,?,?)", (template_name, name, kind, time.time()))
            return "created"

    def listing(self, template_name: str | None = None) -> list[TriggerRecord]:
        """Triggers of stored templates (one whose template is gone is not listed)."""
        query = ("SELECT t.* FROM triggers t JOIN templates s ON s.name = t.template_name"
                 + (" WHERE t.template_name = ?" if template_name else "")
                 + " ORDER BY t.template_name COLLATE NOCASE, t.name COLLATE NOCASE")
        with self.state._connect() as db:
            rows = db.execute(query, (template_name,) if template_name else ()).fetchall()
        return [TriggerRecord(**dict(row)) for row in rows]

    def remove(self, template_name: str, name: str) -> bool:
        with self.state._connect() as db:
            return db.execute("DELETE FROM triggers WHERE template_name = ? AND name = ?",
                              (template_name, name)).rowcount > 0

    def forget_template(self, template_name: str) -> int:
        """Removes every trigger of a template (it was deleted)."""
        with self.state._connect() as db:
            return db.execute("DELETE FROM triggers WHERE template_name = ?", (template_name,)).rowcount
