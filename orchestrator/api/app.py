"""AIB's REST API over the same service the CLI uses (service/templates.py, service/cancel.py,
service/operations.py, the state database): Microsoft's SDK (azure-mgmt-imagebuilder),
`az rest` and ARM-style automation drive this host as they drive Azure. Routes are thin: they
check the caller, parse, call the service and shape the answer (api/resources.py)."""
from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.api import resources as shapes
from orchestrator.api.errors import ArmError, from_orchestrator, not_found
from orchestrator.api.guard import Audit, BodyLimit, Caller, Timing, authorize, read_json
from orchestrator.config import Config
from orchestrator.core.redact import Redactor, scrub
from orchestrator.effects import api_state
from orchestrator.effects.state import StateStore
from orchestrator.errors import OrchestratorError, TemplateInvalid, UsageError
from orchestrator.service import operations
from orchestrator.service import templates as stored_templates
from orchestrator.service.recovery import recover
from orchestrator.service.runs import ACTIVE

TEMPLATES = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.VirtualMachineImages/imageTemplates"
TEMPLATE = TEMPLATES + "/{name}"
OPERATION = "/subscriptions/{sub}/providers/Microsoft.VirtualMachineImages/locations/{location}/operations/{op}"
PAGE_SIZE = 100
RETRY_AFTER = "2"  # seconds: how often a poller asks about a long-running operation
RECOVER_EVERY = 1.0  # seconds between two looks for runs whose process died


def create_app(config: Config, default_subscription: str, default_resource_group: str) -> FastAPI:
    """`default_*`: where a template the CLI created lives, as a REST resource."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    state = StateStore.for_config(config.ensure())
    state.hold_open()
    app.add_middleware(BodyLimit)
    app.add_middleware(Audit, config=config)  # a 413 is audited too
    app.add_middleware(Timing)

    recovered = [0.0]
    redactors: dict[str, Redactor] = {}  # by the stored template's sha256: parsing one per GET costs

    def store() -> StateStore:
        """The state, after ending runs whose process died (as on the CLI), at most once a
        second: a GET answers from what the database says."""
        if time.monotonic() - recovered[0] >= RECOVER_EVERY:
            recovered[0] = time.monotonic()
            recover(config, state)
        return state

    @app.exception_handler(ArmError)
    async def arm_error(request: Request, exc: ArmError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(OrchestratorError)
    async def orchestrator_error(request: Request, exc: OrchestratorError) -> JSONResponse:
        error = from_orchestrator(exc, scrub)  # a problem may quote a signed URL as the template wrote it
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "BadRequest")
        message = "no such resource path" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse(ArmError(exc.status_code, code, message).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:  # a bug: said plainly, no traceback
        body = ArmError(500, "InternalServerError", f"internal error ({type(exc).__name__}); see the server's log")
        return JSONResponse(body.body(), status_code=500)

    def resource_of(name: str) -> api_state.Resource:
        return api_state.resource(state, name) or api_state.Resource(name, default_subscription,
                                                                     default_resource_group, "local", {}, {})

    def found(name: str, sub: str, rg: str) -> stored_templates.Stored:
        return found_where(name, sub, rg)[0]

    def found_where(name: str, sub: str, rg: str) -> tuple[stored_templates.Stored, api_state.Resource, Any]:
        """The stored template at this path, its resource and its newest run, in one read (404 if
        it lives elsewhere or nowhere)."""
        row, where, last_run = api_state.lookup(store(), name)
        where = where or (resource_of(name) if row else None)
        if row is None or not _at(where, sub, rg):
            raise not_found(f"the image template {name!r} in resource group {rg!r}")
        return stored_templates.Stored(**row), where, last_run

    def active_runs(name: str) -> list[dict[str, Any]]:
        return [r for r in state.runs(name, limit=5) if r["run_state"] in ACTIVE]

    def view(saved: stored_templates.Stored, where: api_state.Resource | None = None,
             last_run: Any = False) -> dict[str, Any]:
        """`where`, `last_run`: when the caller has them (a list reads them all at once)."""
        where = where or resource_of(saved.name)
        redact = redactors.get(saved.sha256)
        if redact is None:
            try:
                redact = Redactor.of(saved.load(config).secrets)
            except OrchestratorError:  # stored by an older release and invalid now: shown as stored
                redact = Redactor.of(())
            if len(redactors) > 4096:
                redactors.clear()
            redactors[saved.sha256] = redact
        if last_run is False:
            runs = state.runs(saved.name, limit=1)
            last_run = runs[0] if runs else None
        return shapes.template_view(redact(saved.body), saved.name, where.subscription, where.resource_group,
                                    where.location, where.tags, where.identity, last_run)

    def async_headers(request: Request, sub: str, location: str, operation_id: str, version: str) -> dict[str, str]:
        url = (f"{str(request.base_url).rstrip('/')}/subscriptions/{sub}/providers/Microsoft.VirtualMachineImages/"
               f"locations/{quote(location or 'local', safe='')}/operations/{operation_id}?api-version={version}")
        return {"Azure-AsyncOperation": url, "Location": url, "Retry-After": RETRY_AFTER}

    # --- templates ---------------------------------------------------------------------------
    @app.put(TEMPLATE)
    async def put_template(request: Request, sub: str, rg: str, name: str) -> Response:
        caller = authorize(state, request, sub, rg, write=True)
        body = await read_json(request)
        return _create(request, caller, body, sub, rg, name)

    def _create(request: Request, caller: Caller, body: Any, sub: str, rg: str, name: str) -> Response:
        if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
            raise ArmError(400, "InvalidRequestContent", "the body is not an image template: it needs a "
                           "'properties' object (source, customize, distribute)", target="properties")
        stored_templates.check_name(name)
        version = caller.api_version
        text = shapes.template_document(body, version)
        _load(text, name)
        existing = api_state.resource(state, name)
        try:
            current = stored_templates.get(store(), name)
        except stored_templates.TemplateNotFound:
            current = None
        if current is not None:
            where = existing or resource_of(name)
            if not _at(where, sub, rg):
                raise ArmError(409, "Conflict", f"an image template {name!r} exists in resource group "
                               f"{where.resource_group!r}: template names are unique on this host")
        resource = api_state.Resource(name, sub, rg, str(body.get("location") or "local"),
                                      dict(body.get("tags") or {}), dict(body.get("identity") or {}))
        try:
            verdict, saved = stored_templates.create(state, name, text, {}, None,
                                                     also=lambda db: api_state.put_resource(db, resource))
        except UsageError as exc:  # another body under this name: AIB does not update templates
            raise ArmError(409, "Conflict", exc.message + " (AIB does not update an image template: delete it "
                           "first, or PATCH what may change: tags, identity, vmProfile, distribute)") from None
        if verdict == "unchanged":
            return JSONResponse(view(saved), status_code=200)
        operation = api_state.start_operation(state, "create", name, _scope(sub, rg), status="Succeeded")
        return JSONResponse(view(saved), status_code=201,
                            headers=async_headers(request, sub, resource.location, operation, version))

    def _load(text: str, name: str) -> None:
        """Refuses a template AIB refuses, and one this host will not build (what it would
        read or write here), with every problem's JSON path."""
        from orchestrator.effects.hostpolicy import HostPolicy, template_problems

        template = stored_templates.Stored(name, text, {}, None, "", 0, 0).load(config)
        # a template that came over the API has no directory: relative file:// paths have none
        problems = template_problems(template, HostPolicy.of(config, None), state.wrote_artifact)
        if problems:
            raise TemplateInvalid(problems, f"{name} (on this host)")

    @app.get(TEMPLATE)
    def get_template(request: Request, sub: str, rg: str, name: str) -> JSONResponse:
        authorize(state, request, sub, rg)
        return JSONResponse(view(*found_where(name, sub, rg)))  # one read: a GET is most of the traffic

    @app.patch(TEMPLATE)
    async def patch_template(request: Request, sub: str, rg: str, name: str) -> Response:
        caller = authorize(state, request, sub, rg, write=True)
        patch = await read_json(request)
        if not isinstance(patch, dict):
            raise ArmError(400, "InvalidRequestContent", "a PATCH body is a JSON object")
        refused = shapes.patch_problems(patch)
        if refused:
            raise ArmError(400, "UpdateNotAllowed", "AIB's update changes only tags, identity, "
                           "properties.vmProfile and properties.distribute",
                           details=[{"code": "UpdateNotAllowed", "message": f"{key} cannot be changed", "target": key}
                                    for key in refused])
        saved, where, _ = found_where(name, sub, rg)
        document = json.loads(saved.body)
        if "resources" in document:
            raise ArmError(409, "Conflict", f"{name!r} was stored from an ARM deployment by the CLI: change it "
                           "there (`orchestrate template create NAME FILE --update`)")
        document.setdefault("properties", {}).update(patch.get("properties") or {})
        tags = dict(patch["tags"]) if "tags" in patch else where.tags
        identity = dict(patch["identity"]) if "identity" in patch else where.identity
        for key, value in (("tags", tags), ("identity", identity)):
            if value:
                document[key] = value
        text = json.dumps(document, indent=2)
        _load(text, name)
        resource = api_state.Resource(name, where.subscription, where.resource_group, where.location, tags, identity)
        _, saved = stored_templates.create(state, name, text, {}, None, update=True,
                                           also=lambda db: api_state.put_resource(db, resource))
        operation = api_state.start_operation(state, "update", name, _scope(sub, rg), status="Succeeded")
        return JSONResponse(view(saved), status_code=200,
                            headers=async_headers(request, sub, where.location, operation, caller.api_version))

    @app.delete(TEMPLATE)
    def delete_template(request: Request, sub: str, rg: str, name: str) -> Response:
        caller = authorize(state, request, sub, rg, write=True)
        try:
            saved, where, _ = found_where(name, sub, rg)
        except ArmError:
            return Response(status_code=204)  # ARM: deleting what is not there succeeds
        try:
            stored_templates.delete(config, state, saved.name)
        except stored_templates.TemplateNotFound:
            return Response(status_code=204)
        except UsageError as exc:
            raise ArmError(409, "Conflict", exc.message) from None
        operation = api_state.start_operation(state, "delete", saved.name, _scope(sub, rg), status="Succeeded")
        return Response(status_code=202, headers=async_headers(request, sub, where.location, operation,
                                                               caller.api_version))

    @app.get(TEMPLATES)
    def list_by_group(request: Request, sub: str, rg: str) -> JSONResponse:
        authorize(state, request, sub, rg)
        where = api_state.resources(state)
        return _page(request, [s for s in stored_templates.listing(store()) if _in(s.name, sub, rg, where)])

    @app.get("/subscriptions/{sub}/providers/Microsoft.VirtualMachineImages/imageTemplates")
    def list_by_subscription(request: Request, sub: str) -> JSONResponse:
        caller = authorize(state, request, sub, None, any_group=True)  # a group's token lists its group
        where = api_state.resources(state)
        listed = [s for s in stored_templates.listing(store()) if _in(s.name, sub, None, where)
                  and caller.token_scope.covers(shapes.Scope(sub, (where.get(s.name) or resource_of(s.name))
                                                             .resource_group))]
        return _page(request, listed)

    def _in(name: str, sub: str, rg: str | None, resources: dict[str, api_state.Resource]) -> bool:
        return _at(resources.get(name) or resource_of(name), sub, rg)

    def _page(request: Request, listed: list[stored_templates.Stored]) -> JSONResponse:
        try:
            start = max(0, int(request.query_params.get("$skipToken", "0")))
        except ValueError:
            raise ArmError(400, "InvalidSkipToken", "$skipToken is not one this server gave") from None
        page = listed[start:start + PAGE_SIZE]
        where, last = api_state.resources(state), api_state.last_runs(state)
        body: dict[str, Any] = {"value": [view(s, where.get(s.name) or resource_of(s.name), last.get(s.name.lower()))
                                          for s in page]}
        if start + PAGE_SIZE < len(listed):
            version = request.query_params.get("api-version", "")
            body["nextLink"] = (f"{str(request.url).split('?', 1)[0]}?api-version={version}"
                                f"&$skipToken={start + PAGE_SIZE}")  # literal '$', as ARM writes it
        return JSONResponse(body)

    # --- runs ----------------------------------------------------------------------------------
    @app.post(TEMPLATE + "/run")
    def run_template(request: Request, sub: str, rg: str, name: str) -> Response:
        caller = authorize(state, request, sub, rg, write=True)
        saved, where, _ = found_where(name, sub, rg)
        active = active_runs(saved.name)
        if active:
            raise ArmError(409, "Conflict", f"image template {name!r} has a run in progress ({active[0]['id']})")
        operation = operations.start_run(config, state, saved.name, _scope(sub, rg))
        return Response(status_code=202, headers=async_headers(request, sub, where.location, operation,
                                                               caller.api_version))

    @app.post(TEMPLATE + "/cancel")
    def cancel_template(request: Request, sub: str, rg: str, name: str) -> Response:
        from orchestrator.service.cancel import cancel_run

        caller = authorize(state, request, sub, rg, write=True)
        saved, where, _ = found_where(name, sub, rg)  # recovers dead runs first: they are not canceled
        active = active_runs(saved.name)
        if not active:
            raise ArmError(409, "Conflict", f"image template {name!r} has no run in progress to cancel")
        result = cancel_run(state, active[0], store)
        operation = api_state.start_operation(state, "cancel", saved.name, _scope(sub, rg), run_id=result.run_id)
        return Response(status_code=202, headers=async_headers(request, sub, where.location, operation,
                                                               caller.api_version))

    @app.get(TEMPLATE + "/runOutputs")
    def run_outputs(request: Request, sub: str, rg: str, name: str) -> JSONResponse:
        authorize(state, request, sub, rg)
        saved = found(name, sub, rg)
        runs = state.runs(saved.name, limit=1)
        outputs = state.outputs(runs[0]["id"]) if runs else []
        template_id = shapes.template_id(sub, rg, saved.name)
        return JSONResponse({"value": [shapes.run_output_view(o, template_id) for o in outputs]})

    @app.get(TEMPLATE + "/runOutputs/{output}")
    def run_output(request: Request, sub: str, rg: str, name: str, output: str) -> JSONResponse:
        authorize(state, request, sub, rg)
        saved = found(name, sub, rg)
        record = state.latest_output(saved.name, output)
        if record is None:
            raise not_found(f"the run output {output!r} of image template {name!r}")
        return JSONResponse(shapes.run_output_view(record, shapes.template_id(sub, rg, saved.name)))

    @app.get(OPERATION)
    def get_operation(request: Request, sub: str, location: str, op: str) -> JSONResponse:
        caller = authorize(state, request, sub, None, any_group=True)
        record = api_state.operation(state, op)
        scope = shapes.Scope.parse(record["scope"]) if record else None
        if record is None or scope is None or not caller.token_scope.covers(scope):
            raise not_found(f"the operation {op!r}")
        record = operations.refresh(store(), record)
        path = f"/subscriptions/{sub}/providers/Microsoft.VirtualMachineImages/locations/{location}"
        return JSONResponse(shapes.operation_view(record, path))

    from orchestrator.api import compute, triggers

    compute.add_routes(app, store, lambda request, sub, rg: authorize(state, request, sub, rg, api_versions=None))
    triggers.add_routes(app, config, state, TEMPLATE, found, lambda request, sub, rg, **kw: authorize(
        state, request, sub, rg, **kw), async_headers, lambda name, sub, rg: api_state.start_operation(
        state, "trigger", name, _scope(sub, rg), status="Succeeded"), shapes.template_id)
    return app


def _scope(sub: str, rg: str) -> str:
    return shapes.Scope(sub, rg).path


def _at(where: api_state.Resource, sub: str, rg: str | None) -> bool:
    """The resource is in this subscription (and resource group): ARM compares them case-insensitively."""
    return where.subscription.lower() == sub.lower() and (rg is None or where.resource_group.lower() == rg.lower())
