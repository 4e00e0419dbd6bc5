"""Air-gapped mirrors: a URL under a configured prefix is fetched from a local directory or a
local HTTP server; sha256Checksum is still verified; what cannot be fetched says how to mirror it."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time

import pytest

from orchestrator.config import load_config
from orchestrator.core.plan import ResolvedSource, make_plan
from orchestrator.core.template import load_template
from orchestrator.effects.downloads import DownloadCache
from orchestrator.effects.hostpolicy import HostPolicy
from orchestrator.effects.mirrors import mirror_for
from orchestrator.effects.runlog import RunLog
from orchestrator.errors import ChecksumMismatch, DownloadFailed, UsageError
from orchestrator.pipeline.fetch import fetch_all
from tests.helpers import linux_template

PUBLIC = "https://raw.githubusercontent.com/Azure/azvmimagebuilder/main/quickquickstarts/customizeScript.sh"
SCRIPT = b"#!/bin/sh\necho mirrored | sudo tee /etc/mirrored.txt\n"


def _plan(url: str, sha: str | None):
    template = load_template(linux_template(customize=[
        {"type": "Shell", "name": "fromGithub", "scriptUri": url, **({"sha256Checksum": sha} if sha else {})}]))
    return make_plan(template, ResolvedSource("x", "/x", "qcow2", 2**20, ""), "mirror-test")


def _fetch(config, plan, tmp_path):
    log = RunLog(tmp_path / "log")
    try:
        return fetch_all(plan, DownloadCache(config.cache_dir), config, HostPolicy.of(config, None), log,
                         threading.Event(), time.monotonic() + 60), (tmp_path / "log").read_text()
    finally:
        log.close()


def test_a_directory_mirror_serves_a_public_url_and_the_checksum_still_counts(config, tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "Azure/azvmimagebuilder/main/quickquickstarts").mkdir(parents=True)
    (mirror / "Azure/azvmimagebuilder/main/quickquickstarts/customizeScript.sh").write_bytes(SCRIPT)
    mirrored = dataclasses.replace(config, mirrors=(("https://raw.githubusercontent.com/", str(mirror)),))
    fetched, log = _fetch(mirrored, _plan(PUBLIC, hashlib.sha256(SCRIPT).hexdigest()), tmp_path)
    assert open(fetched.paths[PUBLIC], "rb").read() == SCRIPT
    assert f"fetched {PUBLIC} from mirror {mirror}" in log and "sha256 verified" in log
    with pytest.raises(ChecksumMismatch):
        _fetch(mirrored, _plan(PUBLIC, "0" * 64), tmp_path)


def test_an_http_mirror_and_what_a_mirror_may_not_do(config, tmp_path, http_root):
    root, url = http_root
    (root / "gh/Azure/azvmimagebuilder/main/quickquickstarts").mkdir(parents=True)
    (root / "gh/Azure/azvmimagebuilder/main/quickquickstarts/customizeScript.sh").write_bytes(SCRIPT)
    mirrored = dataclasses.replace(config, mirrors=(("https://raw.githubusercontent.com/", f"{url}/gh/"),))
    fetched, log = _fetch(mirrored, _plan(PUBLIC, None), tmp_path)
    assert open(fetched.paths[PUBLIC], "rb").read() == SCRIPT and f"from mirror {url}/gh/" in log
    # a missing file names the URL, the customizer's JSON path and the mirror
    missing = PUBLIC.replace("customizeScript", "nothere")
    with pytest.raises(DownloadFailed) as failed:
        _fetch(mirrored, _plan(missing, None), tmp_path)
    assert missing in failed.value.message and "$.properties.customize[0].scriptUri" in failed.value.message
    assert "[mirrors]" in failed.value.hint
    # the rest of a URL cannot climb out of a directory mirror, symlinks included
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (tmp_path / "m").mkdir()
    os.symlink(outside, tmp_path / "m" / "link.sh")
    local = dataclasses.replace(config, mirrors=(("https://example.com/", str(tmp_path / "m")),))
    assert mirror_for("https://example.com/a/../../secret.txt", local.mirrors) is None
    with pytest.raises(DownloadFailed) as escaped:
        _fetch(local, _plan("https://example.com/link.sh", None), tmp_path)
    assert "outside the mirror directory" in escaped.value.message


def test_an_unmirrored_url_that_cannot_be_fetched_says_how_to_mirror_it(config, tmp_path):
    with pytest.raises(DownloadFailed) as failed:
        _fetch(config, _plan("http://127.0.0.1:9/s.sh", None), tmp_path)
    assert "$.properties.customize[0].scriptUri" in failed.value.message
    assert '[mirrors] "http://127.0.0.1:9/" = ' in failed.value.hint


def test_mirror_and_store_settings_are_read_and_bad_ones_refused(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[libvirt]\nuri = "qemu+ssh://builder@pool-host/system"\n[pools]\ndefault = "images"\n'
                    '[pools.regions]\nWestEurope = "fast"\n[mirrors]\n"https://raw.githubusercontent.com/" = "/srv/gh"\n'
                    '"https://raw.githubusercontent.com/Azure/" = "http://127.0.0.1:8080/azure/"\n')
    config = load_config(str(tmp_path / "home"), str(good))
    assert config.libvirt_uri == "qemu+ssh://builder@pool-host/system"
    assert config.pool_for("westeurope") == "fast" and config.pool_for("eastus") == "images"
    assert mirror_for("https://raw.githubusercontent.com/Azure/x.sh", config.mirrors).target.startswith("http://127")
    no_default = tmp_path / "nodefault.toml"
    no_default.write_text('[pools.regions]\neastus = "east"\n')
    assert load_config(str(tmp_path / "home"), str(no_default)).pool_for("westus") is None
    assert load_config(str(tmp_path / "home")).pool_for("anywhere") == "orchestrator"  # no file: one default pool
    for text, said in (('[libvirt]\nurl = "x"\n', "unknown setting 'url'"),
                       ('[libvirt]\nuri = "not a uri"\n', "libvirt.uri"),
                       ('[pools]\ndefault = "a/b"\n', "pools.default"),
                       ('[mirrors]\n"ftp://x/" = "/srv"\n', "not an http(s) URL prefix"),
                       ('[mirrors]\n"https://x/" = "relative/dir"\n', "neither an absolute directory"),
                       ('[pools.regions]\neastus = 3\n', "pools.regions.eastus"),
                       ('[pools]\ndefault = \n', "line 2")):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(UsageError) as refused:
            load_config(str(tmp_path / "home"), str(bad))
        assert said in refused.value.message, (text, refused.value.message)
