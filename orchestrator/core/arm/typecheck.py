"""Declared types of parameters, user-defined function parameters and outputs: the basic types,
their constraints (allowedValues, minValue/maxValue, minLength/maxLength), and languageVersion
2.0's user-defined types (`definitions`, `$ref`, `nullable`, object `properties`,
`additionalProperties`, array `items`), as bicep compiles them.
"""
from __future__ import annotations

from typing import Any

from orchestrator.core.arm.values import MISSING, describe, is_int, lookup_key, same, section, to_string
from orchestrator.core.reader import type_name

BASIC: dict[str, type] = {"string": str, "securestring": str, "int": int, "bool": bool,
                          "object": dict, "secureobject": dict, "array": list}
KIND_NAMES = {str: "a string", int: "an integer", bool: "a boolean", dict: "an object", list: "an array"}
_REF = "#/definitions/"
Issue = tuple[str, str, str | None]  # (rule, message, hint)


def resolve(data: dict, declaration: dict, depth: int = 0) -> tuple[dict, str | None]:
    """The declaration with its `$ref` (and theirs) merged in: (type declaration, error)."""
    ref = lookup_key(declaration, "$ref")
    if ref is MISSING:
        return declaration, None
    _, definitions = section(data, "definitions")
    name = ref[len(_REF):] if isinstance(ref, str) and ref.startswith(_REF) else None
    target = lookup_key(definitions, name) if isinstance(definitions, dict) and name else MISSING
    if not isinstance(target, dict):
        defined = ", ".join(definitions) if isinstance(definitions, dict) and definitions else "none"
        return {}, f"`$ref` {describe(ref)} names no type in this template's definitions (defined: {defined})"
    if depth > 32:
        return {}, f"`$ref` {describe(ref)}: the definitions refer to each other in a cycle"
    base, error = resolve(data, target, depth + 1)
    return {**base, **{k: v for k, v in declaration.items() if k.lower() != "$ref"}}, error


def kind_of(spec: dict) -> tuple[str | None, type | None]:
    """(the declared type name, its Python type) or (name or None, None) when it is no type."""
    name = lookup_key(spec, "type")
    if not isinstance(name, str):
        return None, None
    return name, BASIC.get(name.lower())


def is_kind(value: Any, kind: type) -> bool:
    return is_int(value) if kind is int else isinstance(value, kind)


def check(data: dict, value: Any, spec: dict, noun: str, name: str, secure: bool) -> list[Issue]:
    """What is wrong with `value` for the type `spec`: constraints first, then the structure."""
    label = f"{noun} `{name}`"
    if value is None and lookup_key(spec, "nullable") is True:
        return []
    issues: list[Issue] = []
    shown = "the value" if secure else f"`{to_string(value)}`"
    allowed = lookup_key(spec, "allowedValues")
    if isinstance(allowed, list):
        items = value if isinstance(value, list) else [value]
        if not all(any(same(item, a) for a in allowed) for item in items):
            issues.append(("parameter-allowed", f"{shown} is not allowed for {label}",
                           f"allowed values: {', '.join(to_string(a) for a in allowed)}"))
    for bound, sign, words in (("minValue", 1, "at least"), ("maxValue", -1, "at most")):
        limit = lookup_key(spec, bound)
        if is_int(limit) and is_int(value) and (value - limit) * sign < 0:
            issues.append(("parameter-range", f"{label} must be {words} {limit}, not {value}", None))
    for bound, sign, words in (("minLength", 1, "at least"), ("maxLength", -1, "at most")):
        limit = lookup_key(spec, bound)
        if is_int(limit) and isinstance(value, (str, list)) and (len(value) - limit) * sign < 0:
            unit = "characters" if isinstance(value, str) else "entries"
            issues.append(("parameter-length", f"{label} must have {words} {limit} {unit}, not {len(value)}", None))
    return issues + _structure(data, value, spec, noun, name, secure)


def _structure(data: dict, value: Any, spec: dict, noun: str, name: str, secure: bool) -> list[Issue]:
    issues: list[Issue] = []
    properties = lookup_key(spec, "properties")
    if isinstance(value, dict) and isinstance(properties, dict):
        for prop, declaration in properties.items():
            issues += _member(data, lookup_key(value, prop), declaration, noun, f"{name}.{prop}", secure)
        extra = lookup_key(spec, "additionalProperties")
        known = {p.lower() for p in properties}
        for key, item in value.items():
            if key.lower() in known:
                continue
            if extra is False:
                issues.append(("parameter-type", (f"{noun} `{name}` has the property `{key}`, which its type "
                                                  "does not declare"), f"declared: {', '.join(properties) or 'none'}"))
            elif isinstance(extra, dict):
                issues += _member(data, item, extra, noun, f"{name}.{key}", secure)
    items = lookup_key(spec, "items")
    if isinstance(value, list) and isinstance(items, dict):
        for index, item in enumerate(value):
            issues += _member(data, item, items, noun, f"{name}[{index}]", secure)
    return issues


def _member(data: dict, value: Any, declaration: Any, noun: str, name: str, secure: bool) -> list[Issue]:
    if not isinstance(declaration, dict):
        return []
    spec, error = resolve(data, declaration)
    if error:
        return [("parameter-declaration", f"{noun} `{name}`: {error}", None)]
    if value is MISSING:
        if lookup_key(spec, "nullable") is True:
            return []
        return [("parameter-type", f"{noun} `{name}` is missing", "its type requires it")]
    type_text, kind = kind_of(spec)
    if value is None and lookup_key(spec, "nullable") is True:
        return []
    if kind is not None and not is_kind(value, kind):
        return [("parameter-type", f"{noun} `{name}` must be {KIND_NAMES[kind]} ({type_text}), not {type_name(value)}",
                 None)]
    return check(data, value, spec, noun, name, secure or (type_text or "").lower().startswith("secure"))
