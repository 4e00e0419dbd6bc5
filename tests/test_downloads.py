"""Downloads against a real HTTP server on 127.0.0.1: verification, caching, clear errors."""
from __future__ import annotations

import hashlib

import pytest

from orchestrator.effects.downloads import DownloadCache
from orchestrator.errors import ChecksumMismatch, DownloadFailed, ExitCode


def test_fetch_verifies_and_caches_by_hash(tmp_path, http_root):
    root, url = http_root
    (root / "s.sh").write_bytes(b"echo hi\n")
    digest = hashlib.sha256(b"echo hi\n").hexdigest()
    cache = DownloadCache(tmp_path / "cache")
    first = cache.fetch(f"{url}/s.sh", digest, "test")
    assert first.path.read_bytes() == b"echo hi\n" and first.sha256 == digest and not first.from_cache
    (root / "s.sh").unlink()  # a verified file is served from the cache without the network
    again = cache.fetch(f"{url}/s.sh", digest.upper(), "test")
    assert again.from_cache and again.path == first.path


def test_checksum_mismatch_shows_both_hashes_and_keeps_nothing(tmp_path, http_root):
    root, url = http_root
    (root / "s.sh").write_bytes(b"tampered\n")
    cache = DownloadCache(tmp_path / "cache")
    expected = "0" * 64
    with pytest.raises(ChecksumMismatch) as err:
        cache.fetch(f"{url}/s.sh", expected, "customizer 'x'")
    actual = hashlib.sha256(b"tampered\n").hexdigest()
    assert expected in err.value.message and actual in err.value.message
    assert err.value.exit_code == ExitCode.DOWNLOAD_FAILED
    assert list((tmp_path / "cache" / "sha256").iterdir()) == []


def test_http_error_is_clear(tmp_path, http_root):
    _, url = http_root
    with pytest.raises(DownloadFailed, match="HTTP 404"):
        DownloadCache(tmp_path / "c").fetch(f"{url}/missing.sh", None, "test")


def test_unreachable_host_is_clear(tmp_path):
    with pytest.raises(DownloadFailed, match="cannot download http://127.0.0.1:9/"):
        DownloadCache(tmp_path / "c").fetch("http://127.0.0.1:9/x", None, "test")


def test_file_uri(tmp_path):
    src = tmp_path / "local file.txt"
    src.write_text("data")
    fetched = DownloadCache(tmp_path / "c").fetch(src.as_uri(), None, "test")
    assert fetched.path.read_text() == "data"
    with pytest.raises(DownloadFailed, match="no such file"):
        DownloadCache(tmp_path / "c").fetch((tmp_path / "nope").as_uri(), None, "test")
