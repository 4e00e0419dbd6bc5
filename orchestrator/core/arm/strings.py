"""String functions: base64*, dataUri*, endsWith, startsWith, format, guid, join, newGuid, padLeft,
replace, split, string, substring, toLower, toUpper, trim, uniqueString, uri*.

concat, contains, empty, first, last, indexOf, lastIndexOf, length, skip and take take strings or
arrays and live with the array functions; json with the object functions, utcNow with the dates.

uniqueString() and guid() are deterministic, as ARM's are, but Azure's hash algorithms are not
published in full: the values differ from Azure's (same length and alphabet, not the same text).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
import urllib.parse
import uuid
from typing import Any

from orchestrator.core.arm import dotnet
from orchestrator.core.arm.registry import Runtime, arg, function
from orchestrator.core.arm.syntax import Failure
from orchestrator.core.arm.values import parse_json_text, to_string, type_name

_GUID_NAMESPACE = uuid.UUID("6f1c1a4e-5b7e-4a8c-9d3e-2c1b0a9f8e7d")  # ours, not Azure's


def _text(fn: str, args: list[Any], count: int | None = None) -> list[str]:
    return [arg(fn, args, i, str) for i in range(len(args) if count is None else count)]


def _decode_base64(fn: str, text: str) -> str:
    try:
        return base64.b64decode(text.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise Failure("arm-argument", f"{fn}(): `{text[:40]}` is not base64 of UTF-8 text") from None


@function("base64", 1)
def _base64(ex: Runtime, fn: str, args: list[Any]) -> str:
    return base64.b64encode(arg(fn, args, 0, str).encode("utf-8")).decode("ascii")


@function("base64ToString", 1)
def _base64_to_string(ex: Runtime, fn: str, args: list[Any]) -> str:
    return _decode_base64(fn, arg(fn, args, 0, str))


@function("base64ToJson", 1)
def _base64_to_json(ex: Runtime, fn: str, args: list[Any]) -> Any:
    return parse_json_text(fn, _decode_base64(fn, arg(fn, args, 0, str)))


@function("dataUri", 1)
def _data_uri(ex: Runtime, fn: str, args: list[Any]) -> str:
    encoded = base64.b64encode(to_string(args[0]).encode("utf-8")).decode("ascii")
    return f"data:text/plain;charset=utf8;base64,{encoded}"


@function("dataUriToString", 1)
def _data_uri_to_string(ex: Runtime, fn: str, args: list[Any]) -> str:
    text = arg(fn, args, 0, str)
    match = re.fullmatch(r"data:([^,]*),(.*)", text, re.DOTALL)
    if match is None:
        raise Failure("arm-argument", f"{fn}(): `{text[:40]}` is not a data URI",
                      "a data URI looks like data:text/plain;charset=utf8;base64,SGVsbG8=")
    if match.group(1).lower().endswith(";base64"):
        return _decode_base64(fn, match.group(2))
    return urllib.parse.unquote(match.group(2))


@function("startsWith", 2)
def _starts_with(ex: Runtime, fn: str, args: list[Any]) -> bool:
    text, start = _text(fn, args)
    return text.lower().startswith(start.lower())  # ARM compares case-insensitively here


@function("endsWith", 2)
def _ends_with(ex: Runtime, fn: str, args: list[Any]) -> bool:
    text, end = _text(fn, args)
    return text.lower().endswith(end.lower())


@function("format", 1, None)
def _format(ex: Runtime, fn: str, args: list[Any]) -> str:
    return dotnet.composite(fn, arg(fn, args, 0, str), args[1:])


@function("guid", 1, None)
def _guid(ex: Runtime, fn: str, args: list[Any]) -> str:
    """A name-based UUID (v5) of the arguments: deterministic, but not the GUID Azure would make."""
    return str(uuid.uuid5(_GUID_NAMESPACE, "-".join(_text(fn, args))))


@function("uniqueString", 1, None)
def _unique_string(ex: Runtime, fn: str, args: list[Any]) -> str:
    """13 characters of [a-z2-7] from SHA-256: same shape as Azure's, not the same value."""
    number = int.from_bytes(hashlib.sha256("\x1f".join(_text(fn, args)).encode()).digest()[:8], "big")
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    return "".join(alphabet[(number >> (5 * i)) & 31] for i in range(13))


@function("newGuid", 0)
def _new_guid(ex: Runtime, fn: str, args: list[Any]) -> str:
    if ex.scope.where != "parameter":
        raise Failure("arm-function", "newGuid() is only allowed in a parameter's defaultValue, as in ARM",
                      "declare a parameter with \"defaultValue\": \"[newGuid()]\" and use parameters() here")
    return ex.new_guid()


@function("join", 2)
def _join(ex: Runtime, fn: str, args: list[Any]) -> str:
    items, delimiter = arg(fn, args, 0, list), arg(fn, args, 1, str)
    for index, item in enumerate(items):
        if isinstance(item, (dict, list)) or item is None:
            raise Failure("arm-argument", f"{fn}(): element {index} of the array is {type_name(item)}; "
                          "join takes strings, numbers and booleans")
    return delimiter.join(to_string(item) for item in items)


@function("padLeft", 2, 3)
def _pad_left(ex: Runtime, fn: str, args: list[Any]) -> str:
    value, width = arg(fn, args, 0, (str, int)), arg(fn, args, 1, int)
    padding = arg(fn, args, 2, str) if len(args) > 2 else " "
    if len(padding) != 1:
        raise Failure("arm-argument", f"{fn}(): the padding must be one character, not `{padding}`")
    return to_string(value).rjust(width, padding)


@function("replace", 3)
def _replace(ex: Runtime, fn: str, args: list[Any]) -> str:
    text, old, new = _text(fn, args)
    if not old:
        raise Failure("arm-argument", f"{fn}(): the string to replace must not be empty")
    return text.replace(old, new)


@function("split", 2)
def _split(ex: Runtime, fn: str, args: list[Any]) -> list[str]:
    text, delimiters = arg(fn, args, 0, str), arg(fn, args, 1, (str, list))
    if isinstance(delimiters, str):
        delimiters = [delimiters]
    if not delimiters or not all(isinstance(d, str) and d for d in delimiters):
        raise Failure("arm-argument", f"{fn}(): delimiters must be non-empty strings")
    return re.split("|".join(re.escape(d) for d in delimiters), text)


@function("string", 1)
def _string(ex: Runtime, fn: str, args: list[Any]) -> str:
    return to_string(args[0])


@function("substring", 2, 3)
def _substring(ex: Runtime, fn: str, args: list[Any]) -> str:
    text, start = arg(fn, args, 0, str), arg(fn, args, 1, int)
    length = arg(fn, args, 2, int) if len(args) > 2 else len(text) - start
    if start < 0 or length < 0 or start + length > len(text):
        raise Failure("arm-argument", f"{fn}(): start {start} and length {length} do not fit "
                      f"in a string of length {len(text)}")
    return text[start:start + length]


@function("toLower", 1)
def _to_lower(ex: Runtime, fn: str, args: list[Any]) -> str:
    return arg(fn, args, 0, str).lower()


@function("toUpper", 1)
def _to_upper(ex: Runtime, fn: str, args: list[Any]) -> str:
    return arg(fn, args, 0, str).upper()


@function("trim", 1)
def _trim(ex: Runtime, fn: str, args: list[Any]) -> str:
    return arg(fn, args, 0, str).strip()


@function("uri", 2)
def _uri(ex: Runtime, fn: str, args: list[Any]) -> str:
    """RFC 3986 resolution, as ARM documents: a base without a trailing / loses its last segment."""
    base, relative = _text(fn, args)
    if not urllib.parse.urlsplit(base).scheme:
        raise Failure("arm-argument", f"{fn}(): `{base}` is not an absolute URI", "e.g. https://example.com/path/")
    return urllib.parse.urljoin(base, relative)


@function("uriComponent", 1)
def _uri_component(ex: Runtime, fn: str, args: list[Any]) -> str:
    return urllib.parse.quote(arg(fn, args, 0, str), safe="")  # .NET's Uri.EscapeDataString


@function("uriComponentToString", 1)
def _uri_component_to_string(ex: Runtime, fn: str, args: list[Any]) -> str:
    return urllib.parse.unquote(arg(fn, args, 0, str))
