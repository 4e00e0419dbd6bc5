"""libvirt storage pools and volumes (libvirt-python): the one module that talks to libvirt.

Every libvirt error is raised again as a StoreError that says what was being done
("cannot create volume X in pool Y: ...") with a hint, as virt-manager does. Pools are `dir`
pools (libvirt's `dir`, `fs` and `netfs` types have a target directory): a volume is a file
there that QEMU can read as a build's source.
"""
from __future__ import annotations

import contextlib
import fcntl

import os
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from orchestrator.errors import Canceled, EnvironmentProblem

DIR_POOL_TYPES = ("dir", "fs", "netfs")
SETUP_HINT = "start it (scripts/setup-host.sh starts virtlogd and libvirtd), or set [libvirt] uri in {config}"


class StoreError(EnvironmentProblem):
    """libvirt refused or failed an operation on the image store."""


def _libvirt():
    try:
        import libvirt  # type: ignore[import-not-found]
    except ImportError:
        raise StoreError("libvirt-python is not installed: managed images and galleries need it",
                         hint="run scripts/setup-host.sh (or pip install 'orchestrator[libvirt]')") from None
    return libvirt


def _why(exc: Exception) -> str:
    getter = getattr(exc, "get_error_message", None)
    return (getter() if getter else None) or str(exc)


class LibvirtStore:
    """A connection to one libvirt URI. Use as a context manager, or close()."""

    def __init__(self, uri: str, config_source: str = "the configuration file") -> None:
        self.uri = uri
        self.config_source = config_source
        libvirt = _libvirt()
        libvirt.registerErrorHandler(lambda ctx, err: None, None)  # no stray prints on stderr
        self._libvirt = libvirt
        try:
            self.conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise StoreError(f"cannot connect to libvirt at {uri} ([libvirt] uri): {_why(exc)}",
                             hint=SETUP_HINT.format(config=config_source)) from None

    @property
    def local(self) -> bool:
        """Whether the pools' directories are this host's (a remote URI names another host)."""
        host = urllib.parse.urlsplit(self.uri).hostname
        return host in (None, "", "localhost", "127.0.0.1")

    def close(self) -> None:
        try:
            self.conn.close()
        except self._libvirt.libvirtError:
            pass

    def __enter__(self) -> "LibvirtStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _fail(self, doing: str, exc: Exception, hint: str | None = None) -> StoreError:
        return StoreError(f"cannot {doing} (libvirt {self.uri}): {_why(exc)}",
                          hint=hint or "check `virsh -c {0} pool-list --all` and the libvirtd log".format(self.uri))

    # --- pools ---------------------------------------------------------------------------
    def pool(self, name: str, create_in: Path | None = None):
        """The active pool `name`; a missing one is created as a dir pool in CREATE_IN/NAME
        (defined, built, started, autostarted) when `create_in` is given."""
        libvirt = self._libvirt
        try:
            pool = self.conn.storagePoolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise self._fail(f"look up storage pool {name!r}", exc) from None
            if create_in is None:
                raise StoreError(f"there is no storage pool {name!r} at {self.uri}",
                                 hint=f"create it (virsh pool-define-as {name} dir --target DIR), or "
                                      "run `orchestrate store init` to create the configured pools") from None
            return self._create_pool_once(name, create_in)
        if pool.info()[0] != libvirt.VIR_STORAGE_POOL_RUNNING:
            # a pool another run is creating (defined, not built yet) is started by that run:
            # wait for it, then start the pool only if it is still stopped
            with self._pool_lock(create_in):
                if not pool.isActive():
                    try:
                        pool.create(0)
                    except libvirt.libvirtError as exc:
                        if not pool.isActive():
                            raise self._fail(f"start storage pool {name!r}", exc,
                                             hint=f"virsh -c {self.uri} pool-start {name}") from None
        return self._checked(name, pool)

    @contextlib.contextmanager
    def _pool_lock(self, create_in: Path | None) -> Iterator[None]:
        """Pool creation and start, one at a time on this host (between processes and threads
        alike: flock holds per open file)."""
        if create_in is None:
            yield
            return
        create_in.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(create_in / ".orchestrator-pools.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _checked(self, name: str, pool):
        kind = ElementTree.fromstring(pool.XMLDesc(0)).get("type")
        if kind not in DIR_POOL_TYPES:
            raise StoreError(f"storage pool {name!r} is of type {kind!r}: the image store needs a directory pool",
                             hint=f"map the region to a pool of type {', '.join(DIR_POOL_TYPES)} in "
                                  f"[pools] of {self.config_source}")
        return pool

    def _create_pool_once(self, name: str, create_in: Path):
        """Creates the pool unless another run did while this one waited: concurrent publishes
        to a new region would otherwise race between define, build and start."""
        with self._pool_lock(create_in):
            try:
                self.conn.storagePoolLookupByName(name)
            except self._libvirt.libvirtError:
                return self._create_pool(name, create_in / name)
        return self.pool(name, create_in)  # made meanwhile: started and checked as any other

    def _create_pool(self, name: str, path: Path):
        xml = (f"<pool type='dir'><name>{escape(name)}</name>"
               f"<target><path>{escape(str(path))}</path><permissions><mode>0700</mode></permissions></target></pool>")
        try:
            pool = self.conn.storagePoolDefineXML(xml, 0)
            pool.build(self._libvirt.VIR_STORAGE_POOL_BUILD_NEW if not path.exists() else 0)
            if not pool.isActive():
                pool.create(0)
            pool.setAutostart(1)
        except self._libvirt.libvirtError as exc:
            if self._active(name):  # another run created and started it meanwhile
                return self.conn.storagePoolLookupByName(name)
            raise self._fail(f"create storage pool {name!r} in {path}", exc,
                             hint="check that the directory can be created, or create the pool yourself") from None
        return pool

    def _active(self, name: str) -> bool:
        try:
            return bool(self.conn.storagePoolLookupByName(name).isActive())
        except self._libvirt.libvirtError:
            return False

    def pool_dir(self, pool) -> Path:
        return Path(ElementTree.fromstring(pool.XMLDesc(0)).findtext("target/path") or "")

    def remove_pool(self, name: str) -> None:
        """Stops and undefines a pool (its volumes deleted first); used by tests and admins."""
        libvirt = self._libvirt
        try:
            pool = self.conn.storagePoolLookupByName(name)
        except libvirt.libvirtError:
            return
        try:
            if pool.isActive():
                pool.refresh(0)
                for vol in pool.listAllVolumes(0):
                    vol.delete(0)
                pool.destroy()
            pool.undefine()
        except libvirt.libvirtError as exc:
            raise self._fail(f"remove storage pool {name!r}", exc) from None

    # --- volumes -------------------------------------------------------------------------
    def create_volume(self, pool, name: str, capacity: int) -> str:
        """An empty raw volume (sparse, owner-only); returns its path."""
        xml = (f"<volume><name>{escape(name)}</name><capacity unit='bytes'>{max(capacity, 1)}</capacity>"
               "<allocation>0</allocation><target><format type='raw'/>"
               "<permissions><mode>0600</mode></permissions></target></volume>")
        try:
            return pool.createXML(xml, 0).path()
        except self._libvirt.libvirtError as exc:
            raise self._fail(f"create volume {name!r} in pool {pool.name()!r}", exc,
                             hint="check the pool's free space and that no volume of that name is left "
                                  "(`orchestrate store sweep` removes what dead runs left)") from None

    def volume(self, pool, name: str):
        try:
            return pool.storageVolLookupByName(name)
        except self._libvirt.libvirtError:
            return None

    def volume_path(self, pool_name: str, name: str) -> str | None:
        try:
            pool = self.conn.storagePoolLookupByName(pool_name)
        except self._libvirt.libvirtError:
            return None
        vol = self.volume(pool, name)
        return vol.path() if vol is not None else None

    def delete_volume(self, pool, name: str) -> bool:
        """Deletes the volume if it is there; True if it was."""
        vol = self.volume(pool, name)
        if vol is None:
            return False
        try:
            vol.delete(0)
        except self._libvirt.libvirtError as exc:
            raise self._fail(f"delete volume {name!r} in pool {pool.name()!r}", exc) from None
        return True

    def refresh(self, pool) -> None:
        """Rescans a pool. libvirt refuses while another client creates a volume in it
        ("asynchronous jobs running"): that is waited for, up to 30 s."""
        deadline = time.monotonic() + 30
        while True:
            try:
                pool.refresh(0)
                return
            except self._libvirt.libvirtError as exc:
                if "asynchronous jobs" not in _why(exc) or time.monotonic() > deadline:
                    raise self._fail(f"refresh storage pool {pool.name()!r}", exc) from None
                time.sleep(0.05)

    def volume_names(self, pool) -> list[str]:
        try:
            return sorted(v.name() for v in pool.listAllVolumes(0))
        except self._libvirt.libvirtError as exc:
            raise self._fail(f"list the volumes of pool {pool.name()!r}", exc) from None

    def upload(self, pool, name: str, source: Path, cancel: threading.Event | None = None) -> None:
        """Streams a local file into a volume (the way for a remote libvirt, whose pool
        directories are not this host's)."""
        vol = self.volume(pool, name)
        if vol is None:
            raise StoreError(f"volume {name!r} vanished from pool {pool.name()!r} before its upload")
        size = source.stat().st_size
        stream = self.conn.newStream(0)

        def read(_stream: Any, nbytes: int, handle: Any) -> bytes:
            if cancel is not None and cancel.is_set():
                raise Canceled("the build was canceled while uploading a volume")
            return handle.read(nbytes)

        try:
            vol.upload(stream, 0, size, 0)
            with open(source, "rb") as handle:
                stream.sendAll(read, handle)
            stream.finish()
        except self._libvirt.libvirtError as exc:
            try:
                stream.abort()
            except self._libvirt.libvirtError:
                pass
            raise self._fail(f"upload {source} into volume {name!r} of pool {pool.name()!r}", exc) from None
        except BaseException:
            try:
                stream.abort()
            except self._libvirt.libvirtError:
                pass
            raise

    def rename_in_pool(self, pool, partial: str, final: str) -> str:
        """A finished volume gets its final name: libvirt cannot rename a volume, so in a local
        directory pool the file is renamed (atomic, same directory) and the pool refreshed."""
        directory = self.pool_dir(pool)
        os.replace(directory / partial, directory / final)
        self.refresh(pool)
        vol = self.volume(pool, final)
        if vol is None:
            raise StoreError(f"volume {final!r} is not in pool {pool.name()!r} after its rename")
        return vol.path()
