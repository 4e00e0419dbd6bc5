"""Provenance: every distributed artifact gets a signed in-toto statement (SLSA provenance v1),
and `orchestrate verify` accepts a fresh artifact and rejects a changed one, a changed
statement, another host's key and a missing statement. Real files, a real fixed VHD made by
qemu-img, real SQLite state, real keys; the CLI in-process (`main`) and once as a process."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.config import Config
from orchestrator.core.plan import BuildPlan, Download, ResolvedSource, Step, TargetPlan
from orchestrator.core.provenance import PAYLOAD_TYPE, PREDICATE_TYPE, read_statement
from orchestrator.core.redact import Redactor
from orchestrator.effects.runlog import RunLog
from orchestrator.effects.signing import _create, ensure_key, key_paths
from orchestrator.effects.state import StateStore
from orchestrator.errors import ExitCode
from orchestrator.pipeline.attest import attest_outputs

SECRET_PARAM = "s3cr3t-param-value"
SCRIPT_URL = "https://builder:hunter2pass@127.0.0.1:8443/scripts/setup.sh?sv=2022&sig=SASSECRET123&se=2030"
FILE_URL = f"https://127.0.0.1/files/{SECRET_PARAM}/page.html#frag"
SCRIPT_SHA = hashlib.sha256(b"echo hi\n").hexdigest()
FILE_SHA = hashlib.sha256(b"<p>x</p>\n").hexdigest()
RESOURCE_ID = "/subscriptions/0/resourceGroups/rg/providers/Microsoft.Compute/images/web"


def _vhd(path: Path) -> Path:
    """A real fixed VHD (4 MiB, Azure's shape) with some data in it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat=fixed,force_size", str(path), "4M"],
                   check=True)
    with open(path, "r+b") as handle:
        handle.seek(MIB)
        handle.write(b"built image bytes")
    return path


MIB = 1024 * 1024


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _plan(source: Path) -> BuildPlan:
    steps = (Step(1, "scriptStep", "Shell", "customize", download=Download(SCRIPT_URL, SCRIPT_SHA, "scriptStep",
                                                                           "$.properties.customize[0].scriptUri")),
             Step(2, "fileStep", "File", "customize", download=Download(FILE_URL, None, "fileStep",
                                                                        "$.properties.customize[1].sourceUri"),
                  destination="/tmp/page.html"))
    return BuildPlan(name="web", os_type="Linux", os_type_reason="test",
                     source=ResolvedSource("PlatformImage Debian:debian-12:12:latest", str(source), "qcow2", 4 * MIB,
                                           _sha(source), "12.0.1"),
                     cpus=2, memory_mib=2048, disk_size_mib=4, timeout_minutes=30, steps=steps,
                     targets=(TargetPlan("vhd", "VHD"),), vm_size="Standard_B2s", deprovision_command="x",
                     deprovision_override="y")


class Built:
    """One run with outputs as the distributors record them, attested."""

    def __init__(self, config: Config, tmp_path: Path, *, outputs: str = "vhd", attest: bool = True) -> None:
        self.config = config
        self.state = StateStore(config.db_path)
        tmp_path.mkdir(parents=True, exist_ok=True)
        source = tmp_path / "source.qcow2"
        source.write_bytes(b"source image bytes")
        self.plan = _plan(source)
        self.run_id = self.state.start_run("web", None, lambda rid: config.runs_dir / rid / "customization.log")
        self.log = RunLog(config.runs_dir / self.run_id / "customization.log", Redactor.of([SECRET_PARAM]))
        (config.runs_dir / self.run_id / "template.json").write_text('{"template": true}')
        self.vhd = _vhd(config.artifacts_dir / "web" / "vhd" / f"{self.run_id}.vhd")
        if "vhd" in outputs:
            self.state.set_output(self.run_id, "vhd", "VHD", "Succeeded", str(self.vhd), self.vhd.as_uri(), {
                "path": str(self.vhd), "sha256": _sha(self.vhd), "sizeBytes": 4 * MIB, "_stat": [1, 2, 3]})
        if "failed" in outputs:
            self.state.set_output(self.run_id, "broken", "VHD", "Failed")
        if "image" in outputs:
            self.volumes = []
            for pool in ("east", "west"):
                volume = tmp_path / "pools" / pool / "web-0123.qcow2"
                volume.parent.mkdir(parents=True)
                volume.write_bytes(b"published qcow2 bytes" * 100)
                self.volumes.append(volume)
            self.state.set_output(self.run_id, "image", "ManagedImage", "Succeeded", RESOURCE_ID,
                                  self.volumes[0].as_uri(), {
                                      "sha256": _sha(self.volumes[0]), "format": "qcow2", "_key": "k",
                                      "replicas": [{"region": r, "pool": r, "path": str(v)}
                                                   for r, v in zip(("east", "west"), self.volumes)]})
        self.written = attest_outputs(config, self.state, self.run_id, self.plan,
                                      {SCRIPT_URL: SCRIPT_SHA, FILE_URL: FILE_SHA}, None, self.log) if attest else {}

    def envelope(self, name: str = "vhd") -> dict:
        return json.loads(self.written[name].read_text())


def verify(capsys, config: Config, *args: str) -> tuple[int, dict]:
    code = main(["--home", str(config.home), "verify", *args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def _statement(envelope: dict) -> dict:
    return json.loads(base64.b64decode(envelope["payload"]))


@pytest.fixture(autouse=True)
def _qemu_img():
    if shutil.which("qemu-img") is None:
        pytest.fail("qemu-img is not installed: run scripts/setup-host.sh", pytrace=False)


# --- sign and verify -------------------------------------------------------------------------

def test_a_fresh_vhd_verifies_by_its_sidecar_and_by_its_run_record(tmp_path, config, capsys):
    built = Built(config, tmp_path)
    statement_path = config.home / "attestations" / built.run_id / "vhd.intoto.json"
    sidecar = Path(str(built.vhd) + ".intoto.json")
    assert built.written == {"vhd": statement_path}
    assert statement_path.read_text() == sidecar.read_text()
    [output] = built.state.outputs(built.run_id, internal=True)
    props = output["properties"]
    assert props["provenance"] == str(statement_path) and props["provenanceSidecar"] == str(sidecar)
    assert props["_stat"] == [1, 2, 3] and props["sha256"] == _sha(built.vhd)  # the rest as recorded
    assert f"provenance 'vhd': {statement_path} and {sidecar}" in built.log.path.read_text()

    code, report = verify(capsys, config, str(built.vhd))
    assert code == 0 and report["ok"] is True
    assert report["sha256"] == _sha(built.vhd) and report["foundBy"] == "sidecar"
    assert report["runId"] == built.run_id and report["runOutputName"] == "vhd"
    assert report["template"] == {"name": "web", "sha256": hashlib.sha256(b'{"template": true}').hexdigest()}
    assert report["subject"] == [{"name": str(built.vhd), "sha256": _sha(built.vhd)}]
    sidecar.unlink()  # without the sidecar the run's record names the statement
    code, report = verify(capsys, config, str(built.vhd))
    assert code == 0 and report["foundBy"] == "run output (path)" and report["statement"] == str(statement_path)
    main(["--home", str(config.home), "verify", str(built.vhd)])
    assert f"verified {built.vhd}" in capsys.readouterr().out


def test_the_statement_is_an_in_toto_slsa_provenance_of_the_build(tmp_path, config):
    built = Built(config, tmp_path)
    envelope = built.envelope()
    assert envelope["payloadType"] == PAYLOAD_TYPE and len(envelope["signatures"]) == 1
    data = _statement(envelope)
    assert data["_type"] == "https://in-toto.io/Statement/v1" and data["predicateType"] == PREDICATE_TYPE
    definition, details = data["predicate"]["buildDefinition"], data["predicate"]["runDetails"]
    assert definition["externalParameters"]["template"]["digest"]["sha256"] == \
        hashlib.sha256(b'{"template": true}').hexdigest()
    source, script, page = definition["resolvedDependencies"]
    assert source["name"] == "PlatformImage Debian:debian-12:12:latest"
    assert source["digest"] == {"sha256": built.plan.source.sha256}
    assert source["annotations"] == {"role": "sourceImage", "resolvedVersion": "12.0.1"}
    assert script["uri"] == "https://127.0.0.1:8443/scripts/setup.sh" and script["digest"] == {"sha256": SCRIPT_SHA}
    assert page["digest"] == {"sha256": FILE_SHA}  # the fetched file's sha256, though the template gave none
    assert details["metadata"]["invocationId"] == built.run_id
    assert details["builder"]["version"] == {"orchestrator": __import__("orchestrator").__version__}
    assert read_statement(base64.b64decode(envelope["payload"])).run_id == built.run_id


def test_secrets_in_urls_never_reach_the_statement(tmp_path, config):
    built = Built(config, tmp_path)
    files = [built.written["vhd"], Path(str(built.vhd) + ".intoto.json")]
    for text in [f.read_text() for f in files] + [json.dumps(_statement(built.envelope()))]:
        for secret in ("hunter2pass", "builder:", "SASSECRET123", "sig=", "sv=2022", SECRET_PARAM, "#frag"):
            assert secret not in text
    page = _statement(built.envelope())["predicate"]["buildDefinition"]["resolvedDependencies"][2]
    assert page["uri"] == "https://127.0.0.1/files/***/page.html"
    assert page["annotations"]["uriRedacted"]


def test_a_flipped_byte_in_the_artifact_is_rejected(tmp_path, config, capsys):
    built = Built(config, tmp_path)
    with open(built.vhd, "r+b") as handle:
        handle.seek(2 * MIB)  # a byte of the disk's zeros, size unchanged
        handle.write(b"\x01")
    code, report = verify(capsys, config, str(built.vhd))
    assert code == ExitCode.NOT_VERIFIED == 10
    assert report["error"]["kind"] == "DigestMismatch"
    assert "was changed after it was built" in report["error"]["message"] and report["error"]["hint"]
    Path(str(built.vhd) + ".intoto.json").unlink()  # found through the run's record: rejected the same
    code, report = verify(capsys, config, str(built.vhd))
    assert code == 10 and report["error"]["kind"] == "DigestMismatch"


def test_an_edited_statement_is_rejected(tmp_path, config, capsys):
    built = Built(config, tmp_path)
    sidecar = Path(str(built.vhd) + ".intoto.json")
    envelope = built.envelope()
    data = _statement(envelope)
    with open(built.vhd, "r+b") as handle:  # the artifact changed, and the statement edited to match it
        handle.seek(MIB)
        handle.write(b"BACKDOORED")
    data["subject"][0]["digest"]["sha256"] = _sha(built.vhd)
    forged = dict(envelope, payload=base64.b64encode(json.dumps(data).encode()).decode())
    sidecar.write_text(json.dumps(forged))
    code, report = verify(capsys, config, str(built.vhd))
    assert code == 10 and report["error"]["kind"] == "StatementInvalid"
    assert "changed after it was signed" in report["error"]["message"]

    sig = envelope["signatures"][0]["sig"]
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    bad_sig = dict(envelope, signatures=[dict(envelope["signatures"][0], sig=flipped)])
    sidecar.write_text(json.dumps(bad_sig))
    assert verify(capsys, config, str(built.vhd))[0] == 10
    sidecar.write_text(sidecar.read_text()[:-20])  # cut short: no JSON
    code, report = verify(capsys, config, str(built.vhd))
    assert code == 10 and "is not JSON" in report["error"]["message"]
    sidecar.write_text(json.dumps({"payload": "x"}))
    code, report = verify(capsys, config, str(built.vhd))
    assert code == 10 and "not a DSSE envelope" in report["error"]["message"]


def test_another_hosts_key_is_rejected(tmp_path, config, capsys):
    built = Built(config, tmp_path)
    other = Config(home=tmp_path / "other-host").ensure()
    other_key, _ = ensure_key(other)
    code, report = verify(capsys, config, str(built.vhd), "--key", str(other_key.public_path))
    assert code == 10 and report["error"]["kind"] == "StatementInvalid"
    assert f"not by the key it is checked with ({other_key.keyid})" in report["error"]["message"]
    # the same artifact attested by the other host: this host's key does not accept it
    Built(other, tmp_path / "b")
    shutil.copy(next((other.artifacts_dir / "web" / "vhd").glob("*.vhd.intoto.json")),
                str(built.vhd) + ".intoto.json")
    code, report = verify(capsys, config, str(built.vhd))
    assert code == 10 and "--key FILE" in report["error"]["hint"]
    # its own statement verifies with the other host's public key, as `keys show` prints it
    other_vhd = next((other.artifacts_dir / "web" / "vhd").glob("*.vhd"))
    assert main(["--home", str(other.home), "keys", "show"]) == 0
    pem = tmp_path / "other.pub"
    pem.write_text(capsys.readouterr().out)
    code, report = verify(capsys, config, str(other_vhd), "--key", str(pem))
    assert code == 0 and report["keyid"] == other_key.keyid


def test_a_missing_statement_is_its_own_error(tmp_path, config, capsys):
    ensure_key(config)
    loose = _vhd(tmp_path / "elsewhere" / "unknown.vhd")
    code, report = verify(capsys, config, str(loose))
    assert code == ExitCode.NO_PROVENANCE == 11 and report["error"]["kind"] == "StatementMissing"
    assert "unknown.vhd.intoto.json" in report["error"]["message"] and "--statement" in report["error"]["hint"]
    built = Built(config, tmp_path / "run", attest=False)  # recorded before provenance existed
    code, report = verify(capsys, config, str(built.vhd))
    assert code == 11 and "without one" in report["error"]["message"]
    code, report = verify(capsys, config, str(loose), "--statement", str(tmp_path / "nope.intoto.json"))
    assert code == 11 and "does not exist" in report["error"]["message"]


def test_unreadable_artifacts_and_no_key(tmp_path, config, capsys):
    code, report = verify(capsys, config, str(tmp_path / "missing.vhd"))
    assert code == 6 and report["error"]["kind"] == "SigningKeyProblem"  # nothing was ever signed here
    ensure_key(config)
    code, report = verify(capsys, config, str(tmp_path / "missing.vhd"))
    assert code == ExitCode.INVALID_INPUT and report["error"]["kind"] == "ArtifactUnreadable"
    code, report = verify(capsys, config, str(tmp_path))
    assert code == 2 and "not a regular file" in report["error"]["message"]
    code, report = verify(capsys, config, RESOURCE_ID)
    assert code == 2 and "no recorded run output" in report["error"]["message"]


def test_a_copy_elsewhere_is_found_by_its_sha256(tmp_path, config, capsys):
    built = Built(config, tmp_path)
    copy = tmp_path / "shipped" / "web.vhd"
    copy.parent.mkdir()
    shutil.copy(built.vhd, copy)
    code, report = verify(capsys, config, str(copy))
    assert code == 0 and report["foundBy"] == "run output (sha256)"


def test_managed_image_by_resource_id_and_by_pool_volume(tmp_path, config, capsys):
    built = Built(config, tmp_path, outputs="vhd,failed,image")
    assert set(built.written) == {"vhd", "image"}
    outputs = built.state.outputs(built.run_id)
    assert [o["name"] for o in outputs] == ["vhd", "broken", "image"]  # order and the failed one unchanged
    assert "provenance" not in outputs[1]["properties"] and outputs[1]["properties"]["provisioningState"] == "Failed"
    assert not list(config.home.rglob("pools/**/*.intoto.json"))  # nothing beside pool volumes
    code, report = verify(capsys, config, RESOURCE_ID.upper())
    assert code == 0 and report["files"] == [str(v) for v in built.volumes]
    assert report["foundBy"] == "run output (resource ID)"
    code, report = verify(capsys, config, str(built.volumes[1]))
    assert code == 0 and report["foundBy"] == "run output (path)"
    with open(built.volumes[1], "r+b") as handle:  # one replica changed: the image does not verify
        handle.write(b"X")
    code, report = verify(capsys, config, RESOURCE_ID)
    assert code == 10 and str(built.volumes[1]) in report["error"]["message"]


def test_the_verb_as_a_process(tmp_path, config):
    built = Built(config, tmp_path)
    env = dict(os.environ, ORCHESTRATOR_HOME=str(config.home))
    run = [sys.executable, "-m", "orchestrator", "verify", str(built.vhd)]
    ok = subprocess.run(run, capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0 and f"verified {built.vhd}" in ok.stdout
    with open(built.vhd, "r+b") as handle:
        handle.seek(3 * MIB)
        handle.write(b"\xff")
    bad = subprocess.run(run, capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 10 and "error: " in bad.stderr and "hint: " in bad.stderr
    assert "Traceback" not in bad.stderr


# --- the host key ------------------------------------------------------------------------------

def test_keys_init_is_idempotent_and_owner_only(config, capsys):
    assert main(["--home", str(config.home), "keys", "init", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["--home", str(config.home), "keys", "init", "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert first["created"] is True and second["created"] is False and first["keyid"] == second["keyid"]
    private, public = key_paths(config)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(private.parent.stat().st_mode) == 0o700
    assert public.read_text() == first["publicKeyPem"] and "PRIVATE" not in public.read_text()
    assert not [p for p in private.parent.iterdir() if p.name.startswith(".")]  # no temporaries left
    before = private.read_bytes()
    assert _create(private) is False and private.read_bytes() == before  # a second maker never replaces it
    os.chmod(private, 0o644)  # widened by someone: owner-only again before it is used
    ensure_key(config)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    private.write_text("not a key")
    assert main(["--home", str(config.home), "keys", "init"]) == ExitCode.ENVIRONMENT
    assert "move" in capsys.readouterr().err


def test_the_first_attestation_makes_the_key(tmp_path, config):
    assert not key_paths(config)[0].exists()
    built = Built(config, tmp_path)
    assert key_paths(config)[0].exists()
    assert "provenance: made this host's signing key" in built.log.path.read_text()
    keyid = built.envelope()["signatures"][0]["keyid"]
    assert keyid == ensure_key(config)[0].keyid
