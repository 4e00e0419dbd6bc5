"""Retention: which of a template's gallery versions and VHD files to delete, and why each one
that stays is kept. Pure: no I/O; the service (service/retention.py) gathers the facts and
applies the decisions.

Rules, for each template:

- gallery versions: the last `keep_versions` per image definition (ordered by when a run of
  the template last recorded them: published, or adopted by a later run that reused them);
- VHD files: the last `keep_vhds` files per runOutputName; a file several runs' outputs point
  at (a VHD `uri` each run overwrites) counts once, as new as its newest output;
- never a version that a stored template names as its source (the exact version ID);
- never the highest version of a definition that is not excluded from latest, whichever
  template published it: it is what `.../versions/latest` resolves to;
- never a version or file an active run uses or writes;
- never a file that a run output being kept (of this template or another) still points at;
- `keep_*` absent (None) or 0: everything of that kind is kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

VERSION, VHD = "ImageVersion", "VHD"


@dataclass(frozen=True)
class Policy:
    keep_versions: int | None = None  # None or 0: keep every version
    keep_vhds: int | None = None  # None or 0: keep every VHD file


@dataclass(frozen=True)
class GalleryVersion:
    """A finished (Succeeded) gallery image version."""

    key: str  # the store's key (the lowercased resource ID)
    resource_id: str
    definition: str  # the image definition's resource ID
    version: tuple[int, int, int]
    published_at: float
    exclude_from_latest: bool
    template: str | None  # the template whose run published it (None: unknown)
    recorded_at: float | None = None  # the newest run of `template` that recorded it as an output


@dataclass(frozen=True)
class VhdOutput:
    """A Succeeded VHD run output of the template: one run's record of one file."""

    run_id: str
    name: str  # runOutputName
    path: str
    run_time: float


@dataclass(frozen=True)
class Protected:
    """What must stay whatever its age, each with who needs it."""

    sources: Mapping[str, Sequence[str]] = field(default_factory=dict)  # version key -> stored templates
    in_use: Mapping[str, Sequence[str]] = field(default_factory=dict)  # version key or VHD path -> active runs
    # VHD path -> outputs of other templates' runs that point at it ("run R (NAME) of T")
    elsewhere: Mapping[str, Sequence[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    kind: str  # ImageVersion or VHD
    id: str  # the version's resource ID, or the VHD's path
    group: str  # the definition's resource ID, or the runOutputName
    delete: bool
    reasons: tuple[str, ...]  # why it is deleted (one), or every reason it is kept
    runs: tuple[str, ...] = ()  # the runs whose outputs record it, newest first
    key: str = ""  # a version's store key

    def line(self) -> str:
        verb = "delete" if self.delete else "keep"
        return f"{verb} {self.kind} {self.id}: {'; '.join(self.reasons)}"


def _s(count: int | None) -> str:
    return "" if count == 1 else "s"


def _keep(count: int | None) -> int | None:
    return count if count else None


def _plural(names: Sequence[str]) -> str:
    return ", ".join(dict.fromkeys(names))


def latest_versions(versions: Sequence[GalleryVersion]) -> dict[str, str]:
    """Definition resource ID (lowercased) -> the key `latest` resolves to: the highest version
    not excluded from latest."""
    best: dict[str, GalleryVersion] = {}
    for v in versions:
        if v.exclude_from_latest:
            continue
        group = v.definition.lower()
        if group not in best or v.version > best[group].version:
            best[group] = v
    return {group: v.key for group, v in best.items()}


def select_versions(template: str, versions: Sequence[GalleryVersion], protected: Protected,
                    keep: int | None) -> list[Decision]:
    """`versions`: every Succeeded version of the definitions concerned (any template's: `latest`
    is the whole definition's); the decisions are about the template's own."""
    keep = _keep(keep)
    latest = latest_versions(versions)
    mine = [v for v in versions if v.template is not None and v.template.lower() == template.lower()]
    groups: dict[str, list[GalleryVersion]] = {}
    for v in mine:
        groups.setdefault(v.definition.lower(), []).append(v)
    decisions = []
    for group in sorted(groups):
        ordered = sorted(groups[group], key=lambda v: (max(v.published_at, v.recorded_at or 0.0), v.published_at,
                                                       v.version), reverse=True)
        for rank, v in enumerate(ordered):
            reasons = []
            if keep is None:
                reasons.append("keep_versions is not set: every version is kept")
            elif rank < keep:
                reasons.append(f"one of the last {keep} of template {template} in {v.definition} (#{rank + 1})")
            if v.key in protected.sources:
                reasons.append(f"the source of stored template {_plural(protected.sources[v.key])}")
            if latest.get(group) == v.key:
                reasons.append(f"the highest version not excluded from latest: {v.definition}/versions/latest "
                               "resolves to it")
            if v.key in protected.in_use:
                reasons.append(f"in use by active run {_plural(protected.in_use[v.key])}")
            delete = not reasons
            if delete:
                reasons.append(f"older than the last {keep} of template {template} in {v.definition} (#{rank + 1})")
            decisions.append(Decision(VERSION, v.resource_id, v.definition, delete, tuple(reasons), key=v.key))
    return decisions


def select_vhds(template: str, outputs: Sequence[VhdOutput], protected: Protected, keep: int | None) -> list[Decision]:
    """One decision per file: files older than the last `keep` of their runOutputName go,
    unless something still needs them. A file is as new as the newest output pointing at it
    (in whichever runOutputName it ranks best), so one a newer output still names is kept."""
    keep = _keep(keep)
    groups: dict[str, dict[str, list[VhdOutput]]] = {}
    for out in outputs:
        groups.setdefault(out.name.lower(), {}).setdefault(out.path, []).append(out)
    ranked: dict[str, tuple[int, str]] = {}  # path -> (its best rank, in which output name)
    runs_of: dict[str, list[VhdOutput]] = {}
    for group in sorted(groups):
        files = sorted(groups[group].items(), key=lambda item: max(o.run_time for o in item[1]), reverse=True)
        for rank, (path, outs) in enumerate(files):
            runs_of.setdefault(path, []).extend(outs)
            if path not in ranked or rank < ranked[path][0]:
                ranked[path] = (rank, outs[0].name)
    decisions = []
    for path, (rank, name) in sorted(ranked.items(), key=lambda item: (item[1][1].lower(), item[1][0])):
        every = sorted(runs_of[path], key=lambda o: o.run_time, reverse=True)
        newest = every[0]
        reasons = []
        if keep is None:
            reasons.append("keep_vhds is not set: every VHD is kept")
        elif rank < keep:
            shared = f"; {len(every)} run outputs point at this file" if len(every) > 1 else ""
            reasons.append(f"one of the last {keep} VHD file{_s(keep)} of output {name!r} (#{rank + 1}, newest: run "
                           f"{newest.run_id}{shared})")
        if path in protected.elsewhere:
            reasons.append(f"a run output of another template still points at it: {_plural(protected.elsewhere[path])}")
        if path in protected.in_use:
            reasons.append(f"active run {_plural(protected.in_use[path])} writes it")
        delete = not reasons
        if delete:
            reasons.append(f"older than the last {keep} VHD file{_s(keep)} of output {name!r} (#{rank + 1}, "
                           f"newest: run {newest.run_id})")
        decisions.append(Decision(VHD, path, name, delete, tuple(reasons),
                                  tuple(dict.fromkeys(o.run_id for o in every))))
    return decisions


def select(template: str, versions: Sequence[GalleryVersion], vhds: Sequence[VhdOutput], protected: Protected,
           policy: Policy) -> list[Decision]:
    """Every decision about the template's versions, then its VHD files."""
    return (select_versions(template, versions, protected, policy.keep_versions)
            + select_vhds(template, vhds, protected, policy.keep_vhds))
