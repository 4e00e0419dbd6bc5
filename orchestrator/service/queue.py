"""Admission by host capacity: a run starts when its build VM's vCPUs and memory fit beside
the runs already building; the others wait in Queued, first come first served, and start by
themselves. Two runs that claim one output (the same template, VHD path or managed image)
never build at once.

`Admission` is the one small interface the engine uses. `LocalAdmission` keeps the queue in
the state database, so every orchestrate process on this host shares it; a fleet replaces it
with a distributed engine's (Celery's) queue behind the same two methods.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from orchestrator.config import Config
from orchestrator.core.plan import BuildPlan
from orchestrator.distribute.vhd import vhd_destination
from orchestrator.effects.proc import Stop
from orchestrator.errors import Canceled
from orchestrator.pipeline.sizing import host_resources

POLL_SECONDS = 0.25  # how often a queued run looks again; ≤ 0.5 % of a one-minute build


@dataclass(frozen=True)
class Demand:
    """What a run needs of the host while it builds."""

    cpus: int
    memory_mib: int
    claims: tuple[str, ...]  # outputs it writes: no two admitted runs share one


@dataclass(frozen=True)
class Capacity:
    cpus: int
    memory_mib: int


class Admission(Protocol):
    def admit(self, run_id: str, demand: Demand, stop: Stop, waiting: Callable[[str], None]) -> None:
        """Returns once the run may start building; raises Canceled if `stop` is set first.
        `waiting` hears why it waits, each time that changes. Time queued does not count
        against buildTimeoutInMinutes (its clock starts at admission)."""

    def release(self, run_id: str) -> None:
        """The run holds its share no longer (its end releases it too)."""


class LocalAdmission:
    def __init__(self, state: Any, capacity: Capacity, reap: Callable[[], object] = lambda: None) -> None:
        self.state = state
        self.capacity = capacity
        self.reap = reap  # ends runs whose process died, so that they give back their share

    def admit(self, run_id: str, demand: Demand, stop: Stop, waiting: Callable[[str], None]) -> None:
        self.state.update_run(run_id, cpus=demand.cpus, memory_mib=demand.memory_mib,
                              claims=json.dumps(list(demand.claims)))
        said = None
        while True:
            self.reap()
            why = self._try(run_id, demand)
            if why is None:
                return
            if why != said:
                waiting(why)
                said = why
            if stop.wait(POLL_SECONDS):
                raise Canceled("the run was canceled while queued")

    def release(self, run_id: str) -> None:
        """Nothing to do here: an ended run is not counted (its admitted_at stays, as a record
        of when it started building)."""

    def _try(self, run_id: str, demand: Demand) -> str | None:
        """Admits the run if it is first in line and fits; else why it waits."""
        with self.state.immediate() as db:
            active = [dict(r) for r in db.execute(
                "SELECT id, template_name, cpus, memory_mib, claims, admitted_at, host FROM runs "
                "WHERE run_state IN ('Running', 'Canceling') ORDER BY rowid")]
            # a fleet: this host's capacity and line; no two runs anywhere write one output
            claimed = [r for r in active if r["admitted_at"] is not None]
            active = [r for r in active if self.state.is_local(r)]
            admitted = [r for r in active if r["admitted_at"] is not None]
            queued = [r for r in active if r["admitted_at"] is None and r["cpus"] is not None]
            ahead = next((i for i, r in enumerate(queued) if r["id"] == run_id), 0)
            if ahead:
                return f"queued: {ahead} run(s) ahead ({', '.join(r['id'] for r in queued[:ahead][:3])})"
            why = self._blocked(demand, admitted, claimed)
            if why:
                return why
            db.execute("UPDATE runs SET admitted_at = ? WHERE id = ?", (time.time(), run_id))
            return None

    def _blocked(self, demand: Demand, admitted: list[dict[str, Any]], claimed: list[dict[str, Any]]) -> str | None:
        for other in claimed:
            shared = set(demand.claims) & set(json.loads(other["claims"] or "[]"))
            if shared:
                return f"queued: run {other['id']} writes the same output ({sorted(shared)[0]})"
        if not admitted:
            return None  # a run larger than the capacity runs alone rather than never
        cpus = sum(r["cpus"] or 0 for r in admitted)
        memory = sum(r["memory_mib"] or 0 for r in admitted)
        if cpus + demand.cpus > self.capacity.cpus or memory + demand.memory_mib > self.capacity.memory_mib:
            return (f"queued: {len(admitted)} run(s) building use {cpus}/{self.capacity.cpus} vCPU, "
                    f"{memory}/{self.capacity.memory_mib} MiB; this one needs {demand.cpus} vCPU, "
                    f"{demand.memory_mib} MiB")
        return None


def capacity(config: Config) -> Capacity:
    """[capacity] cpus / memory_mib, else the whole host's CPUs and three quarters of its memory."""
    cpus, memory = host_resources()
    return Capacity(config.capacity_cpus or cpus, config.capacity_memory_mib or memory * 3 // 4)


def demand(plan: BuildPlan, config: Config, run_id: str) -> Demand:
    """The VM's share of the host, and the outputs the run writes: its template's, each VHD
    (where vhd.py will write it), a managed image. Two runs that share one never build at once,
    and recovery finds a dead run's half-written VHDs by them."""
    claims = [f"template:{plan.name.lower()}"]
    for target in plan.targets:
        if target.kind == "VHD":
            claims.append(f"file:{os.path.realpath(vhd_destination(config, plan.name, target, run_id))}")
        elif target.artifact_id:
            claims.append(f"{target.kind.lower()}:{target.artifact_id.lower()}")
    return Demand(plan.cpus, plan.memory_mib, tuple(claims))
