"""Who may call the REST API, and within which limits: bearer tokens (`orchestrate token
create`) with a role (reader: GET only; contributor: everything) and a scope (a subscription,
or one resource group in it); a known `api-version`; request bodies of at most MAX_BODY bytes;
and every change written to the audit log (who, what, when, result), never a secret."""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from orchestrator.api import resources as shapes
from orchestrator.api.errors import ArmError
from orchestrator.config import Config
from orchestrator.core.fields import KNOWN_API_VERSIONS
from orchestrator.effects import api_state

API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
MAX_BODY = 4 * 1024 * 1024  # AIB's own limit for a template; real ones are a few KiB
AUDIT_LOG = "audit.log"


@dataclass(frozen=True)
class Caller:
    token: api_state.Token
    token_scope: shapes.Scope
    api_version: str


def authorize(state: Any, request: Request, sub: str, rg: str | None, *, write: bool = False,
              any_group: bool = False, api_versions: tuple[str, ...] | None = KNOWN_API_VERSIONS) -> Caller:
    """The caller's token, checked against the path's subscription and resource group (and the
    verb, for a reader); the request's api-version checked too (`api_versions` None: any
    well-formed one, for the read-only Microsoft.Compute paths, whose versions are Compute's)."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if not header:
        raise ArmError(401, "AuthenticationFailed", "no Authorization header: send 'Authorization: Bearer TOKEN' "
                       "(`orchestrate token create NAME` makes one)", headers={"WWW-Authenticate": "Bearer"})
    if scheme.lower() != "bearer" or not value.strip():
        raise ArmError(401, "InvalidAuthenticationToken", "the Authorization header is not 'Bearer TOKEN'",
                       headers={"WWW-Authenticate": "Bearer"})
    token = api_state.token_for(state, value.strip())
    if token is None:
        raise ArmError(401, "InvalidAuthenticationToken", "the bearer token is not valid here (unknown or revoked)",
                       headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    request.state.token_name = token.name
    scope = shapes.Scope.parse(token.scope)
    if not shapes.SUBSCRIPTION.match(sub) or (rg is not None and not shapes.RESOURCE_GROUP.match(rg)):
        raise ArmError(400, "InvalidResourceGroupName" if rg is not None and shapes.SUBSCRIPTION.match(sub)
                       else "InvalidSubscriptionId", f"the path names no valid {'resource group' if rg else 'subscription'}")
    wanted = shapes.Scope(sub, rg)
    allowed = scope is not None and (scope.covers(wanted) or (any_group and rg is None and
                                                              scope.subscription.lower() == sub.lower()))
    if not allowed:
        raise ArmError(403, "AuthorizationFailed", f"token {token.name!r} (scope {token.scope}) may not act on "
                       f"{wanted.path}")
    if write and token.role != "contributor":
        raise ArmError(403, "AuthorizationFailed", f"token {token.name!r} is a {token.role}: it may only read")
    version = request.query_params.get("api-version")
    if not version:
        raise ArmError(400, "MissingApiVersionParameter", "the api-version query parameter is required",
                       target="api-version")
    known = version in api_versions if api_versions is not None else bool(API_VERSION.match(version))
    if not known:
        raise ArmError(400, "InvalidApiVersionParameter", f"the api-version '{version}' is invalid; the supported "
                       f"versions are '{', '.join(api_versions or ('YYYY-MM-DD',))}'", target="api-version")
    return Caller(token, scope, version)


async def read_json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArmError(400, "InvalidRequestContent", f"the request body is not valid JSON: {exc}") from None


class BodyLimit:
    """413 for a body over MAX_BODY, by its Content-Length or as it streams in (pure ASGI:
    nothing is read into memory past the limit)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return await _too_large(send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_BODY:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _too_large(send)


class Timing:
    """`Server-Timing: app;dur=MS` on every answer: how long the server took from the request's
    arrival to its answer's start (a client on a busy host measures its own waits too)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()

        async def timed(message: dict) -> None:
            if message["type"] == "http.response.start":
                spent = f"app;dur={(time.perf_counter() - started) * 1000:.2f}".encode()
                message = {**message, "headers": [*message.get("headers", []), (b"server-timing", spent)]}
            await send(message)

        await self.app(scope, receive, timed)


class _TooLarge(Exception):
    pass


async def _too_large(send: Any) -> None:
    body = json.dumps(ArmError(413, "RequestEntityTooLarge", f"the request body is over {MAX_BODY} bytes").body())
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body.encode()})


class Audit:
    """One JSON line per change (any verb but GET) in the data home's audit.log: the token's
    name, the verb and path (no query: a path holds no secret, a query might), the status,
    when, from where (pure ASGI: a GET costs nothing here)."""

    def __init__(self, app: Any, config: Config) -> None:
        self.app, self.path = app, config.home / AUDIT_LOG

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] == "GET":
            return await self.app(scope, receive, send)
        status = [500]

        async def sent(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            client = scope.get("client")
            line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "token": (scope.get("state") or {}).get("token_name"), "method": scope["method"],
                               "path": scope["path"], "status": status[0], "client": client[0] if client else None})
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as log:
                log.write(line + "\n")
