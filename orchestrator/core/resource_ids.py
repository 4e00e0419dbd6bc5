"""Azure resource IDs of managed images and gallery images, parsed. Pure: no I/O.

On-prem these IDs keep their Azure shape and name local objects in the image store:

    /subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/images/NAME          managed image
    /subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/galleries/G           gallery
    .../galleries/G/images/DEF                                                          image definition
    .../galleries/G/images/DEF/versions/X.Y.Z  (or /versions/latest as a source)        image version

Azure compares resource IDs without regard to case: `key` is the lowercased form the store
uses to find an object; `resource_id` keeps the spelling it was first written with.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_SUB_RG = r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Compute/"
_MANAGED_RE = re.compile(rf"^{_SUB_RG}images/(?P<name>[^/]+)$", re.IGNORECASE)
_GALLERY_RE = re.compile(
    rf"^{_SUB_RG}galleries/(?P<gallery>[^/]+)(/images/(?P<definition>[^/]+)(/versions/(?P<version>[^/]+))?)?$",
    re.IGNORECASE)
VERSION_RE = re.compile(r"^(\d{1,10})\.(\d{1,10})\.(\d{1,10})$")  # Major.Minor.Patch, each an int32
INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class ResourceId:
    kind: str  # ManagedImage, Gallery, ImageDefinition, ImageVersion
    subscription: str
    resource_group: str
    name: str  # the managed image's name, or the gallery's
    definition: str | None = None
    version: str | None = None  # X.Y.Z or "latest"

    @property
    def resource_id(self) -> str:
        base = f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/providers/Microsoft.Compute/"
        if self.kind == "ManagedImage":
            return base + f"images/{self.name}"
        text = base + f"galleries/{self.name}"
        if self.definition is not None:
            text += f"/images/{self.definition}"
        if self.version is not None:
            text += f"/versions/{self.version}"
        return text

    @property
    def key(self) -> str:
        return self.resource_id.lower()

    @property
    def gallery(self) -> "ResourceId":
        return ResourceId("Gallery", self.subscription, self.resource_group, self.name)

    @property
    def image_definition(self) -> "ResourceId":
        return ResourceId("ImageDefinition", self.subscription, self.resource_group, self.name, self.definition)

    def with_version(self, version: str) -> "ResourceId":
        return ResourceId("ImageVersion", self.subscription, self.resource_group, self.name, self.definition, version)

    @property
    def short(self) -> str:
        """A readable name for logs and volume names: NAME, G/DEF or G/DEF/X.Y.Z."""
        if self.kind == "ManagedImage":
            return self.name
        return "/".join(p for p in (self.name, self.definition, self.version) if p is not None)


def parse(text: str | None) -> ResourceId | None:
    """The ID's parts, or None when `text` is no managed image or gallery resource ID."""
    if not text:
        return None
    text = text.strip()
    found = _MANAGED_RE.match(text)
    if found:
        return ResourceId("ManagedImage", found["sub"], found["rg"], found["name"])
    found = _GALLERY_RE.match(text)
    if not found:
        return None
    kind = "ImageVersion" if found["version"] else "ImageDefinition" if found["definition"] else "Gallery"
    version = found["version"]
    if version is not None and version.lower() == "latest":
        version = "latest"
    return ResourceId(kind, found["sub"], found["rg"], found["gallery"], found["definition"], version)


def parse_version(text: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of an image version X.Y.Z, each at most 2^31-1; else None."""
    found = VERSION_RE.match(text or "")
    if not found:
        return None
    parts = tuple(int(p) for p in found.groups())
    return parts if all(p <= INT32_MAX for p in parts) else None  # type: ignore[return-value]


def format_version(parts: tuple[int, int, int]) -> str:
    return ".".join(str(p) for p in parts)


def next_version(existing: list[tuple[int, int, int]], scheme: str | None, major: int | None,
                 now: tuple[int, int]) -> tuple[int, int, int]:
    """The version a publish to a definition gets when its ID names no version.

    `Latest` (newer APIs' `versioning`): one more than the highest version (with `major`, when
    given and not -1: the highest with that major; none yet: MAJOR.0.0). Without `versioning`,
    AIB's generated scheme: 0.DATE.TIME (`now` = (yyyymmdd, hhmmss)), raised past the highest
    existing version so that versions only ever increase."""
    if scheme and scheme.lower() == "latest":
        if major is not None and major >= 0:
            same = [v for v in existing if v[0] == major]
            if not same:
                return (major, 0, 0)
            top = max(same)
        else:
            if not existing:
                return (0, 0, 1)
            top = max(existing)
        return (top[0], top[1], top[2] + 1)
    candidate = (0, now[0], now[1])
    if existing and max(existing) >= candidate:
        top = max(existing)
        return (top[0], top[1], top[2] + 1)
    return candidate
