"""`orchestrate verify`: an artifact against its signed provenance statement.

The statement is found, in this order: `--statement FILE`; the sidecar beside the artifact
(`X.vhd.intoto.json`); the run output recorded with the artifact's path (a VHD, a pool
volume of a managed image or gallery version) or resource ID; the run output recorded with
its sha256 (a copy elsewhere). Then the envelope's signature is checked with the host key (or
`--key FILE`), the payload read as an in-toto statement with a SLSA provenance v1 predicate,
and the artifact's sha256 compared with the statement's subject.
"""
from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config import Config
from orchestrator.core.provenance import StatementFacts, read_statement
from orchestrator.effects.files import sha256_file
from orchestrator.effects.signing import host_public_key, read_envelope, read_public_key, verify
from orchestrator.effects.state import StateStore
from orchestrator.errors import (ArtifactUnreadable, DigestMismatch, SigningKeyProblem, StatementInvalid,
                                 StatementMissing)
from orchestrator.pipeline.attest import SIDECAR_SUFFIX

_ID_PREFIX = "/subscriptions/"


@dataclass(frozen=True)
class Verified:
    artifact: str  # as named: a path or a resource ID
    files: tuple[str, ...]  # the files whose sha256 was checked
    sha256: str
    statement_path: str
    found_by: str  # how the statement was found
    keyid: str
    facts: StatementFacts

    def as_dict(self) -> dict[str, Any]:
        f = self.facts
        return {"ok": True, "artifact": self.artifact, "files": list(self.files), "sha256": self.sha256,
                "statement": self.statement_path, "foundBy": self.found_by, "keyid": self.keyid,
                "subject": [{"name": n, "sha256": d} for n, d in f.subjects], "runId": f.run_id,
                "runOutputName": f.run_output_name, "builder": f.builder_id,
                "template": {"name": f.template_name, "sha256": f.template_sha256},
                "startedOn": f.started, "finishedOn": f.finished, "materials": list(f.materials)}


def verify_artifact(config: Config, artifact: str, statement: str | None = None,
                    key_file: str | None = None) -> Verified:
    key = read_public_key(Path(key_file)) if key_file else host_public_key(config)
    if key is None:
        raise SigningKeyProblem(f"this host has no provenance key ({config.home / 'keys'}): nothing it built is signed",
                                hint="pass the building host's public key with --key FILE (`orchestrate keys show` "
                                     "there prints it)")
    state = StateStore.for_config(config, read_only=True)
    hashes: dict[str, str] = {}

    def digest(path: str) -> str:
        if path not in hashes:
            hashes[path] = _sha256(path)
        return hashes[path]

    files, recorded = _artifact_files(state, artifact)
    if statement:
        where, found_by = Path(statement), "--statement"
    else:
        where, found_by = _find_statement(state, artifact, files, recorded, digest)
    raw = verify(read_envelope(where), key, str(where))
    try:
        facts = read_statement(raw)
    except ValueError as exc:
        raise StatementInvalid(f"the statement {where} is signed but is no provenance statement: {exc}",
                               hint="it was not written by orchestrate's attest phase") from None
    signed = {sha for _, sha in facts.subjects}
    for path in files:
        actual = digest(path)
        if actual not in signed:
            names = ", ".join(f"{n} ({d})" for n, d in facts.subjects)
            raise DigestMismatch(
                f"{path} does not match its provenance: its sha256 is {actual}, the statement {where} signs "
                f"{names}: the artifact was changed after it was built",
                hint="do not use it; rebuild it (`orchestrate build --force` or `orchestrate run NAME`), or restore "
                     "the built file")
    return Verified(artifact, tuple(files), digest(files[0]), str(where), found_by, key.keyid, facts)


def _sha256(path: str) -> str:
    try:
        return sha256_file(Path(path))
    except OSError as exc:
        raise ArtifactUnreadable(f"cannot read {path}: {exc.strerror or exc}",
                                 hint="check the path and its permissions (a pool volume may need root)") from None


def _readable_file(path: str) -> None:
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ArtifactUnreadable(f"cannot read the artifact {path}: {exc.strerror}",
                                 hint="name a VHD, a pool volume file, or the resource ID of a managed image "
                                      "or gallery image version") from None
    if not stat.S_ISREG(info.st_mode):
        raise ArtifactUnreadable(f"the artifact {path} is not a regular file",
                                 hint="name a VHD or a pool volume file, not a directory")
    if not os.access(path, os.R_OK):
        raise ArtifactUnreadable(f"cannot read the artifact {path}: permission denied",
                                 hint="run as a user who may read it (pool volumes may need root)")


def _artifact_files(state: StateStore | None, artifact: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The files to hash, and the recorded outputs the artifact names (newest first)."""
    if artifact.lower().startswith(_ID_PREFIX) and not os.path.exists(artifact):
        recorded = recorded_outputs(state, resource_id=artifact)
        if not recorded:
            raise ArtifactUnreadable(f"{artifact} is no recorded run output of this host",
                                     hint="`orchestrate store list` shows the managed images and versions")
        props = recorded[0]["properties"]
        files = [r["path"] for r in props.get("replicas", []) if r.get("path")] or (
            [props["path"]] if props.get("path") else [])
        if not files:
            raise ArtifactUnreadable(f"{artifact} has no local file to check", hint="verify it on its pool's host")
        for path in files:
            _readable_file(path)
        return files, recorded
    _readable_file(artifact)
    return [os.path.abspath(artifact)], []


def _find_statement(state: StateStore | None, artifact: str, files: list[str], recorded: list[dict[str, Any]],
                    digest: Any) -> tuple[Path, str]:
    sidecar = Path(files[0] + SIDECAR_SUFFIX)
    if not recorded and sidecar.is_file():
        return sidecar, "sidecar"
    # the newest output of that path or ID is what the file is now (an older one was overwritten)
    by_path = recorded or [o for path in dict.fromkeys([files[0], os.path.realpath(files[0])])
                           for o in recorded_outputs(state, path=path)]
    if by_path:
        output = by_path[0]
        if output["properties"].get("provenance"):
            return Path(output["properties"]["provenance"]), "run output " + ("(resource ID)" if recorded else "(path)")
        raise StatementMissing(
            f"{artifact} has no provenance statement: run {output['runId']} recorded it (output "
            f"{output['name']!r}) without one", hint="it was built before provenance was signed; rebuild it for one")
    by_digest = [o for o in recorded_outputs(state, sha256=digest(files[0])) if o["properties"].get("provenance")]
    if by_digest:
        return Path(by_digest[0]["properties"]["provenance"]), "run output (sha256)"
    raise StatementMissing(
        f"no provenance statement for {artifact}: none beside it ({sidecar.name}), and no run output of this host "
        f"was recorded with its path or its sha256 ({digest(files[0])})",
        hint="pass the statement with --statement FILE; an artifact changed since it was built, or built "
             "elsewhere or before provenance was signed, has none here")


def recorded_outputs(state: StateStore | None, *, path: str | None = None, resource_id: str | None = None,
                     sha256: str | None = None) -> list[dict[str, Any]]:
    """Succeeded run outputs (AIB's shape) recorded with this file path (a VHD's, or a replica
    volume's), resource ID or sha256, newest run first. One read-only query."""
    if state is None:
        return []
    if path is not None:
        where, args = ("(o.artifact_id = ? OR json_extract(o.details, '$.path') = ? OR EXISTS (SELECT 1 FROM "
                       "json_each(o.details, '$.replicas') WHERE json_extract(value, '$.path') = ?))", (path,) * 3)
    elif resource_id is not None:
        where, args = "lower(o.artifact_id) = lower(?)", (resource_id,)
    else:
        where, args = "json_extract(o.details, '$.sha256') = ?", (sha256,)
    with state._connect() as db:  # a query StateStore has no method for; read-only
        rows = db.execute(f"SELECT o.* FROM run_outputs o JOIN runs r ON r.id = o.run_id WHERE "
                          f"o.provisioning_state = 'Succeeded' AND {where} ORDER BY r.start_time DESC, o.rowid DESC",
                          args).fetchall()
    return [{"name": row["name"], "runId": row["run_id"], "type": row["kind"],
             "properties": {"artifactId": row["artifact_id"], **json.loads(row["details"] or "{}")}} for row in rows]
