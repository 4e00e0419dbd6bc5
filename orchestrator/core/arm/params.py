"""One parameter's value: given (command-line text coerced to the declared type) or its
defaultValue, checked against its declaration; every problem at `$.parameters.NAME`."""
from __future__ import annotations

import json
import re
from typing import Any

from orchestrator.core.arm import typecheck
from orchestrator.core.arm.registry import Runtime
from orchestrator.core.arm.values import MISSING, lookup_key
from orchestrator.core.problems import child
from orchestrator.core.reader import type_name

_EXAMPLES = {str: "text", int: "5", bool: "true", dict: "'{\"key\": \"value\"}'", list: "'[\"a\", \"b\"]'"}


def parameter(ex: Runtime, name: str, declaration: Any, path: str) -> Any:
    if not isinstance(declaration, dict):
        ex.problem(path, "parameter-declaration", f"must be an object, not {type_name(declaration)}",
                   "e.g. {\"type\": \"string\", \"defaultValue\": \"x\"}")
        return None
    spec, error = typecheck.resolve(ex.data, declaration)
    if error:
        ex.problem(child(path, "$ref"), "parameter-declaration", error, "declare the type under `definitions`")
        return None
    kind_name, kind = typecheck.kind_of(spec)
    if kind is None:
        ex.problem(child(path, "type"), "parameter-declaration",
                   f"`{kind_name}` is not a parameter type" if kind_name is not None else "`type` is missing",
                   f"use one of: {', '.join(typecheck.BASIC)}")
        return None
    secure = kind_name.lower().startswith("secure")
    nullable = lookup_key(spec, "nullable") is True
    given = next((v for k, v in ex.given.items() if k.lower() == name.lower() and v is not None), MISSING)
    if given is not MISSING:
        value, wrong = coerce(given, kind)
        if wrong:
            ex.problem(path, "parameter-type", f"parameter `{name}` is {kind_name}, but the given value "
                       f"{'' if secure else f'`{given}` '}{wrong}", f"pass e.g. -p {name}={_EXAMPLES[kind]}")
            return None
    else:
        default = lookup_key(declaration, "defaultValue")
        if default is MISSING and nullable:
            return None
        if default is MISSING:
            ex.problem(path, "parameter-missing", f"parameter `{name}` has no value and no defaultValue",
                       f"pass -p {name}=VALUE, or give it in a parameters file (--parameters FILE)")
            return None
        before = ex.failures
        value = ex.value(default, child(path, "defaultValue"))
        if ex.failures > before:
            return None
        if not typecheck.is_kind(value, kind) and not (value is None and nullable):
            ex.problem(child(path, "defaultValue"), "parameter-type",
                       f"the defaultValue of `{name}` is {type_name(value)}, but the type is {kind_name}")
            return None
    for rule, message, hint in typecheck.check(ex.data, value, spec, "parameter", name, secure):
        ex.problem(path, rule, message, hint)
    return value


def coerce(value: Any, kind: type) -> tuple[Any, str | None]:
    """Command-line values arrive as text; turn them into the declared type where that is unambiguous."""
    if typecheck.is_kind(value, kind):
        return value, None
    if isinstance(value, str):
        text = value.strip()
        if kind is int and re.fullmatch(r"[+-]?\d+", text):
            return int(text), None
        if kind is bool and text.lower() in ("true", "false"):
            return text.lower() == "true", None
        if kind in (dict, list):
            try:
                parsed = json.loads(text)
            except (json.JSONDecodeError, RecursionError):
                parsed = None
            if typecheck.is_kind(parsed, kind):
                return parsed, None
    expected = {str: "is not a string", int: "is not a whole number", bool: "is not true or false",
                dict: "is not a JSON object", list: "is not a JSON array"}[kind]
    return None, expected
