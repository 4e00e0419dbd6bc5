"""The deploy proof's pieces (seed, domain XML, how each check is judged) and the build
fingerprint (what it is made of, what `plan` says changed), without booting anything. The real
boot is tests/test_proof_e2e.py."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

from orchestrator.core.fingerprint import changes, digest_of, fingerprint_parts
from orchestrator.core.plan import ResolvedSource, make_plan
from orchestrator.core.proof import CHECKS, PROOF_USER, ProofResult, ProofSpec, check_command, domain_xml, seed_files
from orchestrator.core.template import load_template
from orchestrator.effects.state import StateStore
from orchestrator.pipeline.reuse import next_run
from orchestrator.service.runs import Runs
from tests.helpers import linux_template
from tests.store_helpers import libvirtd  # noqa: F401, F811  (a fixture)

SPEC = ProofSpec(run_id="20261202-000000-abcd1234", hostname="proof-1a2b3c4d",
                 public_key="ssh-ed25519 AAAAnewkey orchestrator-proof", build_user="packer",
                 build_public_key="ssh-ed25519 AAAAbuildkey orchestrator-run", build_machine_id="f" * 32,
                 accelerator="tcg", cpus=2, memory_mib=2048, disk="/s/proof/overlay.qcow2", seed_iso="/s/proof/seed.iso",
                 console_log="/s/proof/console.log", ssh_port=40123, emulator="/usr/bin/qemu-system-x86_64")
JUDGE = {check.name: check for check in CHECKS}


def judge(name: str, status: int, output: str, spec: ProofSpec = SPEC) -> tuple[bool, str]:
    return JUDGE[name].judge(status, output, spec)


def test_the_seed_is_a_new_instance_with_a_new_user_and_hostname():
    files = seed_files(dataclasses.replace(SPEC, public_key="ssh-ed25519 AAAA x\nssh_pwauth: true"))
    meta, user = yaml.safe_load(files["meta-data"]), yaml.safe_load(files["user-data"])
    assert meta == {"instance-id": f"proof-{SPEC.run_id}", "local-hostname": SPEC.hostname}
    assert files["user-data"].startswith("#cloud-config\n")
    [account] = user["users"]
    assert account["name"] == PROOF_USER and account["ssh_authorized_keys"] == ["ssh-ed25519 AAAA x\nssh_pwauth: true"]
    assert user["ssh_pwauth"] is False  # a key comment cannot add a cloud-init key


def test_the_domain_boots_the_overlay_with_ssh_on_loopback_only():
    root = ET.fromstring(domain_xml(SPEC))
    assert root.get("type") == "qemu" and root.findtext("name") == "orchestrator-proof-" + SPEC.run_id
    disks = {d.get("device"): d.find("source").get("file") for d in root.iter("disk")}
    assert disks == {"disk": SPEC.disk, "cdrom": SPEC.seed_iso}
    args = [a.get("value") for a in root.iter("{http://libvirt.org/schemas/domain/qemu/1.0}arg")]
    assert f"user,id=proofnet,hostfwd=tcp:127.0.0.1:{SPEC.ssh_port}-:22" in args
    label = root.find("seclabel")
    assert label.get("relabel") == "no"  # the backing chain's owners stay as they are
    assert ET.fromstring(domain_xml(dataclasses.replace(SPEC, accelerator="kvm"))).get("type") == "kvm"


def test_each_check_passes_a_good_vm_and_fails_a_bad_one():
    boot = 1_800_000_000
    assert judge("hostname", 0, "proof-1a2b3c4d\n")[0]
    assert not judge("hostname", 0, "debian\n")[0]
    fresh = f"boot {boot}\nkey {boot + 20} /etc/ssh/ssh_host_ed25519_key\n"
    assert judge("ssh-host-keys", 0, fresh)[0]
    ok, why = judge("ssh-host-keys", 0, f"boot {boot}\nkey {boot - 3600} /etc/ssh/ssh_host_rsa_key\n")
    assert not ok and "ssh_host_rsa_key" in why
    assert not judge("ssh-host-keys", 0, f"boot {boot}\n")[0]
    assert judge("build-user-gone", 0, "getent-rc=2\n")[0]
    assert not judge("build-user-gone", 0, "getent-rc=0\n")[0]
    ok, why = judge("build-user-gone", 0, "getent-rc=2\n/home/admin/.ssh/authorized_keys\n")
    assert not ok and "/home/admin/.ssh/authorized_keys" in why
    assert judge("machine-id", 0, "0123456789abcdef0123456789abcdef\n")[0]
    assert not judge("machine-id", 0, "f" * 32)[0]  # the build VM's: shared by every VM from the image
    assert not judge("machine-id", 0, "\n")[0]
    up = "2: eth0    inet 10.0.2.15/24 brd 10.0.2.255 scope global eth0\ndefault via 10.0.2.2 dev eth0\n"
    assert judge("network", 0, up)[0]
    assert not judge("network", 0, "default via 10.0.2.2 dev eth0\n")[0]
    assert judge("cloud-init", 0, "status: done\nerrors: []\n")[0]
    ok, why = judge("cloud-init", 1, "status: error\nerrors:\n\t('ssh', RuntimeError('x'))\n")
    assert not ok and "status error" in why


def test_the_build_user_check_looks_for_the_build_key_itself():
    command = check_command(JUDGE["build-user-gone"], SPEC)
    assert "getent passwd packer" in command and "'AAAAbuildkey'" in command


def test_a_proof_passes_only_when_every_check_does():
    from orchestrator.core.proof import CheckResult

    good = ProofResult((CheckResult("a", True, ""), CheckResult("b", True, "")), 30.0, 60.0)
    bad = ProofResult((CheckResult("a", True, ""), CheckResult("b", False, "why")), 30.0, 60.0)
    assert good.passed and not bad.passed and [c.name for c in bad.failures] == ["b"]
    assert not ProofResult((), None, 0.0).passed
    assert ProofResult((), None, 0.0, skipped="off").to_dict() == {"status": "Skipped", "reason": "off"}


# --- the fingerprint ---------------------------------------------------------------------------

SOURCE = ResolvedSource("PlatformImage Debian:debian-12:12:latest", "/images/a.qcow2", "qcow2", 2**30, "a" * 64,
                        resolved_version="2026.1.0")
URL = "https://example.com/setup.sh"


def _plan(customize=None, source=SOURCE, **properties):
    steps = customize or [{"type": "Shell", "name": "one", "inline": ["echo 1"]},
                          {"type": "Shell", "name": "two", "scriptUri": URL}]
    return make_plan(load_template(linux_template(customize=steps, **properties)), source, "web")


def test_the_fingerprint_names_what_changed():
    base = fingerprint_parts(_plan(), {URL: "1" * 64})
    assert changes(base, fingerprint_parts(_plan(), {URL: "1" * 64}, version="9.9")) == [
        f"orchestrator {base['orchestrator']} -> 9.9"]
    newer = dataclasses.replace(SOURCE, resolved_version="2026.2.0", sha256="b" * 64)
    assert changes(base, fingerprint_parts(_plan(source=newer), {URL: "1" * 64})) == [
        "source PlatformImage Debian:debian-12:12:latest: version 2026.1.0 -> 2026.2.0"]
    assert changes(base, fingerprint_parts(_plan(), {URL: "2" * 64})) == [
        "customizer 'two' changed (its settings, text or downloaded file)"]
    added = _plan([{"type": "Shell", "name": "one", "inline": ["echo 1"]}, {"type": "Shell", "name": "two",
                   "scriptUri": URL}, {"type": "Shell", "name": "three", "inline": ["true"]}])
    assert changes(base, fingerprint_parts(added, {URL: "1" * 64})) == ["customizer 'three' is new"]
    swapped = _plan([{"type": "Shell", "name": "two", "scriptUri": URL},
                     {"type": "Shell", "name": "one", "inline": ["echo 1"]}])
    swapped_parts = fingerprint_parts(swapped, {URL: "1" * 64})
    assert digest_of(swapped_parts) != digest_of(base)
    assert changes(base, swapped_parts) == ["the customizers run in another order"]


def test_the_host_fitted_vm_size_is_not_part_of_the_fingerprint():
    plan = _plan()
    smaller = dataclasses.replace(plan, cpus=1, memory_mib=1024)
    assert digest_of(fingerprint_parts(plan, {URL: "1" * 64})) == digest_of(fingerprint_parts(smaller, {URL: "1" * 64}))
    resized = _plan(vmProfile={"vmSize": "Standard_B2s", "osDiskSizeGB": 8})
    assert changes(fingerprint_parts(plan, {URL: "1" * 64}), fingerprint_parts(resized, {URL: "1" * 64})) == [
        "build properties changed (disk size, VM size, generalization, error handling or validation)"]


def test_plan_says_skip_only_for_a_success_with_the_same_fingerprint_and_intact_outputs(tmp_path):
    state = StateStore(tmp_path / "state.db")
    plan = _plan([{"type": "Shell", "name": "one", "inline": ["echo 1"]},
                  {"type": "Shell", "name": "two", "scriptUri": URL, "sha256Checksum": "1" * 64}])
    assert next_run(state, plan).build and next_run(state, plan).reasons == ("no successful run of web yet",)
    vhd = tmp_path / "web.vhd"
    vhd.write_bytes(b"x" * 4096)
    parts = fingerprint_parts(plan, {URL: "1" * 64})
    run_id = state.start_run("web", None, lambda rid: tmp_path / f"{rid}.log", pid=os.getpid())
    state.update_run(run_id, build_digest=digest_of(parts), fingerprint=json.dumps(parts))
    state.set_output(run_id, "vhd", "VHD", "Succeeded", str(vhd), f"file://{vhd}", {
        "path": str(vhd), "sha256": hashlib.sha256(vhd.read_bytes()).hexdigest(), "fileBytes": 4096})
    Runs(state).end(run_id, "succeed")
    verdict = next_run(state, plan)
    assert not verdict.build and verdict.reused_run == run_id, verdict
    changed = _plan([{"type": "Shell", "name": "one", "inline": ["echo 2"]},
                     {"type": "Shell", "name": "two", "scriptUri": URL, "sha256Checksum": "1" * 64}])
    assert next_run(state, changed).reasons == (f"customizer 'one' changed (its settings, text or downloaded file) "
                                                f"(since run {run_id})",)
    vhd.write_bytes(b"y" * 4096)  # the artifact changed since: built again, and said why
    verdict = next_run(state, plan)
    assert verdict.build and any("changed since" in reason for reason in verdict.reasons), verdict
    Path(vhd).unlink()
    assert any("is gone" in reason for reason in next_run(state, plan).reasons)


# --- the proof VM against a real libvirtd (no OS on its disk: it need not boot to be stopped) --

def _empty_vm_spec(tmp_path: Path, run_id: str) -> ProofSpec:
    import shutil
    import subprocess

    from orchestrator.effects.proof_vm import make_seed_iso

    disk = tmp_path / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    spec = dataclasses.replace(SPEC, run_id=run_id, disk=str(disk), seed_iso=str(tmp_path / "seed.iso"),
                               console_log=str(tmp_path / "console.log"), memory_mib=128, cpus=1,
                               emulator=shutil.which("qemu-system-x86_64") or "qemu-system-x86_64")
    files = {}
    for name, text in seed_files(spec).items():
        (tmp_path / name).write_text(text)
        files[name] = tmp_path / name
    make_seed_iso(files, Path(spec.seed_iso))
    return spec


def _domain_names(uri: str) -> list[str]:
    import subprocess

    return subprocess.run(["virsh", "-c", uri, "list", "--all", "--name"], capture_output=True, text=True,
                          check=True).stdout.split()


def test_the_proof_vm_is_a_transient_domain_gone_after_its_block(tmp_path, libvirtd):
    from orchestrator.effects.proof_vm import ProofDomain

    spec = _empty_vm_spec(tmp_path, "20261202-000001-feedf00d")
    with ProofDomain(libvirtd, domain_xml(spec), spec.domain_name) as vm:
        assert vm.running() and spec.domain_name in _domain_names(libvirtd)
        assert Path(spec.seed_iso).read_bytes()[0x8001:0x8006] == b"CD001"  # an ISO 9660 seed
    assert spec.domain_name not in _domain_names(libvirtd)  # destroyed and, transient, forgotten


def test_recovery_stops_the_proof_vm_of_a_run_that_died(tmp_path, libvirtd):
    import subprocess

    from orchestrator.config import Config
    from orchestrator.effects.proof_vm import ProofDomain
    from orchestrator.service.recovery import recover

    config = Config(home=tmp_path / "home", libvirt_uri=libvirtd).ensure()
    state = StateStore(config.db_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    run_id = state.start_run("web", None, lambda rid: tmp_path / f"{rid}.log", pid=dead.pid, pid_start_time=1)
    Runs(state).sub_state(run_id, "Validating")
    spec = _empty_vm_spec(tmp_path, run_id)
    vm = ProofDomain(libvirtd, domain_xml(spec), spec.domain_name).__enter__()  # as a run killed mid-proof left it
    try:
        assert spec.domain_name in _domain_names(libvirtd)
        assert recover(config, state) == [run_id]
        assert spec.domain_name not in _domain_names(libvirtd)
        run = state.run(run_id)
        assert run["run_state"] == "Failed" and f"deploy proof VM {spec.domain_name} stopped" in run["message"]
    finally:
        vm.__exit__(None, None, None)
