"""From template text to the model: JSON parsing, ARM deployment unwrapping, loading."""
from __future__ import annotations

import json
from typing import Any

from orchestrator.core import model as m
from orchestrator.core.problems import Problem
from orchestrator.core.template import load_template
from orchestrator.errors import TemplateInvalid


def parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TemplateInvalid([Problem(
            "$", "json", f"not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
            "check for a missing comma or quote just before that position")], source) from None


def load_document(text: str, source: str, parameters: dict[str, Any] | None = None,
                  context: dict[str, Any] | None = None) -> m.ImageTemplate:
    data = parse_json(text, source)
    if isinstance(data, dict) and _is_arm_deployment(data):
        from orchestrator.core.arm import expand_deployment

        data = expand_deployment(data, parameters or {}, context or {}, source)
    elif parameters:
        raise TemplateInvalid([Problem("$", "parameters", "parameters were given, but this is a plain image "
                                       "template, not an ARM deployment template",
                                       "drop the parameters, or wrap the template in an ARM deployment")], source)
    return load_template(data, source)


def _is_arm_deployment(data: dict[str, Any]) -> bool:
    keys = {k.lower() for k in data}
    return "resources" in keys and "properties" not in keys
