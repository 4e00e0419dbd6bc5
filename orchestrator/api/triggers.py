"""An image template's `triggers` child resources over the REST API (SourceImage triggers, the
kind AIB has), through the same service as `orchestrate trigger` (service/triggers.py): a
nightly run is when they are looked at."""
from __future__ import annotations

from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from orchestrator.api.errors import ArmError, not_found
from orchestrator.api.guard import read_json
from orchestrator.errors import OrchestratorError, UsageError

TRIGGER_TYPE = "Microsoft.VirtualMachineImages/imageTemplates/triggers"


def add_routes(app: FastAPI, config: Any, state: Any, template_path: str, found: Callable[..., Any],
               authorize: Callable[..., Any], async_headers: Callable[..., dict[str, str]],
               start_operation: Callable[..., str], template_id: Callable[[str, str, str], str]) -> None:
    from orchestrator.service import triggers

    def shown(sub: str, rg: str, name: str, view: dict[str, Any]) -> dict[str, Any]:
        return {"id": f"{template_id(sub, rg, name)}/triggers/{view['name']}", "name": view["name"],
                "type": TRIGGER_TYPE, "properties": view["properties"]}

    def views(name: str) -> list[dict[str, Any]]:
        return triggers.listing(config, state, name)

    @app.get(template_path + "/triggers")
    def list_triggers(request: Request, sub: str, rg: str, name: str) -> JSONResponse:
        authorize(request, sub, rg)
        saved = found(name, sub, rg)
        return JSONResponse({"value": [shown(sub, rg, saved.name, v) for v in views(saved.name)]})

    @app.get(template_path + "/triggers/{trigger}")
    def get_trigger(request: Request, sub: str, rg: str, name: str, trigger: str) -> JSONResponse:
        authorize(request, sub, rg)
        saved = found(name, sub, rg)
        view = next((v for v in views(saved.name) if v["name"].lower() == trigger.lower()), None)
        if view is None:
            raise not_found(f"the trigger {trigger!r} of image template {name!r}")
        return JSONResponse(shown(sub, rg, saved.name, view))

    @app.put(template_path + "/triggers/{trigger}")
    async def put_trigger(request: Request, sub: str, rg: str, name: str, trigger: str) -> Response:
        caller = authorize(request, sub, rg, write=True)
        body = await read_json(request)
        kind = (body.get("properties") or {}).get("kind") if isinstance(body, dict) else None
        if not isinstance(kind, str):
            raise ArmError(400, "InvalidRequestContent", "a trigger's body is {\"properties\": {\"kind\": "
                           "\"SourceImage\"}}", target="properties.kind")
        saved = found(name, sub, rg)
        existing = {v["name"].lower(): v for v in views(saved.name)}
        if trigger.lower() in existing and existing[trigger.lower()]["kind"].lower() == kind.lower():
            return JSONResponse(shown(sub, rg, saved.name, existing[trigger.lower()]))  # PUT is idempotent
        if existing:
            taken = next(iter(existing.values()))
            raise ArmError(409, "Conflict", f"image template {name!r} has a {taken['kind']} trigger already "
                           f"({taken['name']!r}); AIB allows one")
        try:
            triggers.create(config, state, saved.name, trigger, kind)
        except UsageError as exc:
            raise ArmError(400, "InvalidTrigger", exc.message + (f" (hint: {exc.hint})" if exc.hint else ""),
                           target="properties.kind") from None
        view = next(v for v in views(saved.name) if v["name"].lower() == trigger.lower())
        operation = start_operation(saved.name, sub, rg)
        return JSONResponse(shown(sub, rg, saved.name, view), status_code=201,
                            headers=async_headers(request, sub, "local", operation, caller.api_version))

    @app.delete(template_path + "/triggers/{trigger}")
    def delete_trigger(request: Request, sub: str, rg: str, name: str, trigger: str) -> Response:
        caller = authorize(request, sub, rg, write=True)
        saved = found(name, sub, rg)
        try:
            triggers.delete(state, saved.name, trigger)
        except OrchestratorError:
            return Response(status_code=204)  # ARM: deleting what is not there succeeds
        operation = start_operation(saved.name, sub, rg)
        return Response(status_code=202, headers=async_headers(request, sub, "local", operation, caller.api_version))
