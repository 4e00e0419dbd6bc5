"""What a build VM gets of this host."""
from __future__ import annotations

import dataclasses
import os

from orchestrator.core.plan import BuildPlan
from orchestrator.effects.runlog import RunLog


def host_resources() -> tuple[int, int]:
    """(CPUs, MiB of memory) this host can give a build VM."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return cpus, memory


def fit_to_host(plan: BuildPlan, log: RunLog) -> BuildPlan:
    """An Azure size may ask for more than this host has: QEMU would fail or crawl. The VM gets
    at most the host's CPUs and three quarters of its memory; the build's identity (digest)
    stays that of the template."""
    host_cpus, host_memory = host_resources()
    cpus = min(plan.cpus, host_cpus)
    memory = min(plan.memory_mib, host_memory * 3 // 4)
    if (cpus, memory) == (plan.cpus, plan.memory_mib):
        return plan
    log.write("orchestrator", f"{plan.vm_size} asks for {plan.cpus} vCPU / {plan.memory_mib} MiB; this host has "
              f"{host_cpus} CPUs / {host_memory} MiB: the build VM gets {cpus} vCPU / {memory} MiB")
    return dataclasses.replace(plan, cpus=cpus, memory_mib=memory)
