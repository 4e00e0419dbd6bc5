"""The deploy proof of a Windows image, as data: what a fresh VM from the generalized image is
given (an answer file with a new computer name and a new local administrator with a random
password, which also turns WinRM on), the libvirt domain it runs in, and the checks it must
pass over WinRM (PowerShell), each with a pure judge. No I/O: effects/winrm_probe.py and
pipeline/prove_windows.py use it. No Windows guest runs on this project's hosts: this is
tested on its pieces (tests/test_proof_windows.py), not against a booted Windows.

How the answer file reaches Windows: the image was generalized with `Sysprep /oobe
/generalize` and no answer file (generalize.ps1 deletes Sysprep's unattend.xml), so at its first
boot Windows Setup (specialize, then OOBE) searches for one, and finds `Autounattend.xml` at the
root of a CD (the implicit search of removable read-only media, after %WINDIR%\\Panther: an
image that kept a cached answer file there from its own installation uses that one instead,
and the hostname check says so). The CD's label (ANSWER_LABEL) is only for people looking at it.
"""
from __future__ import annotations

import ipaddress
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Callable

from orchestrator.core.proof import DOMAIN_PREFIX, PROOF_USER, ProofSpec, domain_xml
from orchestrator.core.render_windows import (
    WINRM_GUEST_PORT,
    check_password,
    powershell_literal,
)

ANSWER_FILE = "Autounattend.xml"
ANSWER_LABEL = "UNATTEND"
ADMIN_USER = PROOF_USER  # the new local administrator (the Linux proof's user name)
LOCALE = "en-US"  # the OOBE region and keyboard screens are answered with it
UNATTEND_NS = "urn:schemas-microsoft-com:unattend"
WCM_NS = "http://schemas.microsoft.com/WMIConfig/2002/State"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
_COMPUTER_NAME = re.compile(r"(?=.*[A-Za-z-])[A-Za-z0-9-]{1,15}")
_USER_NAME_FORBIDDEN = set('"/\\[]:;|=,+*?<>@')


@dataclass(frozen=True)
class WindowsProofSpec:
    """One Windows proof VM: everything it is made of, as the phase decided it. The password
    is this VM's only (random per proof) and never part of a repr."""

    run_id: str
    computer_name: str
    admin_password: str = field(repr=False)
    build_user: str  # render_windows' build account: must be gone from the image
    accelerator: str  # kvm or tcg
    cpus: int
    memory_mib: int
    disk: str  # the copy-on-write overlay (never the artifact)
    answer_iso: str  # the CD with Autounattend.xml
    console_log: str
    winrm_port: int  # on 127.0.0.1; forwarded to the guest's WINRM_GUEST_PORT
    emulator: str
    admin_user: str = ADMIN_USER

    @property
    def domain_name(self) -> str:
        return DOMAIN_PREFIX + self.run_id


def check_spec(spec: WindowsProofSpec) -> None:
    """What Windows accepts: a NetBIOS computer name (1 to 15 letters, digits, '-', not only
    digits), a local user name (1 to 20 characters, none of "/\\[]:;|=,+*?<>@) and a password
    as render_windows' check_password wants it (Windows' complexity rule). The XML is safe
    whatever the values are; Windows Setup would stop at an invalid one."""
    check_password(spec.admin_password)
    if not _COMPUTER_NAME.fullmatch(spec.computer_name):
        raise ValueError(f"{spec.computer_name!r} is not a Windows computer name (1 to 15 of A-Z, a-z, 0-9, '-')")
    name = spec.admin_user
    if not 1 <= len(name) <= 20 or set(name) & _USER_NAME_FORBIDDEN or not name.strip(". ") \
            or any(ord(c) < 32 for c in name):
        raise ValueError(f"{name!r} is not a Windows user name")


def describe(spec: WindowsProofSpec) -> str:
    """The phase's log line for the boot (no password)."""
    return (f"booting the image as a fresh Windows VM ({spec.domain_name}, {spec.accelerator}, computer name "
            f"{spec.computer_name}, administrator {spec.admin_user}, WinRM on 127.0.0.1:{spec.winrm_port})")


# --- the answer file --------------------------------------------------------------------------

def _winrm_commands(guest_port: int) -> tuple[tuple[str, str], ...]:
    """(description, command line) run at the new administrator's first (automatic) logon:
    WinRM over HTTP with Basic authentication, as render_windows' build expects of the base
    image (the image may have kept it through Sysprep; this makes sure). Constants only."""
    port = int(guest_port)
    return (
        ("a local administrator gets an elevated token over WinRM",
         r"cmd.exe /c reg add HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Policies\System"
         r" /v LocalAccountTokenFilterPolicy /t REG_DWORD /d 1 /f"),
        ("the network is private (WinRM's firewall rule is not limited to the local subnet)",
         "powershell.exe -NoProfile -ExecutionPolicy Bypass -Command "
         "\"Get-NetConnectionProfile | Set-NetConnectionProfile -NetworkCategory Private\""),
        ("WinRM service and its HTTP listener", "cmd.exe /c winrm quickconfig -quiet -force"),
        ("the HTTP listener's port",
         f"cmd.exe /c winrm set winrm/config/Listener?Address=*+Transport=HTTP @{{Port=\"{port}\"}}"),
        ("Basic authentication", "cmd.exe /c winrm set winrm/config/service/auth @{Basic=\"true\"}"),
        ("unencrypted HTTP (the port is forwarded from 127.0.0.1 only)",
         "cmd.exe /c winrm set winrm/config/service @{AllowUnencrypted=\"true\"}"),
        ("the firewall lets WinRM in",
         f"cmd.exe /c netsh advfirewall firewall add rule name=\"orchestrator proof WinRM\" dir=in action=allow "
         f"protocol=TCP localport={port}"),
        ("WinRM starts at every boot", "cmd.exe /c sc config WinRM start= auto"),
    )


def unattend_xml(spec: WindowsProofSpec, guest_port: int = WINRM_GUEST_PORT) -> str:
    """The answer file: specialize sets the computer name; oobeSystem answers OOBE, creates the
    administrator (and gives the built-in Administrator the same password, which Windows
    Server's OOBE asks for), logs it on once and runs `_winrm_commands`. Built with
    ElementTree: names and the password are text nodes, escaped, never markup."""
    # the namespaces are declared on the root as Windows SIM writes them; elements are unqualified
    # under the default one (ElementTree's own namespace handling would need a global prefix)
    root = ET.Element("unattend", {"xmlns": UNATTEND_NS, "xmlns:wcm": WCM_NS})
    specialize = ET.SubElement(root, "settings", {"pass": "specialize"})
    _text(_component(specialize, "Microsoft-Windows-Shell-Setup"), "ComputerName", spec.computer_name)
    oobe_pass = ET.SubElement(root, "settings", {"pass": "oobeSystem"})
    international = _component(oobe_pass, "Microsoft-Windows-International-Core")
    for name in ("InputLocale", "SystemLocale", "UILanguage", "UserLocale"):
        _text(international, name, LOCALE)
    shell = _component(oobe_pass, "Microsoft-Windows-Shell-Setup")
    oobe = ET.SubElement(shell, "OOBE")
    for name in ("HideEULAPage", "HideLocalAccountScreen", "HideOEMRegistrationScreen", "HideOnlineAccountScreens",
                 "HideWirelessSetupInOOBE"):
        _text(oobe, name, "true")
    _text(oobe, "ProtectYourPC", "3")
    accounts = ET.SubElement(shell, "UserAccounts")
    _password(accounts, "AdministratorPassword", spec.admin_password)
    local = ET.SubElement(ET.SubElement(accounts, "LocalAccounts"), "LocalAccount", {"wcm:action": "add"})
    _password(local, "Password", spec.admin_password)
    _text(local, "Name", spec.admin_user)
    _text(local, "Group", "Administrators")
    _text(local, "DisplayName", spec.admin_user)
    _text(local, "Description", "orchestrator deploy proof")
    logon = ET.SubElement(shell, "AutoLogon")
    _password(logon, "Password", spec.admin_password)
    _text(logon, "Enabled", "true")
    _text(logon, "LogonCount", "1")
    _text(logon, "Username", spec.admin_user)
    commands = ET.SubElement(shell, "FirstLogonCommands")
    for order, (description, command) in enumerate(_winrm_commands(guest_port), start=1):
        item = ET.SubElement(commands, "SynchronousCommand", {"wcm:action": "add"})
        _text(item, "Order", str(order))
        _text(item, "CommandLine", command)
        _text(item, "Description", description)
        _text(item, "RequiresUserInput", "false")
    _text(shell, "TimeZone", "UTC")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _component(settings: ET.Element, name: str) -> ET.Element:
    return ET.SubElement(settings, "component", {
        "name": name, "processorArchitecture": "amd64", "publicKeyToken": "31bf3856ad364e35",
        "language": "neutral", "versionScope": "nonSxS"})


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    element = ET.SubElement(parent, tag)
    element.text = text
    return element


def _password(parent: ET.Element, tag: str, password: str) -> None:
    holder = ET.SubElement(parent, tag)
    _text(holder, "Value", password)
    _text(holder, "PlainText", "true")


# --- the domain -------------------------------------------------------------------------------

def windows_domain_xml(spec: WindowsProofSpec, guest_port: int = WINRM_GUEST_PORT) -> str:
    """core/proof.domain_xml's transient domain (the overlay, the CD, QEMU user networking
    forwarded from 127.0.0.1 only, no relabelling), with what Windows needs of it, as
    render_windows' build VM had it: the disk on IDE and an e1000 NIC (inbox drivers; the
    virtio RNG goes, Windows has no driver for it), ACPI (Windows does not boot without it)
    and the clock in local time."""
    linux = ProofSpec(run_id=spec.run_id, hostname=spec.computer_name, public_key="", build_user=spec.build_user,
                      build_public_key="", build_machine_id="", accelerator=spec.accelerator, cpus=spec.cpus,
                      memory_mib=spec.memory_mib, disk=spec.disk, seed_iso=spec.answer_iso,
                      console_log=spec.console_log, ssh_port=spec.winrm_port, emulator=spec.emulator)
    root = ET.fromstring(domain_xml(linux))
    for disk in root.iter("disk"):
        if disk.get("device") == "disk":
            target = disk.find("target")
            assert target is not None
            target.set("dev", "hda")
            target.set("bus", "ide")
    devices = root.find("devices")
    assert devices is not None
    for rng in devices.findall("rng"):
        devices.remove(rng)
    os_index = list(root).index(root.find("os"))  # type: ignore[arg-type]
    features = ET.Element("features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    root.insert(os_index + 1, features)
    root.insert(os_index + 2, ET.Element("clock", offset="localtime"))
    commandline = root.find(f"{{{QEMU_NS}}}commandline")
    assert commandline is not None
    for arg in list(commandline):
        commandline.remove(arg)
    for value in ("-netdev", f"user,id=proofnet,hostfwd=tcp:127.0.0.1:{int(spec.winrm_port)}-:{int(guest_port)}",
                  "-device", "e1000,netdev=proofnet,addr=0x1f"):  # the slot domain_xml's NIC has
        ET.SubElement(commandline, f"{{{QEMU_NS}}}arg", value=value)
    return ET.tostring(root, encoding="unicode")


# --- the checks: a PowerShell script run over WinRM as the new administrator ------------------

WindowsJudge = Callable[[int, str, WindowsProofSpec], tuple[bool, str]]
_BUILD_USER = "@BUILD_USER@"  # replaced by the quoted name (windows_check_command)


@dataclass(frozen=True)
class WindowsCheck:
    """core/proof.Check's shape, judged against a WindowsProofSpec."""

    name: str
    what: str
    command: str  # PowerShell
    judge: WindowsJudge = field(repr=False)


def _lines(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.strip()]


def _value(out: str, key: str) -> str | None:
    """The rest of the first line `key ...` (None: no such line)."""
    for line in _lines(out):
        if line == key or line.startswith(key + " "):
            return line[len(key):].strip()
    return None


def _unreadable(rc: int, out: str) -> str:
    return f"unreadable (exit {rc}): {out.strip()[:200]!r}"


def _hostname(rc: int, out: str, spec: WindowsProofSpec) -> tuple[bool, str]:
    name = _value(out, "hostname")
    if name is None:
        return False, _unreadable(rc, out)
    return (name.casefold() == spec.computer_name.casefold(),
            f"computer name is {name!r} (the answer file gave {spec.computer_name!r})")


def _administrator(rc: int, out: str, spec: WindowsProofSpec) -> tuple[bool, str]:
    user, admin = _value(out, "user"), _value(out, "admin")
    if user is None or admin is None:
        return False, _unreadable(rc, out)
    account = user.rsplit("\\", 1)[-1]
    if account.casefold() != spec.admin_user.casefold():
        return False, f"WinRM runs as {user!r}, not the answer file's {spec.admin_user!r}"
    if admin != "True":
        return False, (f"{user} is not an elevated administrator over WinRM (is it in Administrators? "
                       "LocalAccountTokenFilterPolicy = 1?)")
    return True, f"{user} is an elevated administrator"


def _sysprep(rc: int, out: str, spec: WindowsProofSpec) -> tuple[bool, str]:
    state = _value(out, "image-state")
    if state is None:
        return False, _unreadable(rc, out)
    in_progress = _value(out, "setup-in-progress") or "0"
    if state != "IMAGE_STATE_COMPLETE":
        return False, f"ImageState is {state or '(none)'!r}, not IMAGE_STATE_COMPLETE: Windows setup did not finish"
    if in_progress != "0":
        return False, f"ImageState is complete but SystemSetupInProgress is {in_progress}"
    return True, "Sysprep's first boot finished: ImageState IMAGE_STATE_COMPLETE"


def _build_user_gone(rc: int, out: str, spec: WindowsProofSpec) -> tuple[bool, str]:
    found = [line[5:] for line in _lines(out) if line.startswith("user ")]
    if found:
        return False, f"the build user {spec.build_user!r} still exists ({', '.join(found)})"
    if _value(out, "no-user") is None:
        return False, _unreadable(rc, out)
    profile = _value(out, "profile")
    # `net user /delete` leaves the profile folder: data, not a credential (the password went
    # with the account), so it is said, not failed
    return True, f"no user {spec.build_user!r}" + (f" (its profile folder {profile} remains)" if profile else "")


def _network(rc: int, out: str, spec: WindowsProofSpec) -> tuple[bool, str]:
    usable, apipa = [], []
    for line in _lines(out):
        if line.startswith("address "):
            parts = line.split(" ", 2)
            try:
                address = ipaddress.ip_interface(parts[1])
            except (ValueError, IndexError):
                continue
            if address.ip.is_loopback:
                continue
            where = parts[2] if len(parts) > 2 else "?"
            (apipa if address.ip.is_link_local else usable).append(f"{address} on {where}")
    routes = [line[6:] for line in _lines(out) if line.startswith("route ")]
    if not usable:
        return False, ("only link-local (APIPA) IPv4 addresses, DHCP gave none: " + ", ".join(apipa)
                       if apipa else "no IPv4 address")
    if not routes:
        return False, f"{usable[0]} but no default route"
    return True, f"{usable[0]}, default via {routes[0]}"


def _setup_errors(rc: int, out: str, spec: WindowsProofSpec) -> tuple[bool, str]:
    if _value(out, "absent") is not None:
        return True, "no setuperr.log"
    size = _value(out, "size")
    if size is None or not size.isdigit():
        return False, _unreadable(rc, out)
    if int(size) == 0:
        return True, "setuperr.log is empty"
    errors = [line[1:].strip() for line in _lines(out) if line.startswith("|")]
    return False, f"setuperr.log has {size} bytes: " + ("; ".join(errors[:3]) or "(unreadable)")


_PANTHER = r"Join-Path $env:SystemRoot 'Panther\setuperr.log'"

WINDOWS_CHECKS: tuple[WindowsCheck, ...] = (
    WindowsCheck("hostname", "the computer name is the answer file's",
                 "'hostname ' + [System.Net.Dns]::GetHostName()", _hostname),
    WindowsCheck("administrator", "the new administrator is elevated over WinRM",
                 "$id = [Security.Principal.WindowsIdentity]::GetCurrent()\n"
                 "'user ' + $id.Name\n"
                 "'admin ' + (New-Object Security.Principal.WindowsPrincipal $id).IsInRole("
                 "[Security.Principal.WindowsBuiltInRole]::Administrator)", _administrator),
    WindowsCheck("sysprep", "Sysprep's first boot finished",
                 "$state = Get-ItemProperty -ErrorAction SilentlyContinue"
                 " -LiteralPath 'HKLM:\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Setup\\State'\n"
                 "'image-state ' + $state.ImageState\n"
                 "$setup = Get-ItemProperty -LiteralPath 'HKLM:\\SYSTEM\\Setup' -ErrorAction SilentlyContinue\n"
                 "'setup-in-progress ' + $setup.SystemSetupInProgress", _sysprep),
    WindowsCheck("build-user-gone", "the build user is gone",
                 f"$name = {_BUILD_USER}\n"
                 "$found = @(Get-CimInstance -ClassName Win32_UserAccount -Filter 'LocalAccount=True' -ErrorAction Stop"
                 " | Where-Object { $_.Name -eq $name })\n"
                 "if ($found.Count) { $found | ForEach-Object { 'user ' + $_.Caption } } else { 'no-user' }\n"
                 "$folder = Join-Path $env:SystemDrive ('Users\\' + $name)\n"
                 "if (Test-Path -LiteralPath $folder) { 'profile ' + $folder }", _build_user_gone),
    WindowsCheck("network", "networking is up",
                 "Get-NetIPAddress -AddressFamily IPv4 -ErrorAction SilentlyContinue | ForEach-Object {"
                 " 'address ' + $_.IPAddress + '/' + $_.PrefixLength + ' ' + $_.InterfaceAlias }\n"
                 "Get-NetRoute -AddressFamily IPv4 -DestinationPrefix '0.0.0.0/0' -ErrorAction SilentlyContinue |"
                 " ForEach-Object { 'route ' + $_.NextHop + ' ' + $_.InterfaceAlias }", _network),
    WindowsCheck("setup-errors", "Windows setup logged no errors",
                 f"$log = {_PANTHER}\n"
                 "if (Test-Path -LiteralPath $log) {\n"
                 "    'size ' + (Get-Item -LiteralPath $log).Length\n"
                 "    Get-Content -LiteralPath $log -Tail 20 | ForEach-Object { '| ' + $_ }\n"
                 "} else { 'absent' }", _setup_errors),
)


def windows_check_command(check: WindowsCheck, spec: WindowsProofSpec) -> str:
    """The check's PowerShell; the build-user check names the user as a quoted literal."""
    return check.command.replace(_BUILD_USER, powershell_literal(spec.build_user))
