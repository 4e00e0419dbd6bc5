"""Distribute phase: each target in turn. A target that fails does not stop the others; the
run is PartiallySucceeded when some succeeded, Failed when none did. A stop (cancel, timeout)
ends the phase at once: the target being written removes its half-written artifact."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from orchestrator.core.plan import BuildPlan
from orchestrator.distribute import DistributeJob, distributor_for
from orchestrator.effects.proc import Stop
from orchestrator.errors import BuildTimeout, Canceled, OrchestratorError


@dataclass
class Distributed:
    failures: list[tuple[str, OrchestratorError]] = field(default_factory=list)

    def outcome(self, plan: BuildPlan) -> tuple[str, str]:
        """(run event, message) for the run's end."""
        if not self.failures:
            return "succeed", ""
        said = "; ".join(f"{name}: {exc.message}" for name, exc in self.failures)
        if len(self.failures) == len(plan.targets):
            raise self.failures[0][1]
        return "partial", f"{len(self.failures)} of {len(plan.targets)} distribution target(s) failed: {said}"


def distribute_all(job_for, plan: BuildPlan, stop: Stop,
                   redact: Callable[[str], str] = lambda text: text) -> Distributed:
    """`job_for(target)` gives the DistributeJob of a target; `redact` masks the run's secrets
    in the failures it records."""
    done = Distributed()
    for target in plan.targets:
        stopped(stop, "distributing")
        job: DistributeJob = job_for(target)
        try:
            distributor_for(target.kind).distribute(job)
        except OrchestratorError as exc:
            stopped(stop, f"distributing {target.run_output_name!r}")
            if isinstance(exc, (Canceled, BuildTimeout)):
                raise
            exc.message = redact(exc.message)
            job.log.write("orchestrator", f"distribution target {target.run_output_name!r} failed: {exc.message}")
            job.state.set_output(job.run_id, target.run_output_name, target.kind, "Failed",
                                 details={"error": exc.message})
            done.failures.append((target.run_output_name, exc))
    return done


def stopped(stop: Stop, during: str) -> None:
    """Raises the stop's error if the run was stopped."""
    if stop.is_set():
        if stop.timed_out:
            raise BuildTimeout(f"the build timed out after buildTimeoutInMinutes while {during}",
                               hint="raise buildTimeoutInMinutes (at most 960)")
        raise Canceled(f"the build was canceled while {during}")
