"""Resource functions: extensionResourceId, managementGroupResourceId, reference, resourceId,
subscriptionResourceId, tenantResourceId; list*, pickZones and providers.

The ids are built as ARM builds them, from the context's subscription and resource group.
reference() reads resources this template declares (see deployed.py); list* (listKeys, ...),
pickZones() and providers() ask Azure about live resources, regions and providers, so on-prem
they are a problem naming the function, with a hint to pass the value as a parameter.
"""
from __future__ import annotations

from typing import Any

from orchestrator.core.arm.registry import Runtime, arg, function
from orchestrator.core.arm.scope import management_group_of, resource_group_of, subscription_of
from orchestrator.core.arm.syntax import Failure
from orchestrator.core.arm.values import to_string

_PARAMETER_HINT = "pass the value as a parameter (a securestring for a secret) instead"


def typed_path(fn: str, kind: str, names: list[str]) -> str:
    """Microsoft.Compute/galleries/images + [gal, def] -> Microsoft.Compute/galleries/gal/images/def"""
    segments = kind.strip("/").split("/")
    if len(names) != len(segments) - 1:
        raise Failure("arm-argument", f"{fn}(): `{kind}` needs {len(segments) - 1} name(s), got {len(names)}",
                      "give one name per type segment after the namespace")
    return segments[0] + "".join(f"/{t}/{n}" for t, n in zip(segments[1:], names))


def _split(fn: str, args: list[Any], scopes: int) -> tuple[list[str], str]:
    """(the scope arguments before the resource type, the typed path); the type is the first
    argument with a `/` among the first scopes + 1."""
    parts = [to_string(arg(fn, args, i, (str, int))) for i in range(len(args))]
    at = next((i for i, part in enumerate(parts[:scopes + 1]) if "/" in part), None)
    if at is None:
        where = "first argument" if scopes == 0 else f"first {scopes + 1} arguments"
        raise Failure("arm-argument", f"{fn}(): no resource type such as `Microsoft.Compute/images` "
                      f"among the {where}")
    return parts[:at], typed_path(fn, parts[at], parts[at + 1:])


def group_resource_id(context: dict[str, Any], path: str, subscription: str | None = None,
                      group: str | None = None) -> str:
    subscription = subscription or subscription_of(context)["subscriptionId"]
    group = group or resource_group_of(context)["name"]
    return f"/subscriptions/{subscription}/resourceGroups/{group}/providers/{path}"


@function("resourceId", 2, None)
def _resource_id(ex: Runtime, fn: str, args: list[Any]) -> str:
    """resourceId([subscriptionId], [resourceGroupName], type, name...): one name per type segment."""
    scopes, path = _split(fn, args, 2)
    group = scopes[-1] if scopes else None
    return group_resource_id(ex.context, path, scopes[0] if len(scopes) == 2 else None, group)


@function("subscriptionResourceId", 2, None)
def _subscription_resource_id(ex: Runtime, fn: str, args: list[Any]) -> str:
    scopes, path = _split(fn, args, 1)
    subscription = scopes[0] if scopes else subscription_of(ex.context)["subscriptionId"]
    return f"/subscriptions/{subscription}/providers/{path}"


@function("tenantResourceId", 2, None)
def _tenant_resource_id(ex: Runtime, fn: str, args: list[Any]) -> str:
    return f"/providers/{_split(fn, args, 0)[1]}"


@function("managementGroupResourceId", 2, None)
def _management_group_resource_id(ex: Runtime, fn: str, args: list[Any]) -> str:
    scopes, path = _split(fn, args, 1)
    group = scopes[0] if scopes else management_group_of(ex.context)["name"]
    prefix = group if group.startswith("/") else f"/providers/Microsoft.Management/managementGroups/{group}"
    return f"{prefix}/providers/{path}"


@function("extensionResourceId", 3, None)
def _extension_resource_id(ex: Runtime, fn: str, args: list[Any]) -> str:
    scope = arg(fn, args, 0, str)
    return f"{scope.rstrip('/')}/providers/{_split(fn, args[1:], 0)[1]}"


@function("reference", 1, 3)
def _reference(ex: Runtime, fn: str, args: list[Any]) -> Any:
    """reference(name, symbolic name or id, [apiVersion], ['Full']): the declared `properties`
    of a resource of this template, or with 'Full' the whole declared resource and its id."""
    target = arg(fn, args, 0, str)
    if len(args) > 1:
        arg(fn, args, 1, str)
    full = len(args) > 2 and isinstance(args[2], str) and args[2].lower() == "full"
    if len(args) > 2 and not full:
        raise Failure("arm-argument", f"{fn}(): the third argument is 'Full' or absent, not {to_string(args[2])}")
    return ex.reference(fn, target, full)


@function("pickZones", 3, 5)
def _pick_zones(ex: Runtime, fn: str, args: list[Any]) -> Any:
    raise Failure("arm-function", f"{fn}() asks Azure which availability zones a region has; "
                  "on-prem there are none to pick", _PARAMETER_HINT)


@function("providers", 1, 2)
def _providers(ex: Runtime, fn: str, args: list[Any]) -> Any:
    raise Failure("arm-function", f"{fn}() asks Azure about its resource providers; on-prem there "
                  "are none to ask", _PARAMETER_HINT)


def azure_only(name: str) -> Failure | None:
    """The problem for a list* function (listKeys, listSecrets, ...), which no table holds."""
    if name.lower().startswith("list") and "." not in name:
        return Failure("arm-function", f"{name}() asks Azure for the keys or secrets of a live resource; "
                       "on-prem there is none", _PARAMETER_HINT)
    return None
