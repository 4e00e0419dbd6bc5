"""Where things live, and what a host may configure: environment variables and one TOML file.

The configuration file is `config.toml` in the data home; `ORCHESTRATOR_CONFIG` or `--config`
names another. It is optional: without it nothing outside the data home may be written or
read on a template's behalf. tomllib (Python's own) reads it; a bad file gets its line.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config_fleet import FleetConfig, read_fleet
from orchestrator.errors import EnvironmentProblem, UsageError

HOME_ENV = "ORCHESTRATOR_HOME"
CONFIG_ENV = "ORCHESTRATOR_CONFIG"
ACCEL_ENV = "ORCHESTRATOR_ACCELERATOR"  # auto (default), kvm or tcg
PROOF_ENV = "ORCHESTRATOR_PROOF"  # on or off: overrides [proof] deploy (the tests turn it off)
# What ARM's resourceGroup() and subscription() return on-prem (defaults: "local", zero GUID).
ARM_ENV = {"ORCHESTRATOR_SUBSCRIPTION_ID": ("subscription", "subscriptionId"),
           "ORCHESTRATOR_RESOURCE_GROUP": ("resourceGroup", "name"),
           "ORCHESTRATOR_LOCATION": ("resourceGroup", "location")}

MIB = 1024 * 1024
FILE_SOURCE_MAX_BYTES = 20 * MIB  # AIB's limit for a File customizer's source
DEFAULT_SCRIPT_MAX_MIB = 64
DEFAULT_STALL_SECONDS = 60.0
DEFAULT_DOWNLOAD_SECONDS = 1800.0
PRIVATE_DIR = 0o700
DEFAULT_LIBVIRT_URI = "qemu:///system"
DEFAULT_POOL = "orchestrator"


@dataclass(frozen=True)
class Config:
    home: Path
    accelerator: str = "auto"
    packer: str = "packer"
    qemu_system: str = "qemu-system-x86_64"
    arm_context: tuple[tuple[str, str, str], ...] = ()  # (object, field, value)
    config_file: Path | None = None  # the file these settings came from, if any
    # Directories outside the data home that a VHD `uri` may name (resolved, absolute).
    vhd_dirs: tuple[Path, ...] = ()
    # Directories outside the data home's files/ and the template's own directory that a
    # file:// scriptUri/sourceUri may name.
    file_source_dirs: tuple[Path, ...] = ()
    script_max_bytes: int = DEFAULT_SCRIPT_MAX_MIB * MIB
    download_stall_seconds: float = DEFAULT_STALL_SECONDS  # no byte for this long: fail
    download_seconds: float = DEFAULT_DOWNLOAD_SECONDS  # all downloads of a build, at most
    vnc: bool = False  # the build VM's VNC console (127.0.0.1, per-run password) when asked for
    # The image store: libvirt storage pools holding managed images and gallery versions.
    libvirt_uri: str = DEFAULT_LIBVIRT_URI
    # The pool of a region that [pools.regions] does not name; None (a [pools] section without
    # `default`): such a region is refused.
    pool_default: str | None = DEFAULT_POOL
    pool_regions: tuple[tuple[str, str], ...] = ()  # (region, lowercased; pool)
    pools_dir: Path | None = None  # where missing pools are created (DIR/POOL); default: data home's pools/
    # storageAccountType (lowercased) -> the pool its replicas go to, whatever their region (a
    # storage tier: Premium_LRS on SSDs, Standard_ZRS on a replicated file system)
    pool_storage: tuple[tuple[str, str], ...] = ()
    # URL prefix -> a local directory (absolute path) or a local http(s) URL serving the same tree
    mirrors: tuple[tuple[str, str], ...] = ()
    # What concurrent runs may use of this host together ([capacity]); None: the host's CPUs
    # and three quarters of its memory
    capacity_cpus: int | None = None
    capacity_memory_mib: int | None = None
    # The CPU priority of a build once admitted (its Packer, QEMU, qemu-img...): builds are batch
    # work, the REST API, the CLI and the host's own services stay responsive beside them
    build_nice: int = 10
    # [proof]: boot each finished Linux image as a fresh VM and check it over SSH before it is
    # distributed (pipeline/prove.py); $ORCHESTRATOR_PROOF=off|on overrides `deploy`
    proof_deploy: bool = field(default_factory=lambda: os.environ.get(PROOF_ENV, "").strip().lower() != "off")
    proof_timeout_seconds: float = 600.0  # boot and checks together, at most
    # [retention]: how many gallery versions (per template and image definition) and VHDs (per
    # template and runOutputName) a template keeps; None (absent or 0): every one is kept
    retention_keep_versions: int | None = None
    retention_keep_vhds: int | None = None
    # [checkpoints]: a qcow2 layer after each customizer (resume, incremental rebuilds), kept
    # under the data home's checkpoints/ up to max_gib (least recently used evicted; 0: none kept)
    checkpoints_enabled: bool = True
    # [checkpoints] warm: the build VM's memory saved with each checkpoint, and a warm base of
    # each source and machine (a start without a boot); false: cold checkpoints only
    checkpoints_warm: bool = True
    checkpoints_max_bytes: int = 20 * 1024**3
    # [fleet]: this host is one build host of several: the state in PostgreSQL that every host
    # reaches, runs dispatched by Celery over RabbitMQ (None: one host, SQLite, the local queue)
    fleet: "FleetConfig | None" = None

    @property
    def database_url(self) -> str | None:
        """The fleet's PostgreSQL database (with its password: never print it; None: SQLite)."""
        return self.fleet.database_url if self.fleet else None

    def pool_for(self, region: str, storage_account_type: str | None = None) -> str | None:
        """The storage pool of a replica: its storageAccountType's pool if [pools.storage] names
        one, else its region's ([pools.regions]), else [pools] default; None when there is none."""
        by_storage = dict(self.pool_storage).get((storage_account_type or "").strip().lower())
        return by_storage or dict(self.pool_regions).get((region or "").strip().lower(), self.pool_default)

    @property
    def pool_directory(self) -> Path:
        return self.pools_dir or self.home / "pools"

    def setting_source(self) -> str:
        return str(self.config_file or self.home / "config.toml")

    def arm_functions(self) -> dict[str, dict[str, str]]:
        context: dict[str, dict[str, str]] = {}
        for obj, name, value in self.arm_context:
            context.setdefault(obj, {})[name] = value
        return context

    @property
    def db_path(self) -> Path:
        return self.home / "state.db"

    @property
    def images_dir(self) -> Path:
        return self.home / "images"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache" / "downloads"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def checkpoints_dir(self) -> Path:
        return self.home / "checkpoints"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def files_dir(self) -> Path:
        """Where file:// customizer sources may always live."""
        return self.home / "files"

    def ensure(self) -> "Config":
        """Creates the data home, owner-only (it holds run keys, logs and images)."""
        for path in (self.home, self.images_dir, self.cache_dir, self.runs_dir, self.artifacts_dir):
            make_private_dir(path, hint=f"set {HOME_ENV} to a writable directory")
        try:
            if self.home.stat().st_mode & 0o077:
                os.chmod(self.home, PRIVATE_DIR)
        except OSError as exc:
            raise EnvironmentProblem(f"cannot make {self.home} owner-only: {exc.strerror}",
                                     hint=f"set {HOME_ENV} to a directory you own") from exc
        return self


def make_private_dir(path: Path, hint: str = "check the path and its permissions") -> None:
    """mkdir -p with mode 0700 for every directory it creates."""
    try:
        path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot create {path}: {exc.strerror}", hint=hint) from exc


def default_home() -> Path:
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser().resolve()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser().resolve() / "orchestrator"


def load_config(home: str | None = None, config_file: str | None = None) -> Config:
    accel = os.environ.get(ACCEL_ENV, "auto").strip().lower() or "auto"
    if accel not in ("auto", "kvm", "tcg"):
        raise UsageError(f"{ACCEL_ENV}={accel!r} is not auto, kvm or tcg",
                         hint="unset it to let orchestrator probe whether KVM really runs a guest")
    path = Path(home).expanduser().resolve() if home else default_home()
    arm = tuple((obj, name, os.environ[var]) for var, (obj, name) in ARM_ENV.items() if os.environ.get(var))
    explicit = config_file or os.environ.get(CONFIG_ENV)
    file = Path(explicit).expanduser() if explicit else path / "config.toml"
    settings = _read_settings(file, required=bool(explicit))
    config_found = file if settings is not None else None
    proof = os.environ.get(PROOF_ENV, "").strip().lower()
    if proof not in ("", "on", "off"):
        raise UsageError(f"{PROOF_ENV}={proof!r} is not on or off", hint="unset it to follow [proof] deploy")
    if proof:
        settings = {**(settings or {}), "proof_deploy": proof == "on"}
    return Config(home=path, accelerator=accel, arm_context=arm, config_file=config_found, **(settings or {}))


# [section] key -> (Config field, kind)
_SETTINGS: dict[str, dict[str, tuple[str, str]]] = {
    "paths": {"vhd_dirs": ("vhd_dirs", "dirs"), "file_source_dirs": ("file_source_dirs", "dirs")},
    "downloads": {"script_max_mib": ("script_max_bytes", "mib"),
                  "stall_timeout_seconds": ("download_stall_seconds", "seconds"),
                  "total_timeout_seconds": ("download_seconds", "seconds")},
    "build_vm": {"vnc": ("vnc", "bool")},
    "libvirt": {"uri": ("libvirt_uri", "uri")},
    "pools": {"default": ("pool_default", "pool"), "dir": ("pools_dir", "dir"),
              "regions": ("pool_regions", "regions"), "storage": ("pool_storage", "regions")},
    "capacity": {"cpus": ("capacity_cpus", "count"), "memory_mib": ("capacity_memory_mib", "count"),
                 "nice": ("build_nice", "nice")},
    "proof": {"deploy": ("proof_deploy", "bool"), "timeout_seconds": ("proof_timeout_seconds", "seconds")},
    "retention": {"keep_versions": ("retention_keep_versions", "keep"),
                  "keep_vhds": ("retention_keep_vhds", "keep")},
    "checkpoints": {"enabled": ("checkpoints_enabled", "bool"), "max_gib": ("checkpoints_max_bytes", "gib"),
                    "warm": ("checkpoints_warm", "bool")},
    "mirrors": {},  # any URL prefix: read by _mirrors
    "fleet": {},  # read by config_fleet.read_fleet
}


_LIBVIRT_URI_RE = re.compile(r"^[a-z][a-z0-9+.-]*://[^\s]*$")
_POOL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _mirrors(file: Path, values: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """[mirrors] "https://raw.githubusercontent.com/org/" = "/srv/mirror/github" (a directory
    holding the same tree) or = "http://127.0.0.1:8080/github/" (a local server)."""
    found = []
    for prefix, target in values.items():
        if not re.match(r"^(https?|file)://[^\s]+$", prefix):
            raise UsageError(f"{file}: mirrors key {prefix!r} is not an http(s) URL prefix",
                             hint='e.g. "https://raw.githubusercontent.com/" = "/srv/mirror/github"')
        if not isinstance(target, str) or not target:
            raise UsageError(f"{file}: mirrors.{prefix!r} = {target!r} is not a directory or http URL")
        if target.lower().startswith(("http://", "https://")):
            found.append((prefix, target))
            continue
        path = Path(target).expanduser()
        if not path.is_absolute():
            raise UsageError(f"{file}: mirrors.{prefix!r} = {target!r} is neither an absolute directory nor an "
                             "http(s) URL")
        found.append((prefix, str(path.resolve())))
    return tuple(sorted(found, key=lambda pair: -len(pair[0])))  # the longest prefix wins




def _read_settings(file: Path, *, required: bool) -> dict[str, Any] | None:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise UsageError(f"the configuration file {file} does not exist",
                             hint=f"create it, or unset {CONFIG_ENV} / drop --config") from None
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the configuration file {file}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its message names the line and column
        raise UsageError(f"the configuration file {file} is not valid TOML: {exc}",
                         hint="see the README's configuration section for the format") from None
    settings: dict[str, Any] = {}
    for section, values in data.items():
        known = _SETTINGS.get(section)
        if known is None or not isinstance(values, dict):
            raise UsageError(f"{file}: unknown section [{section}]",
                             hint=f"the sections are {', '.join(f'[{s}]' for s in _SETTINGS)}")
        if section == "mirrors":
            settings["mirrors"] = _mirrors(file, values)
            continue
        if section == "fleet":
            settings["fleet"] = read_fleet(file, values)
            continue
        if section == "pools":
            settings["pool_default"] = None  # a [pools] section says which regions have a pool
        for key, value in values.items():
            if key not in known:
                raise UsageError(f"{file}: unknown setting {key!r} in [{section}]",
                                 hint=f"[{section}] takes {', '.join(known)}")
            field, kind = known[key]
            settings[field] = _setting(file, f"{section}.{key}", kind, value)
    return settings


def _setting(file: Path, name: str, kind: str, value: Any) -> Any:
    def bad(expected: str) -> UsageError:
        return UsageError(f"{file}: {name} = {value!r} is not {expected}")

    if kind == "dirs":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise bad("a list of directory paths")
        dirs = []
        for item in value:
            path = Path(item).expanduser()
            if not path.is_absolute():
                raise UsageError(f"{file}: {name} entry {item!r} is not an absolute path")
            resolved = path.resolve()
            if resolved == Path("/"):
                raise UsageError(f"{file}: {name} may not allow the whole file system ({item!r})",
                                 hint="list the directories meant for images or files")
            dirs.append(resolved)
        return tuple(dirs)
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "uri":
        if not isinstance(value, str) or not _LIBVIRT_URI_RE.match(value):
            raise bad("a libvirt URI such as qemu:///system or qemu+ssh://host/system")
        return value
    if kind == "pool":
        if not isinstance(value, str) or not _POOL_RE.match(value):
            raise bad("a storage pool name (letters, digits, '.', '-', '_')")
        return value
    if kind == "dir":
        return _setting(file, name, "dirs", [value] if isinstance(value, str) else value)[0]
    if kind == "regions":
        if not isinstance(value, dict):
            raise bad("a table of region = \"pool\"")
        return tuple((region.strip().lower(), _setting(file, f"{name}.{region}", "pool", pool))
                     for region, pool in value.items())
    if kind == "keep":  # how many to keep; 0 keeps all, as an absent key does
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad("a whole number (0 keeps all)")
        return value or None
    if kind == "gib":  # a size cap in GiB; 0 allowed
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise bad("a size in GiB (0 or more)")
        return int(value * 1024**3)
    if kind == "nice":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 19:
            raise bad("a whole number from 0 (as other processes) to 19 (the lowest CPU priority)")
        return value
    if kind == "count":
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise bad("a positive whole number")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise bad("a positive number")
    return int(value * MIB) if kind == "mib" else float(value)
