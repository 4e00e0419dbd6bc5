"""The table of template functions, what a function may ask of the evaluation, and argument checks.

Each function family registers its functions here with @function; the expander looks them up by
lower-cased name. A function gets the Runtime (the expander, seen through this protocol, so the
families need not import it), its own name as written in the table, and its evaluated arguments;
a `lazy` one gets the argument nodes instead and evaluates what it needs (if, lambda).
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from orchestrator.core.arm.syntax import Failure, Node
from orchestrator.core.arm.values import type_name


@dataclass(frozen=True)
class Lambda:
    """lambda('x', ...): the value filter(), map() and the other lambda functions take."""
    params: tuple[str, ...]
    body: Node
    text: str  # the expression it came from, for messages
    captured: tuple[tuple[tuple[str, Any], ...], ...]  # the lambda variables visible where it was written


@dataclass(frozen=True)
class Scope:
    """Where an expression is evaluated, which decides what some functions may do or return."""
    where: str = "resource"  # parameter (a defaultValue), variable, resource, function (user-defined)
    loops: tuple[tuple[str, int], ...] = ()  # active copy loops, outermost first: (name, index)
    resource_loop: str | None = None  # the name of the resource copy loop among them, if any
    lambdas: tuple[tuple[tuple[str, Any], ...], ...] = ()  # lambda variables, innermost last
    arguments: dict[str, Any] | None = None  # a user-defined function's, by name


class Runtime(Protocol):
    """What a template function, and the modules the expander delegates to, may ask of it."""
    data: dict
    given: dict[str, Any]
    context: dict[str, Any]
    source: str
    scope: Scope
    failures: int  # problems recorded, plus values that failed silently (Reported)

    def problem(self, path: str, rule: str, message: str, hint: str | None = None) -> None: ...
    def value(self, raw: Any, path: str) -> Any: ...  # records problems, gives None where one failed
    def evaluate(self, node: Node, text: str) -> Any: ...  # raises Failure or Reported
    def scoped(self, scope: Scope) -> AbstractContextManager[None]: ...
    def nested(self, kind: str, key: str, shown: str) -> AbstractContextManager[None]: ...  # cycles
    def resolve(self, section: str, name: str) -> Any: ...
    def call_lambda(self, fn: str, function: Lambda, values: list[Any]) -> Any: ...
    def reference(self, fn: str, target: str, full: bool) -> Any: ...
    def now(self) -> datetime: ...
    def new_guid(self) -> str: ...


@dataclass(frozen=True)
class Function:
    name: str
    min_args: int
    max_args: int | None  # None: any number
    run: Callable[..., Any]
    lazy: bool = False  # run(ex, fn, nodes, text) instead of run(ex, fn, values)
    lambdas: bool = False  # takes lambda() arguments (no other function may)


FUNCTIONS: dict[str, Function] = {}


def function(name: str, min_args: int, max_args: int | None = -1, *, lazy: bool = False,
             lambdas: bool = False) -> Callable:
    """Registers a function; max_args -1 means exactly min_args, None means any number."""
    def register(run: Callable[..., Any]) -> Callable[..., Any]:
        FUNCTIONS[name.lower()] = Function(name, min_args, min_args if max_args == -1 else max_args, run,
                                           lazy, lambdas)
        return run
    return register


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
               dict: "an object", Lambda: "a lambda", type(None): "null"}


def kind_name(kind: type) -> str:
    return _KIND_NAMES[kind]


def arg(fn: str, args: list[Any], index: int, kind: type | tuple[type, ...]) -> Any:
    """args[index], checked to be of `kind` (bool is not an int here, and a lambda only a Lambda)."""
    value = args[index]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        wanted = " or ".join(kind_name(k) for k in kinds)
        shown = "a lambda" if isinstance(value, Lambda) else type_name(value)
        raise Failure("arm-argument", f"{fn}(): argument {index + 1} must be {wanted}, not {shown}")
    return value


def elements(fn: str, args: list[Any], index: int, kind: type) -> list[Any]:
    """args[index] as an array whose every element is of `kind` (flatten's arrays, shallowMerge's objects)."""
    items = arg(fn, args, index, list)
    for position, item in enumerate(items):
        if not isinstance(item, kind) or (isinstance(item, bool) and kind is not bool):
            raise Failure("arm-argument", f"{fn}(): element {position} is {type_name(item)}; {fn} takes an "
                          f"array of {kind_name(kind).split(' ', 1)[1]}s")
    return items


def supported() -> str:
    return ", ".join(sorted(f.name for f in FUNCTIONS.values()))
