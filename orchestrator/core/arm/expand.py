"""Expands an ARM deployment template into the one imageTemplates resource it deploys.

Evaluation is local and pure: parameters, variables (copy loops included), user-defined
functions, the template functions of the families in this package, and reference() of the
resources the template itself declares. Like Azure Resource Manager, names (sections,
parameters, variables, functions, properties) match case-insensitively, and only string values
are expressions, never object keys. Parameters and variables are all evaluated, used or not, as
ARM does; other resources only as far as reference() needs them.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

# the families register their functions when imported
from orchestrator.core.arm import (arrays, dates, deployment, lambdas, logic, loops, numeric,  # noqa: F401
                                   objects, params, resources, scope, strings)
from orchestrator.core.arm.deployed import Resources
from orchestrator.core.arm.registry import FUNCTIONS, Lambda, Scope, supported
from orchestrator.core.arm.syntax import Access, Failure, Literal, Node, Reported, is_expression, parse
from orchestrator.core.arm.udf import Functions
from orchestrator.core.arm.values import MISSING, lookup_key, section, to_string
from orchestrator.core.problems import Problem, child
from orchestrator.core.reader import type_name
from orchestrator.errors import TemplateInvalid

MAX_STEPS = 200_000  # function calls in one deployment (real ones make a few thousand): untrusted input
MAX_NESTING = 200  # parameters, variables, resources and functions being evaluated inside each other


def expand_deployment(data: dict, parameters: dict[str, Any], context: dict[str, Any], source: str) -> dict:
    """The imageTemplates resource of `data` with every expression evaluated, or TemplateInvalid."""
    return expand_deployment_at(data, parameters, context, source)[0]


def expand_deployment_at(data: dict, parameters: dict[str, Any], context: dict[str, Any],
                         source: str) -> tuple[dict, str]:
    """The expanded imageTemplates resource and its JSON path in `data` (e.g. `$.resources[1]`),
    under which the image template's own problems are reported."""
    expander = Expander(data, parameters, context, source)
    resource = expander.run()
    if expander.problems or resource is None:
        problems = list(dict.fromkeys(expander.problems))  # a loop or a function reports once
        raise TemplateInvalid(problems, source)
    return resource, expander.template_path


class Expander:
    def __init__(self, data: dict, given: dict[str, Any], context: dict[str, Any], source: str) -> None:
        self.data = data
        self.given = given
        self.context = context
        self.source = source
        self.problems: list[Problem] = []
        self.template_path = "$"  # the imageTemplates resource's path, once found
        self.failures = 0  # problems plus silent failures (Reported), to tell a failed value
        self.scope = Scope()
        self.stack: list[tuple[str, str, str]] = []  # (kind, lowered name, name) being evaluated
        self.declared: dict[str, dict[str, tuple[str, Any, str]]] = {}  # section -> lowered -> (name, raw, path)
        self.values: dict[str, dict[str, Any]] = {"parameters": {}, "variables": {}}
        self.steps = 0
        self.clock: datetime | None = None
        self.functions = Functions(self)
        self.resources = Resources(self)

    def problem(self, path: str, rule: str, message: str, hint: str | None = None) -> None:
        self.problems.append(Problem(path, rule, message, hint))
        self.failures += 1

    @contextmanager
    def scoped(self, inner: Scope) -> Iterator[None]:
        outer, self.scope = self.scope, inner
        try:
            yield
        finally:
            self.scope = outer

    def run(self) -> dict | None:
        for name in ("parameters", "variables"):
            key, raw = section(self.data, name)
            if not isinstance(raw, dict):
                if raw is not None:
                    self.problem(child("$", key), "type", f"`{key}` must be an object, not {type_name(raw)}")
                raw = {}
            where = f"$.{name}"
            entries = {k: (k, v, child(where, k)) for k, v in raw.items()}
            if name == "variables":
                entries = loops.declare_variable_copies(self, entries, where)
            self.declared[name] = {k.lower(): entry for k, entry in entries.items()}
        self.check_given()
        self.functions.declare()
        for name in ("parameters", "variables"):  # all of them, used or not, as ARM does
            for real_name, _, _ in list(self.declared[name].values()):
                try:
                    self.resolve(name, real_name)
                except Reported:
                    pass
                except Failure as failure:  # nested too deeply
                    self.problem(child(f"$.{name}", real_name), failure.rule, failure.message, failure.hint)
        return self.resources.image_template()

    def check_given(self) -> None:
        declared = self.declared["parameters"]
        for name in self.given:
            if name.lower() not in declared:
                names = ", ".join(n for n, _, _ in declared.values())
                self.problem(child("$.parameters", name), "parameter-unknown",
                             f"parameter `{name}` was given, but the template does not declare it",
                             f"declared parameters: {names}" if names else "the template declares no parameters")

    # Parameters and variables are resolved on first use and cached; a failure is cached too, so
    # each broken value is reported once, where it is declared, not at every use.
    def resolve(self, section_name: str, name: str) -> Any:
        key = name.lower()
        if key not in self.declared[section_name]:
            names = ", ".join(n for n, _, _ in self.declared[section_name].values()) or "none"
            rule = "parameter-undeclared" if section_name == "parameters" else "variable-unknown"
            raise Failure(rule, f"{section_name}('{name}'): the template declares no such {section_name[:-1]}",
                          f"declared {section_name}: {names}")
        cache = self.values[section_name]
        if key in cache:
            if cache[key] is MISSING:
                raise Reported()
            return cache[key]
        real_name, raw, path = self.declared[section_name][key]
        with self.nested(section_name, key, real_name):
            before = self.failures
            with self.scoped(Scope(where=section_name[:-1])):
                if section_name == "parameters":
                    value = params.parameter(self, real_name, raw, path)
                elif isinstance(raw, loops.VariableCopy):
                    value = loops.variable_copy(self, raw)
                else:
                    value = self.value(raw, path)
        cache[key] = MISSING if self.failures > before else value
        return self.resolve(section_name, name)

    @contextmanager
    def nested(self, kind: str, key: str, shown: str) -> Iterator[None]:
        """Marks (kind, key) as being evaluated; evaluating it again inside is a cycle."""
        keys = [(k, n) for k, n, _ in self.stack]
        if (kind, key) in keys:
            loop = [s for k, _, s in self.stack[keys.index((kind, key)):] if k == kind] + [shown]
            raise Failure(f"{kind[:-1]}-cycle", f"{kind} refer to each other in a cycle: {' -> '.join(loop)}",
                          "make one of them a literal value")
        if len(self.stack) >= MAX_NESTING:
            raise Failure("arm-limit", f"values refer to each other more than {MAX_NESTING} levels deep",
                          "a template needs a few levels; this one is not a usable template")
        self.stack.append((kind, key, shown))
        try:
            yield
        finally:
            self.stack.pop()

    def value(self, raw: Any, path: str) -> Any:
        if isinstance(raw, dict):
            looped = loops.property_copy(self, raw, path)
            if looped is not None:
                return looped
            return {k: self.value(v, child(path, k)) for k, v in raw.items()}
        if isinstance(raw, list):
            return [self.value(v, child(path, i)) for i, v in enumerate(raw)]
        if isinstance(raw, str):
            return self.string(raw, path)
        return raw

    def string(self, text: str, path: str) -> Any:
        if not is_expression(text):
            return text
        if text.startswith("[["):
            return text[1:]
        try:
            result = self.evaluate(parse(text), text)
            if isinstance(result, Lambda):
                raise Failure("arm-function", f"`{text}` is a lambda, which is only an argument of "
                              "filter(), map(), reduce(), sort(), toObject(), groupBy() or mapValues()")
            return result
        except Failure as failure:
            self.problem(path, failure.rule, failure.message, failure.hint)
        except Reported:
            self.failures += 1
        except RecursionError:
            self.problem(path, "arm-limit", f"`{text[:60]}...` nests too deeply to evaluate",
                         "a template nests a few levels; this one is not a usable template")
        return None

    def evaluate(self, node: Node, text: str) -> Any:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise Failure("arm-limit", f"evaluating this template takes more than {MAX_STEPS:,} function calls",
                          "loops and lambdas over loops multiply; a real template needs far fewer")
        if isinstance(node, Literal):
            return node.value
        if isinstance(node, Access):
            return _access(self.evaluate(node.target, text), self.evaluate(node.key, text), node.column, text)
        if "." in node.name:
            return self.functions.call(node.name, [self.evaluate(a, text) for a in node.args], text)
        function = FUNCTIONS.get(node.name.lower())
        if function is None:
            raise resources.azure_only(node.name) or Failure(
                "arm-function", f"unknown function `{node.name}` in `{text}`", f"supported functions: {supported()}")
        count = len(node.args)
        if count < function.min_args or (function.max_args is not None and count > function.max_args):
            wanted = (f"{function.min_args}" if function.min_args == function.max_args else
                      f"at least {function.min_args}" if function.max_args is None else
                      f"{function.min_args} to {function.max_args}")
            raise Failure("arm-argument", f"{function.name}() takes {wanted} argument(s), got {count}, in `{text}`")
        if function.lazy:
            return function.run(self, function.name, node.args, text)
        args = [self.evaluate(arg, text) for arg in node.args]
        if not function.lambdas and any(isinstance(a, Lambda) for a in args):
            raise Failure("arm-argument", f"{function.name}() takes no lambda, in `{text}`",
                          "lambda() is an argument of filter(), map(), reduce(), sort(), toObject(), "
                          "groupBy() and mapValues() only")
        return function.run(self, function.name, args)

    # --- what functions ask of the expander ---

    def call_lambda(self, fn: str, function: Lambda, values: list[Any]) -> Any:
        frame = tuple(zip(function.params, values))
        with self.scoped(replace(self.scope, lambdas=function.captured + (frame,))):
            return self.evaluate(function.body, function.text)

    def reference(self, fn: str, target: str, full: bool) -> Any:
        return self.resources.reference(fn, target, full)

    def now(self) -> datetime:
        """One instant for the whole deployment: the context's `utcNow` (tests), else the clock."""
        if self.clock is None:
            given = self.context.get("utcNow")
            self.clock = (datetime.fromisoformat(given) if isinstance(given, str) else
                          given if isinstance(given, datetime) else datetime.now(UTC))
            if self.clock.tzinfo is None:  # a given time without an offset is UTC, as ARM's clock
                self.clock = self.clock.replace(tzinfo=UTC)
        return self.clock

    def new_guid(self) -> str:
        given = self.context.get("newGuid")
        return given if isinstance(given, str) else str(uuid.uuid4())


def _access(target: Any, key: Any, column: int, text: str) -> Any:
    if isinstance(target, dict) and isinstance(key, str):
        value = lookup_key(target, key)
        if value is MISSING:
            raise Failure("arm-property", f"no property `{key}` at column {column} of `{text}`",
                          f"the object has: {', '.join(target) or 'no properties'}")
        return value
    if isinstance(target, list) and isinstance(key, int) and not isinstance(key, bool):
        if not 0 <= key < len(target):
            raise Failure("arm-property", f"index {key} is out of range for an array of {len(target)} "
                          f"at column {column} of `{text}`")
        return target[key]
    raise Failure("arm-property", f"cannot take [{to_string(key)}] of {type_name(target)} "
                  f"at column {column} of `{text}`",
                  "properties apply to objects, integer indexes to arrays")
