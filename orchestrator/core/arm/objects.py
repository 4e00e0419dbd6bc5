"""Object functions: createObject, items, json, null, objectKeys, shallowMerge, tryGet
(contains, empty, intersection, length and union take objects too; they are with the arrays)."""
from __future__ import annotations

from typing import Any

from orchestrator.core.arm.registry import Runtime, arg, elements, function
from orchestrator.core.arm.syntax import Failure
from orchestrator.core.arm.values import MISSING, is_int, lookup_key, parse_json_text, type_name


@function("createObject", 0, None)
def _create_object(ex: Runtime, fn: str, args: list[Any]) -> dict[str, Any]:
    if len(args) % 2:
        raise Failure("arm-argument", f"{fn}(): needs key, value pairs, got an odd number of arguments")
    return {arg(fn, args, i, str): args[i + 1] for i in range(0, len(args), 2)}


@function("items", 1)
def _items(ex: Runtime, fn: str, args: list[Any]) -> list[dict[str, Any]]:
    """The entries as {key, value} objects in alphabetical order of the keys, as ARM sorts them."""
    obj = arg(fn, args, 0, dict)
    return [{"key": key, "value": obj[key]} for key in sorted(obj, key=lambda k: (k.casefold(), k.swapcase()))]


@function("json", 1)
def _json(ex: Runtime, fn: str, args: list[Any]) -> Any:
    return parse_json_text(fn, arg(fn, args, 0, str))


@function("null", 0)
def _null(ex: Runtime, fn: str, args: list[Any]) -> None:
    return None


@function("objectKeys", 1)
def _object_keys(ex: Runtime, fn: str, args: list[Any]) -> list[str]:
    return list(arg(fn, args, 0, dict))


@function("shallowMerge", 1)
def _shallow_merge(ex: Runtime, fn: str, args: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in elements(fn, args, 0, dict):
        out.update(item)
    return out


@function("tryGet", 2, None)
def _try_get(ex: Runtime, fn: str, args: list[Any]) -> Any:
    """tryGet(value, key or index, ...): null where bicep's `.?` finds nothing."""
    value = args[0]
    for key in args[1:]:
        if isinstance(value, dict) and isinstance(key, str):
            value = lookup_key(value, key)
        elif isinstance(value, list) and is_int(key):
            value = value[key] if 0 <= key < len(value) else MISSING
        elif value is None:
            return None
        else:
            raise Failure("arm-argument", f"{fn}(): cannot look up {type_name(key)} in {type_name(value)}")
        if value is MISSING:
            return None
    return value
