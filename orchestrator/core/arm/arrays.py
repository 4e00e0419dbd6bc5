"""Array functions, and those that take a string, an array or an object alike: array, concat,
contains, createArray, empty, first, flatten, indexOf, intersection, last, lastIndexOf, length,
range, skip, take, union (min and max are with the numeric functions).

Strings are searched case-insensitively by indexOf/lastIndexOf and case-sensitively by contains,
as ARM documents; array elements always compare exactly (1 is not '1', 'a' is not 'A').
"""
from __future__ import annotations

from typing import Any

from orchestrator.core.arm.registry import Runtime, arg, elements, function
from orchestrator.core.arm.syntax import Failure
from orchestrator.core.arm.values import MISSING, lookup_key, same, to_string, type_name

MAX_RANGE = 10000  # ARM's limit for range()'s count


@function("array", 1)
def _array(ex: Runtime, fn: str, args: list[Any]) -> list[Any]:
    return args[0] if isinstance(args[0], list) else [args[0]]


@function("createArray", 0, None)
def _create_array(ex: Runtime, fn: str, args: list[Any]) -> list[Any]:
    return list(args)


@function("concat", 1, None)
def _concat(ex: Runtime, fn: str, args: list[Any]) -> Any:
    if isinstance(args[0], list):
        out: list[Any] = []
        for index in range(len(args)):
            out.extend(arg(fn, args, index, list))
        return out
    for index, value in enumerate(args):
        if isinstance(value, (dict, list)):
            raise Failure("arm-argument", f"{fn}(): argument {index + 1} is {type_name(value)}; "
                          "concat joins either strings or arrays", "use string(...) to turn it into text")
    return "".join(to_string(value) for value in args)


@function("contains", 2)
def _contains(ex: Runtime, fn: str, args: list[Any]) -> bool:
    container, item = arg(fn, args, 0, (str, list, dict)), args[1]
    if isinstance(container, list):
        return any(same(element, item) for element in container)
    if isinstance(container, dict):
        return lookup_key(container, to_string(item)) is not MISSING
    return to_string(item) in container  # ARM compares strings case-sensitively here


@function("empty", 1)
def _empty(ex: Runtime, fn: str, args: list[Any]) -> bool:
    value = args[0]
    return value is None or (isinstance(value, (str, list, dict)) and not value)


@function("first", 1)
def _first(ex: Runtime, fn: str, args: list[Any]) -> Any:
    value = arg(fn, args, 0, (str, list))
    return value[:1] if isinstance(value, str) else (value[0] if value else None)


@function("last", 1)
def _last(ex: Runtime, fn: str, args: list[Any]) -> Any:
    value = arg(fn, args, 0, (str, list))
    return value[-1:] if isinstance(value, str) else (value[-1] if value else None)


@function("length", 1)
def _length(ex: Runtime, fn: str, args: list[Any]) -> int:
    return len(arg(fn, args, 0, (str, list, dict)))


def _find(fn: str, args: list[Any], last: bool) -> int:
    container = arg(fn, args, 0, (str, list))
    if isinstance(container, str):
        text, wanted = container.lower(), arg(fn, args, 1, str).lower()
        return text.rfind(wanted) if last else text.find(wanted)
    found = [i for i, element in enumerate(container) if same(element, args[1])]
    return (found[-1] if last else found[0]) if found else -1


@function("indexOf", 2)
def _index_of(ex: Runtime, fn: str, args: list[Any]) -> int:
    return _find(fn, args, last=False)


@function("lastIndexOf", 2)
def _last_index_of(ex: Runtime, fn: str, args: list[Any]) -> int:
    return _find(fn, args, last=True)


@function("skip", 2)
def _skip(ex: Runtime, fn: str, args: list[Any]) -> Any:
    value, count = arg(fn, args, 0, (str, list)), arg(fn, args, 1, int)
    return value[max(count, 0):]


@function("take", 2)
def _take(ex: Runtime, fn: str, args: list[Any]) -> Any:
    value, count = arg(fn, args, 0, (str, list)), arg(fn, args, 1, int)
    return value[:max(count, 0)]


@function("range", 2)
def _range(ex: Runtime, fn: str, args: list[Any]) -> list[int]:
    start, count = arg(fn, args, 0, int), arg(fn, args, 1, int)
    if not 0 <= count <= MAX_RANGE:
        raise Failure("arm-argument", f"{fn}(): the count must be 0 to {MAX_RANGE}, not {count}")
    return list(range(start, start + count))


@function("flatten", 1)
def _flatten(ex: Runtime, fn: str, args: list[Any]) -> list[Any]:
    return [item for array in elements(fn, args, 0, list) for item in array]


def _same_kind(fn: str, args: list[Any]) -> type:
    kind = list if isinstance(args[0], list) else dict
    for index in range(len(args)):
        arg(fn, args, index, kind if index else (list, dict))
    return kind


def _distinct(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if not any(same(item, seen) for seen in out):
            out.append(item)
    return out


@function("intersection", 2, None)
def _intersection(ex: Runtime, fn: str, args: list[Any]) -> Any:
    if _same_kind(fn, args) is list:
        return _distinct([x for x in args[0] if all(any(same(x, y) for y in other) for other in args[1:])])
    return {k: v for k, v in args[0].items() if all(k in other and same(other[k], v) for other in args[1:])}


def merge(base: dict, extra: dict) -> dict:
    """union() of two objects: the later value wins, objects inside merge the same way."""
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        out[key] = merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return out


@function("union", 2, None)
def _union(ex: Runtime, fn: str, args: list[Any]) -> Any:
    if _same_kind(fn, args) is list:
        return _distinct([x for array in args for x in array])
    out: dict = {}
    for value in args:
        out = merge(out, value)
    return out
