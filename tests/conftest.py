"""Shared fixtures: a data home per test, the real base image, a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import tempfile
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


@pytest.fixture(scope="session")
def postgresql(tmp_path_factory):
    """A PostgreSQL cluster of this test session's own (Debian's postgresql, on 127.0.0.1)."""
    from fleet_services import postgresql_available, start_postgresql

    if not postgresql_available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: scripts/test-services.sh installs it", pytrace=False)
        pytest.skip("PostgreSQL is not installed (scripts/test-services.sh installs it)")
    # not under pytest's temporary directory: it is root's alone, and PostgreSQL runs as postgres
    base = Path(tempfile.mkdtemp(prefix="orchestrator-test-pg-"))
    cluster = start_postgresql(base)
    yield cluster
    cluster.stop()
    shutil.rmtree(base, ignore_errors=True)


def fleet_config(home: Path, database_url: str, host: str = "test-host", **fields) -> Config:
    """A data home of one fleet host whose state is in `database_url` (the broker URL names
    nothing that listens unless a test starts one)."""
    from orchestrator.config import FleetConfig

    broker = fields.pop("broker_url", "amqp://orchestrator:not-used@127.0.0.1:9/none")
    labels = tuple(fields.pop("labels", ("linux",)))
    serve = fields.pop("serve_images", None)  # "127.0.0.1:0": this host serves its base images
    fleet = FleetConfig(broker, database_url, host, labels,
                        (serve.rsplit(":", 1)[0], int(serve.rsplit(":", 1)[1])) if serve else None)
    home.mkdir(parents=True, exist_ok=True)
    file = home / "config.toml"  # the CLI (`--home`) reads the same
    file.write_text(f'[fleet]\nbroker = "{broker}"\ndatabase = "{database_url}"\nhost = "{host}"\n'
                    f'labels = {list(labels)!r}\n'.replace("'", '"') + (f'serve_images = "{serve}"\n' if serve else ""))
    file.chmod(0o600)
    return Config(home=home, accelerator=os.environ.get("ORCHESTRATOR_ACCELERATOR", "auto"), fleet=fleet,
                  config_file=file, **fields).ensure()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_config(request, home: Path) -> Config:
    """A data home on each state backend: SQLite under it, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return Config(home=home, accelerator=os.environ.get("ORCHESTRATOR_ACCELERATOR", "auto")).ensure()
    cluster = request.getfixturevalue("postgresql")
    return fleet_config(home, cluster.create_database("t" + os.urandom(6).hex()))


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
