"""Shared fixtures: a data home per test, the real base image, a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path
from typing import Iterator

import pytest

from orchestrator.config import Config, default_home
from orchestrator.effects.catalog import version_key
from orchestrator.effects.state import StateStore

BASE = ("Debian", "debian-12", "12")

# The deploy proof boots every finished image once more (about a minute under TCG): the tests
# of other paths build without it; tests/test_proof_e2e.py turns it on for its builds.
os.environ.setdefault("ORCHESTRATOR_PROOF", "off")


def _find_base_image() -> Path | None:
    """The Debian 12 base image that scripts/setup-host.sh imported into the default data home."""
    explicit = os.environ.get("ORCHESTRATOR_TEST_BASE_IMAGE")
    if explicit:
        return Path(explicit)
    db = default_home() / "state.db"
    if not db.exists():
        return None
    records = StateStore(db).images(*BASE)
    return Path(max(records, key=lambda r: version_key(r.version)).path) if records else None


@pytest.fixture(scope="session")
def base_image() -> Path:
    path = _find_base_image()
    if path is None or not path.is_file():
        pytest.fail("no Debian 12 base image is imported: run scripts/setup-host.sh (or scripts/test.sh), "
                    "or set ORCHESTRATOR_TEST_BASE_IMAGE", pytrace=False)
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def config(home: Path) -> Config:
    return Config(home=home, accelerator=os.environ.get("ORCHESTRATOR_ACCELERATOR", "auto")).ensure()


@pytest.fixture
def imported_home(config: Config, base_image: Path) -> Config:
    from orchestrator.effects.catalog import Catalog

    Catalog(StateStore(config.db_path), config.images_dir).import_image(base_image, *BASE, "2026.1.0")
    return config


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class QuietHTTPServer(http.server.ThreadingHTTPServer):
    """Says nothing when a client gives up mid-response (a download over its size limit does,
    on purpose); else the traceback lands in whichever test's captured stderr runs next."""

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(directory, base URL) of a real HTTP server on 127.0.0.1 serving that directory."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = QuietHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def packer() -> str:
    """The Packer binary. A missing Packer fails the test that needs it, in every module alike."""
    import shutil

    path = shutil.which("packer")
    if path is None:
        pytest.fail("packer is not installed: run scripts/setup-host.sh", pytrace=False)
    return path
