"""The Windows deploy proof's pieces, without a Windows guest (none runs on these hosts): the
answer file, the domain XML, how each check is judged, the WinRM probe (pywinrm against a
WS-Management server on 127.0.0.1, tests/winrm_server.py), and the phase up to a VM that boots
nothing and so never answers WinRM (a real libvirtd, a real answer CD)."""
from __future__ import annotations

import dataclasses
import subprocess
import threading
import time
import xml.etree.ElementTree as ET

import pytest

from orchestrator.core.proof import CheckResult, ProofResult
from orchestrator.core.proof_windows import (
    ANSWER_FILE,
    ANSWER_LABEL,
    UNATTEND_NS,
    WCM_NS,
    WINDOWS_CHECKS,
    WindowsProofSpec,
    check_spec,
    describe,
    unattend_xml,
    windows_check_command,
    windows_domain_xml,
)
from orchestrator.effects.winrm_probe import (
    SCRIPT_PRELUDE,
    NoWinrmLogin,
    WinrmLogin,
    clixml_text,
    run_powershell,
    wait_for_login,
)
from tests.store_helpers import libvirtd  # noqa: F401, F811  (a fixture)
from tests.winrm_server import TERMINATE, TIMEOUT, Chunk, WinrmServer, encoded_script

PASSWORD = "Aa1-proof-password-0123456789"
SPEC = WindowsProofSpec(run_id="20261202-000000-abcd1234", computer_name="proof-1a2b3c4d", admin_password=PASSWORD,
                        build_user="packer", accelerator="tcg", cpus=2, memory_mib=4096, disk="/s/proof/overlay.qcow2",
                        answer_iso="/s/proof/answer.iso", console_log="/s/proof/console.log", winrm_port=40123,
                        emulator="/usr/bin/qemu-system-x86_64")
JUDGE = {check.name: check for check in WINDOWS_CHECKS}
U = f"{{{UNATTEND_NS}}}"
QEMU_ARG = "{http://libvirt.org/schemas/domain/qemu/1.0}arg"


def judge(name: str, status: int, output: str, spec: WindowsProofSpec = SPEC) -> tuple[bool, str]:
    return JUDGE[name].judge(status, output, spec)


def _component(root: ET.Element, pass_: str, name: str) -> ET.Element:
    [settings] = [s for s in root.findall(f"{U}settings") if s.get("pass") == pass_]
    [component] = [c for c in settings.findall(f"{U}component") if c.get("name") == name]
    return component


# --- the answer file --------------------------------------------------------------------------

def test_the_answer_file_names_the_computer_and_makes_the_administrator():
    root = ET.fromstring(unattend_xml(SPEC).encode())
    assert root.tag == f"{U}unattend"
    assert _component(root, "specialize", "Microsoft-Windows-Shell-Setup").findtext(f"{U}ComputerName") == \
        "proof-1a2b3c4d"
    shell = _component(root, "oobeSystem", "Microsoft-Windows-Shell-Setup")
    [account] = shell.iter(f"{U}LocalAccount")
    assert account.get(f"{{{WCM_NS}}}action") == "add"
    assert (account.findtext(f"{U}Name"), account.findtext(f"{U}Group")) == ("prover", "Administrators")
    assert account.findtext(f"{U}Password/{U}Value") == PASSWORD
    assert account.findtext(f"{U}Password/{U}PlainText") == "true"
    logon = shell.find(f"{U}AutoLogon")
    assert logon.findtext(f"{U}Username") == "prover" and logon.findtext(f"{U}LogonCount") == "1"
    commands = [c.findtext(f"{U}CommandLine") for c in shell.iter(f"{U}SynchronousCommand")]
    orders = [int(c.findtext(f"{U}Order")) for c in shell.iter(f"{U}SynchronousCommand")]
    assert orders == list(range(1, len(commands) + 1))
    assert any("winrm quickconfig" in c for c in commands)
    assert any('@{Basic="true"}' in c for c in commands) and any('AllowUnencrypted="true"' in c for c in commands)
    assert any("LocalAccountTokenFilterPolicy /t REG_DWORD /d 1" in c for c in commands)
    assert any("localport=5985" in c for c in commands)
    assert [c for c in commands if "Port=" in c] == [
        'cmd.exe /c winrm set winrm/config/Listener?Address=*+Transport=HTTP @{Port="5985"}']
    assert PASSWORD not in describe(SPEC) and PASSWORD not in repr(SPEC)


@pytest.mark.parametrize("hostile", [
    "</Value><PlainText>false</PlainText></Password><Group>Administrators</Group><x>",
    "]]><LocalAccount wcm:action=\"add\"><Name>evil</Name></LocalAccount>",
    "a&b<c>\"d'e",
])
def test_hostile_names_and_passwords_stay_text(hostile):
    spec = dataclasses.replace(SPEC, computer_name=hostile, admin_password=hostile, admin_user=hostile)
    root = ET.fromstring(unattend_xml(spec).encode())
    shell = _component(root, "oobeSystem", "Microsoft-Windows-Shell-Setup")
    [account] = shell.iter(f"{U}LocalAccount")  # no second account
    assert account.findtext(f"{U}Name") == hostile and account.findtext(f"{U}Password/{U}Value") == hostile
    assert [e.text for e in root.iter(f"{U}Group")] == ["Administrators"]
    assert [e.text for e in root.iter(f"{U}PlainText")] == ["true"] * 3
    assert _component(root, "specialize", "Microsoft-Windows-Shell-Setup").findtext(f"{U}ComputerName") == hostile
    assert not list(root.iter(f"{U}x")) and not list(root.iter("x"))
    with pytest.raises(ValueError):
        check_spec(spec)  # and the phase refuses them before Windows Setup would


def test_the_spec_check_takes_what_the_phase_makes():
    check_spec(SPEC)
    for bad in (dict(computer_name="a-name-too-long-for-netbios"), dict(computer_name="12345"),
                dict(admin_user="pro/ver"), dict(admin_password="short")):
        with pytest.raises(ValueError):
            check_spec(dataclasses.replace(SPEC, **bad))


# --- the domain -------------------------------------------------------------------------------

def test_the_domain_is_the_linux_proofs_with_what_windows_needs():
    root = ET.fromstring(windows_domain_xml(SPEC))
    assert root.get("type") == "qemu" and root.findtext("name") == "orchestrator-proof-" + SPEC.run_id
    targets = {d.get("device"): (d.find("source").get("file"), d.find("target").get("bus"), d.find("target").get("dev"))
               for d in root.iter("disk")}
    assert targets == {"disk": (SPEC.disk, "ide", "hda"), "cdrom": (SPEC.answer_iso, "ide", "hdc")}
    assert root.find("features/acpi") is not None and root.find("clock").get("offset") == "localtime"
    args = [a.get("value") for a in root.iter(QEMU_ARG)]
    assert args == ["-netdev", f"user,id=proofnet,hostfwd=tcp:127.0.0.1:{SPEC.winrm_port}-:5985",
                    "-device", "e1000,netdev=proofnet,addr=0x1f"]
    assert "virtio" not in windows_domain_xml(SPEC)  # no device that needs a driver Windows lacks
    assert root.find("seclabel").get("relabel") == "no"
    assert PASSWORD not in windows_domain_xml(SPEC)
    other = ET.fromstring(windows_domain_xml(dataclasses.replace(SPEC, accelerator="kvm"), guest_port=5986))
    assert other.get("type") == "kvm" and f"tcp:127.0.0.1:{SPEC.winrm_port}-:5986" in \
        [a.get("value") for a in other.iter(QEMU_ARG)][1]


# --- the judges -------------------------------------------------------------------------------

def test_each_check_passes_a_good_vm_and_fails_a_bad_one():
    assert judge("hostname", 0, "hostname PROOF-1A2B3C4D\r\n")[0]  # Windows names ignore case
    ok, why = judge("hostname", 0, "hostname WIN-8F3K2L\r\n")
    assert not ok and "WIN-8F3K2L" in why
    assert not judge("hostname", 1, "")[0]

    assert judge("administrator", 0, "user proof-1a2b3c4d\\prover\r\nadmin True\r\n")[0]
    ok, why = judge("administrator", 0, "user proof-1a2b3c4d\\prover\r\nadmin False\r\n")
    assert not ok and "LocalAccountTokenFilterPolicy" in why
    assert not judge("administrator", 0, "user proof-1a2b3c4d\\packer\r\nadmin True\r\n")[0]

    assert judge("sysprep", 0, "image-state IMAGE_STATE_COMPLETE\r\nsetup-in-progress 0\r\n")[0]
    ok, why = judge("sysprep", 0, "image-state IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE\r\nsetup-in-progress 1\r\n")
    assert not ok and "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE" in why
    assert not judge("sysprep", 0, "image-state IMAGE_STATE_COMPLETE\r\nsetup-in-progress 1\r\n")[0]
    assert not judge("sysprep", 0, "image-state \r\n")[0]

    assert judge("build-user-gone", 0, "no-user\r\n")[0]
    ok, why = judge("build-user-gone", 0, "no-user\r\nprofile C:\\Users\\packer\r\n")
    assert ok and "C:\\Users\\packer remains" in why
    ok, why = judge("build-user-gone", 0, "user PROOF-1A2B3C4D\\packer\r\n")
    assert not ok and "still exists" in why
    assert not judge("build-user-gone", 1, "Get-CimInstance : Access denied\r\n")[0]  # no answer is no pass

    up = ("address 127.0.0.1/8 Loopback Pseudo-Interface 1\r\naddress 10.0.2.15/24 Ethernet 2\r\n"
          "route 10.0.2.2 Ethernet 2\r\n")
    ok, why = judge("network", 0, up)
    assert ok and why == "10.0.2.15/24 on Ethernet 2, default via 10.0.2.2 Ethernet 2"
    ok, why = judge("network", 0, "address 169.254.10.20/16 Ethernet\r\naddress 127.0.0.1/8 Loopback\r\n")
    assert not ok and "APIPA" in why
    ok, why = judge("network", 0, "address 10.0.2.15/24 Ethernet\r\n")
    assert not ok and "no default route" in why
    assert not judge("network", 0, "")[0]

    assert judge("setup-errors", 0, "absent\r\n")[0]
    assert judge("setup-errors", 0, "size 0\r\n")[0]
    ok, why = judge("setup-errors", 0, "size 120\r\n| 2026-12-02 10:00:00, Error  [0x0606cc] MIG Failed\r\n")
    assert not ok and "MIG Failed" in why
    assert not judge("setup-errors", -1, "(timed out)")[0]


def test_the_build_user_check_names_the_build_user_as_a_literal():
    command = windows_check_command(JUDGE["build-user-gone"], dataclasses.replace(SPEC, build_user="pa'cker"))
    assert command.startswith("$name = 'pa''cker'\n") and "@BUILD_USER@" not in command
    assert all("@BUILD_USER@" not in windows_check_command(c, SPEC) for c in WINDOWS_CHECKS)


# --- the probe against a WS-Management server ---------------------------------------------------

def _whoami(command: str, arguments: list[str]):
    assert command == "whoami" and arguments == []
    return [Chunk(b"proof-1a2b3c4d\\prover\r\n", exit_code=0)]


def _deadline(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


def test_the_probe_waits_through_refusals_then_logs_in():
    with WinrmServer("prover", PASSWORD, _whoami, refuse=3) as server:
        login = wait_for_login(server.port, "prover", PASSWORD, _deadline(), threading.Event(), lambda: None,
                               interval=0)
        with login:
            assert login.identity == "proof-1a2b3c4d\\prover" and server.refused == 3
        # pywinrm's whole exchange: a shell, the command, its output, terminate, the shell deleted
        assert server.actions() == ["Create", "Command", "Receive", "Signal", "Delete"]
        assert server.signals[0][1] == TERMINATE and server.shells == set()


def test_the_probe_gives_up_at_the_deadline_saying_what_it_saw_and_not_the_password():
    with WinrmServer("prover", "another-password", _whoami) as server:
        with pytest.raises(NoWinrmLogin) as caught:
            wait_for_login(server.port, "prover", PASSWORD, _deadline(0.5), threading.Event(), lambda: None,
                           interval=0.05)
        assert server.refused >= 2  # it retried
    message = str(caught.value)
    assert "time limit" in message and "refused 'prover''s password" in message and PASSWORD not in message


def test_the_probe_reports_a_port_nobody_listens_on():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(NoWinrmLogin, match="Connection refused"):
        wait_for_login(port, "prover", PASSWORD, _deadline(0.3), threading.Event(), lambda: None, interval=0.05)


def test_a_fault_is_a_reason_and_an_echoed_password_is_masked():
    with WinrmServer("prover", PASSWORD, _whoami, fault=(500, f"Access is denied for {PASSWORD}")) as server:
        with pytest.raises(NoWinrmLogin) as caught:
            wait_for_login(server.port, "prover", PASSWORD, _deadline(0.3), threading.Event(), lambda: None,
                           interval=0.05)
    assert "WinRM fault: Access is denied for ***" in str(caught.value) and PASSWORD not in str(caught.value)


def test_the_probe_stops_on_the_stop_signal_and_on_gave_up():
    stop = threading.Event()
    stop.set()
    with pytest.raises(NoWinrmLogin, match="^stopped$"):
        wait_for_login(1, "prover", PASSWORD, _deadline(), stop, lambda: None)
    calls = []

    def gave_up():
        calls.append(1)
        return "the proof VM stopped" if len(calls) > 1 else None

    with WinrmServer("prover", "another-password", _whoami) as server:
        with pytest.raises(NoWinrmLogin) as caught:
            wait_for_login(server.port, "prover", PASSWORD, _deadline(), threading.Event(), gave_up, interval=0)
    assert str(caught.value).startswith("the proof VM stopped (last WinRM attempt: WinRM answered but refused")
    assert len(calls) == 2  # one attempt, then the reason


def _login(server: WinrmServer) -> WinrmLogin:
    return wait_for_login(server.port, "prover", PASSWORD, _deadline(), threading.Event(), lambda: None, interval=0)


def test_every_check_runs_as_powershell_over_winrm_and_is_judged():
    answers = {"hostname": "hostname proof-1a2b3c4d\r\n",
               "administrator": "user proof-1a2b3c4d\\prover\r\nadmin True\r\n",
               "sysprep": "image-state IMAGE_STATE_COMPLETE\r\nsetup-in-progress 0\r\n",
               "build-user-gone": "no-user\r\n",
               "network": "address 10.0.2.15/24 Ethernet\r\nroute 10.0.2.2 Ethernet\r\n",
               "setup-errors": "absent\r\n"}
    scripts = {SCRIPT_PRELUDE + windows_check_command(c, SPEC): c.name for c in WINDOWS_CHECKS}
    seen = []

    def program(command, arguments):
        if command == "whoami":
            return _whoami(command, arguments)
        assert command == "powershell.exe" and arguments[:4] == ["-NoProfile", "-NonInteractive", "-ExecutionPolicy",
                                                                 "Bypass"]
        name = scripts[encoded_script(arguments)]  # the script arrived byte-exact
        seen.append(name)
        text = answers[name].encode()
        return [Chunk(text[:5]), TIMEOUT, Chunk(text[5:], exit_code=0)]  # streamed, with a quiet Receive between

    with WinrmServer("prover", PASSWORD, program) as server, _login(server) as login:
        results = []
        for check in WINDOWS_CHECKS:
            status, output = run_powershell(login, windows_check_command(check, SPEC), 10, threading.Event())
            assert (status, output) == (0, answers[check.name])
            results.append(CheckResult(check.name, *check.judge(status, output, SPEC)))
        assert server.shells == set()  # each check's shell deleted
    assert seen == [c.name for c in WINDOWS_CHECKS]
    assert ProofResult(tuple(results), 1.0, 2.0).passed, results


def test_a_check_keeps_its_exit_code_and_its_errors_as_text():
    clixml = (b'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
              b'<S S="Error">Get-Item : Cannot find path_x000D__x000A_</S><S S="Error">at line 1_x000D__x000A_</S>'
              b'</Objs>')

    def program(command, arguments):
        if command == "whoami":
            return _whoami(command, arguments)
        return [Chunk(b"partial\r\n", clixml, exit_code=3)]

    with WinrmServer("prover", PASSWORD, program) as server, _login(server) as login:
        status, output = run_powershell(login, "Get-Item nothing", 10, threading.Event())
    assert status == 3 and output == "partial\r\nGet-Item : Cannot find path\nat line 1\n"
    assert clixml_text(b"plain text") == "plain text"


def test_a_check_that_runs_too_long_is_terminated_and_its_shell_deleted():
    def program(command, arguments):
        if command == "whoami":
            return _whoami(command, arguments)
        return [Chunk(b"started\r\n"), TIMEOUT]  # then nothing, ever

    with WinrmServer("prover", PASSWORD, program) as server, _login(server) as login:
        began = time.monotonic()
        status, output = run_powershell(login, "Start-Sleep 3600", 0.3, threading.Event())
        assert time.monotonic() - began < 5
        assert status == -1 and output == "started\r\n\n(timed out)"
        assert server.actions()[-2:] == ["Signal", "Delete"] and server.signals[-1][1] == TERMINATE
        assert server.shells == set()


def test_a_check_stops_when_the_run_is_stopped():
    stop = threading.Event()

    def program(command, arguments):
        if command == "whoami":
            return _whoami(command, arguments)
        stop.set()  # a cancel arrives while the check runs
        return [TIMEOUT]

    with WinrmServer("prover", PASSWORD, program) as server, _login(server) as login:
        assert run_powershell(login, "Start-Sleep 3600", 60, stop) == (-1, "\n(stopped)")
        assert server.actions()[-2:] == ["Signal", "Delete"]


def test_a_lost_connection_is_a_failed_check_not_an_exception():
    with WinrmServer("prover", PASSWORD, _whoami) as server:
        login = _login(server)
    status, output = run_powershell(login, "hostname", 5, threading.Event())  # the server is gone
    assert status == -1 and output.startswith("WinRM failed: ") and PASSWORD not in output


# --- the phase, up to a VM that never answers (nothing on its disk boots) ----------------------

def test_the_phase_boots_a_transient_vm_and_fails_boot_and_login_without_leaking_the_password(tmp_path, libvirtd):
    from orchestrator.config import Config
    from orchestrator.core.plan import ResolvedSource, make_plan
    from orchestrator.core.redact import Redactor
    from orchestrator.core.template import load_template
    from orchestrator.effects.proc import Stop
    from orchestrator.effects.runlog import RunLog
    from orchestrator.pipeline.build import BuildVm
    from orchestrator.pipeline.prove_windows import prove_windows

    template = {"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-02-14",
                "location": "local", "properties": {
                    "source": {"type": "PlatformImage", "publisher": "MicrosoftWindowsServer",
                               "offer": "WindowsServer", "sku": "2022-datacenter", "version": "latest"},
                    "customize": [{"type": "PowerShell", "name": "hello", "inline": ["Write-Output hello"]}],
                    "distribute": [{"type": "VHD", "runOutputName": "vhd"}]}}
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    source = ResolvedSource("PlatformImage MicrosoftWindowsServer:WindowsServer:2022-datacenter:latest", str(disk),
                            "qcow2", 64 * 2**20, "0" * 64, "1.0.0")
    plan = dataclasses.replace(make_plan(load_template(template, "win"), source, "win"), cpus=1, memory_mib=128)
    config = Config(home=tmp_path / "home", libvirt_uri=libvirtd).ensure()
    staging, records = tmp_path / "staging", tmp_path / "records"
    staging.mkdir()
    records.mkdir()
    seen_iso: list[bytes] = []
    run_id = "20261202-000002-0badf00d"

    def domains() -> list[str]:
        return subprocess.run(["virsh", "-c", libvirtd, "list", "--name"], capture_output=True, text=True,
                              check=True).stdout.split()

    class Watching(RunLog):  # keeps the answer CD as the VM got it (the phase removes it)
        def write(self, source, line):
            super().write(source, line)
            iso = staging / "proof" / "answer.iso"
            if iso.is_file() and not seen_iso:
                seen_iso.append(iso.read_bytes())

    with Watching(tmp_path / "run.log") as log:
        result = prove_windows(config, plan, run_id, BuildVm(disk=disk, key=tmp_path / "key"), staging, records,
                               "tcg", log, Stop(), Redactor(), timeout=3)
    assert not result.passed and [c.name for c in result.checks] == ["boot-and-login"]
    assert "no WinRM login within the proof's time limit" in result.checks[0].detail
    assert (records / "proof-console.log").is_file()  # QEMU made its serial file: the domain ran
    assert f"orchestrator-proof-{run_id}" not in domains()  # destroyed and, transient, forgotten
    [iso] = seen_iso
    assert iso[0x8001:0x8006] == b"CD001" and ANSWER_LABEL.encode() in iso[0x8028:0x8048]
    assert ANSWER_FILE.encode("utf-16-be") in iso  # the Joliet name Windows reads
    answer = ET.fromstring(iso[iso.index(b"<?xml"):iso.index(b"</unattend>") + len(b"</unattend>")])
    password = next(answer.iter(f"{U}Value")).text
    assert password and len(password) >= 16
    log_text = (tmp_path / "run.log").read_text()
    assert "booting the image as a fresh Windows VM" in log_text and "administrator prover" in log_text
    assert password not in log_text and password not in (staging / "proof" / "domain.xml").read_text()
    assert not (staging / "proof" / "answer.iso").exists() and not (staging / "proof" / ANSWER_FILE).exists()
