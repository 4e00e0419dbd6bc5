"""Scope functions: managementGroup, resourceGroup, subscription, tenant.

On-prem there is no Azure scope, so each returns the object ARM would, built from the context
(`ORCHESTRATOR_RESOURCE_GROUP`, `ORCHESTRATOR_LOCATION`, `ORCHESTRATOR_SUBSCRIPTION_ID`), with
local defaults: resource group and management group `local`, subscription and tenant the zero
GUID. Every deployment here is a resource-group deployment, the scope imageTemplates live in.
"""
from __future__ import annotations

from typing import Any

from orchestrator.core.arm.registry import Runtime, function

ZERO_GUID = "00000000-0000-0000-0000-000000000000"


def subscription_of(context: dict[str, Any]) -> dict[str, Any]:
    given = context.get("subscription") or {}
    sub = given.get("subscriptionId", ZERO_GUID)
    return {"id": f"/subscriptions/{sub}", "subscriptionId": sub, "tenantId": ZERO_GUID,
            "displayName": "local", **given}


def resource_group_of(context: dict[str, Any]) -> dict[str, Any]:
    given = context.get("resourceGroup") or {}
    name = given.get("name", "local")
    return {"id": f"/subscriptions/{subscription_of(context)['subscriptionId']}/resourceGroups/{name}",
            "name": name, "type": "Microsoft.Resources/resourceGroups", "location": "local",
            "tags": {}, "properties": {"provisioningState": "Succeeded"}, **given}


def tenant_of(context: dict[str, Any]) -> dict[str, Any]:
    tenant = subscription_of(context)["tenantId"]
    return {"countryCode": "", "displayName": "local", "id": f"/tenants/{tenant}", "tenantId": tenant,
            **(context.get("tenant") or {})}


def management_group_of(context: dict[str, Any]) -> dict[str, Any]:
    given = context.get("managementGroup") or {}
    name = given.get("name", "local")
    return {"id": f"/providers/Microsoft.Management/managementGroups/{name}", "name": name,
            "type": "Microsoft.Management/managementGroups",
            "properties": {"displayName": name, "tenantId": subscription_of(context)["tenantId"],
                           "details": {"parent": {}}}, **given}


@function("resourceGroup", 0)
def _resource_group(ex: Runtime, fn: str, args: list[Any]) -> dict[str, Any]:
    return resource_group_of(ex.context)


@function("subscription", 0)
def _subscription(ex: Runtime, fn: str, args: list[Any]) -> dict[str, Any]:
    return subscription_of(ex.context)


@function("tenant", 0)
def _tenant(ex: Runtime, fn: str, args: list[Any]) -> dict[str, Any]:
    return tenant_of(ex.context)


@function("managementGroup", 0)
def _management_group(ex: Runtime, fn: str, args: list[Any]) -> dict[str, Any]:
    return management_group_of(ex.context)
