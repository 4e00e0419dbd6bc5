"""Provenance of an artifact: an in-toto Statement v1 with a SLSA provenance v1 predicate.

Built with the in-toto attestation bindings (`in_toto_attestation`: the Statement and
ResourceDescriptor wrappers, the SLSA provenance v1 protobuf message) and serialized as their
JSON form, so every field name and shape is the specification's, not ours. Pure: no I/O; the
signing (DSSE) and the files are effects (`effects/signing.py`, `pipeline/attest.py`).

- subject: the artifact (a VHD's path, or a managed image / gallery version's resource ID)
  with its sha256;
- buildDefinition.externalParameters: the template (its name and sha256) and the run output;
- buildDefinition.resolvedDependencies: the source image and every downloaded file with
  their sha256 and URI, credentials, query and fragment removed;
- runDetails: the builder (this host, orchestrator's version) and the run (id, start, end).
"""
from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import STATEMENT_TYPE_URI, Statement

from orchestrator.core.redact import scrub

PAYLOAD_TYPE = "application/vnd.in-toto+json"  # DSSE payloadType of an in-toto statement
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:orchestrator:buildtype:aib-image-template:v1"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Material:
    """Something the build consumed: the source image, a downloaded file."""

    uri: str
    sha256: str | None
    name: str = ""
    annotations: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Subject:
    """The artifact the statement is about."""

    name: str  # a VHD's path, or the resource ID of a managed image / gallery version
    sha256: str
    uri: str = ""
    annotations: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class BuildFacts:
    """What one run knew about how it built its artifacts (shared by all its outputs)."""

    run_id: str
    template_name: str
    template_sha256: str
    builder_id: str
    builder_version: str  # orchestrator's version
    started: float  # epoch seconds
    finished: float
    materials: tuple[Material, ...] = ()
    build_digest: str | None = None  # what orchestrator compares to decide a build is up to date


@dataclass(frozen=True)
class StatementFacts:
    """What `verify` reads back from a statement whose signature it checked."""

    subjects: tuple[tuple[str, str], ...]  # (name, sha256)
    run_id: str
    builder_id: str
    template_name: str
    template_sha256: str
    run_output_name: str
    started: str
    finished: str
    materials: tuple[dict[str, Any], ...]
    statement: dict[str, Any]


def is_sha256(value: str) -> bool:
    return bool(_SHA256.match(value))


def has_secrets(uri: str) -> bool:
    """Whether `strip_secrets` takes something away (a user, a password, a query, a fragment)."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return True
    return bool(parts.scheme and (parts.username is not None or parts.password is not None or parts.query
                                  or parts.fragment))


def strip_secrets(uri: str) -> str:
    """A URI as a statement may carry it: no user or password, no query (signed URLs keep
    their secret there), no fragment. Not a URL (a plain path): returned without change."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return "<unparsable URI>"
    if not parts.scheme:
        return scrub(uri)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _descriptor(name: str, uri: str, sha256: str | None, annotations: tuple[tuple[str, str], ...]) -> Any:
    if sha256 is not None and not _SHA256.match(sha256):
        raise ValueError(f"{name or uri}: {sha256!r} is not a sha256 hex digest")
    return ResourceDescriptor(name=name, uri=uri, digest={"sha256": sha256} if sha256 else None,
                              annotations=dict(annotations) or None).pb


def statement(subject: Subject, facts: BuildFacts, run_output_name: str, artifact_type: str) -> dict[str, Any]:
    """The statement (as JSON data) for one artifact of a run."""
    provenance = provenance_pb2.Provenance()
    definition = provenance.build_definition
    definition.build_type = BUILD_TYPE
    definition.external_parameters.update({
        "template": {"name": facts.template_name, "digest": {"sha256": facts.template_sha256}},
        "runOutputName": run_output_name, "distributeType": artifact_type})
    if facts.build_digest:
        definition.internal_parameters.update({"buildDigest": facts.build_digest})
    definition.resolved_dependencies.extend(
        _descriptor(m.name, strip_secrets(m.uri), m.sha256, m.annotations) for m in facts.materials)
    details = provenance.run_details
    details.builder.id = facts.builder_id
    details.builder.version["orchestrator"] = facts.builder_version
    details.metadata.invocation_id = facts.run_id
    details.metadata.started_on.FromMilliseconds(round(facts.started * 1000))
    details.metadata.finished_on.FromMilliseconds(round(facts.finished * 1000))
    subject_pb = _descriptor(subject.name, subject.uri and strip_secrets(subject.uri), subject.sha256,
                             subject.annotations)
    made = Statement([subject_pb], PREDICATE_TYPE, json_format.MessageToDict(provenance))
    made.validate()
    return json_format.MessageToDict(made.pb)


def payload(data: dict[str, Any]) -> bytes:
    """The bytes that are signed: the statement as compact JSON with sorted keys."""
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def read_statement(raw: bytes) -> StatementFacts:
    """A signed payload as a statement; ValueError saying what is wrong when it is none."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"the payload is not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("_type") != STATEMENT_TYPE_URI:
        raise ValueError(f"the payload is not an in-toto statement v1 (`_type` is not {STATEMENT_TYPE_URI})")
    try:
        made = Statement.copy_from_pb(json_format.ParseDict(data, statement_pb2.Statement()))
        made.validate()
        predicate = json_format.ParseDict(data["predicate"], provenance_pb2.Provenance())
    except (json_format.ParseError, ValueError, KeyError) as exc:
        raise ValueError(f"the statement is malformed ({exc})") from None
    if data.get("predicateType") != PREDICATE_TYPE:
        raise ValueError(f"the predicate is {data.get('predicateType')!r}, not SLSA provenance v1")
    subjects = tuple((s.name, s.digest.get("sha256", "")) for s in made.pb.subject)
    meta = predicate.run_details.metadata
    dependencies = _at(data, "predicate", "buildDefinition", "resolvedDependencies")
    return StatementFacts(
        subjects=subjects, run_id=meta.invocation_id, builder_id=predicate.run_details.builder.id,
        template_name=str(_at(data, *_EXTERNAL, "template", "name") or ""),
        template_sha256=str(_at(data, *_EXTERNAL, "template", "digest", "sha256") or ""),
        run_output_name=str(_at(data, *_EXTERNAL, "runOutputName") or ""),
        started=str(_at(data, "predicate", "runDetails", "metadata", "startedOn") or ""),
        finished=str(_at(data, "predicate", "runDetails", "metadata", "finishedOn") or ""),
        materials=tuple(dependencies) if isinstance(dependencies, list) else (), statement=data)


_EXTERNAL = ("predicate", "buildDefinition", "externalParameters")


def _at(data: Any, *keys: str) -> Any:
    """data[k1][k2]..., or None where a level is missing or no object."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data
