"""[fleet] in config.toml: this host is one build host of several, with the state in the
PostgreSQL database every host reaches and the runs on a RabbitMQ broker. Read here, apart from
the single-host settings (config.py), because its URLs carry passwords and are checked harder."""
from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from orchestrator.core.redact import scrub as without_password
from orchestrator.errors import UsageError

FLEET_KEYS = ("broker", "database", "host", "labels", "serve_images", "images_url")


@dataclass(frozen=True)
class FleetConfig:
    """[fleet]: broker = "amqp://USER:PASSWORD@HOST[:PORT]/VHOST", database =
    "postgresql://USER:PASSWORD@HOST[:PORT]/NAME", host (default: this machine's name),
    labels (what this host builds: linux, windows, kvm...; default ["linux"]); serve_images =
    "ADDRESS:PORT" (the worker serves its base images there, by sha256, to the hosts that lack
    one; default: it does not), images_url (how the others reach that server, e.g. behind a TLS
    proxy; default http://HOST:PORT). Capacity stays in [capacity]. The passwords are in the
    URLs: `redacted` shows them without."""

    broker_url: str
    database_url: str
    host: str
    labels: tuple[str, ...] = ("linux",)
    serve_images: tuple[str, int] | None = None
    images_url: str | None = None

    def redacted(self) -> dict[str, Any]:
        return {"broker": without_password(self.broker_url), "database": without_password(self.database_url),
                "host": self.host, "labels": list(self.labels),
                "serveImages": f"{self.serve_images[0]}:{self.serve_images[1]}" if self.serve_images else None,
                "imagesUrl": self.images_url}

    def advertised_images_url(self, port: int) -> str | None:
        """What the other hosts fetch this host's images from (`port`: the one it listens on)."""
        if self.serve_images is None:
            return None
        if self.images_url:
            return self.images_url.rstrip("/")
        address = self.serve_images[0]
        reachable = self.host if address in ("", "0.0.0.0", "::") else address
        return f"http://{f'[{reachable}]' if ':' in reachable else reachable}:{port}"


_HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_LISTEN_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]*)):(?P<port>\d{1,5})$")


def read_fleet(file: Path, values: dict[str, Any]) -> FleetConfig:
    unknown = set(values) - set(FLEET_KEYS)
    if unknown:
        raise UsageError(f"{file}: unknown setting {sorted(unknown)[0]!r} in [fleet]",
                         hint=f"[fleet] takes {', '.join(FLEET_KEYS)}")
    urls = {key: _credentialed_url(file, key, values.get(key), schemes, example) for key, schemes, example in (
        ("broker", ("amqp", "amqps"), "amqp://orchestrator:PASSWORD@control:5672/builds"),
        ("database", ("postgresql", "postgres"), "postgresql://orchestrator:PASSWORD@control:5432/orchestrator"))}
    host = values.get("host", socket.gethostname().split(".")[0])
    if not isinstance(host, str) or not _HOST_RE.match(host):
        raise UsageError(f"{file}: fleet.host = {host!r} is not a host name (letters, digits, '.', '-', '_')")
    labels = values.get("labels", ["linux"])
    if (not isinstance(labels, list) or not labels
            or not all(isinstance(label, str) and _LABEL_RE.match(label) for label in labels)):
        raise UsageError(f"{file}: fleet.labels = {labels!r} is not a list of labels",
                         hint='e.g. labels = ["linux", "kvm"] (lower-case letters, digits, "-", "_")')
    serve = _listen(file, values.get("serve_images"))
    images_url = values.get("images_url")
    if images_url is not None:
        if serve is None:
            raise UsageError(f"{file}: fleet.images_url without fleet.serve_images",
                             hint='images_url says how others reach this host\'s image server: set serve_images = '
                                  '"0.0.0.0:8470" too')
        if not isinstance(images_url, str) or not re.match(r"^https?://[^\s/@]+(/[^\s@]*)?$", images_url):
            raise UsageError(f"{file}: fleet.images_url = {images_url!r} is not an http(s) URL without credentials",
                             hint='e.g. images_url = "https://build-01.example:8470"')
    if file.exists() and file.stat().st_mode & 0o077:
        raise UsageError(f"{file} holds the fleet's passwords and others may read it",
                         hint=f"chmod 600 {file}")
    return FleetConfig(urls["broker"], urls["database"], host, tuple(dict.fromkeys(labels)), serve, images_url)


def _credentialed_url(file: Path, key: str, value: Any, schemes: tuple[str, ...], example: str) -> str:
    if not isinstance(value, str) or not value:
        raise UsageError(f"{file}: [fleet] needs {key} = \"{example}\"",
                         hint="without [fleet] this host builds alone (SQLite and its own queue)")
    shown = without_password(value)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise UsageError(f"{file}: fleet.{key} = {shown!r} is not a URL", hint=f"e.g. {example}") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise UsageError(f"{file}: fleet.{key} = {shown!r} is not a {' or '.join(schemes)}:// URL with a host",
                         hint=f"e.g. {example}")
    if not parts.username or not parts.password:
        raise UsageError(f"{file}: fleet.{key} = {shown!r} has no user and password",
                         hint=f"the fleet's {key} needs credentials of its own (e.g. {example})")
    if parts.username == "guest" or parts.password == "guest":
        raise UsageError(f"{file}: fleet.{key} = {shown!r} uses the guest account",
                         hint="make a user of the fleet's own (rabbitmqctl add_user; CREATE ROLE ... PASSWORD)")
    return value


def _listen(file: Path, value: Any) -> tuple[str, int] | None:
    if value is None:
        return None
    match = _LISTEN_RE.match(value) if isinstance(value, str) else None
    if not match or int(match["port"]) > 65535:
        raise UsageError(f"{file}: fleet.serve_images = {value!r} is not ADDRESS:PORT",
                         hint='e.g. serve_images = "0.0.0.0:8470" (port 0: any free port)')
    return (match["v6"] or match["host"] or "0.0.0.0", int(match["port"]))
