"""Validation results are data: a problem names its JSON path, the rule it breaks and a hint.

Severity follows AIB: what the service refuses is an error; what it silently ignores or
coerces is a warning (`--strict` makes warnings errors); a note only says how orchestrator
read something (a read-only field of a template read back from the service, a default).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

ERROR = "error"
WARNING = "warning"
NOTE = "note"


@dataclass(frozen=True)
class Problem:
    path: str  # JSONPath-like: $.properties.customize[2].destination
    rule: str  # short stable identifier, e.g. "unknown-field"
    message: str
    hint: str | None = None
    severity: str = ERROR

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def as_dict(self) -> dict[str, str | None]:
        return {"path": self.path, "rule": self.rule, "message": self.message, "hint": self.hint,
                "severity": self.severity}

    def __str__(self) -> str:
        text = f"{self.path}: {self.message} [{self.rule}]"
        return f"{text}\n    hint: {self.hint}" if self.hint else text


def errors_of(problems: Iterable[Problem]) -> list[Problem]:
    return [p for p in problems if p.is_error]


def strict(problems: Iterable[Problem]) -> list[Problem]:
    """--strict: every warning counts as an error (notes stay notes)."""
    return [replace(p, severity=ERROR) if p.severity == WARNING else p for p in problems]


def child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if key.replace("_", "").isalnum():
        return f"{path}.{key}"
    return f"{path}[{key!r}]"
