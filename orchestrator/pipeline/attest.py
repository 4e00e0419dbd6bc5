"""Attest phase: a signed provenance statement for every artifact a run distributed.

One DSSE envelope (an in-toto statement with a SLSA provenance v1 predicate, signed with the
host key) per succeeded run output, at `attestations/RUN/OUTPUT.intoto.json` in the data home,
and beside a VHD as `NAME.vhd.intoto.json` (a VHD travels; the statement can go with it). The
output records where its statement is (property `provenance`, and `provenanceSidecar` for a
VHD), so `orchestrate verify` finds it from the artifact's path, resource ID or sha256.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from orchestrator import __version__
from orchestrator.config import Config
from orchestrator.core.paths import safe_component
from orchestrator.core.plan import BuildPlan
from orchestrator.core.provenance import (BuildFacts, Material, Subject, has_secrets, is_sha256, payload, statement,
                                          strip_secrets)
from orchestrator.effects.files import write_atomic
from orchestrator.effects.runlog import RunLog
from orchestrator.effects.signing import ensure_key, sign
from orchestrator.effects.state import StateStore
from orchestrator.errors import EnvironmentProblem

SIDECAR_SUFFIX = ".intoto.json"


def attestations_dir(config: Config, run_id: str) -> Path:
    return config.home / "attestations" / safe_component(run_id)


def builder_id() -> str:
    return f"urn:orchestrator:host:{socket.gethostname()}"


def attest_outputs(config: Config, state: StateStore, run_id: str, plan: BuildPlan,
                   download_digests: dict[str, str], template_sha256: str | None, log: RunLog) -> dict[str, Path]:
    """Signs a statement for each succeeded output of the run that has a sha256 and records it
    on the output; returns {runOutputName: statement path}. `template_sha256` None: the run's
    recorded one (a stored template's), else the sha256 of runs/RUN/template.json."""
    outputs = state.outputs(run_id, internal=True)
    wanted = [o for o in outputs if _attestable(o)]
    if not wanted:
        return {}
    key, made = ensure_key(config)
    if made:
        log.write("orchestrator", f"provenance: made this host's signing key {key.keyid[:16]} ({key.private_path})")
    run = state.run(run_id) or {}
    facts = BuildFacts(
        run_id=run_id, template_name=plan.name,
        template_sha256=template_sha256 or run.get("template_sha256") or _recorded_template_sha256(config, run_id),
        builder_id=builder_id(), builder_version=__version__,
        started=float(run.get("start_time") or time.time()), finished=time.time(),
        materials=materials(plan, download_digests, log.redact), build_digest=run.get("build_digest"))
    written: dict[str, Path] = {}
    for output in outputs:  # all of them again, in order: set_output re-inserts a row (the order is rowid's)
        props = output["properties"]
        details = {k: v for k, v in props.items() if k not in ("artifactId", "artifactUri", "provisioningState")}
        if output in wanted:
            details.update(_attest_one(config, key, facts, output, log))
            written[output["name"]] = Path(details["provenance"])
        state.set_output(run_id, output["name"], output["type"], props["provisioningState"], props["artifactId"],
                         props["artifactUri"], details)
    return written


def _attestable(output: dict[str, Any]) -> bool:
    props = output["properties"]
    return props.get("provisioningState") == "Succeeded" and is_sha256(props.get("sha256") or "") \
        and bool(props.get("artifactId"))


def _attest_one(config: Config, key: Any, facts: BuildFacts, output: dict[str, Any], log: RunLog) -> dict[str, str]:
    props, name, kind = output["properties"], output["name"], output["type"]
    annotations = [("runOutputName", name), ("type", kind)]
    if kind != "VHD":
        paths = [r.get("path") for r in props.get("replicas", []) if r.get("path")]
        annotations.append(("volumes", ",".join(paths)))
    subject = Subject(props["artifactId"], props["sha256"], props.get("artifactUri") or "", tuple(annotations))
    envelope = sign(key, payload(statement(subject, facts, name, kind)))
    text = json.dumps(envelope, indent=2) + "\n"
    dest = attestations_dir(config, facts.run_id) / f"{safe_component(name)}{SIDECAR_SUFFIX}"
    recorded = {"provenance": str(dest)}
    where = [str(dest)]
    try:
        write_atomic(dest, text)
        if kind == "VHD" and props.get("path"):
            sidecar = Path(props["path"] + SIDECAR_SUFFIX)
            write_atomic(sidecar, text)
            recorded["provenanceSidecar"] = str(sidecar)
            where.append(str(sidecar))
    except OSError as exc:
        raise EnvironmentProblem(f"cannot write the provenance statement of {name!r}: {exc}",
                                 hint="check the free space and permissions of the data home and the VHD's "
                                      "directory") from None
    log.write("orchestrator", f"provenance {name!r}: {' and '.join(where)} (in-toto statement, SLSA provenance v1, "
              f"subject sha256 {props['sha256'][:16]}..., signed by host key {key.keyid[:16]})")
    return recorded


def materials(plan: BuildPlan, download_digests: dict[str, str],
              redact: Any = lambda text: text) -> tuple[Material, ...]:
    """The source image, then every downloaded file once (in step order), URIs without secrets."""
    source = plan.source
    source_annotations = [("role", "sourceImage")]
    if source.resolved_version:
        source_annotations.append(("resolvedVersion", source.resolved_version))
    source_sha = source.sha256 if is_sha256(source.sha256 or "") else None
    source_uri = Path(os.path.abspath(source.path)).as_uri() if source.path else ""
    found = [Material(source_uri, source_sha, redact(source.description), tuple(source_annotations))]
    seen: set[str] = set()
    for step in plan.steps:
        item = step.download
        if item is None or item.url in seen:
            continue
        seen.add(item.url)
        digest = download_digests.get(item.url) or item.sha256
        annotations = [("role", "customizerFile"), ("customizer", redact(step.name)), ("jsonPath", item.json_path)]
        if has_secrets(item.url):
            annotations.append(("uriRedacted", "credentials, query or fragment removed"))
        digest = digest.lower() if digest and is_sha256(digest.lower()) else None
        found.append(Material(redact(strip_secrets(item.url)), digest, "", tuple(annotations)))
    return tuple(found)


def _recorded_template_sha256(config: Config, run_id: str) -> str:
    path = config.runs_dir / run_id / "template.json"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""
