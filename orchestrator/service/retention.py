"""Retention applied: gathers a template's finished gallery versions and VHD outputs and what
protects them, lets the pure selection (core/retention.py) decide, and deletes what it chose.

A version is deleted through the image store (publish.delete: every volume in every pool,
then its record), after it is marked Deleting in a transaction that checks no live run uses
it (from then on no run resolves it). A VHD file is removed only if orchestrator recorded
writing it (owned_artifacts), it is still a regular file and still what the run recorded
(size, mtime and inode, else its sha256), and no active run claims it. Every run output that
pointed at a deleted artifact becomes `Deleted`, with when, by what and why. Each deletion and
each reason to keep is said (`say`): printed by `orchestrate prune`, logged after a run.
"""
from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from orchestrator.config import Config
from orchestrator.core import model as m
from orchestrator.core.resource_ids import parse
from orchestrator.core.retention import VERSION, VHD, Decision, GalleryVersion, Policy, Protected, VhdOutput, select
from orchestrator.distribute.publish import delete as delete_object
from orchestrator.distribute.publish import run_alive
from orchestrator.distribute.vhd import VhdDistributor
from orchestrator.effects.retention_state import RetentionState, deletion
from orchestrator.effects.state import StateStore
from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.service.templates import Stored

# a gallery version ID anywhere in a stored template that cannot be loaded any more
_VERSION_ID = re.compile(r"/subscriptions/[^\"\s]+?/versions/[0-9]+\.[0-9]+\.[0-9]+", re.IGNORECASE)


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    action: str  # deleted, would-delete, kept, failed
    note: str = ""  # what happened besides the decision: refused at the last moment, already gone, an error
    marked: tuple[str, ...] = ()  # the runs whose outputs were marked Deleted

    def line(self) -> str:
        d = self.decision
        verb = {"would-delete": "would delete"}.get(self.action, self.action)
        return f"{verb} {d.kind} {d.id}: {'; '.join(d.reasons)}" + (f" ({self.note})" if self.note else "")

    def as_dict(self) -> dict[str, Any]:
        d = self.decision
        return {"type": d.kind, "id": d.id, "group": d.group, "action": self.action, "reasons": list(d.reasons),
                "note": self.note, "runs": list(d.runs), "outputsMarkedDeleted": list(self.marked)}


@dataclass(frozen=True)
class Report:
    template: str
    policy: Policy
    dry_run: bool
    outcomes: tuple[Outcome, ...]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.action == "failed"]

    def as_dict(self) -> dict[str, Any]:
        count = {a: sum(o.action == a for o in self.outcomes) for a in ("deleted", "would-delete", "kept", "failed")}
        return {"template": self.template, "keepVersions": self.policy.keep_versions,
                "keepVhds": self.policy.keep_vhds, "dryRun": self.dry_run, "counts": count,
                "artifacts": [o.as_dict() for o in self.outcomes]}


def policy_of(config: Config, keep_versions: int | None = None, keep_vhds: int | None = None) -> Policy:
    """[retention] of the configuration, each overridden when given (0: keep all)."""
    for name, value in (("--keep-versions", keep_versions), ("--keep-vhds", keep_vhds)):
        if value is not None and value < 0:
            raise UsageError(f"{name} {value} is not a whole number", hint="0 keeps all")
    versions = config.retention_keep_versions if keep_versions is None else keep_versions
    vhds = config.retention_keep_vhds if keep_vhds is None else keep_vhds
    return Policy(versions or None, vhds or None)


def source_versions(config: Config, stored: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Version store key -> the stored templates whose source names that exact version. A
    template that no longer loads protects every version ID its text names."""
    found: dict[str, list[str]] = {}
    for row in stored:
        saved = Stored(**row)
        try:
            source = saved.load(config).source
            named = [source.image_version_id] if isinstance(source, m.SharedImageVersionSource) else []
        except OrchestratorError:
            named = _VERSION_ID.findall(saved.body + json.dumps(saved.parameters))
        for text in named:
            rid = parse(text)
            if rid is not None and rid.kind == "ImageVersion" and rid.version != "latest":
                found.setdefault(rid.key, []).append(saved.name)
    return found


def _facts(facts: RetentionState, template: str, sources: dict[str, list[str]]) -> tuple[
        list[GalleryVersion], list[VhdOutput], Protected, dict[str, dict[str, Any]]]:
    """The template's artifacts, what protects them, and the newest record of each VHD file."""
    every = facts.versions()
    recorded = facts.recorded_at(template)
    definitions = {v["parent_key"] for v in every if (v["template"] or "").lower() == template.lower()}
    versions = [GalleryVersion(v["key"], v["resource_id"], v["definition"], (v["v_major"], v["v_minor"], v["v_patch"]),
                               v["published_at"], bool(v["exclude_from_latest"]), v["template"], recorded.get(v["key"]))
                for v in every if v["parent_key"] in definitions]
    rows = facts.vhd_outputs(template)
    vhds = [VhdOutput(r["run_id"], r["name"], r["path"], r["start_time"]) for r in rows]
    newest: dict[str, dict[str, Any]] = {}
    for row in rows:  # newest first
        newest.setdefault(row["path"], row)
    uses = facts.active_uses(run_alive)
    others: dict[str, list[str]] = {}
    for row in facts.vhd_outputs(other_than=template):
        others.setdefault(os.path.realpath(row["path"]), []).append(
            f"run {row['run_id']} ({row['name']}) of {row['template_name']}")
    in_use = dict(uses)
    for path in newest:
        if os.path.realpath(path) in uses:
            in_use[path] = uses[os.path.realpath(path)]
    elsewhere = {path: others[os.path.realpath(path)] for path in newest if os.path.realpath(path) in others}
    protected = Protected(sources=sources, in_use=in_use, elsewhere=elsewhere)
    return versions, vhds, protected, newest


def prune(config: Config, state: StateStore, templates: Sequence[str] | None = None, *, policy: Policy | None = None,
          dry_run: bool = False, by: str = "orchestrate prune",
          say: Callable[[str, Outcome], None] = lambda template, outcome: None) -> list[Report]:
    """Applies retention to each template (default: every template that has runs or is
    stored), saying each outcome as it happens; `dry_run` decides and says, and changes nothing."""
    facts = RetentionState(state)
    policy = policy or policy_of(config)
    known = {name.lower(): name for name in facts.template_names()}
    names = []
    for name in templates or list(known.values()):
        if name.lower() not in known:
            raise UsageError(f"no template {name!r}: nothing is stored or was built under that name",
                             hint="`orchestrate template list` and `orchestrate runs` show the names")
        names.append(known[name.lower()])
    sources = source_versions(config, facts.stored_templates())
    reports = []
    for name in dict.fromkeys(names):
        versions, vhds, protected, newest = _facts(facts, name, sources)
        outcomes = []
        for decision in select(name, versions, vhds, protected, policy):
            outcome = _apply(config, state, facts, name, decision, newest, dry_run, by)
            say(name, outcome)
            outcomes.append(outcome)
        reports.append(Report(name, policy, dry_run, tuple(outcomes)))
    return reports


def _apply(config: Config, state: StateStore, facts: RetentionState, template: str, decision: Decision,
           newest: dict[str, dict[str, Any]], dry_run: bool, by: str) -> Outcome:
    if not decision.delete:
        return Outcome(decision, "kept")
    if dry_run:
        return Outcome(decision, "would-delete")
    how = deletion(by, decision.reasons[0])
    try:
        if decision.kind == VERSION:
            return _delete_version(config, state, facts, decision, how)
        assert decision.kind == VHD
        return _delete_vhd(facts, template, decision, newest[decision.id], how)
    except OrchestratorError as exc:
        return Outcome(decision, "failed", exc.message + (f"; {exc.hint}" if exc.hint else ""))
    except OSError as exc:
        return Outcome(decision, "failed", f"cannot remove it: {exc.strerror or exc}")


def _delete_version(config: Config, state: StateStore, facts: RetentionState, decision: Decision,
                    how: dict[str, Any]) -> Outcome:
    why = facts.claim_version(decision.key, run_alive)
    if why:
        return Outcome(decision, "kept", f"not deleted: {why}")
    obj = facts.store.get(decision.key)
    try:
        delete_object(config, state, obj)
    except OrchestratorError as exc:  # it stays Deleting (never a source again); the sweep finishes it
        marked = facts.mark_version_outputs(decision.key, how)
        return Outcome(decision, "failed", f"{exc.message}; `orchestrate store sweep` tries again", tuple(marked))
    return Outcome(decision, "deleted", "", tuple(facts.mark_version_outputs(decision.key, how)))


def _delete_vhd(facts: RetentionState, template: str, decision: Decision, record: dict[str, Any],
                how: dict[str, Any]) -> Outcome:
    path = decision.id
    if not facts.owned(path):
        return Outcome(decision, "kept", "not deleted: orchestrator has no record of writing this file")
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        why, marked = facts.remove_vhd(path, {**how, "note": "the file was already gone"}, run_alive, template)
        return Outcome(decision, "kept", f"not marked: {why}") if why else Outcome(
            decision, "deleted", "the file was already gone", tuple(marked))
    if not stat.S_ISREG(info.st_mode):
        return Outcome(decision, "kept", "not deleted: it is no longer a regular file")
    verdict = VhdDistributor().reusable({"type": VHD, "properties": record["details"]})
    if not verdict.ok:
        return Outcome(decision, "kept", f"not deleted: {verdict.why or 'it is not the file the run recorded'}")
    why, marked = facts.remove_vhd(path, how, run_alive, template)
    if why:
        return Outcome(decision, "kept", f"not deleted: {why}")
    return Outcome(decision, "deleted", "", tuple(marked))


def prune_after_run(config: Config, state: StateStore, template: str, log: Any) -> None:
    """The end of a successful run: retention for its template, when [retention] asks for it.
    Every deletion and every reason to keep (of the kinds with a limit) goes to the run's log;
    a failure is logged and never changes how the run ended."""
    policy = policy_of(config)
    if policy.keep_versions is None and policy.keep_vhds is None:
        return
    limited = {VERSION: policy.keep_versions is not None, VHD: policy.keep_vhds is not None}

    def say(name: str, outcome: Outcome) -> None:
        if limited[outcome.decision.kind]:
            log.write("orchestrator", f"retention: {outcome.line()}")

    try:
        prune(config, state, [template], policy=policy, by="retention after a run", say=say)
    except Exception as exc:  # noqa: BLE001 - the run has ended Succeeded; retention is an afterthought
        text = exc.message if isinstance(exc, OrchestratorError) else f"internal error: {exc!r}"
        log.write("orchestrator", f"retention failed: {text} (`orchestrate prune {template}` tries again)")
