"""Source resolution: one class per source kind behind one interface, chosen by a factory.

PlatformImage resolves against the catalog of imported base images; ManagedImage and
SharedImageVersion against the image store (a finished volume in a local pool, whose file
QEMU reads as the build's backing image). `.../versions/latest` is the highest finished
version not excluded from latest. Resolution only reads the state database (plan and
validate open it read-only); a source that is not there names the JSON path.
"""
from __future__ import annotations

import os
from typing import Protocol

from orchestrator.config import Config
from orchestrator.core import model as m
from orchestrator.core.plan import ResolvedSource
from orchestrator.core.resource_ids import parse
from orchestrator.effects.catalog import Catalog
from orchestrator.effects.state import StateStore
from orchestrator.effects.store_state import StoreState
from orchestrator.errors import SourceNotFound


class SourceResolver(Protocol):
    def resolve(self, source: m.Source) -> ResolvedSource:
        """The local image file the source names, or SourceNotFound."""

    def store_key(self, source: m.Source) -> str | None:
        """The store object a build from this source uses (None: the catalog's)."""


class PlatformImageResolver:
    def __init__(self, config: Config, state: StateStore) -> None:
        self.catalog = Catalog(state, config.images_dir, shared=config.fleet is not None)

    def resolve(self, source: m.Source) -> ResolvedSource:
        assert isinstance(source, m.PlatformImageSource)
        return self.catalog.resolve(source)

    def store_key(self, source: m.Source) -> str | None:
        return None


class _StoreResolver:
    field = ""

    def __init__(self, config: Config, state: StateStore, location: str | None = None) -> None:
        self.store = StoreState(state)
        self.location = (location or "").lower()

    def _id(self, source: m.Source) -> str:
        raise NotImplementedError

    def _object(self, source: m.Source) -> dict:
        raise NotImplementedError

    def store_key(self, source: m.Source) -> str | None:
        return self._object(source)["key"]

    def resolve(self, source: m.Source) -> ResolvedSource:
        obj = self._object(source)
        volumes = sorted(obj["volumes"], key=lambda v: v.region.lower() != self.location)  # the build's region first
        for volume in volumes:
            if volume.path and os.path.isfile(volume.path):
                version = obj["version"]
                named = self._id(source)
                return ResolvedSource(
                    description=f"{source.kind} {named}" + (f" -> {version}" if named.lower().endswith("/latest")
                                                            else ""),
                    path=volume.path, format="qcow2", virtual_size=obj["virtual_size"], sha256=obj["sha256"],
                    resolved_version=version, os_type=obj.get("os_type"))
        raise SourceNotFound(f"{self.field}: the volume of {obj['resource_id']} is missing "
                             f"({', '.join(f'{v.pool}/{v.volume}' for v in obj['volumes'])})",
                             hint=f"delete it (`orchestrate store delete {obj['resource_id']}`) and publish it again")

    def _missing(self, what: str, have: list[str], hint: str) -> SourceNotFound:
        return SourceNotFound(f"{self.field}: {what} is not in the image store (finished there: "
                              f"{', '.join(have[:8]) or 'none'}{', ...' if len(have) > 8 else ''})", hint=hint)


class ManagedImageResolver(_StoreResolver):
    field = "$.properties.source.imageId"

    def _id(self, source: m.Source) -> str:
        assert isinstance(source, m.ManagedImageSource)
        return source.image_id

    def _object(self, source: m.Source) -> dict:
        rid = parse(self._id(source))
        obj = self.store.get(rid.key) if rid else None
        if obj is None or obj["state"] != "Succeeded" or obj["kind"] != "ManagedImage":
            have = [o["resource_id"] for o in self.store.objects("ManagedImage", states=("Succeeded",))]
            raise self._missing(f"the managed image {self._id(source)}", have,
                                "build a template that distributes to it (type ManagedImage) first; "
                                "`orchestrate store list` shows the store")
        return obj


class SharedImageVersionResolver(_StoreResolver):
    field = "$.properties.source.imageVersionId"

    def _id(self, source: m.Source) -> str:
        assert isinstance(source, m.SharedImageVersionSource)
        return source.image_version_id

    def _object(self, source: m.Source) -> dict:
        rid = parse(self._id(source))
        if rid is None or rid.kind != "ImageVersion":
            raise SourceNotFound(f"{self.field}: `{self._id(source)}` is not an image version ID",
                                 hint=".../galleries/G/images/DEF/versions/X.Y.Z or .../versions/latest")
        definition = rid.image_definition
        obj = self.store.latest(definition.key) if rid.version == "latest" else self.store.get(rid.key)
        if obj is None or obj["state"] != "Succeeded":
            have = [o["version"] + (" (excluded from latest)" if o["exclude_from_latest"] else "")
                    for o in self.store.objects("ImageVersion", parent_key=definition.key, states=("Succeeded",))]
            what = (f"a version of {definition.resource_id} that latest may pick" if rid.version == "latest"
                    else f"the image version {self._id(source)}")
            raise self._missing(what, [f"versions {', '.join(have)}"] if have else [],
                                "publish one first (a template with a SharedImage target to that definition); "
                                "excludeFromLatest versions are only used by their explicit ID")
        return obj


_KINDS: dict[str, type] = {"PlatformImage": PlatformImageResolver, "ManagedImage": ManagedImageResolver,
                           "SharedImageVersion": SharedImageVersionResolver}


def resolver_for(source: m.Source, config: Config, state: StateStore,
                 location: str | None = None) -> SourceResolver:
    """The resolver of a source kind; ISO (and any other kind) was refused before (buildable.py)."""
    try:
        kind = _KINDS[source.kind]
    except KeyError:
        raise SourceNotFound(f"{source.kind} sources are not resolved locally",
                             hint="use PlatformImage, ManagedImage or SharedImageVersion") from None
    if kind is PlatformImageResolver:
        return PlatformImageResolver(config, state)
    return kind(config, state, location)


def resolve(source: m.Source, config: Config, state: StateStore, location: str | None = None) -> ResolvedSource:
    return resolver_for(source, config, state, location).resolve(source)
