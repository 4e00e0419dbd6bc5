"""Base images between the hosts of a fleet, addressed by sha256.

A worker with `[fleet] serve_images` serves the files of its images/ directory (each named by its
digest) read-only over HTTP: `GET /images/<sha256>`, nothing else (no listing, no other path).
A host that lacks a run's base image fetches it from a live host that serves it, hashes it
while it arrives, and keeps it only when the digest is the one the catalog records: written
under a temporary name, then renamed, so no host ever holds other bytes under a digest."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from orchestrator.core.fleet import Host
from orchestrator.effects.files import CHUNK, temp_name
from orchestrator.errors import Canceled, SourceNotFound

CONNECT_SECONDS = 30.0
_PATH_RE = re.compile(r"^/images/([0-9a-f]{64})$")


def image_file(images_dir: Path, sha256: str) -> Path:
    """Where a host keeps the base image of this digest (the catalog's import writes it there)."""
    return images_dir / f"{sha256}.qcow2"


class ImageServer:
    """This host's images/ on ADDRESS:PORT, in a thread of the worker's own."""

    def __init__(self, images_dir: Path, address: tuple[str, int]) -> None:
        handler = type("Handler", (_Handler,), {"images_dir": images_dir})
        server_class = _IPv6Server if ":" in address[0] else ThreadingHTTPServer
        self.server = server_class(address, handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="image server", daemon=True)

    def __enter__(self) -> "ImageServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    images_dir: Path
    protocol_version = "HTTP/1.1"

    def _file(self) -> Path | None:
        match = _PATH_RE.match(self.path)
        path = image_file(self.images_dir, match[1]) if match else None
        if path is None or not path.is_file():
            self.send_error(404, "no such image here")
            return None
        return path

    def do_HEAD(self) -> None:  # noqa: N802 - the name http.server calls
        path = self._file()
        if path is not None:
            self._headers(path.stat().st_size)

    def do_GET(self) -> None:  # noqa: N802
        path = self._file()
        if path is None:
            return
        with open(path, "rb") as handle:
            self._headers(os.fstat(handle.fileno()).st_size)
            try:
                shutil.copyfileobj(handle, self.wfile, CHUNK)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the fetching host went away: it keeps nothing it did not verify

    def _headers(self, size: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet: the fetcher logs
        pass


def fetch_image(sha256: str, dest: Path, hosts: list[Host], me: str, cancel: threading.Event,
                say: Callable[[str], None]) -> str:
    """Fetches the image of `sha256` into `dest` from the first live host that serves it; returns
    that host's name. Bytes of another digest are discarded and the next host is asked."""
    now = time.time()
    servers = [h for h in hosts if h.name != me and h.images_url and h.alive(now)]
    tried: list[str] = []
    for host in servers:
        if cancel.is_set():
            raise Canceled("the build was canceled while fetching its base image")
        url = f"{host.images_url}/images/{sha256}"
        try:
            size = _download(url, sha256, dest, cancel, lambda n: say(f"fetching base image sha256:{sha256[:12]} "
                                                                       f"({n / 2**20:.0f} MiB) from host {host.name} "
                                                                       f"({host.images_url})"))
        except _Refused as exc:
            tried.append(f"{host.name}: {exc}")
            continue
        say(f"base image sha256:{sha256[:12]} fetched from host {host.name} and verified ({size / 2**20:.0f} MiB)")
        return host.name
    why = "; ".join(tried) or "no live host of the fleet serves images ([fleet] serve_images)"
    raise SourceNotFound(f"no host of the fleet could give this host the base image sha256:{sha256} ({why})",
                         hint="set [fleet] serve_images on the worker that imported it, or share the data home's "
                              "images/ between the hosts (NFS)")


class _Refused(Exception):
    pass


def _download(url: str, sha256: str, dest: Path, cancel: threading.Event, starting: Callable[[int], None]) -> int:
    partial = temp_name(dest)  # one fetch of an image at a time on a host (source_fetch's lock)
    try:
        try:
            response = urllib.request.urlopen(url, timeout=CONNECT_SECONDS)  # noqa: S310 - http(s) by configuration
        except urllib.error.HTTPError as exc:
            raise _Refused("does not hold it" if exc.code == 404 else f"HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise _Refused(f"unreachable ({getattr(exc, 'reason', exc)})") from None
        with response, open(partial, "wb") as out:
            starting(int(response.headers.get("Content-Length") or 0))
            digest = hashlib.sha256()
            size = 0
            while chunk := _read(response):
                if cancel.is_set():
                    raise Canceled("the build was canceled while fetching its base image")
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != sha256:
            raise _Refused(f"served {size} bytes whose sha256 is {digest.hexdigest()}: discarded")
        os.replace(partial, dest)
        return size
    finally:
        partial.unlink(missing_ok=True)


def _read(response) -> bytes:
    try:
        return response.read(CHUNK)
    except OSError as exc:  # the serving host went away mid-transfer
        raise _Refused(f"the transfer broke off ({exc})") from None
