"""The local catalog of base images: PlatformImage publisher/offer/sku/version -> qcow2 file."""
from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

from orchestrator.core.model import PlatformImageSource
from orchestrator.core.plan import ResolvedSource
from orchestrator.effects import qemu_img
from orchestrator.effects.files import link_or_copy, sha256_file
from orchestrator.effects.image_transfer import image_file
from orchestrator.effects.state import ImageRecord, StateStore
from orchestrator.errors import SourceNotFound, UsageError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_VERSION_RE = re.compile(r"^\d{1,10}(\.\d{1,10}){0,3}$")  # what a template's `version` may name


def version_key(version: str) -> tuple:
    """Azure versions are Major.Minor.Build: compare numerically, part by part."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-_]", version))


class Catalog:
    """`shared`: the catalog is a fleet's (in its database), its images on the host that imported
    them: a record names its image by digest, and this host's copy is images/<sha256>.qcow2,
    fetched from another host when the build needs it (pipeline/source_fetch.py)."""

    def __init__(self, state: StateStore, images_dir: Path, shared: bool = False) -> None:
        self.state = state
        self.images_dir = images_dir
        self.shared = shared

    def import_image(self, path: Path, publisher: str, offer: str, sku: str, version: str,
                     replace: bool = False) -> ImageRecord:
        for label, value in (("publisher", publisher), ("offer", offer), ("sku", sku)):
            if not _NAME_RE.match(value):
                raise UsageError(f"{label} {value!r} is not a valid name",
                                 hint="letters, digits, '.', '-' and '_' (at most 64)")
        if version.lower() == "latest":
            raise UsageError("`latest` is resolved at build time and cannot be imported as a version",
                             hint="import with a real version such as 2026.11.23")
        if not _VERSION_RE.match(version):
            raise UsageError(f"version {version!r} is not a version number",
                             hint="dotted numbers, as Azure image versions are: e.g. 0.20261123.0")
        if not path.is_file():
            raise UsageError(f"no image file at {path}", hint="give the path of a qcow2 or raw disk image")
        existing = [r for r in self.state.images(publisher, offer, sku) if r.version == version]
        if existing and not replace:
            raise UsageError(f"{publisher}:{offer}:{sku}:{version} is already imported",
                             hint="pass --replace to import it again")
        facts = qemu_img.importable(path)
        digest = sha256_file(path)
        dest = image_file(self.images_dir, digest)
        if not dest.exists():
            if facts.format == "qcow2" and not facts.backing_file:
                link_or_copy(path, dest)
            else:
                qemu_img.convert(path, dest, "qcow2", f"importing {path}")
        record = ImageRecord(publisher, offer, sku, version, str(dest), "qcow2", facts.virtual_size,
                             digest, time.time())
        self.state.add_image(record)
        return record

    def resolve(self, source: PlatformImageSource) -> ResolvedSource:
        name = f"{source.publisher}:{source.offer}:{source.sku}"
        candidates = self.state.images(source.publisher, source.offer, source.sku)
        if source.version.lower() != "latest":
            candidates = [r for r in candidates if r.version == source.version]
        if not candidates:
            have = ", ".join(f"{r.publisher}:{r.offer}:{r.sku}:{r.version}" for r in self.state.images()) or "none"
            raise SourceNotFound(
                f"PlatformImage {name}:{source.version} is not in the local catalog (imported: {have})",
                hint="import it with `orchestrate image import FILE --publisher P --offer O --sku S --version V`, "
                     "or run scripts/build-base-image.sh for Debian 12")
        record = max(candidates, key=lambda r: version_key(r.version))
        if self.shared:  # this host's copy, by digest: the build fetches it when it is not here yet
            record = dataclasses.replace(record, path=str(image_file(self.images_dir, record.sha256)))
        elif not Path(record.path).is_file():
            raise SourceNotFound(f"the image file of {name}:{record.version} is missing: {record.path}",
                                 hint="import it again with `orchestrate image import --replace`")
        return ResolvedSource(
            description=f"PlatformImage {name}:{source.version}" + (
                f" -> {record.version}" if source.version.lower() == "latest" else ""),
            path=record.path, format=record.format, virtual_size=record.virtual_size,
            sha256=record.sha256, resolved_version=record.version)
