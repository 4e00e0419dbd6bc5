"""Validation results are data: a problem names its JSON path, the rule it breaks and a hint."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    path: str  # JSONPath-like: $.properties.customize[2].destination
    rule: str  # short stable identifier, e.g. "unknown-field"
    message: str
    hint: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"path": self.path, "rule": self.rule, "message": self.message, "hint": self.hint}

    def __str__(self) -> str:
        text = f"{self.path}: {self.message} [{self.rule}]"
        return f"{text}\n    hint: {self.hint}" if self.hint else text


def child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if key.replace("_", "").isalnum():
        return f"{path}.{key}"
    return f"{path}[{key!r}]"
