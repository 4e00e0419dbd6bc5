"""From template text to the model: JSON parsing, ARM deployment unwrapping, loading."""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from orchestrator.core import model as m
from orchestrator.core.jsonc import UnclosedComment, strip_comments
from orchestrator.core.problems import Problem, errors_of
from orchestrator.core.redact import secure_parameter_values, url_secrets
from orchestrator.core.reader import ObjectReader
from orchestrator.core.template import find_placeholders, load_template
from orchestrator.errors import TemplateInvalid


MAX_DEPTH = 64  # objects and arrays; real templates nest fewer than 15 levels
MAX_NUMBER_DIGITS = 40  # ARM integers are 64-bit (19 digits)
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


class _InputLimit(ValueError):
    pass


def _number(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise _InputLimit(f"a number with {len(text.lstrip('-'))} digits (at most {MAX_NUMBER_DIGITS})")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _InputLimit(f"the number {text[:20]}... is out of range")
    return value


def _constant(name: str) -> Any:
    raise _InputLimit(f"`{name}` is not JSON")


def nesting_depth(text: str) -> int:
    """How deep objects and arrays nest, outside strings (no recursion: any depth is safe)."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(_STRINGS.sub("", text)):
        depth += 1 if match.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def parse_json(text: str, source: str) -> Any:
    """JSON as ARM reads it: a UTF-8 byte order mark and // and /* */ comments are accepted,
    within the input limits (nesting depth, number digits, no NaN)."""
    def invalid(message: str, hint: str) -> TemplateInvalid:
        return TemplateInvalid([Problem("$", "json", message, hint)], source)

    try:
        text = strip_comments(text.removeprefix("\ufeff"))  # the BOM Windows editors write
    except UnclosedComment as exc:
        raise invalid(f"not valid JSON at line {exc.line}, column {exc.column}: this /* comment is never "
                      "closed", "end it with */") from None
    depth = nesting_depth(text)
    if depth > MAX_DEPTH:
        raise invalid(f"objects and arrays nest {depth} levels deep; at most {MAX_DEPTH} are accepted",
                      "a template nests a few levels; this file is not one")
    try:
        return json.loads(text, parse_int=_number, parse_float=_float, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise invalid(f"not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                      "check for a missing comma or quote just before that position") from None
    except (_InputLimit, ValueError, RecursionError) as exc:
        raise invalid(f"not a usable template: {exc}", "use plain JSON numbers: integers of at most 64 bits, finite decimals") from None


def load_document(text: str, source: str, parameters: dict[str, Any] | None = None,
                  context: dict[str, Any] | None = None, *, strict: bool = False) -> m.ImageTemplate:
    """The image template of `text` (plain, or the one an ARM deployment deploys); `strict`
    turns what AIB would ignore or coerce (warnings) into errors."""
    data = parse_json(text, source)
    at = "$"  # where the image template sits in the file: its problems' paths start there
    secrets = secure_parameter_values(data, parameters or {}) + url_secrets(data)
    if isinstance(data, dict) and _is_arm_deployment(data):
        from orchestrator.core.arm import expand_deployment_at

        data, at = expand_deployment_at(data, parameters or {}, context or {}, source)
    elif parameters:
        raise TemplateInvalid([Problem("$", "parameters", "parameters were given, but this is a plain image "
                                       "template, not an ARM deployment template",
                                       "drop the parameters, or wrap the template in an ARM deployment")], source)
    try:
        template = load_template(data, source, strict_mode=strict)
    except TemplateInvalid as exc:
        if at == "$":
            raise
        raise TemplateInvalid(rebased(exc.problems + exc.warnings, at), source) from None
    secrets += url_secrets(data)  # the expanded template: URLs put together by expressions
    return dataclasses.replace(template, warnings=tuple(rebased(list(template.warnings), at)),
                               secrets=tuple(dict.fromkeys(secrets)))


def rebased(problems: list[Problem], at: str) -> list[Problem]:
    """Paths relative to the image template (`$.properties...`) as paths in the deployment
    file (`$.resources[0].properties...`)."""
    if at == "$":
        return problems
    return [dataclasses.replace(p, path=at + p.path[1:]) if p.path.startswith("$") else p for p in problems]


TRIGGER_TYPE = "microsoft.virtualmachineimages/imagetemplates/triggers"


def is_trigger(data: Any) -> bool:
    """An imageTemplates/triggers resource body: {"properties": {"kind": "SourceImage"}}."""
    if not isinstance(data, dict):
        return False
    kind = str(data.get("type", "")).lower()
    props = data.get("properties")
    return kind == TRIGGER_TYPE or (isinstance(props, dict) and "kind" in props and "source" not in props)


def load_trigger(text: str, source: str) -> m.Trigger:
    """Validates a trigger. On-prem, a SourceImage trigger means: build again when a newer
    source image is imported, which `orchestrate build` already does by content digest."""
    data = parse_json(text, source)
    problems: list[Problem] = []
    root = ObjectReader(data, "$", problems)
    kind = root.string("type")
    if kind is not None and kind.lower() != TRIGGER_TYPE:
        root.problem("type", "resource-type", f"`{kind}` is not an image template trigger")
    location = root.string("location")
    root.ignore("name", "apiVersion", "id")
    props = root.object("properties", required=True)
    root.finish()
    trigger_kind = None
    if props is not None:
        trigger_kind = props.string("kind", required=True)
        if trigger_kind is not None and trigger_kind.lower() != "sourceimage":
            props.problem("kind", "trigger-kind", f"`{trigger_kind}` is not a trigger kind",
                          "AIB supports \"SourceImage\" triggers")
        props.ignore("status", "provisioningState", "provisioningError")
        props.finish()
    problems.extend(find_placeholders(data, "$"))
    if errors_of(problems) or trigger_kind is None:
        raise TemplateInvalid(problems, source)
    return m.Trigger(kind="SourceImage", location=location)


def _is_arm_deployment(data: dict[str, Any]) -> bool:
    keys = {k.lower() for k in data}
    return "resources" in keys and "properties" not in keys
