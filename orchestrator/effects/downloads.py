"""Fetches scriptUri/sourceUri files on the host, verifies sha256, caches them by content hash."""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from orchestrator.effects.files import CHUNK, temp_name
from orchestrator.errors import ChecksumMismatch, DownloadFailed

MAX_BYTES = 2 * 1024**3  # guard against endless responses
TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Fetched:
    url: str
    path: Path
    sha256: str
    size: int
    from_cache: bool


class DownloadCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sha256").mkdir(parents=True, exist_ok=True)

    def path_for(self, digest: str) -> Path:
        return self.root / "sha256" / digest

    def fetch(self, url: str, expected_sha256: str | None, where: str) -> Fetched:
        """Returns the verified, cached file; raises DownloadFailed / ChecksumMismatch."""
        if expected_sha256:
            cached = self.path_for(expected_sha256.lower())
            if cached.is_file():
                return Fetched(url, cached, expected_sha256.lower(), cached.stat().st_size, True)
        tmp = temp_name(self.root / "sha256" / hashlib.sha256(url.encode()).hexdigest()[:16])
        try:
            digest, size = _stream(url, tmp, where)
            if expected_sha256 and digest != expected_sha256.lower():
                raise ChecksumMismatch(url, expected_sha256.lower(), digest, where)
            final = self.path_for(digest)
            os.replace(tmp, final)
            return Fetched(url, final, digest, size, False)
        finally:
            tmp.unlink(missing_ok=True)


def _stream(url: str, dest: Path, where: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    try:
        with _open(url, where) as response, open(dest, "wb") as out:
            for block in iter(lambda: response.read(CHUNK), b""):
                size += len(block)
                if size > MAX_BYTES:
                    raise DownloadFailed(f"{url} ({where}) is larger than {MAX_BYTES // 1024**3} GiB",
                                         hint="customizer files are meant to be small; use a Shell step to fetch large ones")
                digest.update(block)
                out.write(block)
    except DownloadFailed:
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise DownloadFailed(f"cannot download {url} ({where}): {reason}",
                             hint="check the URL and that this host can reach it") from exc
    return digest.hexdigest(), size


def _open(url: str, where: str):
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = urllib.parse.unquote(parsed.path)
        if not os.path.isfile(path):
            raise DownloadFailed(f"cannot read {url} ({where}): no such file {path}",
                                 hint="file:// URIs name a file on this build host")
        return open(path, "rb")
    if parsed.scheme in ("http", "https"):
        request = urllib.request.Request(url, headers={"User-Agent": "orchestrator"})
        try:
            return urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)
        except urllib.error.HTTPError as exc:
            raise DownloadFailed(f"cannot download {url} ({where}): HTTP {exc.code} {exc.reason}",
                                 hint="check the URL; the server answered with an error") from exc
    raise DownloadFailed(f"cannot download {url} ({where}): unsupported scheme {parsed.scheme!r}",
                         hint="use http, https or file")


