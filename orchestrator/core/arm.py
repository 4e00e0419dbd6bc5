"""Expands an ARM deployment template into the one imageTemplates resource it deploys.

Only what image-template deployments use is supported: parameters, variables, a table of
template functions, property access and indexing. Evaluation is local and pure: resourceGroup()
and subscription() come from `context`, and uniqueString()/guid() are deterministic but are NOT
Azure's hashes, so names built from them differ from the ones Azure would compute.

Like Azure Resource Manager, names (sections, parameters, variables, functions, properties)
match case-insensitively, and only string values are expressions, never object keys.
"""
from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from orchestrator.core.problems import Problem, child
from orchestrator.core.reader import type_name
from orchestrator.errors import TemplateInvalid

_TEMPLATE_TYPE = "microsoft.virtualmachineimages/imagetemplates"
_DROPPED_KEYS = {"condition", "copy", "comments"}  # ARM-only; the image template loader rejects them
_PARAMETER_TYPES = {"string": str, "securestring": str, "int": int, "bool": bool,
                    "object": dict, "secureobject": dict, "array": list}
_ZERO_GUID = "00000000-0000-0000-0000-000000000000"
_GUID_NAMESPACE = uuid.UUID("6f1c1a4e-5b7e-4a8c-9d3e-2c1b0a9f8e7d")  # ours, not Azure's
_SYNTAX_HINT = ("an expression is one call such as [concat('a', parameters('b'))]; "
                "strings use single quotes ('' for a quote); start with [[ for a literal [")


def expand_deployment(data: dict, parameters: dict[str, Any], context: dict[str, Any], source: str) -> dict:
    """The imageTemplates resource of `data` with every expression evaluated, or TemplateInvalid."""
    expander = _Expander(data, parameters, context)
    resource = expander.run()
    if expander.problems or resource is None:
        raise TemplateInvalid(expander.problems, source)
    return resource


class _Failure(Exception):
    """One expression failed; becomes a Problem at the path of the string holding it."""

    def __init__(self, rule: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.rule, self.message, self.hint = rule, message, hint


class _Reported(Exception):
    """A parameter or variable this expression uses already failed, and its problem is listed."""


_FAILED = object()


# --- tokenizer -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Token:
    kind: str  # string, int, ident, one of ( ) [ ] , . or end
    text: str
    column: int  # 1-based, counted in the whole JSON string including its leading `[`


_TOKEN_RE = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<int>-?\d+)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[()\[\],.])
""", re.VERBOSE)


def _tokenize(body: str, text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(body):
        match = _TOKEN_RE.match(body, pos)
        if match is None:
            what = "unterminated string" if body[pos] == "'" else f"unexpected character `{body[pos]}`"
            raise _syntax(text, pos + 2, what)
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append(_Token(match.group() if kind == "punct" else kind, match.group(), pos + 2))
        pos = match.end()
    tokens.append(_Token("end", "", len(body) + 2))
    return tokens


def _syntax(text: str, column: int, what: str) -> _Failure:
    return _Failure("arm-expression", f"syntax error in `{text}` at column {column}: {what}", _SYNTAX_HINT)


# --- parser ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Literal:
    value: Any


@dataclass(frozen=True)
class _Call:
    name: str
    args: tuple[Any, ...]
    column: int


@dataclass(frozen=True)
class _Access:
    target: Any
    key: Any  # a node: `.name` parses as the literal 'name'
    column: int


class _Parser:
    """expression := (string | int | name '(' args ')') ('.' name | '[' expression ']')*"""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text[1:-1], text)
        self.pos = 0

    def parse(self) -> Any:
        if self.peek().kind == "end":
            raise _syntax(self.text, 2, "the expression is empty")
        node = self.expression()
        if self.peek().kind != "end":
            raise self.unexpected("the end of the expression")
        return node

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.pos + ahead, len(self.tokens) - 1)]

    def take(self, kind: str, expected: str) -> _Token:
        token = self.peek()
        if token.kind != kind:
            raise self.unexpected(expected)
        self.pos += 1
        return token

    def unexpected(self, expected: str) -> _Failure:
        token = self.peek()
        found = "the end" if token.kind == "end" else f"`{token.text}`"
        return _syntax(self.text, token.column, f"expected {expected}, found {found}")

    def expression(self) -> Any:
        token = self.peek()
        if token.kind == "string":
            self.pos += 1
            node: Any = _Literal(token.text[1:-1].replace("''", "'"))
        elif token.kind == "int":
            self.pos += 1
            node = _Literal(int(token.text))
        elif token.kind == "ident":
            node = self.call()
        else:
            raise self.unexpected("a function call, a 'string' or a number")
        while self.peek().kind in (".", "["):
            token = self.peek()
            self.pos += 1
            if token.kind == ".":
                key: Any = _Literal(self.take("ident", "a property name").text)
            else:
                key = self.expression()
                self.take("]", "`]`")
            node = _Access(node, key, token.column)
        return node

    def call(self) -> _Call:
        first = self.take("ident", "a function name")
        name = first.text
        # namespace.function(...) is a user-defined function; parsed so it can be named in the problem
        if self.peek().kind == "." and self.peek(1).kind == "ident" and self.peek(2).kind == "(":
            name = f"{name}.{self.peek(1).text}"
            self.pos += 2
        if self.peek().kind != "(":
            token = self.peek()
            raise _Failure("arm-expression",
                           f"syntax error in `{self.text}` at column {token.column}: expected `(` after `{name}`",
                           "ARM has no bare words: write true(), false(), bool('true') or a 'quoted string'")
        self.pos += 1
        args: list[Any] = []
        if self.peek().kind != ")":
            args.append(self.expression())
            while self.peek().kind == ",":
                self.pos += 1
                args.append(self.expression())
        self.take(")", "`,` or `)`")
        return _Call(name, tuple(args), first.column)


# --- functions -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Function:
    name: str
    min_args: int
    max_args: int | None  # None: any number
    run: Callable[["_Expander", str, list[Any]], Any]


_FUNCTIONS: dict[str, _Function] = {}


def _function(name: str, min_args: int, max_args: int | None = -1) -> Callable:
    """Registers a function; max_args -1 means exactly min_args, None means any number."""
    def register(run: Callable[["_Expander", str, list[Any]], Any]) -> Callable:
        _FUNCTIONS[name.lower()] = _Function(name, min_args, min_args if max_args == -1 else max_args, run)
        return run
    return register


def _arg(fn: str, args: list[Any], index: int, kind: type | tuple[type, ...]) -> Any:
    value = args[index]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        wanted = " or ".join(_kind_name(k) for k in kinds)
        raise _Failure("arm-argument", f"{fn}(): argument {index + 1} must be {wanted}, not {type_name(value)}")
    return value


def _kind_name(kind: type) -> str:
    return {str: "a string", int: "an integer", bool: "a boolean", list: "an array", dict: "an object"}[kind]


def _to_string(value: Any) -> str:
    """ARM's string(): booleans as True/False (.NET spelling), objects and arrays as compact JSON."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _same(a: Any, b: Any) -> bool:
    """Deep equality where true is not 1, unlike Python's."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _lookup_key(obj: dict, key: str) -> Any:
    for name, value in obj.items():
        if name.lower() == key.lower():
            return value
    return _FAILED


@_function("parameters", 1)
def _parameters(ex: "_Expander", fn: str, args: list[Any]) -> Any:
    return ex.resolve("parameters", _arg(fn, args, 0, str))


@_function("variables", 1)
def _variables(ex: "_Expander", fn: str, args: list[Any]) -> Any:
    if ex.stack and ex.stack[-1][0] == "parameters":
        raise _Failure("arm-function", "a parameter's defaultValue cannot use variables()",
                       "use parameters(), literals or functions such as resourceGroup() there")
    return ex.resolve("variables", _arg(fn, args, 0, str))


@_function("concat", 1, None)
def _concat(ex: "_Expander", fn: str, args: list[Any]) -> Any:
    if isinstance(args[0], list):
        out: list[Any] = []
        for index in range(len(args)):
            out.extend(_arg(fn, args, index, list))
        return out
    for index, value in enumerate(args):
        if isinstance(value, (dict, list)):
            raise _Failure("arm-argument", f"concat(): argument {index + 1} is {type_name(value)}; "
                           "concat joins either strings or arrays", "use string(...) to turn it into text")
    return "".join(_to_string(value) for value in args)


_FORMAT_ITEM_RE = re.compile(r"\s*(\d+)\s*(?:,\s*(-?\d+)\s*)?(?::(.*))?", re.DOTALL)


@_function("format", 1, None)
def _format(ex: "_Expander", fn: str, args: list[Any]) -> str:
    """.NET composite formatting: {index[,alignment][:spec]} with {{ and }} as literal braces."""
    text = _arg(fn, args, 0, str)
    out: list[str] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char in "{}" and text[pos + 1:pos + 2] == char:
            out.append(char)
            pos += 2
            continue
        if char == "}":
            raise _Failure("arm-argument", f"format(): unmatched `}}` at position {pos} of `{text}`",
                           "write }} for a literal brace")
        if char != "{":
            out.append(char)
            pos += 1
            continue
        end = text.find("}", pos)
        item = _FORMAT_ITEM_RE.fullmatch(text, pos + 1, end) if end > 0 else None
        if item is None:
            raise _Failure("arm-argument", f"format(): bad placeholder at position {pos} of `{text}`",
                           "placeholders look like {0}; write {{ for a literal brace")
        index = int(item.group(1))
        if index + 1 >= len(args):
            raise _Failure("arm-argument", f"format(): `{{{index}}}` needs {index + 1} value(s) after the "
                           f"format string, got {len(args) - 1}")
        piece = _format_value(args[index + 1], item.group(3))
        width = int(item.group(2) or 0)
        out.append(piece.ljust(-width) if width < 0 else piece.rjust(width))
        pos = end + 1
    return "".join(out)


def _format_value(value: Any, spec: str | None) -> str:
    if not spec or not isinstance(value, int) or isinstance(value, bool):
        return _to_string(value)
    match = re.fullmatch(r"([NnDdXx])(\d*)", spec)
    if match is None:
        raise _Failure("arm-argument", f"format(): format specifier `{spec}` is not supported",
                       "supported: N (thousands separators), D (zero padded), X (hexadecimal)")
    letter, digits = match.group(1), match.group(2)
    if letter in "Nn":
        return f"{value:,.{int(digits or 2)}f}"
    if letter in "Dd":
        return f"{value:0{int(digits or 0)}d}"
    return f"{value:0{int(digits or 0)}{'X' if letter == 'X' else 'x'}}"


@_function("toLower", 1)
def _to_lower(ex: "_Expander", fn: str, args: list[Any]) -> str:
    return _arg(fn, args, 0, str).lower()


@_function("toUpper", 1)
def _to_upper(ex: "_Expander", fn: str, args: list[Any]) -> str:
    return _arg(fn, args, 0, str).upper()


@_function("trim", 1)
def _trim(ex: "_Expander", fn: str, args: list[Any]) -> str:
    return _arg(fn, args, 0, str).strip()


@_function("replace", 3)
def _replace(ex: "_Expander", fn: str, args: list[Any]) -> str:
    text, old, new = (_arg(fn, args, i, str) for i in range(3))
    if not old:
        raise _Failure("arm-argument", "replace(): the string to replace must not be empty")
    return text.replace(old, new)


@_function("substring", 2, 3)
def _substring(ex: "_Expander", fn: str, args: list[Any]) -> str:
    text, start = _arg(fn, args, 0, str), _arg(fn, args, 1, int)
    length = _arg(fn, args, 2, int) if len(args) > 2 else len(text) - start
    if start < 0 or length < 0 or start + length > len(text):
        raise _Failure("arm-argument", f"substring(): start {start} and length {length} do not fit "
                       f"in a string of length {len(text)}")
    return text[start:start + length]


@_function("split", 2)
def _split(ex: "_Expander", fn: str, args: list[Any]) -> list[str]:
    text, delimiters = _arg(fn, args, 0, str), _arg(fn, args, 1, (str, list))
    if isinstance(delimiters, str):
        delimiters = [delimiters]
    if not delimiters or not all(isinstance(d, str) and d for d in delimiters):
        raise _Failure("arm-argument", "split(): delimiters must be non-empty strings")
    return re.split("|".join(re.escape(d) for d in delimiters), text)


@_function("length", 1)
def _length(ex: "_Expander", fn: str, args: list[Any]) -> int:
    return len(_arg(fn, args, 0, (str, list, dict)))


@_function("string", 1)
def _string(ex: "_Expander", fn: str, args: list[Any]) -> str:
    return _to_string(args[0])


@_function("int", 1)
def _int(ex: "_Expander", fn: str, args: list[Any]) -> int:
    value = _arg(fn, args, 0, (str, int))
    if isinstance(value, str):
        if not re.fullmatch(r"\s*[+-]?\d+\s*", value):
            raise _Failure("arm-argument", f"int(): `{value}` is not a whole number")
        return int(value)
    return value


@_function("bool", 1)
def _bool(ex: "_Expander", fn: str, args: list[Any]) -> bool:
    value = _arg(fn, args, 0, (str, int, bool))
    if isinstance(value, str):
        if value.strip().lower() not in ("true", "false"):
            raise _Failure("arm-argument", f"bool(): `{value}` is not 'true' or 'false'")
        return value.strip().lower() == "true"
    return bool(value)


@_function("true", 0)
def _true(ex: "_Expander", fn: str, args: list[Any]) -> bool:
    return True


@_function("false", 0)
def _false(ex: "_Expander", fn: str, args: list[Any]) -> bool:
    return False


@_function("null", 0)
def _null(ex: "_Expander", fn: str, args: list[Any]) -> None:
    return None


@_function("createArray", 0, None)
def _create_array(ex: "_Expander", fn: str, args: list[Any]) -> list[Any]:
    return list(args)


@_function("createObject", 0, None)
def _create_object(ex: "_Expander", fn: str, args: list[Any]) -> dict[str, Any]:
    if len(args) % 2:
        raise _Failure("arm-argument", "createObject(): needs key, value pairs, got an odd number of arguments")
    return {_arg(fn, args, i, str): args[i + 1] for i in range(0, len(args), 2)}


@_function("empty", 1)
def _empty(ex: "_Expander", fn: str, args: list[Any]) -> bool:
    value = args[0]
    return value is None or (isinstance(value, (str, list, dict)) and not value)


@_function("contains", 2)
def _contains(ex: "_Expander", fn: str, args: list[Any]) -> bool:
    container, item = _arg(fn, args, 0, (str, list, dict)), args[1]
    if isinstance(container, list):
        return any(_same(element, item) for element in container)
    if isinstance(container, dict):
        return _lookup_key(container, _to_string(item)) is not _FAILED
    return _to_string(item) in container  # ARM compares strings case-sensitively here


@_function("equals", 2)
def _equals(ex: "_Expander", fn: str, args: list[Any]) -> bool:
    return _same(args[0], args[1])


@_function("not", 1)
def _not(ex: "_Expander", fn: str, args: list[Any]) -> bool:
    return not _arg(fn, args, 0, bool)


@_function("and", 2, None)
def _and(ex: "_Expander", fn: str, args: list[Any]) -> bool:
    return all([_arg(fn, args, i, bool) for i in range(len(args))])


@_function("or", 2, None)
def _or(ex: "_Expander", fn: str, args: list[Any]) -> bool:
    return any([_arg(fn, args, i, bool) for i in range(len(args))])


@_function("if", 3)
def _if(ex: "_Expander", fn: str, args: list[Any]) -> Any:
    raise AssertionError("if() is evaluated lazily by _Expander.evaluate")  # pragma: no cover


@_function("coalesce", 1, None)
def _coalesce(ex: "_Expander", fn: str, args: list[Any]) -> Any:
    return next((value for value in args if value is not None), None)


@_function("first", 1)
def _first(ex: "_Expander", fn: str, args: list[Any]) -> Any:
    value = _arg(fn, args, 0, (str, list))
    return value[:1] if isinstance(value, str) else (value[0] if value else None)


@_function("last", 1)
def _last(ex: "_Expander", fn: str, args: list[Any]) -> Any:
    value = _arg(fn, args, 0, (str, list))
    return value[-1:] if isinstance(value, str) else (value[-1] if value else None)


@_function("uniqueString", 1, None)
def _unique_string(ex: "_Expander", fn: str, args: list[Any]) -> str:
    """13 characters of [a-z2-7] from SHA-256: same shape as Azure's, not the same value."""
    parts = [_arg(fn, args, i, str) for i in range(len(args))]
    number = int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:8], "big")
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    return "".join(alphabet[(number >> (5 * i)) & 31] for i in range(13))


@_function("guid", 1, None)
def _guid(ex: "_Expander", fn: str, args: list[Any]) -> str:
    """A name-based UUID (v5) of the arguments: deterministic, but not the GUID Azure would make."""
    parts = [_arg(fn, args, i, str) for i in range(len(args))]
    return str(uuid.uuid5(_GUID_NAMESPACE, "-".join(parts)))


@_function("resourceGroup", 0)
def _resource_group(ex: "_Expander", fn: str, args: list[Any]) -> dict[str, Any]:
    return ex.resource_group()


@_function("subscription", 0)
def _subscription(ex: "_Expander", fn: str, args: list[Any]) -> dict[str, Any]:
    return ex.subscription()


@_function("resourceId", 2, None)
def _resource_id(ex: "_Expander", fn: str, args: list[Any]) -> str:
    """resourceId([subscriptionId], [resourceGroupName], type, name...): one name per type segment."""
    parts = [_to_string(_arg(fn, args, i, (str, int))) for i in range(len(args))]
    at = next((i for i, part in enumerate(parts) if "/" in part), None)
    if at is None or at > 2:
        raise _Failure("arm-argument", "resourceId(): no resource type such as `Microsoft.Compute/images` "
                       "among the first three arguments")
    kind, names = parts[at], parts[at + 1:]
    segments = kind.strip("/").split("/")
    if len(names) != len(segments) - 1:
        raise _Failure("arm-argument", f"resourceId(): `{kind}` needs {len(segments) - 1} name(s), "
                       f"got {len(names)}", "give one name per type segment after the namespace")
    subscription = parts[0] if at == 2 else ex.subscription()["subscriptionId"]
    group = parts[at - 1] if at >= 1 else ex.resource_group()["name"]
    path = segments[0] + "".join(f"/{t}/{n}" for t, n in zip(segments[1:], names))
    return f"/subscriptions/{subscription}/resourceGroups/{group}/providers/{path}"


def _supported() -> str:
    return ", ".join(sorted(f.name for f in _FUNCTIONS.values()))


# --- expander --------------------------------------------------------------------------------

class _Expander:
    def __init__(self, data: dict, given: dict[str, Any], context: dict[str, Any]) -> None:
        self.data = data
        self.given = given
        self.context = context
        self.problems: list[Problem] = []
        self.failures = 0  # problems plus silent failures (_Reported), to tell a failed value
        self.stack: list[tuple[str, str]] = []  # (section, lowered name) being resolved, for cycles
        self.declared: dict[str, dict[str, tuple[str, Any]]] = {}  # section -> lowered -> (name, raw)
        self.values: dict[str, dict[str, Any]] = {"parameters": {}, "variables": {}}

    def problem(self, path: str, rule: str, message: str, hint: str | None = None) -> None:
        self.problems.append(Problem(path, rule, message, hint))
        self.failures += 1

    def run(self) -> dict | None:
        for section in ("parameters", "variables"):
            key, raw = _section(self.data, section)
            if not isinstance(raw, dict):
                if raw is not None:
                    self.problem(child("$", key), "type", f"`{key}` must be an object, not {type_name(raw)}")
                raw = {}
            if section == "variables" and isinstance(_lookup_key(raw, "copy"), list):
                self.problem(child(child("$", key), "copy"), "arm-copy", "variable copy loops are not supported",
                             "write the values out one by one")
                raw = {k: v for k, v in raw.items() if k.lower() != "copy"}
            self.declared[section] = {name.lower(): (name, value) for name, value in raw.items()}
        self.check_given()
        for section in ("parameters", "variables"):  # all of them, used or not, as ARM does
            for name, _ in list(self.declared[section].values()):
                try:
                    self.resolve(section, name)
                except _Reported:
                    pass
        return self.image_template()

    def check_given(self) -> None:
        declared = self.declared["parameters"]
        for name in self.given:
            if name.lower() not in declared:
                names = ", ".join(n for n, _ in declared.values())
                self.problem(child("$.parameters", name), "parameter-unknown",
                             f"parameter `{name}` was given, but the template does not declare it",
                             f"declared parameters: {names}" if names else "the template declares no parameters")

    # Parameters and variables are resolved on first use and cached; a failure is cached too, so
    # each broken value is reported once, where it is declared, not at every use.
    def resolve(self, section: str, name: str) -> Any:
        key = name.lower()
        if key not in self.declared[section]:
            names = ", ".join(n for n, _ in self.declared[section].values()) or "none"
            rule = "parameter-undeclared" if section == "parameters" else "variable-unknown"
            raise _Failure(rule, f"{section}('{name}'): the template declares no such {section[:-1]}",
                           f"declared {section}: {names}")
        cache = self.values[section]
        if key in cache:
            if cache[key] is _FAILED:
                raise _Reported()
            return cache[key]
        if (section, key) in self.stack:
            loop = [self.declared[s][k][0] for s, k in self.stack[self.stack.index((section, key)):]]
            raise _Failure(f"{section[:-1]}-cycle",
                           f"{section} refer to each other in a cycle: {' -> '.join(loop + [name])}",
                           "make one of them a literal value")
        self.stack.append((section, key))
        before = self.failures
        try:
            real_name, raw = self.declared[section][key]
            path = child(f"$.{section}", real_name)
            value = self.parameter(real_name, raw, path) if section == "parameters" else self.value(raw, path)
        finally:
            self.stack.pop()
        cache[key] = _FAILED if self.failures > before else value
        return self.resolve(section, name)

    def parameter(self, name: str, declaration: Any, path: str) -> Any:
        if not isinstance(declaration, dict):
            self.problem(path, "parameter-declaration", f"must be an object, not {type_name(declaration)}",
                         "e.g. {\"type\": \"string\", \"defaultValue\": \"x\"}")
            return None
        kind_name = _lookup_key(declaration, "type")
        kind = _PARAMETER_TYPES.get(kind_name.lower()) if isinstance(kind_name, str) else None
        if kind is None:
            self.problem(child(path, "type"), "parameter-declaration",
                         f"`{kind_name}` is not a parameter type" if kind_name is not _FAILED else "`type` is missing",
                         f"use one of: {', '.join(_PARAMETER_TYPES)}")
            return None
        secure = kind_name.lower().startswith("secure")
        given = next((v for k, v in self.given.items() if k.lower() == name.lower() and v is not None), _FAILED)
        if given is not _FAILED:
            value, error = _coerce(given, kind)
            if error:
                self.problem(path, "parameter-type", f"parameter `{name}` is {kind_name}, but the given value "
                             f"{'' if secure else f'`{given}` '}{error}",
                             f"pass e.g. -p {name}={_EXAMPLES[kind]}")
                return None
        else:
            default = _lookup_key(declaration, "defaultValue")
            if default is _FAILED:
                self.problem(path, "parameter-missing", f"parameter `{name}` has no value and no defaultValue",
                             f"pass -p {name}=VALUE, or give it in a parameters file (--parameters FILE)")
                return None
            before = self.failures
            value = self.value(default, child(path, "defaultValue"))
            if self.failures > before:
                return None
            if not _is(value, kind):
                self.problem(child(path, "defaultValue"), "parameter-type",
                             f"the defaultValue of `{name}` is {type_name(value)}, but the type is {kind_name}")
                return None
        self.check_constraints(name, declaration, path, value, secure)
        return value

    def check_constraints(self, name: str, declaration: dict, path: str, value: Any, secure: bool) -> None:
        shown = "the value" if secure else f"`{_to_string(value)}`"
        allowed = _lookup_key(declaration, "allowedValues")
        if isinstance(allowed, list):
            items = value if isinstance(value, list) else [value]
            if not all(any(_same(item, a) for a in allowed) for item in items):
                self.problem(path, "parameter-allowed", f"{shown} is not allowed for parameter `{name}`",
                             f"allowed values: {', '.join(_to_string(a) for a in allowed)}")
        for bound, test, words in (("minValue", lambda v, b: v >= b, "at least"),
                                   ("maxValue", lambda v, b: v <= b, "at most")):
            limit = _lookup_key(declaration, bound)
            if isinstance(limit, int) and isinstance(value, int) and not test(value, limit):
                self.problem(path, "parameter-range", f"parameter `{name}` must be {words} {limit}, "
                             f"not {value}")
        for bound, test, words in (("minLength", lambda v, b: v >= b, "at least"),
                                   ("maxLength", lambda v, b: v <= b, "at most")):
            limit = _lookup_key(declaration, bound)
            if isinstance(limit, int) and isinstance(value, (str, list)) and not test(len(value), limit):
                self.problem(path, "parameter-length", f"parameter `{name}` must have {words} {limit} "
                             f"{'characters' if isinstance(value, str) else 'entries'}, not {len(value)}")

    def image_template(self) -> dict | None:
        key, resources = _section(self.data, "resources")
        where = child("$", key)
        # languageVersion 2.0 templates hold resources in an object keyed by symbolic name
        entries = list(resources.items()) if isinstance(resources, dict) else (
            list(enumerate(resources)) if isinstance(resources, list) else None)
        if entries is None:
            self.problem(where, "type", f"`{key}` must be an array, not {type_name(resources)}")
            return None
        found: list[tuple[str, dict]] = []
        for index, resource in entries:
            path = child(where, index)
            if isinstance(resource, dict) and self.is_image_template(resource, path):
                found.append((path, resource))
        if not found:
            self.problem(where, "no-image-template", "no Microsoft.VirtualMachineImages/imageTemplates "
                         "resource in this deployment template",
                         "add one, or pass the image template JSON itself")
            return None
        if len(found) > 1:
            listed = ", ".join(f"{p} ({_to_string(_lookup_key(r, 'name'))})" for p, r in found)
            self.problem(where, "several-image-templates", f"{len(found)} imageTemplates resources: {listed}; "
                         "which one should be built?",
                         "keep one per file, or give the others a `condition` that is false")
            return None
        path, resource = found[0]
        out: dict[str, Any] = {}
        for name, value in resource.items():
            if name.lower() == "copy":
                self.problem(child(path, name), "arm-copy", "resource copy loops are not supported",
                             "build one image template at a time: drop `copy`")
            elif name.lower() not in _DROPPED_KEYS:
                out[name] = self.value(value, child(path, name))
        return out

    def is_image_template(self, resource: dict, path: str) -> bool:
        kind = _lookup_key(resource, "type")
        if not isinstance(kind, str):
            return False
        if _is_expression(kind):
            kind = self.value(kind, child(path, "type"))
        if not isinstance(kind, str) or kind.lower() != _TEMPLATE_TYPE:
            return False
        condition = _lookup_key(resource, "condition")
        if condition is _FAILED:
            return True
        before = self.failures
        deployed = self.value(condition, child(path, "condition"))
        if self.failures == before and not isinstance(deployed, bool):
            self.problem(child(path, "condition"), "arm-condition",
                         f"`condition` must be true or false, not {type_name(deployed)}")
        return deployed is not False

    def value(self, value: Any, path: str) -> Any:
        if isinstance(value, dict):
            copy = _lookup_key(value, "copy")
            if isinstance(copy, list) and any(isinstance(c, dict) and "input" in c for c in copy):
                self.problem(child(path, "copy"), "arm-copy", "property and variable copy loops are not supported",
                             "write the entries out one by one")
            return {k: self.value(v, child(path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, child(path, i)) for i, v in enumerate(value)]
        if isinstance(value, str):
            return self.string(value, path)
        return value

    def string(self, text: str, path: str) -> Any:
        if not _is_expression(text):
            return text
        if text.startswith("[["):
            return text[1:]
        try:
            return self.evaluate(_Parser(text).parse(), text)
        except _Failure as failure:
            self.problem(path, failure.rule, failure.message, failure.hint)
        except _Reported:
            self.failures += 1
        return None

    def evaluate(self, node: Any, text: str) -> Any:
        if isinstance(node, _Literal):
            return node.value
        if isinstance(node, _Access):
            return _access(self.evaluate(node.target, text), self.evaluate(node.key, text), node.column, text)
        function = _FUNCTIONS.get(node.name.lower())
        if function is None:
            hint = ("user-defined functions (the `functions` section) are not supported" if "." in node.name
                    else f"supported functions: {_supported()}")
            raise _Failure("arm-function", f"unknown function `{node.name}` in `{text}`", hint)
        count = len(node.args)
        if count < function.min_args or (function.max_args is not None and count > function.max_args):
            wanted = (f"{function.min_args}" if function.min_args == function.max_args else
                      f"at least {function.min_args}" if function.max_args is None else
                      f"{function.min_args} to {function.max_args}")
            raise _Failure("arm-argument", f"{function.name}() takes {wanted} argument(s), got {count}, in `{text}`")
        if function.name == "if":  # lazy, so the branch not taken may use what does not exist
            condition = self.evaluate(node.args[0], text)
            if not isinstance(condition, bool):
                raise _Failure("arm-argument", f"if(): the condition must be a boolean, not {type_name(condition)}")
            return self.evaluate(node.args[1 if condition else 2], text)
        return function.run(self, function.name, [self.evaluate(arg, text) for arg in node.args])

    def resource_group(self) -> dict[str, Any]:
        given = self.context.get("resourceGroup") or {}
        name = given.get("name", "local")
        return {"id": f"/subscriptions/{self.subscription()['subscriptionId']}/resourceGroups/{name}",
                "name": name, "type": "Microsoft.Resources/resourceGroups", "location": "local",
                "tags": {}, "properties": {"provisioningState": "Succeeded"}, **given}

    def subscription(self) -> dict[str, Any]:
        given = self.context.get("subscription") or {}
        sub = given.get("subscriptionId", _ZERO_GUID)
        return {"id": f"/subscriptions/{sub}", "subscriptionId": sub, "tenantId": _ZERO_GUID,
                "displayName": "local", **given}


def _section(data: dict, name: str) -> tuple[str, Any]:
    for key, value in data.items():
        if key.lower() == name:
            return key, value
    return name, None


def _is_expression(text: str) -> bool:
    return len(text) >= 2 and text.startswith("[") and text.endswith("]")


def _access(target: Any, key: Any, column: int, text: str) -> Any:
    if isinstance(target, dict) and isinstance(key, str):
        value = _lookup_key(target, key)
        if value is _FAILED:
            raise _Failure("arm-property", f"no property `{key}` at column {column} of `{text}`",
                           f"the object has: {', '.join(target) or 'no properties'}")
        return value
    if isinstance(target, list) and isinstance(key, int) and not isinstance(key, bool):
        if not 0 <= key < len(target):
            raise _Failure("arm-property", f"index {key} is out of range for an array of {len(target)} "
                           f"at column {column} of `{text}`")
        return target[key]
    raise _Failure("arm-property", f"cannot take [{_to_string(key)}] of {type_name(target)} "
                   f"at column {column} of `{text}`",
                   "properties apply to objects, integer indexes to arrays")


_EXAMPLES = {str: "text", int: "5", bool: "true", dict: "'{\"key\": \"value\"}'", list: "'[\"a\", \"b\"]'"}


def _is(value: Any, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _coerce(value: Any, kind: type) -> tuple[Any, str | None]:
    """Command-line values arrive as text; turn them into the declared type where that is unambiguous."""
    if _is(value, kind):
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
            except json.JSONDecodeError:
                parsed = None
            if _is(parsed, kind):
                return parsed, None
    expected = {str: "is not a string", int: "is not a whole number", bool: "is not true or false",
                dict: "is not a JSON object", list: "is not a JSON array"}[kind]
    return None, expected
