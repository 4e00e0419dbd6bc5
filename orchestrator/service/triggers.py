"""SourceImage triggers, as AIB's imageTemplates/triggers child resources: one per template,
only on a template whose source is a gallery image's `latest` (or a PlatformImage at `latest`),
whose gallery targets generate their versions and do not publish to the source's own
definition. On-prem nothing watches the store: a nightly run is when triggers are looked at.
A triggered template is due when its source now resolves to a version its last successful run
did not build from (a newer version published by an earlier step of the night, by a manual
run, or a newer imported base image).

As AIB does, a trigger is inactive after consecutive failed runs of its template; a
successful run (`orchestrate run NAME`) makes it active again."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.config import Config
from orchestrator.core import model as m
from orchestrator.core.dependencies import TRIGGER_KINDS, trigger_refusals
from orchestrator.effects.state import StateStore
from orchestrator.effects.trigger_state import TriggerRecord, TriggerState
from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.service import templates as stored_templates

FAILURES_TO_DISABLE = 3  # consecutive failed runs after which a trigger stops firing


@dataclass(frozen=True)
class TriggerStatus:
    code: str  # Healthy, Unhealthy (the template no longer fits a trigger), Disabled (failures)
    message: str


def check_kind(kind: str) -> str:
    for known in TRIGGER_KINDS:
        if (kind or "").strip().lower() == known.lower():
            return known
    raise UsageError(f"{kind!r} is not a trigger kind", hint="AIB has one kind of trigger: --kind SourceImage")


def create(config: Config, state: StateStore, template_name: str, name: str, kind: str) -> TriggerRecord:
    stored_templates.check_name(name)
    kind = check_kind(kind)
    saved = stored_templates.get(state, template_name)
    refusals = trigger_refusals(saved.load(config))
    if refusals:
        raise UsageError(f"template {saved.name!r} cannot have a {kind} trigger: " + "; ".join(refusals),
                         hint="AIB accepts SourceImage triggers only on templates whose source is "
                              ".../galleries/G/images/DEF/versions/latest (or a PlatformImage at latest), "
                              "distributing to other definitions with generated versions")
    verdict = TriggerState(state).add(saved.name, name, kind)
    if verdict == "no-template":
        raise stored_templates.TemplateNotFound(template_name)
    if verdict == "exists":
        raise UsageError(f"template {saved.name!r} has a trigger {name!r} already",
                         hint=f"`orchestrate trigger delete {saved.name} {name}` removes it")
    if verdict == "kind-taken":
        (other,) = [t for t in TriggerState(state).listing(saved.name) if t.kind == kind]
        raise UsageError(f"template {saved.name!r} has a {kind} trigger already ({other.name!r}); AIB allows one",
                         hint=f"`orchestrate trigger delete {saved.name} {other.name}` first")
    return next(t for t in TriggerState(state).listing(saved.name) if t.name.lower() == name.lower())


def delete(state: StateStore, template_name: str, name: str) -> None:
    saved = stored_templates.get(state, template_name)
    if not TriggerState(state).remove(saved.name, name):
        raise UsageError(f"template {saved.name!r} has no trigger {name!r}",
                         hint=f"`orchestrate trigger list {saved.name}` shows its triggers")


def status(state: StateStore, template: m.ImageTemplate | None, template_name: str,
           load_error: str | None = None) -> TriggerStatus:
    """AIB's trigger status: Healthy ("Trigger is active."), or why it does not fire."""
    if template is None:
        return TriggerStatus("Unhealthy", f"the template cannot be read: {load_error}")
    refusals = trigger_refusals(template)
    if refusals:
        return TriggerStatus("Unhealthy", "the template no longer fits a trigger: " + "; ".join(refusals))
    runs = state.runs(template_name, limit=FAILURES_TO_DISABLE)
    if len(runs) == FAILURES_TO_DISABLE and all(r["run_state"] == "Failed" for r in runs):
        return TriggerStatus("Disabled", f"the last {FAILURES_TO_DISABLE} runs failed; a successful "
                             f"`orchestrate run {template_name}` makes the trigger active again")
    return TriggerStatus("Healthy", "Trigger is active.")


def due(config: Config, state: StateStore, template: m.ImageTemplate, template_name: str) -> tuple[bool, str]:
    """Whether the source now resolves to what the last successful run did not build from."""
    from orchestrator.pipeline.sources import resolve

    try:
        source = resolve(template.source, config, state, template.location)
    except OrchestratorError as exc:
        return False, f"its source cannot be resolved: {exc.message}"
    last = next((r for r in state.runs(template_name, limit=200) if r["run_state"] == "Succeeded"), None)
    now = source.resolved_version or source.sha256[:12]
    if last is None:
        return True, f"triggered: {source.description} (never built successfully)"
    if last["resolved_version"] != now:
        return True, (f"triggered: {source.description}; run {last['id']} built from "
                      f"{last['resolved_version'] or 'another version'}")
    return False, f"source unchanged ({source.description})"


def view(record: TriggerRecord, trigger_status: TriggerStatus) -> dict[str, Any]:
    """As AIB shows a trigger resource (name, kind, status, provisioningState)."""
    return {"name": record.name, "templateName": record.template_name, "kind": record.kind,
            "properties": {"kind": record.kind, "provisioningState": "Succeeded",
                           "status": {"code": trigger_status.code, "message": trigger_status.message}},
            "createdAt": record.created_at}


def listing(config: Config, state: StateStore, template_name: str | None = None) -> list[dict[str, Any]]:
    if template_name is not None:
        template_name = stored_templates.get(state, template_name).name
    views = []
    for record in TriggerState(state).listing(template_name):
        saved = stored_templates.get(state, record.template_name)
        try:
            template, error = saved.load(config), None
        except OrchestratorError as exc:
            template, error = None, exc.message
        views.append(view(record, status(state, template, saved.name, error)))
    return views
