"""Copy loops of values: a variable copy (`variables.copy`: [{name, count, input}]) and a
property copy (a `copy` array inside any object: the object gets one array per entry). Inside
`input`, copyIndex('name') is the iteration; loops nest. Resource copy loops are in deployed.py.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from orchestrator.core.arm.registry import Runtime
from orchestrator.core.arm.values import MISSING, describe, is_int, lookup_key
from orchestrator.core.problems import child
from orchestrator.core.reader import type_name

MAX_COPIES = 800  # ARM's limit for a copy loop's count
_ENTRY_HINT = 'e.g. {"name": "disks", "count": 3, "input": {"lun": "[copyIndex(\'disks\')]"}}'


@dataclass(frozen=True)
class VariableCopy:
    """One entry of `variables.copy`: the variable `name` is the array of `count` inputs."""
    name: str
    count: Any
    input: Any
    path: str  # of the entry


def _copy_key(obj: dict) -> str | None:
    return next((k for k in obj if k.lower() == "copy"), None)


def copy_count(ex: Runtime, raw: Any, path: str) -> int | None:
    """A loop's count, evaluated where the loop is; None (and a problem) when it is no count."""
    before = ex.failures
    count = ex.value(raw, path)
    if ex.failures > before:
        return None
    if not is_int(count) or not 0 <= count <= MAX_COPIES:
        shown = describe(count) if is_int(count) else type_name(count)
        ex.problem(path, "arm-copy", f"a copy loop's count must be an integer from 0 to {MAX_COPIES}, not {shown}")
        return None
    return count


def _entry(ex: Runtime, entry: Any, path: str) -> tuple[str, Any, Any] | None:
    """(name, count, input) of a copy entry, or None with a problem."""
    if not isinstance(entry, dict):
        ex.problem(path, "arm-copy", f"a copy entry must be an object, not {type_name(entry)}", _ENTRY_HINT)
        return None
    name, count, value = (lookup_key(entry, k) for k in ("name", "count", "input"))
    for key, found in (("name", name), ("count", count), ("input", value)):
        if found is MISSING:
            ex.problem(path, "arm-copy", f"a copy entry needs `{key}`", _ENTRY_HINT)
            return None
    if not isinstance(name, str) or not name or name.startswith("["):
        ex.problem(child(path, "name"), "arm-copy", "a copy entry's `name` must be a plain string",
                   "it names the property or variable the loop fills, and copyIndex() uses it")
        return None
    return name, count, value


def declare_variable_copies(ex: Runtime, entries: dict[str, tuple[str, Any, str]],
                            where: str) -> dict[str, tuple[str, Any, str]]:
    """The variables with `copy` replaced by the variables its entries declare."""
    key = next((k for k in entries if k.lower() == "copy"), None)
    if key is None or not isinstance(entries[key][1], list):
        return entries
    out = {k: v for k, v in entries.items() if k != key}
    for index, entry in enumerate(entries[key][1]):
        path = child(child(where, key), index)
        parsed = _entry(ex, entry, path)
        if parsed is None:
            continue
        name, count, value = parsed
        if name.lower() in {k.lower() for k in out}:
            ex.problem(child(path, "name"), "arm-copy", f"variable `{name}` is declared twice")
            continue
        out[name] = (name, VariableCopy(name, count, value, path), path)
    return out


def variable_copy(ex: Runtime, loop: VariableCopy) -> list[Any] | None:
    count = copy_count(ex, loop.count, child(loop.path, "count"))
    return None if count is None else _iterate(ex, loop.name, count, loop.input, child(loop.path, "input"))


def _iterate(ex: Runtime, name: str, count: int, value: Any, path: str) -> list[Any]:
    out = []
    for index in range(count):
        with ex.scoped(replace(ex.scope, loops=ex.scope.loops + ((name, index),))):
            out.append(ex.value(value, path))
    return out


def property_copy(ex: Runtime, obj: dict, path: str) -> dict | None:
    """`obj` with its `copy` array expanded into properties, or None when it has no such array."""
    key = _copy_key(obj)
    entries = obj[key] if key is not None else None
    if not isinstance(entries, list) or not any(
            isinstance(e, dict) and lookup_key(e, "input") is not MISSING for e in entries):
        return None
    out = {k: ex.value(v, child(path, k)) for k, v in obj.items() if k != key}
    for index, entry in enumerate(entries):
        entry_path = child(child(path, key), index)
        parsed = _entry(ex, entry, entry_path)
        if parsed is None:
            continue
        name, count_raw, value = parsed
        if lookup_key(out, name) is not MISSING:
            ex.problem(child(entry_path, "name"), "arm-copy", f"property `{name}` is both written and "
                       "made by this copy loop", "drop one of them")
            continue
        count = copy_count(ex, count_raw, child(entry_path, "count"))
        if count is not None:
            out[name] = _iterate(ex, name, count, value, child(entry_path, "input"))
    return out
