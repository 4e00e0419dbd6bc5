"""Names and paths from templates, made safe: pure string rules, no file system access.

A template is untrusted input (build hosts run as root, templates come from many teams), so
no name it carries may leave the directory it is meant for, and a path it names for writing
must not be a system location. What needs the file system (does the file exist, who wrote
it, where does a symlink lead) is checked in orchestrator.effects.hostpolicy.
"""
from __future__ import annotations

import posixpath
from urllib.parse import quote, unquote, urlsplit

# Where a template may never make the host write or read, whatever the configuration says.
SYSTEM_PREFIXES = ("/etc", "/usr", "/boot", "/dev", "/proc", "/sys", "/bin", "/sbin", "/lib", "/lib32",
                   "/lib64", "/libx32", "/run", "/var/lib", "/var/run", "/root/.ssh")
NO_READ_PREFIXES = ("/proc", "/sys", "/dev")
_SAFE_CHARS = "-_.+@=,~"


def safe_component(name: str) -> str:
    """A template-given name as one path component that is always the same for the same
    name, never empty, never `.` or `..`, and free of `/`, NUL and control characters:
    everything else is %-encoded (injective, so two names never share a directory)."""
    encoded = quote(name, safe=_SAFE_CHARS)
    if encoded in ("", ".", ".."):
        encoded = encoded.replace(".", "%2E") or "%00empty"
    if encoded.startswith("."):  # no hidden files or names that look like our temporaries
        encoded = "%2E" + encoded[1:]
    return encoded[:200]


def under(root: str, path: str) -> bool:
    """True if `path` (normalized, absolute) is `root` itself or inside it."""
    root, path = posixpath.normpath(root), posixpath.normpath(path)
    return path == root or path.startswith(root.rstrip("/") + "/")


def in_system_location(path: str, prefixes: tuple[str, ...] = SYSTEM_PREFIXES) -> bool:
    return path == "/" or any(under(prefix, path) for prefix in prefixes)


def has_control_chars(text: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)


def local_path_of_uri(uri: str, field: str) -> tuple[str | None, str | None]:
    """(absolute normalized path, None) for an absolute path or a `file:///abs` URI that a
    template names on this host, or (None, why not) for any other form."""
    if "\x00" in uri or has_control_chars(uri):
        return None, f"the {field} holds NUL or control characters"
    if uri.lower().startswith("file:"):
        parts = urlsplit(uri)
        if not uri.lower().startswith("file://"):
            return None, f"`{uri}` is a relative file: URI"
        if parts.netloc not in ("", "localhost"):
            return None, f"`{uri}` names host {parts.netloc!r}: a file:// URI here names this host only"
        if parts.query or parts.fragment:
            return None, f"`{uri}` has a query or fragment, which a file path cannot have"
        path = unquote(parts.path)
        if "\x00" in path or has_control_chars(path):
            return None, f"the {field} holds %-encoded NUL or control characters"
    else:
        path = uri
    if not path.startswith("/"):
        return None, f"`{uri}` is a relative path"
    if path.startswith("//"):
        return None, f"`{uri}` starts with //, which names a network location"
    if path != "/" and path.endswith("/"):
        return None, f"`{uri}` names a directory (it ends with /)"
    normalized = posixpath.normpath(path)
    if ".." in path.split("/"):
        return None, f"`{uri}` climbs with `..`"
    return normalized, None
