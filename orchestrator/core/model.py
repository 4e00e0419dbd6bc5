"""The image template as typed, frozen dataclasses.

Field names follow AIB's JSON. Nothing here reads JSON: document.py parses the text (and
unwraps ARM deployments with arm.py), template.py walks it with reader.py into these classes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union
from orchestrator.core.problems import Problem

DEFAULT_TIMEOUT_MINUTES = 240
MAX_TIMEOUT_MINUTES = 960
DEFAULT_VM_SIZE = "Standard_D1_v2"
LINUX_DEPROVISION_COMMAND = "/usr/sbin/waagent -force -deprovision+user && export HISTSIZE=0 && sync"
LINUX_DEPROVISION_OVERRIDE = "/tmp/DeprovisioningScript.sh"
WINDOWS_DEPROVISION_OVERRIDE = "C:\\DeprovisioningScript.ps1"


@dataclass(frozen=True)
class PlanInfo:
    plan_name: str
    plan_product: str
    plan_publisher: str


@dataclass(frozen=True)
class PlatformImageSource:
    publisher: str
    offer: str
    sku: str
    version: str
    plan_info: PlanInfo | None = None
    kind: str = "PlatformImage"


@dataclass(frozen=True)
class ManagedImageSource:
    image_id: str
    kind: str = "ManagedImage"


@dataclass(frozen=True)
class SharedImageVersionSource:
    image_version_id: str
    kind: str = "SharedImageVersion"


@dataclass(frozen=True)
class IsoSource:
    source_uri: str
    sha256: str
    kind: str = "ISO"


Source = Union[PlatformImageSource, ManagedImageSource, SharedImageVersionSource, IsoSource]


@dataclass(frozen=True)
class ShellCustomizer:
    name: str
    script_uri: str | None = None
    sha256: str | None = None
    inline: tuple[str, ...] | None = None
    kind: str = "Shell"


@dataclass(frozen=True)
class PowerShellCustomizer:
    name: str
    script_uri: str | None = None
    sha256: str | None = None
    inline: tuple[str, ...] | None = None
    run_elevated: bool = False
    run_as_system: bool = False
    valid_exit_codes: tuple[int, ...] = (0,)
    kind: str = "PowerShell"


@dataclass(frozen=True)
class FileCustomizer:
    name: str
    source_uri: str
    destination: str
    sha256: str | None = None
    kind: str = "File"


@dataclass(frozen=True)
class WindowsRestartCustomizer:
    name: str
    restart_command: str = 'shutdown /r /f /t 0 /c "packer restart"'
    restart_check_command: str | None = None
    restart_timeout: str = "5m"
    kind: str = "WindowsRestart"


@dataclass(frozen=True)
class WindowsUpdateCustomizer:
    name: str
    search_criteria: str = "BrowseOnly=0 and IsInstalled=0"
    filters: tuple[str, ...] = ()
    update_limit: int = 1000
    kind: str = "WindowsUpdate"


Customizer = Union[
    ShellCustomizer,
    PowerShellCustomizer,
    FileCustomizer,
    WindowsRestartCustomizer,
    WindowsUpdateCustomizer,
]


@dataclass(frozen=True)
class TargetRegion:
    name: str
    replica_count: int = 1
    storage_account_type: str | None = None


@dataclass(frozen=True)
class ManagedImageTarget:
    run_output_name: str
    image_id: str
    location: str
    artifact_tags: tuple[tuple[str, str], ...] = ()
    kind: str = "ManagedImage"


@dataclass(frozen=True)
class SharedImageTarget:
    run_output_name: str
    gallery_image_id: str
    replication_regions: tuple[str, ...] = ()
    target_regions: tuple[TargetRegion, ...] = ()
    exclude_from_latest: bool = False
    storage_account_type: str | None = None
    versioning_scheme: str | None = None  # "Latest" or "Source"
    versioning_major: int | None = None
    artifact_tags: tuple[tuple[str, str], ...] = ()
    kind: str = "SharedImage"


@dataclass(frozen=True)
class VhdTarget:
    run_output_name: str
    uri: str | None = None
    artifact_tags: tuple[tuple[str, str], ...] = ()
    kind: str = "VHD"


Target = Union[ManagedImageTarget, SharedImageTarget, VhdTarget]


@dataclass(frozen=True)
class VnetConfig:
    subnet_id: str | None = None
    # 2019-05-01-preview spelling
    name: str | None = None
    subnet_name: str | None = None
    resource_group_name: str | None = None
    proxy_vm_size: str | None = None


@dataclass(frozen=True)
class VmProfile:
    vm_size: str = DEFAULT_VM_SIZE
    os_disk_size_gb: int = 0
    vnet_config: VnetConfig | None = None
    user_assigned_identities: tuple[str, ...] = ()


@dataclass(frozen=True)
class Validation:
    in_vm_validations: tuple[Customizer, ...] = ()
    continue_distribute_on_failure: bool = False
    source_validation_only: bool = False


@dataclass(frozen=True)
class ErrorHandling:
    on_customizer_error: str = "cleanup"
    on_validation_error: str = "cleanup"


@dataclass(frozen=True)
class Identity:
    type: str
    user_assigned_identities: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageTemplate:
    api_version: str
    source: Source
    distribute: tuple[Target, ...]
    customize: tuple[Customizer, ...] = ()
    name: str | None = None
    location: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    identity: Identity | None = None
    depends_on: tuple[str, ...] = ()
    build_timeout_minutes: int = DEFAULT_TIMEOUT_MINUTES
    vm_profile: VmProfile = field(default_factory=VmProfile)
    validate: Validation | None = None
    error_handling: ErrorHandling = field(default_factory=ErrorHandling)
    staging_resource_group: str | None = None
    os_type: str = "Linux"  # "Linux" or "Windows", inferred from source and customizers
    os_type_reason: str = ""  # what the OS was inferred from, as `plan` says it
    warnings: tuple[Problem, ...] = ()  # what AIB would ignore or coerce, and notes; never errors
    # values that must never be shown or written outside the build (secure parameters, URL
    # credentials and query strings): see core/redact.py
    secrets: tuple[str, ...] = field(default=(), repr=False, compare=False)


@dataclass(frozen=True)
class Trigger:
    """An imageTemplates/triggers resource: rebuild when the source image changes."""

    kind: str
    location: str | None = None
