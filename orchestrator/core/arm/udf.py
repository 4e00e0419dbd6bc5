"""User-defined functions: the `functions` section, called as namespace.member(...).

As ARM defines them: each has typed `parameters` (no default values) and an `output` with a type
and a value; inside, parameters() reads the function's own parameters, and variables() and
reference() are not allowed. A function may call another (bicep's compiled functions do), but
not itself, directly or through others. Types may be languageVersion 2.0 `$ref`s.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.core.arm import typecheck
from orchestrator.core.arm.registry import Runtime, Scope
from orchestrator.core.arm.syntax import Failure, Reported
from orchestrator.core.arm.values import MISSING, lookup_key, section
from orchestrator.core.problems import child
from orchestrator.core.reader import type_name

_SHAPE = ('"functions": [{"namespace": "ns", "members": {"f": {"parameters": [{"name": "x", '
          '"type": "string"}], "output": {"type": "string", "value": "[parameters(\'x\')]"}}}}]')


@dataclass(frozen=True)
class UserFunction:
    name: str  # namespace.member, as declared
    parameters: tuple[tuple[str, dict], ...]  # (name, type declaration)
    output: dict
    path: str


class Functions:
    def __init__(self, ex: Runtime) -> None:
        self.ex = ex
        self.table: dict[str, UserFunction] = {}

    def declare(self) -> None:
        key, raw = section(self.ex.data, "functions")
        if raw is None:
            return
        where = child("$", key)
        if not isinstance(raw, list):
            self.ex.problem(where, "function-declaration", f"`{key}` must be an array, not {type_name(raw)}", _SHAPE)
            return
        for index, group in enumerate(raw):
            path = child(where, index)
            namespace = lookup_key(group, "namespace") if isinstance(group, dict) else MISSING
            members = lookup_key(group, "members") if isinstance(group, dict) else MISSING
            if not isinstance(namespace, str) or not namespace or not isinstance(members, dict):
                self.ex.problem(path, "function-declaration", "a functions entry needs a `namespace` "
                                "string and a `members` object", _SHAPE)
                continue
            for member, body in members.items():
                self.member(f"{namespace}.{member}", body, child(child(path, "members"), member))

    def member(self, name: str, body: Any, path: str) -> None:
        declared = lookup_key(body, "parameters") if isinstance(body, dict) else MISSING
        output = lookup_key(body, "output") if isinstance(body, dict) else MISSING
        declared = [] if declared is MISSING else declared
        if not isinstance(output, dict) or lookup_key(output, "value") is MISSING or not isinstance(declared, list):
            self.ex.problem(path, "function-declaration", f"function `{name}` needs an `output` with a "
                            "`value`, and `parameters` as an array", _SHAPE)
            return
        parameters = []
        for index, item in enumerate(declared):
            pname = lookup_key(item, "name") if isinstance(item, dict) else MISSING
            if not isinstance(pname, str) or not pname:
                self.ex.problem(child(child(path, "parameters"), index), "function-declaration",
                                "a function parameter needs a `name` and a `type`", _SHAPE)
                return
            parameters.append((pname, item))
        if name.lower() in self.table:
            self.ex.problem(path, "function-declaration", f"function `{name}` is declared twice")
            return
        self.table[name.lower()] = UserFunction(name, tuple(parameters), output, path)

    def call(self, name: str, args: list[Any], text: str) -> Any:
        function = self.table.get(name.lower())
        if function is None:
            known = ", ".join(f.name for f in self.table.values())
            raise Failure("arm-function", f"unknown function `{name}` in `{text}`",
                          f"user-defined functions: {known}" if known else
                          "the template's `functions` section declares no such namespace.member")
        if len(args) != len(function.parameters):
            raise Failure("arm-argument", f"{function.name}() takes {len(function.parameters)} argument(s), "
                          f"got {len(args)}, in `{text}`")
        values = {pname: self.argument(function, i, pname, spec, value)
                  for i, ((pname, spec), value) in enumerate(zip(function.parameters, args))}
        value_path = child(child(function.path, "output"), "value")
        with (self.ex.nested("functions", function.name.lower(), function.name),
              self.ex.scoped(Scope(where="function", arguments=values))):
            before = self.ex.failures
            result = self.ex.value(lookup_key(function.output, "value"), value_path)
            if self.ex.failures > before:
                raise Reported()
        spec, _ = typecheck.resolve(self.ex.data, function.output)
        type_text, kind = typecheck.kind_of(spec)
        if kind is not None and not typecheck.is_kind(result, kind):
            raise Failure("arm-function", f"{function.name}() returned {type_name(result)}, but its output "
                          f"is declared {type_text}")
        return result

    def argument(self, function: UserFunction, index: int, pname: str, declaration: dict, value: Any) -> Any:
        spec, error = typecheck.resolve(self.ex.data, declaration)
        type_text, kind = typecheck.kind_of(spec)
        if error or kind is None:
            raise Failure("function-declaration", f"{function.name}(): parameter `{pname}` has no usable "
                          f"type ({error or f'`{type_text}` is not a type'})")
        if not typecheck.is_kind(value, kind) and not (value is None and lookup_key(spec, "nullable") is True):
            raise Failure("arm-argument", f"{function.name}(): argument {index + 1} (`{pname}`) must be "
                          f"{typecheck.KIND_NAMES[kind]}, not {type_name(value)}")
        secure = (type_text or "").lower().startswith("secure")
        for _, message, hint in typecheck.check(self.ex.data, value, spec, f"{function.name}() parameter",
                                                pname, secure):
            raise Failure("arm-argument", message, hint)
        return value
