"""The interface every distribute target kind implements."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from orchestrator.config import Config
from orchestrator.core.plan import BuildPlan, TargetPlan
from orchestrator.effects.runlog import RunLog
from orchestrator.effects.state import StateStore


@dataclass(frozen=True)
class DistributeJob:
    """One target of one run: what the distributor needs, nothing it must look up."""

    config: Config
    state: StateStore
    plan: BuildPlan
    target: TargetPlan
    run_id: str
    disk: Path  # the finished build disk (qcow2)
    log: RunLog
    progress: Callable[[str], None]
    cancel: threading.Event
    owned: Callable[[str], bool]  # whether orchestrator wrote the file at a path


@dataclass(frozen=True)
class Reusable:
    ok: bool
    why: str = ""  # said in the log either way when not empty


class Distributor(Protocol):
    kind: str

    def check(self, job: DistributeJob) -> None:
        """Raises if the target cannot be written now (checked again right before writing)."""

    def distribute(self, job: DistributeJob) -> None:
        """Writes the artifact and records the run output (state, ids, details)."""

    def reusable(self, output: dict[str, Any]) -> Reusable:
        """Whether an earlier run's output (with internal details) is still what it recorded."""
