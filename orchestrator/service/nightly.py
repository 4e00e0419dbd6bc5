"""A nightly run: stored templates (named, or all) built one after another in dependency order
(a template that publishes an image before the templates that build from it), each through
Engine.build as `orchestrate run` builds it, so that an unchanged template is reused (skipped)
in a moment and a changed one is built.

Each template ends `built`, `skipped` (nothing changed: an earlier run's outputs are reused;
or it was not built because a template it builds from failed tonight) or `failed`, each with
its reason. A failure does not stop the others, but the templates that build from its images
are skipped (they are not built on a stale base). Templates with an active SourceImage trigger
whose source now resolves to a version their last successful run did not use join the night
unasked (`triggered`). Lines go to nightly/DATE-ID.log under the data home as they happen."""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from orchestrator.config import Config
from orchestrator.core import model as m
from orchestrator.core.dependencies import Graph, dependency_graph, ordered
from orchestrator.core.redact import Redactor, scrub
from orchestrator.effects.locks import exclusive
from orchestrator.effects.proc import Stop, stop_on_signals
from orchestrator.effects.runlog import RunLog
from orchestrator.effects.state import StateStore
from orchestrator.effects.trigger_state import TriggerState
from orchestrator.errors import Canceled, OrchestratorError
from orchestrator.service import templates as stored_templates
from orchestrator.service import triggers
from orchestrator.service.progress import Reporter
from orchestrator.service.recovery import recover

BUILT, SKIPPED, FAILED = "built", "skipped", "failed"


@dataclass(frozen=True)
class Outcome:
    name: str
    result: str  # built, skipped, failed
    reason: str
    run_id: str | None = None
    run_state: str | None = None
    reused_run: str | None = None
    seconds: float = 0.0
    triggered: bool = False  # not asked for: its SourceImage trigger fired
    log: str | None = None  # the run's customization.log

    def as_dict(self) -> dict[str, Any]:
        names = {"run_id": "runId", "run_state": "runState", "reused_run": "reusedRun"}
        return {names.get(k, k): (round(v, 2) if k == "seconds" else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Summary:
    id: str
    started: float
    ended: float
    log_path: Path
    outcomes: tuple[Outcome, ...] = field(default_factory=tuple)

    def count(self, result: str) -> int:
        return sum(1 for o in self.outcomes if o.result == result)

    @property
    def ok(self) -> bool:
        return self.count(FAILED) == 0

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "id": self.id, "log": str(self.log_path),
                "startTime": _stamp(self.started), "endTime": _stamp(self.ended),
                "seconds": round(self.ended - self.started, 2),
                "counts": {r: self.count(r) for r in (BUILT, SKIPPED, FAILED)},
                "templates": [o.as_dict() for o in self.outcomes]}

    def line(self) -> str:
        return (f"nightly {self.id}: {self.count(BUILT)} built, {self.count(SKIPPED)} skipped, "
                f"{self.count(FAILED)} failed in {self.ended - self.started:.1f} s")


def outcome_line(o: Outcome) -> str:
    run = f" (run {o.run_id})" if o.run_id else ""
    why = "triggered; " if o.triggered and not o.reason.startswith("triggered") else ""
    return f"{o.name}: {o.result} in {o.seconds:.1f} s{run}: {why}{o.reason}"


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def nightly_dir(config: Config) -> Path:
    return config.home / "nightly"


@dataclass
class _Night:
    """What the night knows of the stored templates, and what happened so far."""

    stored: dict[str, stored_templates.Stored]
    models: dict[str, m.ImageTemplate | None]
    errors: dict[str, str]
    graph: Graph
    cycles: dict[str, tuple[str, ...]]
    triggered: set[str]
    failed_root: dict[str, str] = field(default_factory=dict)  # template -> the failed template it waits on


def _read(config: Config, state: StateStore) -> _Night:
    stored = {s.name: s for s in stored_templates.listing(state)}
    models: dict[str, m.ImageTemplate | None] = {}
    errors: dict[str, str] = {}
    for name, saved in stored.items():
        try:
            models[name] = saved.load(config)
        except OrchestratorError as exc:
            models[name], errors[name] = None, exc.message
    graph = dependency_graph(models)
    _, cycle_list = ordered(graph)
    cycles = {name: cycle for cycle in cycle_list for name in cycle}
    with_trigger = {t.template_name for t in TriggerState(state).listing()}
    return _Night(stored, models, errors, graph, cycles, with_trigger)


def run_nightly(config: Config, names: Sequence[str] | None, *, force: bool = False,
                on_outcome: Callable[[Outcome], None] = lambda o: None,
                progress: Callable[[Any], None] | None = None) -> Summary:
    """Runs the named templates (None: every stored template), and those their triggers add."""
    config = config.ensure()
    started = time.time()
    night_id = time.strftime("%Y%m%d-%H%M%S-", time.localtime(started)) + uuid.uuid4().hex[:6]
    directory = nightly_dir(config)
    with exclusive(directory / "nightly.lock", "another nightly run of this data home"):
        state = StateStore.for_config(config)
        recover(config, state)
        night = _read(config, state)
        redact = Redactor.of(s for t in night.models.values() if t is not None for s in t.secrets)
        log = RunLog(directory / f"{night_id}.log", redact)
        try:
            return _run(config, state, night, names, force, log, night_id, started, on_outcome, progress)
        finally:
            log.close()


def _run(config: Config, state: StateStore, night: _Night, names: Sequence[str] | None, force: bool,
         log: RunLog, night_id: str, started: float, on_outcome: Callable[[Outcome], None],
         progress: Callable[[Any], None] | None) -> Summary:
    by_lower = {n.lower(): n for n in night.stored}
    outcomes: list[Outcome] = []

    def report(outcome: Outcome) -> None:
        outcome = Outcome(**{**asdict(outcome), "reason": log.redact(outcome.reason)})
        outcomes.append(outcome)
        log.write("nightly", outcome_line(outcome))
        on_outcome(outcome)

    asked = list(night.stored) if names is None else list(dict.fromkeys(by_lower.get(n.lower(), n) for n in names))
    log.write("nightly", f"nightly {night_id}: " + (f"all {len(asked)} stored template(s)" if names is None
                                                    else "templates " + ", ".join(asked))
              + (f"; with SourceImage triggers: {', '.join(sorted(night.triggered))}" if night.triggered else ""))
    for name in asked:
        if name not in night.stored:
            report(Outcome(name, FAILED, f"no stored template {name!r} (`orchestrate template list` shows them)"))
    selected = {n for n in asked if n in night.stored}
    night_stop = Stop()
    order, _ = ordered(night.graph)
    with stop_on_signals(night_stop):  # between builds; during one, the engine takes the signal
        for name in order:
            if night_stop.is_set():
                if name in selected:
                    report(Outcome(name, SKIPPED, "the nightly run was canceled before its turn"))
                continue
            why = None
            if name not in selected:
                why = _trigger_fires(config, state, night, name, log)
                if why is None:
                    continue
            outcome = _one(config, state, night, name, why, force, progress, night_stop)
            if outcome.result == FAILED:
                night.failed_root[name] = name
            report(outcome)
    summary = Summary(night_id, started, time.time(), log.path, tuple(outcomes))
    log.write("nightly", summary.line())
    return summary


def _trigger_fires(config: Config, state: StateStore, night: _Night, name: str, log: RunLog) -> str | None:
    """The reason a template that was not asked for runs tonight, or None."""
    if name not in night.triggered:
        return None
    template = night.models[name]
    status = triggers.status(state, template, name, night.errors.get(name))
    if status.code != "Healthy" or template is None:
        log.write("nightly", f"{name}: its SourceImage trigger does not fire: {status.message}")
        return None
    if name in night.cycles or any(e.producer in night.failed_root for e in night.graph.producers(name)):
        return "triggered"  # _one says why it is not built
    fires, why = triggers.due(config, state, template, name)
    if not fires:
        log.write("nightly", f"{name}: its SourceImage trigger does not fire: {why}")
        return None
    return why


def _one(config: Config, state: StateStore, night: _Night, name: str, triggered: str | None, force: bool,
         progress: Callable[[Any], None] | None, night_stop: Stop) -> Outcome:
    """Builds one template, or says why not; never raises an OrchestratorError."""
    mark = {"triggered": triggered is not None}
    if name in night.errors:
        return Outcome(name, FAILED, f"the stored template cannot be read: {night.errors[name]}", **mark)
    if name in night.cycles:
        cycle = night.cycles[name]
        return Outcome(name, FAILED, "dependency cycle: " + " -> ".join(cycle + (cycle[0],)), **mark)
    for edge in night.graph.producers(name):
        if edge.producer in night.failed_root:
            root = night.failed_root[name] = night.failed_root[edge.producer]
            via = "" if root == edge.producer else f" (through {edge.producer})"
            return Outcome(name, SKIPPED, f"source template {root} failed{via}: not built on a stale {edge.image}",
                           **mark)
    from orchestrator.engine import Engine

    saved, template = night.stored[name], night.models[name]
    assert template is not None
    began = time.monotonic()
    try:
        result = Engine(config).build(template, saved.name, saved.body, saved.file_path,
                                      Reporter(progress) if progress else None, force=force,
                                      template_sha256=saved.sha256)
    except Canceled as exc:
        night_stop.request("cancel")
        return _failed(name, exc, began, mark)
    except OrchestratorError as exc:
        return _failed(name, exc, began, mark)
    except Exception as exc:  # a bug: this template fails, the night goes on
        return Outcome(name, FAILED, f"internal error: {type(exc).__name__}: {scrub(str(exc))}",
                       seconds=time.monotonic() - began, **mark)
    seconds = time.monotonic() - began
    common = dict(run_id=result.run_id, run_state=result.run_state, seconds=seconds, log=str(result.log_path), **mark)
    if result.run_state != "Succeeded":
        return Outcome(name, FAILED, f"{result.run_state}: {result.message}", **common)
    if result.reused_run:
        return Outcome(name, SKIPPED, f"up to date: nothing changed since run {result.reused_run}",
                       reused_run=result.reused_run, **common)
    return Outcome(name, BUILT, triggered or _what_changed(state, name, result.run_id), **common)


def _failed(name: str, exc: OrchestratorError, began: float, mark: dict[str, bool]) -> Outcome:
    run_id = getattr(exc, "run_id", None)
    return Outcome(name, FAILED, exc.message, run_id=run_id, run_state="Canceled" if isinstance(exc, Canceled)
                   else "Failed" if run_id else None, seconds=time.monotonic() - began,
                   log=getattr(exc, "log_path", None), **mark)


def _what_changed(state: StateStore, name: str, run_id: str) -> str:
    """Why a template was built: its first build, or what its fingerprint says changed since its
    last successful run (the source's version, a customizer's text or file, ...)."""
    from orchestrator.core.fingerprint import changes

    runs = state.runs(name, limit=200)
    this = next((r for r in runs if r["id"] == run_id), None)
    before = next((r for r in runs if r["id"] != run_id and r["run_state"] == "Succeeded"), None)
    if before is None:
        return "first build"
    try:
        old, new = (json.loads(r.get("fingerprint") or "null") if r else None for r in (before, this))
    except ValueError:
        old = new = None
    if not old or not new:
        return f"changed since run {before['id']}"
    return f"changed since run {before['id']}: " + "; ".join(changes(old, new))

