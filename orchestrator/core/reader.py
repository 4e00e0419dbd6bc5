"""Walks untrusted JSON, collecting problems instead of raising.

Property names are matched case-insensitively, as Azure Resource Manager matches them;
problems name the path with the user's own spelling.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

from orchestrator.core.problems import Problem, child

T = TypeVar("T")
_MISSING = object()

_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list", dict: "an object"}


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    for kind, name in _TYPE_NAMES.items():
        if isinstance(value, kind):
            return name
    return type(value).__name__


def is_kind(value: Any, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


class ObjectReader:
    """Reads the fields of one JSON object; `finish()` reports the fields nobody asked for."""

    def __init__(self, value: dict[str, Any], path: str, problems: list[Problem]) -> None:
        self.value = value
        self.path = path
        self.problems = problems
        self._keys: dict[str, str] = {}
        for key in value:
            self._keys.setdefault(key.lower(), key)
        self._read: set[str] = set()

    def has(self, name: str) -> bool:
        return name.lower() in self._keys

    def path_of(self, name: str) -> str:
        return child(self.path, self._keys.get(name.lower(), name))

    def problem(self, name: str | None, rule: str, message: str, hint: str | None = None) -> None:
        path = self.path if name is None else self.path_of(name)
        self.problems.append(Problem(path, rule, message, hint))

    def raw(self, name: str) -> Any:
        key = self._keys.get(name.lower())
        if key is None:
            return _MISSING
        self._read.add(key)
        return self.value[key]

    def get(self, name: str, kind: type[T], default: Any = None, *, required: bool = False,
            hint: str | None = None) -> Any:
        value = self.raw(name)
        if value is _MISSING or (value is None and not required):
            if required:
                self.problem(None, "required", f"`{name}` is required", hint)
            return default
        if not is_kind(value, kind):
            self.problem(name, "type", f"must be {_TYPE_NAMES[kind]}, not {type_name(value)}", hint)
            return default
        return value

    def string(self, name: str, default: str | None = None, *, required: bool = False,
               hint: str | None = None, nonempty: bool = True) -> str | None:
        value = self.get(name, str, default, required=required, hint=hint)
        if nonempty and value is not None and value is not default and not value.strip():
            self.problem(name, "empty", "must not be empty", hint)
            return default
        return value

    def strings(self, name: str, *, required: bool = False, nonempty: bool = False) -> tuple[str, ...] | None:
        value = self.get(name, list, None, required=required)
        if value is None:
            return None
        good = True
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.problems.append(Problem(child(self.path_of(name), index), "type",
                                             f"must be a string, not {type_name(item)}"))
                good = False
        if nonempty and not value:
            self.problem(name, "empty", "must have at least one entry")
            return None
        return tuple(value) if good else None

    def object(self, name: str, *, required: bool = False) -> "ObjectReader | None":
        value = self.get(name, dict, None, required=required)
        return None if value is None else ObjectReader(value, self.path_of(name), self.problems)

    def objects(self, name: str, read: Callable[["ObjectReader"], T | None], *,
                required: bool = False) -> list[T]:
        value = self.get(name, list, None, required=required)
        out: list[T] = []
        for index, item in enumerate(value or []):
            path = child(self.path_of(name), index)
            if not isinstance(item, dict):
                self.problems.append(Problem(path, "type", f"must be an object, not {type_name(item)}"))
                continue
            result = read(ObjectReader(item, path, self.problems))
            if result is not None:
                out.append(result)
        return out

    def string_map(self, name: str) -> tuple[tuple[str, str], ...]:
        """An object whose values are strings (ARM tags and AIB artifactTags are string maps)."""
        value = self.get(name, dict, None)
        if not value:
            return ()
        pairs = []
        for key, item in value.items():
            if not isinstance(item, str):
                self.problems.append(Problem(child(self.path_of(name), key), "type",
                                             f"must be a string, not {type_name(item)}",
                                             "tag values are strings: put the value in quotes"))
                continue
            pairs.append((key, item))
        return tuple(pairs)

    def ignore(self, *names: str) -> None:
        for name in names:
            self.raw(name)

    def finish(self, known_elsewhere: str | None = None) -> None:
        for key in self.value:
            if key not in self._read:
                where = f" {known_elsewhere}" if known_elsewhere else ""
                self.problems.append(Problem(
                    child(self.path, key), "unknown-field",
                    f"unknown field `{key}`{where}",
                    "check the spelling against AIB's imageTemplates reference; "
                    "a field from a newer API version needs a newer apiVersion",
                ))
