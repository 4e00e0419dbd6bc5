"""Nothing changed, nothing rebuilt: an earlier successful run with the same build digest
whose every artifact is still what it recorded lends its outputs to this run."""
from __future__ import annotations

from typing import Any

from orchestrator.core.plan import BuildPlan
from orchestrator.distribute import distributor_for
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
