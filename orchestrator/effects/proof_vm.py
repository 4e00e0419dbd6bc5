"""The deploy proof's VM: a transient libvirt domain (it leaves no definition behind: once
destroyed, libvirt forgets it). libvirt errors are raised again as StoreError saying what was
being done, as effects/libvirt_store.py does for pools."""
from __future__ import annotations

import subprocess
from pathlib import Path
from types import TracebackType

from orchestrator.effects.libvirt_store import SETUP_HINT, StoreError, _libvirt, _why
from orchestrator.errors import BuildFailed


class ProofDomain:
    """`with ProofDomain(uri, xml, name) as vm:` starts the domain; leaving the block destroys
    it whatever happened (a failed check, a cancel, an error)."""

    def __init__(self, uri: str, xml: str, name: str) -> None:
        self.uri, self.xml, self.name = uri, xml, name
        self._libvirt = _libvirt()
        self._libvirt.registerErrorHandler(lambda ctx, err: None, None)
        self.conn = None
        self.domain = None

    def __enter__(self) -> "ProofDomain":
        try:
            self.conn = self._libvirt.open(self.uri)
        except self._libvirt.libvirtError as exc:
            raise StoreError(f"cannot connect to libvirt at {self.uri} to boot the deploy proof VM: {_why(exc)}",
                             hint=SETUP_HINT.format(config="the configuration file")
                             + "; or turn the proof off (--no-proof, [proof] deploy = false)") from None
        _destroy(self.conn, self.name)  # one of a crashed earlier attempt of this run
        try:
            self.domain = self.conn.createXML(self.xml, 0)
        except self._libvirt.libvirtError as exc:
            self.conn.close()
            raise StoreError(f"libvirt could not start the deploy proof VM {self.name}: {_why(exc)}",
                             hint="see libvirtd's log (/var/log/libvirt/qemu/); the domain XML is in the run's "
                                  "staging directory") from None
        return self

    def running(self) -> bool:
        try:
            return bool(self.domain is not None and self.domain.isActive())
        except self._libvirt.libvirtError:
            return False

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.conn is None:
            return
        try:
            _destroy(self.conn, self.name)
        finally:
            self.conn.close()


def _destroy(conn, name: str) -> bool:
    libvirt = _libvirt()
    try:
        domain = conn.lookupByName(name)
    except libvirt.libvirtError:
        return False
    try:
        domain.destroy()
    except libvirt.libvirtError as exc:
        if domain.isActive():
            raise StoreError(f"cannot stop the deploy proof VM {name}: {_why(exc)}",
                             hint=f"virsh destroy {name}") from None
    return True


def destroy_proof_domains(uri: str, names: list[str]) -> list[str]:
    """Stops the proof VMs of runs that died (recovery); the ones it found."""
    if not names:
        return []
    libvirt = _libvirt()
    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return []  # no libvirtd: no proof VM can be running either
    try:
        return [name for name in names if _destroy(conn, name)]
    finally:
        conn.close()


def make_seed_iso(files: dict[str, Path], iso: Path, label: str = "cidata", what: str = "seed ISO") -> None:
    """An ISO 9660 image with Joliet and Rock Ridge names, made with xorriso as Packer's cd_files
    makes the build VM's: the NoCloud seed (label cidata) of the Linux proof, the answer CD of
    the Windows one. `files`: name on the CD -> file on the host. Owner-only (an answer file
    holds a password), and whole or not at all."""
    part = iso.with_name(iso.name + ".part")
    command = ["xorriso", "-as", "mkisofs", "-quiet", "-output", str(part), "-volid", label, "-joliet", "-rock",
               "-graft-points", *[f"{name}={path}" for name, path in files.items()]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        part.unlink(missing_ok=True)
        raise StoreError(f"xorriso could not make the deploy proof's {what}: {result.stderr.strip()[-300:]}",
                         hint="install xorriso (scripts/setup-host.sh does)")
    part.chmod(0o600)
    part.rename(iso)


def make_overlay(disk: Path, overlay: Path) -> None:
    """A copy-on-write qcow2 overlay on the finished disk: the proof VM writes there, never into
    the disk that is distributed."""
    made = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(disk), str(overlay)],
                          capture_output=True, text=True, timeout=60)
    if made.returncode != 0:
        raise BuildFailed(f"cannot make the deploy proof's overlay on {disk}: {made.stderr.strip()}",
                          hint="see qemu-img's message; the disk must be readable qcow2")
