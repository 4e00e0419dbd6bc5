"""Base images between a fleet's hosts by sha256: real image servers on 127.0.0.1 (the worker's
own ImageServer), real transfers; and the build's phase that fetches a base image its host
lacks, against a real PostgreSQL where the hosts say where they serve. The whole path, two
workers and a real build on the fetched image, is in test_fleet_e2e.py."""
from __future__ import annotations

import hashlib
import http.client
import os
import threading
import time
from pathlib import Path

import pytest

from conftest import fleet_config
from orchestrator.core.fleet import Host
from orchestrator.effects.image_transfer import ImageServer, fetch_image, image_file
from orchestrator.errors import Canceled, SourceNotFound

DATA = bytes(range(256)) * 12289 + b"end"  # more than one chunk; the same in every xdist worker (test ids)
SHA = hashlib.sha256(DATA).hexdigest()


def _host(name: str, server: ImageServer | None) -> Host:
    return Host(name, ("linux",), 2, 4096, time.time(), f"http://127.0.0.1:{server.port}" if server else None)


def _holding(tmp_path: Path, name: str, data: bytes = DATA) -> Path:
    images = tmp_path / name / "images"
    images.mkdir(parents=True)
    image_file(images, SHA).write_bytes(data)
    return images


def test_an_image_held_by_one_host_is_fetched_and_verified_by_another(tmp_path):
    here = tmp_path / "here"
    here.mkdir()
    said: list[str] = []
    with ImageServer(_holding(tmp_path, "w1"), ("127.0.0.1", 0)) as server:
        got = fetch_image(SHA, image_file(here, SHA), [_host("w1", server)], "w2", threading.Event(), said.append)
    assert got == "w1"
    assert image_file(here, SHA).read_bytes() == DATA
    assert os.listdir(here) == [f"{SHA}.qcow2"]  # no partial left
    assert any("fetched from host w1 and verified" in line for line in said)


def test_other_bytes_under_a_digest_are_discarded_and_the_next_host_asked(tmp_path):
    here = tmp_path / "here"
    here.mkdir()
    said: list[str] = []
    with ImageServer(_holding(tmp_path, "bad", DATA[:-1] + b"X"), ("127.0.0.1", 0)) as bad, \
            ImageServer(_holding(tmp_path, "good"), ("127.0.0.1", 0)) as good:
        hosts = [_host("bad", bad), _host("good", good)]
        assert fetch_image(SHA, image_file(here, SHA), hosts, "me", threading.Event(), said.append) == "good"
        assert image_file(here, SHA).read_bytes() == DATA
        image_file(here, SHA).unlink()
        with pytest.raises(SourceNotFound) as err:  # the bad one alone
            fetch_image(SHA, image_file(here, SHA), hosts[:1], "me", threading.Event(), said.append)
    assert "bad: served" in err.value.message and "discarded" in err.value.message
    assert os.listdir(here) == []  # never kept under the digest, no partial left


def test_no_host_that_serves_the_image_is_a_clear_error(tmp_path):
    with ImageServer(tmp_path, ("127.0.0.1", 0)) as empty:  # serves, holds nothing
        gone = Host("gone", ("linux",), 2, 4096, 0.0, "http://127.0.0.1:9")  # heartbeat long stale
        with pytest.raises(SourceNotFound) as err:
            fetch_image(SHA, tmp_path / "x.qcow2", [_host("empty", empty), gone, _host("quiet", None)], "me",
                        threading.Event(), lambda line: None)
    assert "empty: does not hold it" in err.value.message and "gone" not in err.value.message
    assert "serve_images" in err.value.hint
    with pytest.raises(SourceNotFound, match="no live host of the fleet serves images"):
        fetch_image(SHA, tmp_path / "x.qcow2", [_host("quiet", None)], "me", threading.Event(), lambda line: None)


def test_the_image_server_listens_on_ipv6_too(tmp_path):
    here = tmp_path / "here"
    here.mkdir()
    try:
        server = ImageServer(_holding(tmp_path, "w1"), ("::1", 0))
    except OSError as exc:  # a host without IPv6 loopback
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with server:
        host = Host("w1", ("linux",), 2, 4096, time.time(), f"http://[::1]:{server.port}")
        assert fetch_image(SHA, image_file(here, SHA), [host], "w2", threading.Event(), lambda line: None) == "w1"
    assert image_file(here, SHA).read_bytes() == DATA


def test_a_canceled_build_stops_fetching_and_keeps_nothing(tmp_path):
    here = tmp_path / "here"
    here.mkdir()
    cancel = threading.Event()
    with ImageServer(_holding(tmp_path, "w1"), ("127.0.0.1", 0)) as server:
        with pytest.raises(Canceled):
            fetch_image(SHA, image_file(here, SHA), [_host("w1", server)], "w2", cancel,
                        lambda line: cancel.set())  # canceled as the transfer starts
    assert os.listdir(here) == []


@pytest.mark.parametrize("path", ["/", "/images/", f"/images/{SHA}.qcow2", f"/images/../{SHA}",
                                  f"/images/{SHA.upper()}", "/etc/passwd"])
def test_the_image_server_serves_images_by_digest_and_nothing_else(tmp_path, path):
    with ImageServer(_holding(tmp_path, "w1"), ("127.0.0.1", 0)) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("GET", path)
        assert connection.getresponse().status == 404
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("HEAD", f"/images/{SHA}")
        response = connection.getresponse()
        assert response.status == 200 and int(response.headers["Content-Length"]) == len(DATA)


def test_a_fleet_build_fetches_the_base_image_its_host_lacks(tmp_path, postgresql):
    """The build's phase: the catalog (the fleet's, in its database) names the image by digest;
    this host's copy is missing, the host that imported it serves it."""
    from orchestrator.core.model import PlatformImageSource
    from orchestrator.effects import fleet_state
    from orchestrator.effects.catalog import Catalog
    from orchestrator.effects.runlog import RunLog
    from orchestrator.effects.state import StateStore
    from orchestrator.pipeline.source_fetch import ensure_source
    from orchestrator.pipeline.sources import PlatformImageResolver

    database = postgresql.create_database("img" + os.urandom(4).hex())
    w1 = fleet_config(tmp_path / "w1", database, host="w1", serve_images="127.0.0.1:0")
    w2 = fleet_config(tmp_path / "w2", database, host="w2")
    source = tmp_path / "base.qcow2"
    _qcow2(source)
    state = StateStore.for_config(w1)
    record = Catalog(state, w1.images_dir, shared=True).import_image(source, "Debian", "debian-12", "12", "1.0.0")
    wanted = PlatformImageSource(publisher="Debian", offer="debian-12", sku="12", version="latest")
    resolved = PlatformImageResolver(w2, StateStore.for_config(w2)).resolve(wanted)
    assert resolved.path == str(image_file(w2.images_dir, record.sha256)) and not Path(resolved.path).exists()

    class Plan:  # what the phase reads of a plan
        source = resolved

    log_path = tmp_path / "customization.log"
    killed = w2.images_dir / f".{record.sha256}.qcow2.part-999999999"  # a fetch whose process is gone
    killed.write_bytes(b"half")
    with ImageServer(w1.images_dir, ("127.0.0.1", 0)) as server:
        fleet_state.register_host(state, "w1", ("linux",), 2, 4096, 1, f"http://127.0.0.1:{server.port}")
        log = RunLog(log_path)
        ensure_source(Plan, w2, StateStore.for_config(w2), log, threading.Event())
        ensure_source(Plan, w2, StateStore.for_config(w2), log, threading.Event())  # here now: nothing to do
        log.close()
    assert hashlib.sha256(Path(resolved.path).read_bytes()).hexdigest() == record.sha256
    assert log_path.read_text().count("fetched from host w1 and verified") == 1
    assert not killed.exists() and f"removed {killed.name}" in log_path.read_text()


def _qcow2(path: Path) -> None:
    import subprocess

    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
