"""Stored templates, as AIB keeps image template resources: created once (validated, with
the hash of what was submitted), run many times, deleted with their run records (never with
the images they published). The body is kept as submitted, with its parameters: secure
values too, since a run needs them; the state database is readable by its owner only."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from orchestrator.config import Config
from orchestrator.core import model as m
from orchestrator.core.document import load_document
from orchestrator.errors import UsageError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # AIB: 1-64 letters, digits, '.', '-', '_'


class TemplateNotFound(UsageError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no stored template {name!r}",
                         hint="`orchestrate template list` shows them; `orchestrate template create NAME FILE` adds one")


@dataclass(frozen=True)
class Stored:
    name: str
    body: str
    parameters: dict[str, Any]
    file_path: str | None
    sha256: str
    created_at: float
    updated_at: float

    def load(self, config: Config) -> m.ImageTemplate:
        return load_document(self.body, self.file_path or self.name, self.parameters, config.arm_functions())


def check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise UsageError(f"{name!r} is not a template name",
                         hint="1-64 letters, digits, '.', '-' or '_', starting with a letter or digit (as AIB)")
    return name


def content_hash(body: str, parameters: dict[str, Any]) -> str:
    canonical = json.dumps(parameters, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode() + b"\0" + canonical.encode()).hexdigest()


def create(state: Any, name: str, body: str, parameters: dict[str, Any], file_path: str | None,
           *, update: bool = False, also: Callable[[Any], None] | None = None) -> tuple[str, Stored]:
    """Stores a validated template: ("created" | "unchanged" | "updated", the stored template).
    A different body under an existing name is refused unless `update` (AIB refuses updates).
    `also`: written in the same transaction (the REST API's resource row)."""
    check_name(name)
    digest = content_hash(body, parameters)
    verdict = state.put_template(name, body, parameters, file_path, digest, update=update, also=also)
    if verdict == "conflict":
        stored = get(state, name)
        raise UsageError(f"template {name!r} exists with another body (stored sha256 {stored.sha256[:12]}, "
                         f"given {digest[:12]})",
                         hint=f"`orchestrate template create {name} FILE --update` replaces it, or use another name")
    return verdict, get(state, name)


def get(state: Any, name: str) -> Stored:
    row = state.template(name)
    if row is None:
        raise TemplateNotFound(name)
    return Stored(**row)


def listing(state: Any) -> list[Stored]:
    return [Stored(**row) for row in state.templates()]


def delete(config: Config, state: Any, name: str) -> list[str]:
    """Deletes the template and its run records (logs too); returns the run ids removed.
    Refused while one of its runs is active. Published images and VHDs stay."""
    verdict, runs = state.delete_template(name)
    if verdict == "missing":
        raise TemplateNotFound(name)
    if verdict == "active":
        ids = ", ".join(r["id"] for r in runs)
        raise UsageError(f"template {name!r} has a run in progress ({ids})",
                         hint=f"wait for it, or `orchestrate cancel {runs[0]['id']}`, then delete")
    from orchestrator.effects.trigger_state import TriggerState

    TriggerState(state).forget_template(name)  # its triggers are its child resources
    for run in runs:  # its records, and a build VM disk errorHandling abort kept
        shutil.rmtree(config.runs_dir / Path(run["id"]).name, ignore_errors=True)
        shutil.rmtree(config.home / "staging" / Path(run["id"]).name, ignore_errors=True)
    return [r["id"] for r in runs]
