"""A fleet's decisions, without I/O: what a run needs of a build host, which hosts can take it,
which queue it goes to, when a host counts as gone, and what becomes of a run whose host went.

A run needs a host with its OS's label (`linux`, `windows`) and the capacity for its build VM
(the vmSize's vCPUs and memory, as [capacity] gives a host's). One host shrinks a VM that is
larger than the whole machine; a fleet sends it to a host that is large enough, and says so
when none is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from orchestrator.core import model as m
from orchestrator.core.vmsizes import vm_resources

QUEUE_PREFIX = "orchestrator."
HEARTBEAT_SECONDS = 2.0  # how often a worker says it is alive
STALE_SECONDS = 15.0  # no heartbeat for this long: the host is gone (its runs are dispatched again)
MAX_DISPATCHES = 2  # a run is built by at most two hosts in turn: its first, and one after that died


@dataclass(frozen=True)
class Needs:
    label: str
    cpus: int
    memory_mib: int

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "cpus": self.cpus, "memoryMiB": self.memory_mib}

    @classmethod
    def of(cls, data: dict[str, Any]) -> "Needs":
        return cls(data["label"], int(data["cpus"]), int(data["memoryMiB"]))


@dataclass(frozen=True)
class Host:
    name: str
    labels: tuple[str, ...]
    cpus: int
    memory_mib: int
    heartbeat_at: float
    images_url: str | None = None  # where it serves its base images by sha256 (None: it does not)

    def alive(self, now: float) -> bool:
        return now - self.heartbeat_at <= STALE_SECONDS

    def can_take(self, needs: Needs) -> bool:
        return needs.label in self.labels and needs.cpus <= self.cpus and needs.memory_mib <= self.memory_mib


def needs_of(template: m.ImageTemplate) -> Needs:
    cpus, memory = vm_resources(template.vm_profile.vm_size)
    return Needs("windows" if template.os_type == "Windows" else "linux", cpus, memory)


def queue_name(label: str) -> str:
    return QUEUE_PREFIX + label


def why_unplaceable(needs: Needs, hosts: Iterable[Host], now: float) -> str | None:
    """None if a live host of the fleet can take the run; else why it waits."""
    hosts = list(hosts)
    alive = [h for h in hosts if h.alive(now)]
    labelled = [h for h in alive if needs.label in h.labels]
    if any(h.can_take(needs) for h in labelled):
        return None
    if not alive:
        return ("queued: no build host of the fleet is running (`orchestrate worker` on a build host "
                "takes it)")
    if not labelled:
        return (f"queued: no running build host has the label {needs.label!r} (hosts: "
                f"{', '.join(f'{h.name} {list(h.labels)}' for h in alive)}); start a worker with "
                f"labels = [\"{needs.label}\"] in [fleet]")
    largest = max(labelled, key=lambda h: (h.cpus, h.memory_mib))
    return (f"queued: it needs {needs.cpus} vCPU / {needs.memory_mib} MiB and the largest {needs.label} host, "
            f"{largest.name}, has {largest.cpus} vCPU / {largest.memory_mib} MiB ([capacity] of its "
            "configuration); a smaller vmSize, or a larger host, lets it build")


def after_host_gone(run: dict[str, Any], host: str, age: float) -> tuple[str, str]:
    """("again", message) when a run whose host stopped answering is dispatched to another
    host, ("fail", message) when it has been once already."""
    dispatches = int(run.get("dispatches") or 0)
    if dispatches >= MAX_DISPATCHES:
        return "fail", (f"build host {host} stopped answering (no heartbeat for {age:.0f} s) and this run was "
                        f"already dispatched {dispatches} times; it is not dispatched again")
    return "again", (f"build host {host} stopped answering (no heartbeat for {age:.0f} s) during the build; "
                     "dispatched to another host")
