"""URL mirrors for air-gapped build hosts: [mirrors] in the configuration maps URL prefixes
to a local directory holding the same tree, or to a local http(s) server.

A mirrored URL is fetched from its mirror (the longest matching prefix); the sha256Checksum
of the template is verified as for any download. A local-directory mirror is the admin's own
configuration, so it may be read (the template's file:// policy does not apply), but nothing
outside the mirror directory: the rest of the URL may not climb out of it, symlinks included.
"""
from __future__ import annotations

import os
import posixpath
import urllib.parse
from dataclasses import dataclass

from orchestrator.core.paths import under


@dataclass(frozen=True)
class Mirror:
    prefix: str
    target: str  # a directory or an http(s) URL
    url: str  # what is fetched: file:///dir/rest or http://mirror/rest
    directory: str | None  # the mirror directory, for a local one


def mirror_for(url: str, mirrors: tuple[tuple[str, str], ...]) -> Mirror | None:
    """The mirror that serves `url`, or None. Prefixes are compared without their query; the
    longest wins (the configuration keeps them longest first)."""
    for prefix, target in mirrors:
        if not url.startswith(prefix):
            continue
        rest = url[len(prefix):].split("#", 1)[0].split("?", 1)[0]  # a mirror has no use for a signed query
        if target.lower().startswith(("http://", "https://")):
            return Mirror(prefix, target, target.rstrip("/") + "/" + rest.lstrip("/"), None)
        relative = urllib.parse.unquote(rest).lstrip("/")
        if "\x00" in relative or ".." in relative.split("/"):
            return None
        path = posixpath.normpath(posixpath.join(target, relative))
        return Mirror(prefix, target, "file://" + urllib.parse.quote(path), target)
    return None


def mirror_read_problem(mirror: Mirror):
    """For file:// reads of a local mirror: (message, hint) if the path leaves the mirror."""
    def check(uri: str) -> tuple[str, str] | None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(uri).path)
        real, root = os.path.realpath(path), os.path.realpath(mirror.directory or "/nonexistent")
        if not under(root, real):
            return (f"the mirror file {path} leads outside the mirror directory {mirror.directory}",
                    "remove the symbolic link from the mirror")
        return None
    return check
