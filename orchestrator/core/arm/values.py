"""What every function family needs to know about ARM values: names, equality, order, text.

ARM values are JSON values. Booleans are not numbers (Python says True == 1; ARM does not),
property names match case-insensitively, and string() spells booleans the .NET way.
"""
from __future__ import annotations

import json
import re
from typing import Any

from orchestrator.core.arm.syntax import Failure
from orchestrator.core.reader import type_name

MISSING = object()  # an absent key, or a value that failed (cached so it is reported once)
INT64 = (-2**63, 2**63 - 1)


def lookup_key(obj: dict, key: str) -> Any:
    """obj[key] with ARM's case-insensitive names, or MISSING."""
    if key in obj:
        return obj[key]
    lowered = key.lower()
    for name, value in obj.items():
        if name.lower() == lowered:
            return value
    return MISSING


def section(data: dict, name: str) -> tuple[str, Any]:
    """(the key as spelled, its value or None) of a top-level template section."""
    for key, value in data.items():
        if key.lower() == name:
            return key, value
    return name, None


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def to_string(value: Any) -> str:
    """ARM's string(): booleans as True/False (.NET spelling), objects and arrays as compact JSON."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if isinstance(value, float):  # .NET's shortest round trip: 3, 2.5, 1E+20
        return repr(value).removesuffix(".0").replace("e", "E")
    return str(value)


def same(a: Any, b: Any) -> bool:
    """Deep equality where true is not 1, unlike Python's; strings compare case-sensitively."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if is_number(a) and is_number(b):
        return a == b
    return type(a) is type(b) and a == b


def order(fn: str, a: Any, b: Any) -> int:
    """-1, 0 or 1 as greater()/less() order two ints or two strings. Strings follow .NET's
    culture order as ARM does: letters compare case-insensitively, then lower case first
    (so 'A' is greater than 'a'). Punctuation weights are not modelled."""
    if is_number(a) and is_number(b):
        return (a > b) - (a < b)
    if isinstance(a, str) and isinstance(b, str):
        key_a, key_b = (a.casefold(), a.swapcase()), (b.casefold(), b.swapcase())
        return (key_a > key_b) - (key_a < key_b)
    raise Failure("arm-argument", f"{fn}(): compares two integers or two strings, not {type_name(a)} "
                  f"and {type_name(b)}")


def int64(fn: str, value: int) -> int:
    if not INT64[0] <= value <= INT64[1]:
        raise Failure("arm-argument", f"{fn}(): the result {value} does not fit in a 64-bit integer")
    return value


_JSON_TOKEN_RE = re.compile(r"""
    (?P<double>"(?:[^"\\]|\\.)*")
  | (?P<single>'(?:[^'\\]|\\.)*')
  | (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<name>[A-Za-z_$][A-Za-z0-9_$]*)(?=\s*:)
  | (?P<other>.)
""", re.VERBOSE | re.DOTALL)


def parse_json_text(fn: str, text: str) -> Any:
    """JSON as ARM's json() reads it (Json.NET): also 'single-quoted' strings, unquoted property
    names and comments. NaN and Infinity are refused, as everywhere else."""
    out = []
    for match in _JSON_TOKEN_RE.finditer(text):
        kind, token = match.lastgroup, match.group()
        if kind == "single":
            out.append(json.dumps(json.loads('"' + token[1:-1].replace("\\'", "'").replace('"', '\\"') + '"')))
        elif kind == "name":
            out.append(json.dumps(token))
        elif kind != "comment":
            out.append(token)
    try:
        return json.loads("".join(out), parse_constant=_no_constant)
    except (ValueError, RecursionError) as error:
        raise Failure("arm-argument", f"{fn}(): `{text[:60]}` is not JSON ({error})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def describe(value: Any) -> str:
    """A value as a problem message shows it: short, JSON-like."""
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["MISSING", "describe", "int64", "is_int", "is_number", "lookup_key", "order", "parse_json_text",
           "same", "section", "to_string", "type_name"]
