"""Walks untrusted JSON, collecting problems instead of raising.

Property names are matched case-insensitively, as Azure Resource Manager matches them;
problems name the path with the user's own spelling. Lenient where AIB is: an unknown field
is a warning with a "did you mean" (the service ignores it), a number or boolean written as
a string is coerced with a warning (the service coerces it), and an empty string in an
optional field means the field is unset (the service returns unset fields that way).
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Callable, TypeVar

from orchestrator.core.problems import NOTE, WARNING, Problem, child

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
        self._asked: dict[str, str] = {}  # lower-case -> the spelling the reader asked for

    def has(self, name: str) -> bool:
        return name.lower() in self._keys

    def path_of(self, name: str) -> str:
        return child(self.path, self._keys.get(name.lower(), name))

    def problem(self, name: str | None, rule: str, message: str, hint: str | None = None) -> None:
        path = self.path if name is None else self.path_of(name)
        self.problems.append(Problem(path, rule, message, hint))

    def raw(self, name: str) -> Any:
        self._asked.setdefault(name.lower(), name)
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
            coerced = _coerce(value, kind)
            if coerced is not None:
                self.warn(name, "type-coerced", f"{_TYPE_NAMES[kind]} written as a string ({value!r}): read as "
                          f"{coerced!r}, as AIB does", f"write {_json_literal(coerced)} without quotes")
                return coerced
            self.problem(name, "type", f"must be {_TYPE_NAMES[kind]}, not {type_name(value)}", hint)
            return default
        return value

    def warn(self, name: str | None, rule: str, message: str, hint: str | None = None) -> None:
        path = self.path if name is None else self.path_of(name)
        self.problems.append(Problem(path, rule, message, hint, WARNING))

    def note(self, name: str | None, rule: str, message: str, hint: str | None = None) -> None:
        path = self.path if name is None else self.path_of(name)
        self.problems.append(Problem(path, rule, message, hint, NOTE))

    def string(self, name: str, default: str | None = None, *, required: bool = False,
               hint: str | None = None, nonempty: bool = True) -> str | None:
        value = self.get(name, str, default, required=required, hint=hint)
        if nonempty and value is not None and value is not default and not value.strip():
            if required:
                self.problem(name, "empty", "must not be empty", hint)
            else:  # how the service writes an optional field that is not set
                self.note(name, "empty-means-unset", "an empty string: read as not set")
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

    def read_only(self, *names: str) -> None:
        """Fields the service adds to a template it returns (GET): accepted, ignored, said."""
        for name in names:
            if self.raw(name) is not _MISSING:
                self.note(name, "read-only", "a read-only field of a template read back from the service: ignored")

    def finish(self, known_elsewhere: str | None = None) -> None:
        """Fields nobody asked for: AIB ignores them, so they are warnings, with the nearest
        known name when the field looks like a misspelling of one."""
        for key in self.value:
            if key not in self._read:
                where = f" {known_elsewhere}" if known_elsewhere else ""
                close = difflib.get_close_matches(key.lower(), list(self._asked), n=1, cutoff=0.75)
                hint = (f"did you mean `{self._asked[close[0]]}`?" if close else
                        "check the spelling against AIB's imageTemplates reference; "
                        "a field from a newer API version needs a newer apiVersion")
                self.problems.append(Problem(child(self.path, key), "unknown-field",
                                             f"unknown field `{key}`{where}: AIB ignores it", hint, WARNING))



_INT_TEXT = re.compile(r"^\s*-?\d{1,19}\s*$")


def _coerce(value: Any, kind: type) -> Any:
    """The value AIB reads from a string where it expects a number or a boolean, else None."""
    if not isinstance(value, str):
        return None
    if kind is int and _INT_TEXT.match(value):
        return int(value)
    if kind is bool and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _json_literal(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)
