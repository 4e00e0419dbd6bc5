"""Nothing changed, nothing rebuilt: an earlier successful run with the same build digest
whose every artifact is still what it recorded lends its outputs to this run."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from orchestrator.core.fingerprint import changes, digest_of, fingerprint_parts
from orchestrator.core.plan import BuildPlan
from orchestrator.distribute import distributor_for
from orchestrator.effects.downloads import display_url
from orchestrator.effects.runlog import RunLog


def reusable_run(state: Any, plan: BuildPlan, digest: str, log: RunLog) -> dict[str, Any] | None:
    """The earlier run, if each of its artifacts is still what it recorded."""
    previous = state.last_success(plan.name, digest)
    if previous is None:
        return None
    outputs = state.outputs(previous["id"], internal=True)
    if len(outputs) != len(plan.targets):
        return None
    for output in outputs:
        verdict = distributor_for(output["type"]).reusable(output)
        if verdict.why:
            log.write("orchestrator", f"run output {output['name']!r} of run {previous['id']}: {verdict.why}")
        if not verdict.ok:
            log.write("orchestrator", "not up to date: building again")
            return None
    return previous


def adopt_outputs(state: Any, run_id: str, previous: dict[str, Any]) -> None:
    """The earlier run's outputs, recorded as this run's (marked with where they came from)."""
    for output in state.outputs(previous["id"], internal=True):
        props = output["properties"]
        extra = {k: v for k, v in props.items() if k not in ("artifactId", "artifactUri", "provisioningState")}
        state.set_output(run_id, output["name"], output["type"], "Succeeded", props["artifactId"],
                         props["artifactUri"], {**extra, "reusedFromRun": previous["id"]})


@dataclass(frozen=True)
class NextRun:
    """What `orchestrate plan` says of the next run: build or skip, and why."""

    build: bool
    reasons: tuple[str, ...]
    reused_run: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"action": "build" if self.build else "skip", "reasons": list(self.reasons), "reusedRun": self.reused_run}


class _Said:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, source: str, text: str) -> None:
        self.lines.append(text)


def next_run(state: Any, plan: BuildPlan) -> NextRun:
    """The fingerprint the next run would have, as far as it is known without downloading, set
    against the template's successful runs. A file with sha256Checksum is known by it; one
    without is taken to be what the last successful run fetched (the run itself checks)."""
    last = state.last_success(plan.name)
    before = json.loads(last["fingerprint"]) if last and last.get("fingerprint") else None
    recorded = (before or {}).get("downloads", {})
    known: dict[str, str | None] = {d.url: d.sha256 or recorded.get(display_url(d.url)) for d in plan.downloads}
    unchecked = tuple(f"{display_url(d.url)} has no sha256Checksum: the run fetches it and builds if it changed"
                      for d in plan.downloads if not d.sha256)
    parts = fingerprint_parts(plan, known)
    said = _Said()
    previous = reusable_run(state, plan, digest_of(parts), said)  # type: ignore[arg-type]
    if previous is not None:
        return NextRun(False, (f"nothing changed since run {previous['id']} and its outputs are intact "
                               "(--force rebuilds)",) + unchecked, previous["id"])
    if last is None:
        return NextRun(True, (f"no successful run of {plan.name} yet",))
    reasons = tuple(said.lines) or tuple(f"{r} (since run {last['id']})" for r in changes(before, parts))
    return NextRun(True, reasons + unchecked)
