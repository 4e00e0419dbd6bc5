"""Deployment functions: deployment, environment, parameters, variables.

deployment() is the on-prem deployment: `name` is the template file's name without its
extension (as `az deployment group create` names it), else "orchestrator", unless the context
gives `deployment.name`; `properties.template` is the template as written, `templateHash` a
SHA-256-based number (not Azure's), `parameters` the values given (secure ones left out),
`mode` Incremental. There is no `properties.templateLink`: a local file has no URI, so
`deployment().properties.templateLink.uri` is a problem naming the missing property.

environment() is the public Azure cloud's (AzureCloud) documented endpoints and suffixes, the
ones downloads from Azure storage use; the context's `environment` object overrides them.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import PurePath
from typing import Any

from orchestrator.core.arm.registry import Runtime, arg, function
from orchestrator.core.arm.syntax import Failure
from orchestrator.core.arm.values import MISSING, lookup_key, section

AZURE_CLOUD: dict[str, Any] = {
    "name": "AzureCloud",
    "gallery": "https://gallery.azure.com/",
    "graph": "https://graph.windows.net/",
    "portal": "https://portal.azure.com",
    "graphAudience": "https://graph.windows.net/",
    "activeDirectoryDataLake": "https://datalake.azure.net/",
    "batch": "https://batch.core.windows.net/",
    "media": "https://rest.media.azure.net",
    "sqlManagement": "https://management.core.windows.net:8443/",
    "vmImageAliasDoc": "https://raw.githubusercontent.com/Azure/azure-rest-api-specs/master/"
                       "arm-compute/quickstart-templates/aliases.json",
    "resourceManager": "https://management.azure.com/",
    "authentication": {"loginEndpoint": "https://login.microsoftonline.com/",
                       "audiences": ["https://management.core.windows.net/", "https://management.azure.com/"],
                       "tenant": "common", "identityProvider": "AAD"},
    "suffixes": {"acrLoginServer": ".azurecr.io", "azureDatalakeAnalyticsCatalogAndJob": "azuredatalakeanalytics.net",
                 "azureDatalakeStoreFileSystem": "azuredatalakestore.net", "azureFrontDoorEndpointSuffix": "azurefd.net",
                 "keyvaultDns": ".vault.azure.net", "sqlServerHostname": ".database.windows.net",
                 "storage": "core.windows.net"},
}


def deployment_of(data: dict, given: dict[str, Any], context: dict[str, Any], source: str) -> dict[str, Any]:
    name = (context.get("deployment") or {}).get("name") or PurePath(source).stem or "orchestrator"
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).digest()
    _, declared = section(data, "parameters")
    declared = declared if isinstance(declared, dict) else {}

    def secure(key: str) -> bool:
        spec = lookup_key(declared, key)
        kind = lookup_key(spec, "type") if isinstance(spec, dict) else MISSING
        return isinstance(kind, str) and kind.lower().startswith("secure")

    return {"name": name, "properties": {
        "template": data, "templateHash": str(int.from_bytes(digest[:8], "big")),
        "parameters": {k: {"value": v} for k, v in given.items() if not secure(k)},
        "mode": "Incremental", "provisioningState": "Accepted"}}


@function("deployment", 0)
def _deployment(ex: Runtime, fn: str, args: list[Any]) -> dict[str, Any]:
    return deployment_of(ex.data, ex.given, ex.context, ex.source)


@function("environment", 0)
def _environment(ex: Runtime, fn: str, args: list[Any]) -> dict[str, Any]:
    return {**AZURE_CLOUD, **(ex.context.get("environment") or {})}


@function("parameters", 1)
def _parameters(ex: Runtime, fn: str, args: list[Any]) -> Any:
    name = arg(fn, args, 0, str)
    arguments = ex.scope.arguments
    if arguments is not None:  # inside a user-defined function: its own parameters
        value = lookup_key(arguments, name)
        if value is MISSING:
            raise Failure("arm-function", f"parameters('{name}'): this function has no such parameter",
                          f"its parameters: {', '.join(arguments) or 'none'}; a user-defined function "
                          "cannot read the template's parameters")
        return value
    return ex.resolve("parameters", name)


@function("variables", 1)
def _variables(ex: Runtime, fn: str, args: list[Any]) -> Any:
    if ex.scope.where == "parameter":
        raise Failure("arm-function", "a parameter's defaultValue cannot use variables()",
                      "use parameters(), literals or functions such as resourceGroup() there")
    if ex.scope.where == "function":
        raise Failure("arm-function", "a user-defined function cannot use variables(), as in ARM",
                      "pass the value as one of the function's parameters")
    return ex.resolve("variables", arg(fn, args, 0, str))
