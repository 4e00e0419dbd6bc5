"""Lambda functions: filter, groupBy, map, mapValues, reduce, sort, toObject, with their
lambda('x', ..., expression) arguments and lambdaVariables('x') inside them.

lambda() is lazy: it keeps its expression unevaluated, with the lambda variables visible where
it is written (lambdas nest). filter and map also give the element's index to a lambda with two
variables, reduce to one with three, as bicep's (item, index) => ... compiles.
"""
from __future__ import annotations

from functools import cmp_to_key
from typing import Any

from orchestrator.core.arm.registry import Lambda, Runtime, arg, function
from orchestrator.core.arm.syntax import Failure, Node
from orchestrator.core.arm.values import to_string, type_name


@function("lambda", 2, None, lazy=True)
def _lambda(ex: Runtime, fn: str, nodes: tuple[Node, ...], text: str) -> Lambda:
    names = [ex.evaluate(node, text) for node in nodes[:-1]]
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise Failure("arm-argument", f"{fn}(): argument {index + 1} must name a lambda variable "
                          f"('x'), not {type_name(name)}")
    return Lambda(tuple(names), nodes[-1], text, ex.scope.lambdas)


@function("lambdaVariables", 1)
def _lambda_variables(ex: Runtime, fn: str, args: list[Any]) -> Any:
    name = arg(fn, args, 0, str)
    for frame in reversed(ex.scope.lambdas):
        for variable, value in frame:
            if variable.lower() == name.lower():
                return value
    visible = ", ".join(v for frame in ex.scope.lambdas for v, _ in frame)
    raise Failure("arm-function", f"{fn}('{name}'): no lambda variable of that name here",
                  f"the lambda variables here: {visible}" if visible else
                  "lambdaVariables() belongs inside lambda('x', ...) as an argument of filter(), map(), ...")


def _takes(fn: str, args: list[Any], index: int, counts: tuple[int, ...]) -> Lambda:
    function_ = arg(fn, args, index, Lambda)
    if len(function_.params) not in counts:
        wanted = " or ".join(str(c) for c in counts)
        raise Failure("arm-argument", f"{fn}(): its lambda takes {wanted} variable(s), not "
                      f"{len(function_.params)} ({', '.join(function_.params)})")
    return function_


def _call(ex: Runtime, fn: str, function_: Lambda, *values: Any) -> Any:
    return ex.call_lambda(fn, function_, list(values[:len(function_.params)]))


def _boolean(fn: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise Failure("arm-argument", f"{fn}(): its lambda must return true or false, not {type_name(value)}")
    return value


def _key(fn: str, value: Any) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise Failure("arm-argument", f"{fn}(): its key lambda must return a string, not {type_name(value)}")
    return to_string(value)


@function("filter", 2, lambdas=True)
def _filter(ex: Runtime, fn: str, args: list[Any]) -> list[Any]:
    items, function_ = arg(fn, args, 0, list), _takes(fn, args, 1, (1, 2))
    return [item for i, item in enumerate(items) if _boolean(fn, _call(ex, fn, function_, item, i))]


@function("map", 2, lambdas=True)
def _map(ex: Runtime, fn: str, args: list[Any]) -> list[Any]:
    items, function_ = arg(fn, args, 0, list), _takes(fn, args, 1, (1, 2))
    return [_call(ex, fn, function_, item, i) for i, item in enumerate(items)]


@function("reduce", 3, lambdas=True)
def _reduce(ex: Runtime, fn: str, args: list[Any]) -> Any:
    items, value, function_ = arg(fn, args, 0, list), args[1], _takes(fn, args, 2, (2, 3))
    for index, item in enumerate(items):
        value = _call(ex, fn, function_, value, item, index)
    return value


@function("sort", 2, lambdas=True)
def _sort(ex: Runtime, fn: str, args: list[Any]) -> list[Any]:
    """Stable; the lambda says whether its first argument goes before its second."""
    items, function_ = arg(fn, args, 0, list), _takes(fn, args, 1, (2,))

    def compare(a: Any, b: Any) -> int:
        if _boolean(fn, _call(ex, fn, function_, a, b)):
            return -1
        return 1 if _boolean(fn, _call(ex, fn, function_, b, a)) else 0
    return sorted(items, key=cmp_to_key(compare))


@function("toObject", 2, 3, lambdas=True)
def _to_object(ex: Runtime, fn: str, args: list[Any]) -> dict[str, Any]:
    items, key = arg(fn, args, 0, list), _takes(fn, args, 1, (1,))
    value = _takes(fn, args, 2, (1,)) if len(args) > 2 else None
    return {_key(fn, _call(ex, fn, key, item)): _call(ex, fn, value, item) if value else item for item in items}


@function("groupBy", 2, lambdas=True)
def _group_by(ex: Runtime, fn: str, args: list[Any]) -> dict[str, list[Any]]:
    items, key = arg(fn, args, 0, list), _takes(fn, args, 1, (1,))
    groups: dict[str, list[Any]] = {}
    for item in items:
        groups.setdefault(_key(fn, _call(ex, fn, key, item)), []).append(item)
    return groups


@function("mapValues", 2, lambdas=True)
def _map_values(ex: Runtime, fn: str, args: list[Any]) -> dict[str, Any]:
    obj, function_ = arg(fn, args, 0, dict), _takes(fn, args, 1, (1,))
    return {name: _call(ex, fn, function_, value) for name, value in obj.items()}
