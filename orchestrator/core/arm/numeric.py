"""Numeric functions: add, copyIndex, div, float, int, max, min, mod, mul, sub.

Integers are 64-bit as in ARM; div and mod truncate toward zero as .NET does (div(-7, 2) is -3,
mod(-7, 2) is -1), unlike Python's // and %.
"""
from __future__ import annotations

import math
import re
from typing import Any

from orchestrator.core.arm.registry import Runtime, arg, function
from orchestrator.core.arm.syntax import Failure
from orchestrator.core.arm.values import int64, is_int, type_name


def _ints(fn: str, args: list[Any]) -> list[int]:
    return [arg(fn, args, i, int) for i in range(len(args))]


@function("add", 2)
def _add(ex: Runtime, fn: str, args: list[Any]) -> int:
    a, b = _ints(fn, args)
    return int64(fn, a + b)


@function("sub", 2)
def _sub(ex: Runtime, fn: str, args: list[Any]) -> int:
    a, b = _ints(fn, args)
    return int64(fn, a - b)


@function("mul", 2)
def _mul(ex: Runtime, fn: str, args: list[Any]) -> int:
    a, b = _ints(fn, args)
    return int64(fn, a * b)


def _divide(fn: str, args: list[Any]) -> tuple[int, int, int]:
    a, b = _ints(fn, args)
    if b == 0:
        raise Failure("arm-argument", f"{fn}(): division by zero")
    quotient = abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1)
    return a, b, quotient


@function("div", 2)
def _div(ex: Runtime, fn: str, args: list[Any]) -> int:
    return int64(fn, _divide(fn, args)[2])


@function("mod", 2)
def _mod(ex: Runtime, fn: str, args: list[Any]) -> int:
    a, b, quotient = _divide(fn, args)
    return a - b * quotient


@function("int", 1)
def _int(ex: Runtime, fn: str, args: list[Any]) -> int:
    value = arg(fn, args, 0, (str, int, float))
    if isinstance(value, str):
        if not re.fullmatch(r"\s*[+-]?\d+\s*", value):
            raise Failure("arm-argument", f"{fn}(): `{value}` is not a whole number")
        return int64(fn, int(value))
    return int64(fn, int(value))


@function("float", 1)
def _float(ex: Runtime, fn: str, args: list[Any]) -> float:
    value = arg(fn, args, 0, (str, int, float))
    try:
        result = float(value)
    except ValueError:
        raise Failure("arm-argument", f"{fn}(): `{value}` is not a number") from None
    if not math.isfinite(result):
        raise Failure("arm-argument", f"{fn}(): `{value}` is not a finite number")
    return result


def _numbers(fn: str, args: list[Any]) -> list[int]:
    numbers: list[int] = []
    for index, value in enumerate(args):
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not is_int(item):
                raise Failure("arm-argument", f"{fn}(): argument {index + 1} holds {type_name(item)}; "
                              f"{fn} takes integers or arrays of integers")
        numbers.extend(items)
    if not numbers:
        raise Failure("arm-argument", f"{fn}(): no integers to compare (the array is empty)")
    return numbers


@function("max", 1, None)
def _max(ex: Runtime, fn: str, args: list[Any]) -> int:
    return max(_numbers(fn, args))


@function("min", 1, None)
def _min(ex: Runtime, fn: str, args: list[Any]) -> int:
    return min(_numbers(fn, args))


@function("copyIndex", 0, 2)
def _copy_index(ex: Runtime, fn: str, args: list[Any]) -> int:
    """copyIndex(), copyIndex(offset), copyIndex('loop') or copyIndex('loop', offset). Without a
    name it is the resource loop's index (the innermost loop where there is no resource loop)."""
    name = arg(fn, args, 0, str) if args and isinstance(args[0], str) else None
    offset = arg(fn, args, len(args) - 1, int) if args and (name is None or len(args) == 2) else 0
    if len(args) == 2 and name is None:
        arg(fn, args, 0, str)
    loops = ex.scope.loops
    if not loops:
        raise Failure("arm-function", f"{fn}() is used outside a copy loop",
                      "copyIndex() belongs in a resource's, a property's or a variable's `copy`")
    wanted = name if name is not None else ex.scope.resource_loop
    if wanted is None:
        return int64(fn, loops[-1][1] + offset)
    for loop, index in reversed(loops):
        if loop.lower() == wanted.lower():
            return int64(fn, index + offset)
    active = ", ".join(loop for loop, _ in loops)
    raise Failure("arm-function", f"{fn}('{wanted}'): no copy loop of that name is running here",
                  f"the loops here: {active}")
