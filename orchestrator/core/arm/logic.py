"""Comparison and logical functions: coalesce, equals, greater, greaterOrEquals, less,
lessOrEquals; and, bool, false, if, not, or, true.

if() is lazy, as in ARM: the branch not taken is not evaluated, so it may name what does not
exist. and() and or() evaluate every argument (each must be a boolean).
"""
from __future__ import annotations

from typing import Any

from orchestrator.core.arm.registry import Runtime, arg, function
from orchestrator.core.arm.syntax import Failure, Node
from orchestrator.core.arm.values import order, same, type_name


@function("coalesce", 1, None)
def _coalesce(ex: Runtime, fn: str, args: list[Any]) -> Any:
    return next((value for value in args if value is not None), None)


@function("equals", 2)
def _equals(ex: Runtime, fn: str, args: list[Any]) -> bool:
    return same(args[0], args[1])


@function("greater", 2)
def _greater(ex: Runtime, fn: str, args: list[Any]) -> bool:
    return order(fn, args[0], args[1]) > 0


@function("greaterOrEquals", 2)
def _greater_or_equals(ex: Runtime, fn: str, args: list[Any]) -> bool:
    return order(fn, args[0], args[1]) >= 0


@function("less", 2)
def _less(ex: Runtime, fn: str, args: list[Any]) -> bool:
    return order(fn, args[0], args[1]) < 0


@function("lessOrEquals", 2)
def _less_or_equals(ex: Runtime, fn: str, args: list[Any]) -> bool:
    return order(fn, args[0], args[1]) <= 0


@function("and", 2, None)
def _and(ex: Runtime, fn: str, args: list[Any]) -> bool:
    values = [arg(fn, args, i, bool) for i in range(len(args))]  # every one checked, as ARM does
    return all(values)


@function("or", 2, None)
def _or(ex: Runtime, fn: str, args: list[Any]) -> bool:
    values = [arg(fn, args, i, bool) for i in range(len(args))]
    return any(values)


@function("not", 1)
def _not(ex: Runtime, fn: str, args: list[Any]) -> bool:
    return not arg(fn, args, 0, bool)


@function("bool", 1)
def _bool(ex: Runtime, fn: str, args: list[Any]) -> bool:
    value = arg(fn, args, 0, (str, int, bool))
    if isinstance(value, str):
        if value.strip().lower() not in ("true", "false"):
            raise Failure("arm-argument", f"{fn}(): `{value}` is not 'true' or 'false'")
        return value.strip().lower() == "true"
    return bool(value)


@function("true", 0)
def _true(ex: Runtime, fn: str, args: list[Any]) -> bool:
    return True


@function("false", 0)
def _false(ex: Runtime, fn: str, args: list[Any]) -> bool:
    return False


@function("if", 3, lazy=True)
def _if(ex: Runtime, fn: str, nodes: tuple[Node, ...], text: str) -> Any:
    condition = ex.evaluate(nodes[0], text)
    if not isinstance(condition, bool):
        raise Failure("arm-argument", f"{fn}(): the condition must be a boolean, not {type_name(condition)}")
    return ex.evaluate(nodes[1 if condition else 2], text)
