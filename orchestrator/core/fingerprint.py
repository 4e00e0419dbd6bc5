"""The build fingerprint: a content hash of everything that determines the image, kept in
named parts so that a changed fingerprint can say what changed. A run whose fingerprint
matches a successful run with intact outputs reuses them (pipeline/reuse.py).

The parts: the orchestrator's own version; the resolved source (description, version and its
content's sha256); each customizer and validation in order (name, kind, its settings, the
sha256 of its downloaded file or its inline text); the distribution targets; the other
properties that change the build (disk size, VM size, generalization, error handling,
validation settings). Not part of it: where files live, the build VM's CPUs and memory (fitted
to the host, they do not change the image), timeouts.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from orchestrator import __version__
from orchestrator.core.plan import BuildPlan
from orchestrator.core.redact import display_url

_NOT_IMAGE = ("name", "source", "steps", "targets", "cpus", "memory_mib", "timeout_minutes")


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def fingerprint_parts(plan: BuildPlan, download_digests: dict[str, str | None],
                      version: str = __version__) -> dict[str, Any]:
    """`download_digests`: url -> sha256 of its content (None: not known without fetching)."""
    data = plan.to_dict()
    steps = {}
    for step in data["steps"]:
        content = {k: v for k, v in step.items() if k != "index"}  # a move is an order change, said so
        if step.get("download"):
            url = step["download"]["url"]
            content["download"] = {"sha256": download_digests.get(url)}
        steps[f"{step['phase']}:{step['name']}"] = _hash(content)
    return {
        "orchestrator": version,
        "source": {"description": plan.source.description, "resolvedVersion": plan.source.resolved_version,
                   "sha256": plan.source.sha256},
        "steps": steps,  # in run order (dicts keep it; JSON keeps it)
        "targets": _hash(data["targets"]),
        "properties": _hash({k: v for k, v in data.items() if k not in _NOT_IMAGE}),
        # what each download was (already inside the steps' hashes): `plan` assumes a file
        # without sha256Checksum is what it was last time; the URL as shown (no credentials)
        "downloads": {display_url(url): digest for url, digest in download_digests.items()},
    }


def digest_of(parts: dict[str, Any]) -> str:
    steps = list(parts["steps"].items())  # order counts
    return _hash({**{k: v for k, v in parts.items() if k != "downloads"}, "steps": steps})


def changes(before: dict[str, Any] | None, after: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, as a person would say it."""
    if not before:
        return ["no earlier successful run recorded its fingerprint"]
    said: list[str] = []
    if before.get("orchestrator") != after["orchestrator"]:
        said.append(f"orchestrator {before.get('orchestrator')} -> {after['orchestrator']}")
    old_source, new_source = before.get("source", {}), after["source"]
    if old_source.get("resolvedVersion") != new_source["resolvedVersion"]:
        said.append(f"source {new_source['description']}: version {old_source.get('resolvedVersion')} -> "
                    f"{new_source['resolvedVersion']}")
    elif old_source.get("sha256") != new_source["sha256"]:
        said.append(f"source {new_source['description']}: its content changed (sha256 "
                    f"{str(old_source.get('sha256'))[:12]} -> {str(new_source['sha256'])[:12]})")
    elif old_source.get("description") != new_source["description"]:
        said.append(f"source {old_source.get('description')} -> {new_source['description']}")
    old_steps, new_steps = before.get("steps", {}), after["steps"]
    for key in new_steps:
        phase, name = key.split(":", 1)
        kind = "customizer" if phase == "customize" else "validation"
        if key not in old_steps:
            said.append(f"{kind} {name!r} is new")
        elif old_steps[key] != new_steps[key]:
            said.append(f"{kind} {name!r} changed (its settings, text or downloaded file)")
    for key in old_steps:
        if key not in new_steps:
            phase, name = key.split(":", 1)
            said.append(f"{'customizer' if phase == 'customize' else 'validation'} {name!r} was removed")
    if not said and list(old_steps) != list(new_steps):
        said.append("the customizers run in another order")
    if before.get("targets") != after["targets"]:
        said.append("the distribution targets changed")
    if before.get("properties") != after["properties"]:
        said.append("build properties changed (disk size, VM size, generalization, error handling or validation)")
    return said or ["the fingerprints differ"]


def step_keys(parts: dict[str, Any]) -> list[str]:
    """The checkpoint key after each customizer, in order: a hash of the orchestrator's version,
    the resolved source and every customizer up to and including that one (names, kinds,
    settings, downloaded content), in order. A checkpoint is used only where the whole prefix
    is the same: never across another source, orchestrator version or order of steps."""
    keys, prefix = [], []
    customizers = [(key, value) for key, value in parts["steps"].items() if key.startswith("customize:")]
    for key, value in customizers:
        prefix.append((key, value))
        keys.append(_hash({"orchestrator": parts["orchestrator"], "source": parts["source"]["sha256"],
                           "steps": prefix}))
    return keys


def base_key(parts: dict[str, Any], machine: str) -> str:
    """The key of a warm base: the source booted, its build user made, no customizer run yet.
    Any template on that source and machine (`MachineConfig.to_json()`) starts from it."""
    return _hash({"orchestrator": parts["orchestrator"], "source": parts["source"]["sha256"], "base": machine})
