"""Real builds that prove and validate: Packer + QEMU (TCG here) from the imported Debian 12
base image, inVMValidations in the build VM, then the deploy proof booting the finished image
as a transient libvirt domain (a real libvirtd) checked over SSH with paramiko."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.core.proof import CHECKS, DOMAIN_PREFIX
from orchestrator.effects.state import StateStore
from orchestrator.errors import ExitCode
from tests.helpers import dumps, linux_template
from tests.store_helpers import libvirtd  # noqa: F401, F811  (a fixture)
from tests.vhd_inspect import Ext4Image

pytestmark = pytest.mark.integration

CHECK_NAMES = ["boot-and-login", *[c.name for c in CHECKS]]


def _cli(*args: str, home: Path, proof: str = "on") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ORCHESTRATOR_HOME=str(home), ORCHESTRATOR_PROOF=proof)
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, env=env,
                          timeout=1800)


def _domains(libvirt_uri: str) -> list[str]:
    listed = subprocess.run(["virsh", "-c", libvirt_uri, "list", "--all", "--name"], capture_output=True, text=True,
                            check=True).stdout
    return listed.split()  # other tests' proof VMs may be running meanwhile


def test_validated_and_proven_image_is_distributed_then_skipped(tmp_path, imported_home, http_root, libvirtd):
    root, url = http_root
    expected = b"release=2026.12\n"
    (root / "expected.txt").write_bytes(expected)
    data = linux_template(customize=[
        {"type": "Shell", "name": "release", "inline": ["echo release=2026.12 | sudo tee /etc/release-marker"]},
    ], validate={"inVMValidations": [
        {"type": "File", "name": "fetchExpected", "sourceUri": f"{url}/expected.txt", "destination": "/tmp/expected.txt",
         "sha256Checksum": hashlib.sha256(expected).hexdigest()},
        {"type": "Shell", "name": "markerMatches", "inline": ["cmp /tmp/expected.txt /etc/release-marker",
                                                             "echo validation-saw-the-marker"]},
    ]})
    path = tmp_path / "proven.json"
    path.write_text(dumps(data))
    home = imported_home.home
    result = _cli("build", "--json", str(path), home=home)
    assert result.returncode == 0, result.stdout + result.stderr
    built = json.loads(result.stdout)
    assert built["runState"] == "Succeeded"
    status = json.loads(_cli("status", "--json", built["runId"], home=home).stdout)
    proof = status["proof"]
    assert proof["status"] == "Passed", proof
    assert [c["name"] for c in proof["checks"]] == CHECK_NAMES and all(c["passed"] for c in proof["checks"])
    assert 0 < proof["bootSeconds"] < proof["totalSeconds"]
    log = Path(built["log"]).read_text()
    assert "[validation:markerMatches]" in log and "validation-saw-the-marker" in log
    assert "[proof] deploy proof passed" in log and "ok build-user-gone" in log
    shown = _cli("status", built["runId"], home=home).stdout
    assert "deploy proof: Passed" in shown and "ok     hostname:" in shown
    assert DOMAIN_PREFIX + built["runId"] not in _domains(libvirtd)  # gone, and left no definition
    [output] = built["runOutputs"]
    vhd = Path(output["properties"]["path"])
    image = Ext4Image(vhd)  # the proof booted an overlay: the artifact is still a sealed image
    assert image.read("/etc/machine-id") == b"" and not image.exists("/home/prover")
    assert image.read("/etc/release-marker") == expected

    planned = json.loads(_cli("plan", "--json", str(path), home=home).stdout)["nextRun"]
    assert planned["action"] == "skip" and planned["reusedRun"] == built["runId"], planned
    again = json.loads(_cli("build", "--json", str(path), home=home).stdout)
    assert again["reusedRun"] == built["runId"]
    # a changed validation is a changed fingerprint, and plan says which
    data["properties"]["validate"]["inVMValidations"][1]["inline"].append("true")
    path.write_text(dumps(data))
    planned = json.loads(_cli("plan", "--json", str(path), home=home).stdout)["nextRun"]
    assert planned["action"] == "build"
    assert any("validation 'markerMatches' changed" in reason for reason in planned["reasons"]), planned


def test_proof_fails_an_image_whose_sshd_cannot_start(tmp_path, imported_home, libvirtd):
    data = linux_template(customize=[
        {"type": "Shell", "name": "maskSshd", "inline": ["sudo systemctl mask ssh.service"]},
    ])
    path = tmp_path / "no-sshd.json"
    path.write_text(dumps(data))
    result = _cli("build", str(path), home=imported_home.home)
    assert result.returncode == ExitCode.PROOF_FAILED, result.stderr
    assert "the deploy proof failed, nothing was distributed: boot-and-login" in result.stderr
    assert "Traceback" not in result.stderr
    [run] = StateStore(imported_home.db_path).runs()
    assert run["run_state"] == "Failed" and run["run_sub_state"] == "Validating"
    proof = json.loads(run["proof"])
    assert proof["status"] == "Failed" and proof["checks"][0]["name"] == "boot-and-login"
    assert not proof["checks"][0]["passed"] and "sshd" in proof["checks"][0]["detail"]
    assert not list(imported_home.artifacts_dir.rglob("*.vhd"))
    assert (Path(run["log_path"]).parent / "proof-console.log").is_file()
    assert DOMAIN_PREFIX + run["id"] not in _domains(libvirtd)


def test_failing_validation_fails_the_run_with_its_output(tmp_path, imported_home):
    data = linux_template(customize=[{"type": "Shell", "name": "fine", "inline": ["true"]}], validate={
        "inVMValidations": [{"type": "Shell", "name": "needsNope", "inline": [
            "test -f /etc/nope || { echo 'check: /etc/nope is missing'; exit 4; }"]}]})
    path = tmp_path / "fails.json"
    path.write_text(dumps(data))
    result = _cli("build", str(path), home=imported_home.home, proof="off")
    assert result.returncode == ExitCode.VALIDATION_FAILED, result.stderr
    assert "validation 'needsNope' failed" in result.stderr
    [run] = StateStore(imported_home.db_path).runs()
    assert run["run_state"] == "Failed" and run["run_sub_state"] == "Validating"
    assert "check: /etc/nope is missing" in Path(run["log_path"]).read_text()
    assert not list(imported_home.artifacts_dir.rglob("*.vhd"))


def test_source_validation_only_with_continue_distribute_on_failure(tmp_path, imported_home):
    """sourceValidationOnly: no customizer, the validations run on the source as it is; one
    fails, continueDistributeOnFailure distributes anyway, and the run ends Failed (as AIB)."""
    data = linux_template(customize=None, validate={
        "sourceValidationOnly": True, "continueDistributeOnFailure": True, "inVMValidations": [
            {"type": "Shell", "name": "osRelease", "inline": ["grep -q bookworm /etc/os-release && echo os-ok"]},
            {"type": "Shell", "name": "wantsTooMuch", "inline": ["echo 'check: no /opt/app'; test -d /opt/app"]},
        ]})
    path = tmp_path / "source-only.json"
    path.write_text(dumps(data))
    result = _cli("build", str(path), home=imported_home.home, proof="off")
    assert result.returncode == ExitCode.VALIDATION_FAILED, result.stderr
    assert "continueDistributeOnFailure is true, so the outputs were distributed anyway" in result.stderr
    [run] = StateStore(imported_home.db_path).runs()
    assert run["run_state"] == "Failed"
    log = Path(run["log_path"]).read_text()
    assert "os-ok" in log and "check: no /opt/app" in log and "[customizer:" not in log
    assert "validation 'wantsTooMuch' failed (exit 1)" in log
    [output] = StateStore(imported_home.db_path).outputs(run["id"])
    assert output["properties"]["provisioningState"] == "Succeeded"
    vhd = Path(output["properties"]["path"])
    assert vhd.is_file() and Ext4Image(vhd).read("/etc/machine-id") == b""  # generalized all the same
