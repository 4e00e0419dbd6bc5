"""The REST API's resources in AIB's shape (no I/O): resource ids, the image template a PUT
body is, the body a GET returns, run outputs and long-running operations as ARM reports them."""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from orchestrator.core.fields import KNOWN_API_VERSIONS
from orchestrator.service.runs import last_run_status

PROVIDER = "Microsoft.VirtualMachineImages"
TEMPLATE_TYPE = f"{PROVIDER}/imageTemplates"
SUBSCRIPTION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
RESOURCE_GROUP = re.compile(r"^[-\w._()]{0,89}[-\w_()]$")  # ARM: 1-90, not ending in '.'
# what AIB's update (PATCH) may change; any other property is refused as AIB refuses it
PATCHABLE = ("tags", "identity", "properties.vmProfile", "properties.distribute")
STAGING_PREFIX = "IT_"  # AIB's staging resource group: IT_<rg>_<template>_<guid>


@dataclass(frozen=True)
class Scope:
    subscription: str
    resource_group: str | None = None

    @property
    def path(self) -> str:
        base = f"/subscriptions/{self.subscription}"
        return base + (f"/resourceGroups/{self.resource_group}" if self.resource_group else "")

    def covers(self, other: "Scope") -> bool:
        """A token's scope holds `other` (names compare as ARM compares them: case-insensitive)."""
        if self.subscription.lower() != other.subscription.lower():
            return False
        return self.resource_group is None or (other.resource_group or "").lower() == self.resource_group.lower()

    @classmethod
    def parse(cls, text: str) -> "Scope | None":
        match = re.fullmatch(r"/subscriptions/([^/]+)(?:/resourceGroups/([^/]+))?/?", text, re.I)
        if not match or not SUBSCRIPTION.match(match.group(1)):
            return None
        if match.group(2) is not None and not RESOURCE_GROUP.match(match.group(2)):
            return None
        return cls(match.group(1), match.group(2))


def template_id(subscription: str, resource_group: str, name: str) -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/{TEMPLATE_TYPE}/{name}"


def known_api_version(version: str | None) -> bool:
    return version in KNOWN_API_VERSIONS


def template_document(body: dict[str, Any], api_version: str) -> str:
    """The image template a PUT body describes, as orchestrator stores and reads templates
    (AIB's resource JSON with its type and apiVersion; read-only fields dropped)."""
    properties = {k: v for k, v in (body.get("properties") or {}).items()
                  if k not in ("provisioningState", "provisioningError", "lastRunStatus", "exactStagingResourceGroup")}
    document = {"type": TEMPLATE_TYPE, "apiVersion": api_version, "location": body.get("location"),
                "properties": properties}
    for key in ("tags", "identity"):
        if key in body:
            document[key] = body[key]
    return json.dumps(document, indent=2)


def _stamp(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def template_view(body: str, name: str, subscription: str, resource_group: str, location: str,
                  tags: dict[str, str], identity: dict[str, Any], last_run: dict[str, Any] | None) -> dict[str, Any]:
    """A template as AIB's GET returns it. `body`: the stored template, secrets already
    redacted by the caller."""
    document = json.loads(body)
    if isinstance(document, dict) and "resources" in document:  # stored from an ARM deployment (the CLI)
        document = next((r for r in document.get("resources", []) if r.get("type") == TEMPLATE_TYPE), {})
    properties = dict(document.get("properties") or {})
    properties.update({
        "provisioningState": "Succeeded",
        "lastRunStatus": last_run_status(last_run),
        "exactStagingResourceGroup": f"/subscriptions/{subscription}/resourceGroups/"
                                     f"{STAGING_PREFIX}{resource_group}_{name}",
    })
    return {"id": template_id(subscription, resource_group, name), "name": name, "type": TEMPLATE_TYPE,
            "location": location or document.get("location") or "local", "tags": tags or document.get("tags") or {},
            "identity": identity or document.get("identity") or {"type": "None"}, "properties": properties}


def run_output_view(output: dict[str, Any], template_resource_id: str) -> dict[str, Any]:
    properties = {k: v for k, v in output["properties"].items() if k in ("artifactId", "artifactUri",
                                                                          "provisioningState")}
    return {"id": f"{template_resource_id}/runOutputs/{output['name']}", "name": output["name"],
            "type": f"{TEMPLATE_TYPE}/runOutputs", "properties": properties}


def operation_view(operation: dict[str, Any], location_path: str) -> dict[str, Any]:
    view = {"id": f"{location_path}/operations/{operation['id']}", "name": operation["id"],
            "status": operation["status"], "startTime": _stamp(operation["created_at"])}
    if operation.get("ended_at"):
        view["endTime"] = _stamp(operation["ended_at"])
    if operation.get("error"):
        view["error"] = operation["error"]
    return view


def patch_problems(patch: dict[str, Any]) -> list[str]:
    """The top-level and properties.* keys of a PATCH body that AIB does not let change."""
    refused = []
    for key, value in patch.items():
        if key == "properties" and isinstance(value, dict):
            refused += [f"properties.{k}" for k in value if f"properties.{k}" not in PATCHABLE]
        elif key not in PATCHABLE:
            refused.append(key)
    return refused
