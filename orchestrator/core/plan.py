"""The build plan: what will be built, from what, in which steps. Pure and JSON-serializable.

The plan is made from the template and the resolved source (the catalog lookup is an
effect done before); its digest, with the digests of every download, identifies the build:
the same digest means the same image, so a finished one need not be built again.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from orchestrator.core import model as m
from orchestrator.core.vmsizes import vm_resources
from orchestrator.core.problems import Problem
from orchestrator.errors import TemplateInvalid

MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclass(frozen=True)
class ResolvedSource:
    """The local image a template's source names, as the catalog resolved it at build time."""

    description: str  # e.g. "PlatformImage Debian:debian-12:12:latest"
    path: str
    format: str  # qcow2 or raw
    virtual_size: int  # bytes
    sha256: str
    resolved_version: str | None = None
    os_type: str | None = None  # what the store recorded of the image (the build that made it)


@dataclass(frozen=True)
class Download:
    url: str
    sha256: str | None
    customizer: str  # the step that uses it
    json_path: str


@dataclass(frozen=True)
class Step:
    """One customizer (or validation) in run order."""

    index: int
    name: str
    kind: str  # Shell, PowerShell, File, WindowsRestart, WindowsUpdate
    phase: str  # customize or validate
    inline: tuple[str, ...] | None = None
    download: Download | None = None
    destination: str | None = None
    run_elevated: bool = False
    run_as_system: bool = False
    valid_exit_codes: tuple[int, ...] = (0,)
    restart_command: str | None = None
    restart_check_command: str | None = None
    restart_timeout: str | None = None
    search_criteria: str | None = None
    filters: tuple[str, ...] = ()
    update_limit: int | None = None


@dataclass(frozen=True)
class TargetPlan:
    run_output_name: str
    kind: str  # VHD, ManagedImage, SharedImage
    artifact_id: str | None = None  # the Azure-shaped ID naming the local object
    uri: str | None = None
    regions: tuple[str, ...] = ()
    exclude_from_latest: bool = False
    artifact_tags: tuple[tuple[str, str], ...] = ()
    # SharedImage: versioning {scheme Latest|Source, major}, the storage account type (for the
    # version and per region), replicaCount per region
    versioning_scheme: str | None = None
    versioning_major: int | None = None
    storage_account_type: str | None = None
    region_settings: tuple[tuple[str, int, str | None], ...] = ()  # (region, replicaCount, storageAccountType)


@dataclass(frozen=True)
class BuildPlan:
    name: str
    os_type: str
    os_type_reason: str
    source: ResolvedSource
    cpus: int
    memory_mib: int
    disk_size_mib: int
    timeout_minutes: int
    steps: tuple[Step, ...]
    targets: tuple[TargetPlan, ...]
    vm_size: str
    deprovision_command: str
    deprovision_override: str
    on_customizer_error: str = "cleanup"
    on_validation_error: str = "cleanup"
    # validate: distribute even when a validation fails (the run still ends Failed, as in AIB);
    # validate the source as it is (no customizers run)
    continue_distribute_on_failure: bool = False
    source_validation_only: bool = False

    @property
    def downloads(self) -> tuple[Download, ...]:
        return tuple(s.download for s in self.steps if s.download is not None)

    def to_dict(self) -> dict:
        return asdict(self)



def make_plan(template: m.ImageTemplate, source: ResolvedSource, name: str) -> BuildPlan:
    cpus, memory = vm_resources(template.vm_profile.vm_size)
    source_mib = -(-source.virtual_size // MIB)  # whole MiB, rounded up
    requested_mib = template.vm_profile.os_disk_size_gb * 1024
    if requested_mib and requested_mib < source_mib:
        raise TemplateInvalid([Problem(
            "$.properties.vmProfile.osDiskSizeGB", "disk-grow-only",
            f"{template.vm_profile.os_disk_size_gb} GB is smaller than the source image "
            f"({source_mib / 1024:.1f} GiB): a disk can only grow",
            "raise osDiskSizeGB, or set it to 0 to keep the source size")], name)
    validate = template.validate or m.Validation()
    customize = () if validate.source_validation_only else template.customize
    steps = [_step(i, i, c, "customize") for i, c in enumerate(customize, 1)]
    if template.validate is not None:
        offset = len(steps)
        steps += [_step(offset + i, i, c, "validate") for i, c in enumerate(template.validate.in_vm_validations, 1)]
    os_type, os_reason = template.os_type, template.os_type_reason
    if source.os_type and os_reason.startswith("the default"):  # the template says nothing; the store does
        os_type, os_reason = source.os_type, "the image store's record of the source"
    windows = os_type == "Windows"
    return BuildPlan(
        name=name,
        os_type=os_type,
        os_type_reason=os_reason,
        source=source,
        cpus=cpus,
        memory_mib=memory,
        disk_size_mib=max(source_mib, requested_mib),
        timeout_minutes=template.build_timeout_minutes,
        steps=tuple(steps),
        targets=tuple(_target(t) for t in template.distribute),
        vm_size=template.vm_profile.vm_size,
        deprovision_command="Sysprep" if windows else m.LINUX_DEPROVISION_COMMAND,
        deprovision_override=m.WINDOWS_DEPROVISION_OVERRIDE if windows else m.LINUX_DEPROVISION_OVERRIDE,
        on_customizer_error=template.error_handling.on_customizer_error,
        on_validation_error=template.error_handling.on_validation_error,
        continue_distribute_on_failure=validate.continue_distribute_on_failure,
        source_validation_only=validate.source_validation_only,
    )


def _step(index: int, position: int, c: m.Customizer, phase: str) -> Step:
    """`index` counts every step in run order; `position` (from 1) is the step's place in its own
    JSON list, customize or validate.inVMValidations."""
    at = f"$.properties.{'customize' if phase == 'customize' else 'validate.inVMValidations'}[{position - 1}]"
    if isinstance(c, (m.ShellCustomizer, m.PowerShellCustomizer)):
        download = Download(c.script_uri, c.sha256, c.name, f"{at}.scriptUri") if c.script_uri else None
        extra = {}
        if isinstance(c, m.PowerShellCustomizer):
            extra = dict(run_elevated=c.run_elevated, run_as_system=c.run_as_system,
                         valid_exit_codes=c.valid_exit_codes)
        return Step(index, c.name, c.kind, phase, inline=c.inline, download=download, **extra)
    if isinstance(c, m.FileCustomizer):
        return Step(index, c.name, c.kind, phase,
                    download=Download(c.source_uri, c.sha256, c.name, f"{at}.sourceUri"),
                    destination=c.destination)
    if isinstance(c, m.WindowsRestartCustomizer):
        return Step(index, c.name, c.kind, phase, restart_command=c.restart_command,
                    restart_check_command=c.restart_check_command, restart_timeout=c.restart_timeout)
    return Step(index, c.name, c.kind, phase, search_criteria=c.search_criteria, filters=c.filters,
                update_limit=c.update_limit)


def _target(t: m.Target) -> TargetPlan:
    if isinstance(t, m.VhdTarget):
        return TargetPlan(t.run_output_name, "VHD", uri=t.uri, artifact_tags=t.artifact_tags)
    if isinstance(t, m.ManagedImageTarget):
        return TargetPlan(t.run_output_name, "ManagedImage", artifact_id=t.image_id, regions=(t.location,),
                          artifact_tags=t.artifact_tags)
    regions = t.replication_regions or tuple(r.name for r in t.target_regions)
    return TargetPlan(t.run_output_name, "SharedImage", artifact_id=t.gallery_image_id, regions=regions,
                      exclude_from_latest=t.exclude_from_latest, artifact_tags=t.artifact_tags,
                      versioning_scheme=t.versioning_scheme, versioning_major=t.versioning_major,
                      storage_account_type=t.storage_account_type,
                      region_settings=tuple((r.name, r.replica_count, r.storage_account_type)
                                            for r in t.target_regions))
