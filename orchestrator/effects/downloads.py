"""Fetches scriptUri/sourceUri files on the host, verifies sha256, caches them by content hash.

Every download is bounded: a size cap (AIB's 20 MB for File sources, a configured one for
scripts), a stall timeout (no byte for that long), a total deadline, and a cancel that ends
it at once. A response shorter than its Content-Length fails. Redirects go to http(s) only.
A cache entry is hashed again before it is used: a tampered entry is dropped and fetched again.
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import os
import socket
import ssl
import stat
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from orchestrator.config import DEFAULT_DOWNLOAD_SECONDS, DEFAULT_SCRIPT_MAX_MIB, DEFAULT_STALL_SECONDS, MIB
from orchestrator.effects.files import CHUNK, open_private, remove_stale_parts, sha256_file, temp_name
from orchestrator.core.redact import display_url  # noqa: F401  (where callers have found it)
from orchestrator.errors import Canceled, ChecksumMismatch, DownloadFailed

MAX_REDIRECTS = 5
USER_AGENT = "orchestrator"


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    stall_seconds: float
    deadline: float  # time.monotonic() by which the download must be complete
    cancel: threading.Event | None = None
    # file:// URIs are checked against the host policy again right before reading
    check_file: Callable[[str], tuple[str, str] | None] = lambda uri: None

    @classmethod
    def within(cls, seconds: float, max_bytes: int = DEFAULT_SCRIPT_MAX_MIB * MIB,
               stall_seconds: float = DEFAULT_STALL_SECONDS, **kw) -> "Limits":
        return cls(max_bytes=max_bytes, stall_seconds=stall_seconds, deadline=time.monotonic() + seconds, **kw)

    def stop_reason(self, last_progress: float | None = None) -> str | None:
        """Why the download must stop now ("canceled", "deadline", "stall"), or None."""
        if self.cancel is not None and self.cancel.is_set():
            return "canceled"
        now = time.monotonic()
        if now > self.deadline:
            return "deadline"
        if last_progress is not None and now - last_progress > self.stall_seconds:
            return "stall"
        return None


@dataclass(frozen=True)
class Fetched:
    url: str
    path: Path
    sha256: str
    size: int
    from_cache: bool
    note: str = ""  # e.g. a cache entry that failed its re-hash


class DownloadCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sha256").mkdir(mode=0o700, parents=True, exist_ok=True)
        self.removed_parts = remove_stale_parts(root / "sha256")

    def path_for(self, digest: str) -> Path:
        return self.root / "sha256" / digest

    def fetch(self, url: str, expected_sha256: str | None, where: str, limits: Limits | None = None) -> Fetched:
        """Returns the verified, cached file; raises DownloadFailed / ChecksumMismatch / Canceled."""
        limits = limits or Limits.within(DEFAULT_DOWNLOAD_SECONDS)
        note = ""
        if expected_sha256:
            cached = self.path_for(expected_sha256.lower())
            if cached.is_file():
                actual = sha256_file(cached)
                if actual == expected_sha256.lower():
                    return Fetched(url, cached, actual, cached.stat().st_size, True)
                cached.unlink(missing_ok=True)  # changed on disk since it was verified
                note = f"the cached copy no longer matched its sha256 (it hashed to {actual}): fetched again"
        tmp = temp_name(self.root / "sha256" / hashlib.sha256(url.encode()).hexdigest()[:16])
        tmp.unlink(missing_ok=True)
        try:
            digest, size = _stream(url, tmp, where, limits)
            if expected_sha256 and digest != expected_sha256.lower():
                raise ChecksumMismatch(display_url(url), expected_sha256.lower(), digest, where)
            final = self.path_for(digest)
            os.replace(tmp, final)
            return Fetched(url, final, digest, size, False, note)
        finally:
            tmp.unlink(missing_ok=True)


def _stream(url: str, dest: Path, where: str, limits: Limits) -> tuple[str, int]:
    shown = display_url(url)
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(open_private(dest), "wb") as out:
        for block in _blocks(url, shown, where, limits):
            size += len(block)
            if size > limits.max_bytes:
                raise _too_large(shown, where, limits.max_bytes, f"more than {size:,} bytes")
            digest.update(block)
            out.write(block)
    return digest.hexdigest(), size


def _too_large(shown: str, where: str, limit: int, size: str) -> DownloadFailed:
    return DownloadFailed(f"{shown} ({where}) is {size}; the limit is {limit:,} bytes ({limit / 2**20:.0f} MiB)",
                          hint="File customizer sources are at most 20 MiB (AIB's limit); scripts at most "
                               "[downloads] script_max_mib of the configuration. Fetch large files from a Shell step")


def _blocks(url: str, shown: str, where: str, limits: Limits) -> Iterator[bytes]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        yield from _file_blocks(url, shown, where, limits)
    elif scheme in ("http", "https"):
        yield from _http_blocks(url, where, limits)
    else:
        raise DownloadFailed(f"cannot download {shown} ({where}): unsupported scheme {parts.scheme!r}",
                             hint="use http, https or file")


def _file_blocks(url: str, shown: str, where: str, limits: Limits) -> Iterator[bytes]:
    refused = limits.check_file(url)
    if refused:
        raise DownloadFailed(f"refusing to read {shown} ({where}): {refused[0]}", hint=refused[1])
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DownloadFailed(f"cannot read {shown} ({where}): no such file {path}",
                             hint="file:// URIs name a file on this build host") from None
    except OSError as exc:
        raise DownloadFailed(f"cannot read {shown} ({where}): {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise DownloadFailed(f"cannot read {shown} ({where}): not a regular file",
                                 hint="name a file, not a device, FIFO or directory")
        if info.st_size > limits.max_bytes:
            raise _too_large(shown, where, limits.max_bytes, f"{info.st_size:,} bytes")
        while block := handle.read(CHUNK):
            reason = limits.stop_reason()
            if reason:
                raise _stopped(reason, shown, where, limits)
            yield block


def _stopped(reason: str, shown: str, where: str, limits: Limits) -> Exception:
    """The error for a download stopped by Limits.stop_reason."""
    if reason == "canceled":
        return Canceled(f"the build was canceled while fetching {shown} ({where})")
    if reason == "deadline":
        return DownloadFailed(f"downloading {shown} ({where}) did not finish in time",
                              hint="the downloads of a build share a deadline within buildTimeoutInMinutes "
                                   "([downloads] total_timeout_seconds of the configuration)")
    return DownloadFailed(f"downloading {shown} ({where}) stalled: no data for {limits.stall_seconds:g} s",
                          hint="check the server; [downloads] stall_timeout_seconds of the configuration "
                               "sets how long a download may send nothing")


class _Watchdog:
    """Closes the connection the moment the build is canceled, the deadline passes or no byte
    has arrived for the stall timeout: a blocked read returns at once instead of hanging."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.sock: socket.socket | None = None
        self.last_progress = time.monotonic()
        self.reason: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(0.1):
            self.reason = self.limits.stop_reason(self.last_progress)
            if self.reason:
                self._close()
                return

    def _close(self) -> None:
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _http_blocks(url: str, where: str, limits: Limits) -> Iterator[bytes]:
    watchdog = _Watchdog(limits)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            shown = display_url(url)
            try:
                conn, response = _request(url, limits, watchdog)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise _failure(watchdog, shown, where, limits, exc) from None
            try:
                if response.status in (301, 302, 303, 307, 308):
                    location = response.getheader("Location") or ""
                    target = urllib.parse.urljoin(url, location)
                    if urllib.parse.urlsplit(target).scheme.lower() not in ("http", "https"):
                        raise DownloadFailed(
                            f"{shown} ({where}) redirects to a {urllib.parse.urlsplit(target).scheme or 'relative'!s} "
                            "URL: redirects are followed to http and https only",
                            hint="point the template at the final http(s) URL")
                    url = target
                    continue
                if response.status != 200:
                    raise DownloadFailed(f"cannot download {shown} ({where}): HTTP {response.status} {response.reason}",
                                         hint="check the URL; the server answered with an error")
                yield from _body(response, shown, where, limits, watchdog)
                return
            finally:
                conn.close()
        raise DownloadFailed(f"{display_url(url)} ({where}) redirects more than {MAX_REDIRECTS} times",
                             hint="point the template at the final URL")
    finally:
        watchdog.stop()


def _request(url: str, limits: Limits, watchdog: _Watchdog):
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    if not host:
        raise ValueError("the URL names no host")
    timeout = max(0.5, limits.stall_seconds)
    if parts.scheme.lower() == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, parts.port, timeout=timeout, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    try:
        conn.connect()
        watchdog.sock = conn.sock
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if parts.username is not None:  # user:password@ in the URL: HTTP basic authentication
            pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        watchdog.last_progress = time.monotonic()
        return conn, response
    except BaseException:
        conn.close()
        raise


def _body(response: http.client.HTTPResponse, shown: str, where: str, limits: Limits,
          watchdog: _Watchdog) -> Iterator[bytes]:
    announced = response.getheader("Content-Length")
    expected = int(announced) if announced and announced.strip().isdigit() else None
    if expected is not None and expected > limits.max_bytes:
        raise _too_large(shown, where, limits.max_bytes, f"{expected:,} bytes (Content-Length)")
    received = 0
    while True:
        try:
            block = response.read1(CHUNK) if hasattr(response, "read1") else response.read(CHUNK)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise _failure(watchdog, shown, where, limits, exc) from None
        if watchdog.reason:
            raise _failure(watchdog, shown, where, limits, None)
        if not block:
            break
        watchdog.last_progress = time.monotonic()
        received += len(block)
        yield block
    if expected is not None and received != expected:
        raise DownloadFailed(f"{shown} ({where}) ended after {received:,} of the {expected:,} bytes it announced",
                             hint="the server or the connection broke off; try again")


def _failure(watchdog: _Watchdog, shown: str, where: str, limits: Limits,
             exc: BaseException | None) -> Exception:
    if watchdog.reason:
        return _stopped(watchdog.reason, shown, where, limits)
    if isinstance(exc, (socket.timeout, TimeoutError)):  # the socket's own timeout: a stall too
        return _stopped("stall", shown, where, limits)
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return DownloadFailed(f"cannot download {shown} ({where}): {reason}",
                          hint="check the URL and that this host can reach it")
