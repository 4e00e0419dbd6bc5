"""Errors in ARM's shape, `{"error": {"code", "message", "target", "details"}}`, with the status
ARM gives them; orchestrator's own errors mapped onto them (a template's problems become one
detail each, its JSON path in `target`, the rule id in `code`). Never a traceback."""
from __future__ import annotations

from typing import Any

from orchestrator.errors import ExitCode, OrchestratorError, TemplateInvalid
from orchestrator.service.runs import RunEnded
from orchestrator.service.templates import TemplateNotFound


class ArmError(Exception):
    def __init__(self, status: int, code: str, message: str, target: str | None = None,
                 details: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.target = status, code, message, target
        self.details = details or []
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.target:
            error["target"] = self.target
        if self.details:
            error["details"] = self.details
        return {"error": error}


def from_orchestrator(exc: OrchestratorError, redact=lambda text: text) -> ArmError:
    message = redact(exc.message + (f" (hint: {exc.hint})" if exc.hint else ""))
    if isinstance(exc, TemplateInvalid):
        details = [{"code": p.rule, "message": redact(p.message + (f" (hint: {p.hint})" if p.hint else "")),
                    "target": p.path} for p in exc.problems]
        return ArmError(400, "InvalidTemplate", message, details=details)
    if isinstance(exc, TemplateNotFound):
        return ArmError(404, "ResourceNotFound", message)
    if isinstance(exc, RunEnded):
        return ArmError(409, "Conflict", message)
    if exc.exit_code == ExitCode.ENVIRONMENT:
        return ArmError(503, "ServiceUnavailable", message)
    return ArmError(400, "BadRequest", message)


def not_found(what: str) -> ArmError:
    return ArmError(404, "ResourceNotFound", f"{what} was not found")
