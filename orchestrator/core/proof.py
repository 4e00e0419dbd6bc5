"""The deploy proof, as data: what a fresh VM from the finished image is given (a new
cloud-init NoCloud seed with a new user, key and hostname), the libvirt domain it runs in, the
checks it must pass over SSH, and how each check's output is judged. No I/O: the effects
(effects/proof_vm.py, effects/ssh_probe.py) and the phase (pipeline/prove.py) use it."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Callable

import yaml

PROOF_USER = "prover"
DOMAIN_PREFIX = "orchestrator-proof-"


@dataclass(frozen=True)
class ProofSpec:
    """One proof VM: everything it is made of, as the phase decided it."""

    run_id: str
    hostname: str
    public_key: str  # the proof user's key (new for this proof)
    build_user: str  # must be gone from the image
    build_public_key: str  # must be in no authorized_keys of the image
    build_machine_id: str  # what the build VM had; the proof VM must have another
    accelerator: str  # kvm or tcg
    cpus: int
    memory_mib: int
    disk: str  # the copy-on-write overlay (never the artifact)
    seed_iso: str
    console_log: str
    ssh_port: int
    emulator: str

    @property
    def domain_name(self) -> str:
        return DOMAIN_PREFIX + self.run_id


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail, "seconds": round(self.seconds, 2)}


@dataclass(frozen=True)
class ProofResult:
    checks: tuple[CheckResult, ...]
    boot_seconds: float | None
    total_seconds: float
    skipped: str = ""  # why no proof ran (off by flag or configuration, a Windows image)

    @property
    def passed(self) -> bool:
        return not self.skipped and bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def to_dict(self) -> dict[str, object]:
        if self.skipped:
            return {"status": "Skipped", "reason": self.skipped}
        return {"status": "Passed" if self.passed else "Failed",
                "bootSeconds": None if self.boot_seconds is None else round(self.boot_seconds, 1),
                "totalSeconds": round(self.total_seconds, 1),
                "checks": [c.to_dict() for c in self.checks]}


def seed_files(spec: ProofSpec) -> dict[str, str]:
    """NoCloud meta-data and user-data as a deployment would give them: a new instance, a new
    hostname, a new user with a new key; cloud-init's default modules all run (unlike the
    build VM's seed), so a broken first boot shows."""
    meta = {"instance-id": f"proof-{spec.run_id}", "local-hostname": spec.hostname}
    user = {
        "hostname": spec.hostname,
        "users": [{"name": PROOF_USER, "sudo": "ALL=(ALL) NOPASSWD:ALL", "lock_passwd": True,
                   "shell": "/bin/sh", "ssh_authorized_keys": [spec.public_key.strip()]}],
        "ssh_pwauth": False,
        "disable_root": True,
        "locale": False,  # minimal images have no locales package
        "manage_etc_hosts": True,
        # one host key type, as the build VM's seed: RSA keys take many seconds under TCG, and
        # what the check needs is that keys are made at first boot at all
        "ssh_genkeytypes": ["ed25519"],
    }
    dump = lambda data: yaml.safe_dump(data, default_flow_style=False, sort_keys=False, width=2**16)  # noqa: E731
    return {"meta-data": dump(meta), "user-data": "#cloud-config\n" + dump(user)}


def domain_xml(spec: ProofSpec) -> str:
    """A transient libvirt domain on the overlay and the seed. Its network is QEMU's user mode
    with SSH forwarded from 127.0.0.1 only (no bridge, no firewall rules on the host); QEMU
    runs as root without relabelling, since the overlay's backing chain lives in owner-only
    directories and must not change owner while a build reads it."""
    qemu_ns = "http://libvirt.org/schemas/domain/qemu/1.0"
    ET.register_namespace("qemu", qemu_ns)
    domain = ET.Element("domain", type="kvm" if spec.accelerator == "kvm" else "qemu")
    ET.SubElement(domain, "name").text = spec.domain_name
    ET.SubElement(domain, "memory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(domain, "vcpu").text = str(spec.cpus)
    os_el = ET.SubElement(domain, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_el, "boot", dev="hd")
    ET.SubElement(domain, "on_poweroff").text = "destroy"
    ET.SubElement(domain, "on_reboot").text = "restart"
    ET.SubElement(domain, "on_crash").text = "destroy"
    devices = ET.SubElement(domain, "devices")
    ET.SubElement(devices, "emulator").text = spec.emulator
    disk = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="qcow2")
    ET.SubElement(disk, "source", file=spec.disk)
    ET.SubElement(disk, "target", dev="vda", bus="virtio")
    seed = ET.SubElement(devices, "disk", type="file", device="cdrom")
    ET.SubElement(seed, "driver", name="qemu", type="raw")
    ET.SubElement(seed, "source", file=spec.seed_iso)
    ET.SubElement(seed, "target", dev="hdc", bus="ide")
    ET.SubElement(seed, "readonly")
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=spec.console_log)
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(devices, "rng", model="virtio").append(_backend())
    ET.SubElement(domain, "seclabel", type="static", model="dac", relabel="no").append(_label())
    commandline = ET.SubElement(domain, f"{{{qemu_ns}}}commandline")
    for arg in ("-netdev", f"user,id=proofnet,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22",
                "-device", "virtio-net-pci,netdev=proofnet,addr=0x1f"):  # a slot libvirt leaves free
        ET.SubElement(commandline, f"{{{qemu_ns}}}arg", value=arg)
    return ET.tostring(domain, encoding="unicode")


def _backend() -> ET.Element:
    backend = ET.Element("backend", model="random")
    backend.text = "/dev/urandom"
    return backend


def _label() -> ET.Element:
    label = ET.Element("label")
    label.text = "+0:+0"
    return label


# --- the checks: a command run over SSH as the proof user, and how its output is judged -------

Judge = Callable[[int, str, "ProofSpec"], tuple[bool, str]]


@dataclass(frozen=True)
class Check:
    name: str
    what: str  # one line, as the log and `status` say it
    command: str
    judge: Judge = field(repr=False)


def _hostname(rc: int, out: str, spec: ProofSpec) -> tuple[bool, str]:
    name = out.strip()
    return name == spec.hostname, f"hostname is {name!r} (the seed gave {spec.hostname!r})"


def _host_keys(rc: int, out: str, spec: ProofSpec) -> tuple[bool, str]:
    boot = next((int(line.split()[1]) for line in out.splitlines() if line.startswith("boot ")), None)
    keys = [line.split(" ", 2)[1:] for line in out.splitlines() if line.startswith("key ")]
    if boot is None or not keys:
        return False, "no SSH host keys found in /etc/ssh" if boot is not None else f"unreadable: {out[:200]!r}"
    old = [path for stamp, path in keys if int(stamp) < boot - 5]
    if old:
        return False, f"host keys older than this boot (made at build time and kept): {', '.join(old)}"
    return True, f"{len(keys)} host key(s), all made at this boot"


def _build_user_gone(rc: int, out: str, spec: ProofSpec) -> tuple[bool, str]:
    found = [line for line in out.splitlines() if line.strip() and not line.startswith("getent-rc=")]
    user_rc = next((line.split("=", 1)[1] for line in out.splitlines() if line.startswith("getent-rc=")), "?")
    if user_rc != "2":
        return False, f"the build user {spec.build_user!r} still exists"
    if found:
        return False, f"the build VM's SSH key is still authorized in: {', '.join(found)}"
    return True, f"no user {spec.build_user!r}, the build key is authorized nowhere"


_MACHINE_ID = re.compile(r"^[0-9a-f]{32}$")


def _machine_id(rc: int, out: str, spec: ProofSpec) -> tuple[bool, str]:
    value = out.strip()
    if not _MACHINE_ID.match(value):
        return False, f"/etc/machine-id is {value[:40]!r}, not a machine id made at first boot"
    if spec.build_machine_id and value == spec.build_machine_id:
        return False, f"/etc/machine-id is the build VM's ({value}): every VM from this image would share it"
    return True, "a new machine id"


def _network(rc: int, out: str, spec: ProofSpec) -> tuple[bool, str]:
    addresses = [line for line in out.splitlines() if " inet " in line]
    routes = [line for line in out.splitlines() if line.startswith("default ")]
    if not addresses or not routes:
        return False, "no IPv4 address" if not addresses else "no default route"
    return True, f"{addresses[0].split()[1]} {addresses[0].split()[3]}, {routes[0]}"


def _cloud_init(rc: int, out: str, spec: ProofSpec) -> tuple[bool, str]:
    status = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("status:")), "")
    errors = [line.strip() for line in out.splitlines() if "error" in line.lower() and "errors: []" not in line]
    if rc != 0 or status != "done":
        return False, f"cloud-init status {status or '?'} (exit {rc}): " + ("; ".join(errors[:3]) or out.strip()[:200])
    return True, "cloud-init finished: status done"


CHECKS: tuple[Check, ...] = (
    Check("hostname", "the hostname is the seed's", "hostname", _hostname),
    Check("ssh-host-keys", "SSH host keys were made at this boot",
          'echo "boot $(( $(date +%s) - $(cut -d. -f1 /proc/uptime) ))"; '
          'for f in /etc/ssh/ssh_host_*_key; do [ -e "$f" ] && echo "key $(stat -c %Y "$f") $f"; done; true',
          _host_keys),
    Check("build-user-gone", "the build user and its key are gone", "", _build_user_gone),
    Check("machine-id", "a machine id of its own", "cat /etc/machine-id", _machine_id),
    Check("network", "networking is up", "ip -4 -o addr show scope global; ip -4 route show default", _network),
    Check("cloud-init", "cloud-init finished without errors", "cloud-init status --wait --long", _cloud_init),
)


def check_command(check: Check, spec: ProofSpec) -> str:
    """The command of a check; the build-user check names the user and the key's base64."""
    if check.name != "build-user-gone":
        return check.command
    key = spec.build_public_key.split()[1] if len(spec.build_public_key.split()) > 1 else spec.build_public_key
    return (f"getent passwd {spec.build_user} >/dev/null; echo getent-rc=$?; "
            f"sudo grep -rlF -- '{key}' /home /root /etc/ssh 2>/dev/null; true")
