"""Reads an AIB image template (parsed JSON) into the model, reporting every problem at once."""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from orchestrator.core import model as m
from orchestrator.core.customizers import (check_customizer_os, check_file_destinations, check_unique_names,
                                           read_customizers)
from orchestrator.core.fields import (API_2019, API_2020, API_RE, COMMAND_FIELDS, GALLERY_VERSION_RE,
                                      IMAGE_VERSION_ID_RE, KNOWN_API_VERSIONS, MANAGED_IMAGE_ID_RE, NEWEST_API,
                                      PLACEHOLDER_RE, SUBNET_ID_RE, TEMPLATE_TYPES, WINDOWS_HINTS, before_2020,
                                      checksum_field, is_version, resource_id_field, uri_field)
from orchestrator.core.problems import NOTE, Problem, child, errors_of, strict
from orchestrator.core.reader import ObjectReader
from orchestrator.core.vmsizes import VM_SIZES, size_from_name
from orchestrator.core.targets import check_run_outputs, read_target
from orchestrator.errors import TemplateInvalid

# The sections of the template live in their own modules: customizers.py (customize and
# validate.inVMValidations), targets.py (distribute), fields.py (shared patterns and readers).


def load_template(data: Any, source: str = "template", *, strict_mode: bool = False) -> m.ImageTemplate:
    """Returns the model (with its warnings and notes), or raises TemplateInvalid listing every
    error and, apart, every warning. `strict_mode` makes the warnings errors."""
    problems: list[Problem] = []
    template = read_template(data, problems)
    problems = _one_read_only_note(problems)
    if strict_mode:
        problems = strict(problems)
    if errors_of(problems) or template is None:
        raise TemplateInvalid(problems, source)
    return dataclasses.replace(template, warnings=tuple(problems))


def _one_read_only_note(problems: list[Problem]) -> list[Problem]:
    """The read-only fields of a template read back from the service, said once."""
    read_only = [p.path for p in problems if p.rule == "read-only"]
    if len(read_only) < 2:
        return problems
    note = Problem("$", "read-only", f"a template as the service returns it: its read-only fields are ignored "
                   f"({', '.join(read_only)})", severity=NOTE)
    rest = [p for p in problems if p.rule != "read-only"]
    return [note, *rest]


def read_template(data: Any, problems: list[Problem]) -> m.ImageTemplate | None:
    if not isinstance(data, dict):
        problems.append(Problem("$", "type", "a template must be a JSON object",
                                "the file should start with `{` and hold one imageTemplates resource"))
        return None
    if not {k.lower() for k in data} & {"properties", "type", "apiversion"}:
        problems.append(Problem("$", "not-a-template",
                                "this is not an image template: it has no `type`, `apiVersion` or `properties`",
                                "give the JSON of a Microsoft.VirtualMachineImages/imageTemplates resource, "
                                "or an ARM deployment template holding one in `resources`"))
        return None
    problems.extend(find_placeholders(data, "$"))
    root = ObjectReader(data, "$", problems)
    kind = root.string("type")
    if kind is not None and kind.lower() not in TEMPLATE_TYPES:
        root.problem("type", "resource-type", f"`{kind}` is not an image template",
                     "use \"type\": \"Microsoft.VirtualMachineImages/imageTemplates\"")
    api = root.string("apiVersion")
    if api is None and not root.has("apiVersion"):  # `az image builder create` takes the body alone
        root.note(None, "api-version-default", f"no apiVersion: read as {NEWEST_API} (the newest this "
                  "orchestrator knows), as the Azure tools send a request body", f"add \"apiVersion\": \"{NEWEST_API}\"")
        api = NEWEST_API
    elif api is not None and not API_RE.match(api):
        root.problem("apiVersion", "api-version", f"`{api}` is not an API version",
                     f"use one of {', '.join(KNOWN_API_VERSIONS)}")
        api = None
    elif api is not None and api < API_2019:
        root.problem("apiVersion", "api-version", f"`{api}` is older than any imageTemplates API",
                     f"use {API_2020} or newer")
    api = api or API_2020
    name = root.string("name")
    location = root.string("location")
    tags = root.string_map("tags")
    identity = _identity(root)
    depends_on = root.strings("dependsOn") or ()
    root.ignore("comments", "$schema")
    root.read_only("id", "systemData", "etag")
    props = root.object("properties", required=True)
    root.finish()
    if props is None:
        return None

    timeout = props.get("buildTimeoutInMinutes", int, 0)
    if timeout is not None and not 0 <= timeout <= m.MAX_TIMEOUT_MINUTES:
        props.problem("buildTimeoutInMinutes", "timeout-range",
                      f"{timeout} is out of range: 0 to {m.MAX_TIMEOUT_MINUTES} minutes",
                      "0 or absent means the default, 240 minutes")
        timeout = 0
    vm_profile = _vm_profile(props, api)
    source = _source(props, api)
    customize = tuple(read_customizers(props, "customize", api))
    validate, checks_path = _validate(props, api)
    error_handling = _error_handling(props)
    distribute = tuple(props.objects("distribute", lambda obj: read_target(obj, api), required=True))
    if props.has("distribute") and not distribute and not any(p.path.startswith(props.path_of("distribute")) for p in problems):
        props.problem("distribute", "empty", "at least one distribution target is required",
                      "add e.g. {\"type\": \"VHD\", \"runOutputName\": \"vhd\"}")
    staging = props.string("stagingResourceGroup")
    props.read_only("provisioningState", "provisioningError", "lastRunStatus", "exactStagingResourceGroup")
    props.ignore("autoRun", "optimize", "managedResourceTags")
    props.finish()

    check_unique_names(customize, props.path_of("customize"), problems)
    check_run_outputs(distribute, props.path_of("distribute"), problems)
    os_type, os_reason = infer_os_type(source, customize)
    check_file_destinations(customize, os_type, props.path_of("customize"), problems)
    check_customizer_os(customize, os_type, props.path_of("customize"), problems)
    if validate is not None:
        check_file_destinations(validate.in_vm_validations, os_type, checks_path, problems)
        check_customizer_os(validate.in_vm_validations, os_type, checks_path, problems)
    if source is None:
        return None
    return m.ImageTemplate(
        api_version=api, source=source, distribute=distribute, customize=customize, name=name,
        location=location, tags=tags, identity=identity, depends_on=depends_on,
        build_timeout_minutes=timeout or m.DEFAULT_TIMEOUT_MINUTES, vm_profile=vm_profile,
        validate=validate, error_handling=error_handling, staging_resource_group=staging,
        os_type=os_type, os_type_reason=os_reason,
    )


def find_placeholders(value: Any, path: str) -> list[Problem]:
    """Every `<placeholder>` a sample template still holds, reported together."""
    found: list[Problem] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if PLACEHOLDER_RE.search(key):
                found.append(_placeholder(child(path, key), key))
            if key.lower() not in COMMAND_FIELDS:
                found.extend(find_placeholders(item, child(path, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(find_placeholders(item, child(path, index)))
    elif isinstance(value, str) and PLACEHOLDER_RE.search(value):
        found.append(_placeholder(path, value))
    return found


def _placeholder(path: str, text: str) -> Problem:
    names = ", ".join(dict.fromkeys(PLACEHOLDER_RE.findall(text)))
    return Problem(path, "placeholder", f"unfilled placeholder {names}",
                   "replace it with a real value, or pass a parameters file")


def infer_os_type(source: m.Source | None, customize: tuple[m.Customizer, ...]) -> tuple[str, str]:
    """(OS, why): a catalog image's publisher/offer say it; for a managed image or gallery
    version, whose ID says nothing, the customizers do (a Shell step means Linux; PowerShell,
    WindowsRestart and WindowsUpdate mean Windows), else Linux."""
    if isinstance(source, m.PlatformImageSource):
        text = f"{source.publisher} {source.offer}".lower()
        return ("Windows" if any(word in text for word in WINDOWS_HINTS) else "Linux"), \
            "the source's publisher and offer"
    windows_only = (m.WindowsRestartCustomizer, m.WindowsUpdateCustomizer, m.PowerShellCustomizer)
    if any(isinstance(c, m.ShellCustomizer) for c in customize):
        return "Linux", "a Shell customizer"
    if any(isinstance(c, windows_only) for c in customize):
        return "Windows", "its Windows customizers"
    if any(isinstance(c, m.FileCustomizer) and re.match(r"^[A-Za-z]:\\", c.destination) for c in customize):
        return "Windows", "a File destination with a drive letter"
    return "Linux", "the default (nothing in the template says Windows)"


def _identity(root: ObjectReader) -> m.Identity | None:
    obj = root.object("identity")
    if obj is None or not obj.value:
        if obj is not None:
            obj.finish()
        return None
    kind = obj.string("type", required=True) or "None"
    if kind.lower() not in ("userassigned", "none"):
        obj.problem("type", "identity-type", f"`{kind}` is not supported",
                    "AIB supports \"UserAssigned\" (one identity) or \"None\"")
    obj.read_only("principalId", "tenantId")  # a system-assigned identity, as GET returns it
    users = obj.get("userAssignedIdentities", dict, {}) or {}
    if len(users) > 1:
        obj.problem("userAssignedIdentities", "one-identity",
                    f"{len(users)} identities given; AIB accepts exactly one user-assigned identity")
    if kind.lower() == "userassigned" and not users:
        obj.problem("userAssignedIdentities", "required", "a UserAssigned identity needs one entry")
    obj.finish()
    return m.Identity(kind, tuple(users))


def _vm_profile(props: ObjectReader, api: str) -> m.VmProfile:
    obj = props.object("vmProfile")
    if obj is None:
        return m.VmProfile()
    size = obj.string("vmSize", m.DEFAULT_VM_SIZE) or m.DEFAULT_VM_SIZE
    if size.lower() not in VM_SIZES and not PLACEHOLDER_RE.search(size):
        derived = size_from_name(size)
        if derived is None:
            obj.problem("vmSize", "vm-size", f"`{size}` is not an Azure VM size name",
                        "use an Azure size such as Standard_D2s_v5, Standard_B2as_v2 or Standard_B2s")
        else:
            obj.note("vmSize", "vm-size-derived", f"`{size}` is not in the size table: {derived.why}")
    disk = obj.get("osDiskSizeGB", int, 0)
    if disk is not None and not 0 <= disk <= 2048:
        obj.problem("osDiskSizeGB", "disk-size", f"{disk} GB is out of range: 0 to 2048",
                    "0 keeps the source image's size")
        disk = 0
    vnet = None
    vnet_obj = obj.object("vnetConfig")
    if vnet_obj is not None:
        vnet = m.VnetConfig(
            subnet_id=vnet_obj.string("subnetId"), name=vnet_obj.string("name"),
            subnet_name=vnet_obj.string("subnetName"),
            resource_group_name=vnet_obj.string("resourceGroupName"),
            proxy_vm_size=vnet_obj.string("proxyVmSize"))
        vnet_obj.ignore("containerInstanceSubnetId")
        old = (vnet.name, vnet.subnet_name, vnet.resource_group_name)
        if vnet.subnet_id and any(old):
            vnet_obj.problem(None, "vnet-spelling", "give either subnetId or name/subnetName/resourceGroupName, not both")
        elif any(old) and not before_2020(api):
            # the 2019-05-01-preview spelling; API 2020-02-14 replaced it with subnetId
            vnet_obj.problem(None, "vnet-spelling",
                             f"name/subnetName/resourceGroupName is the API {API_2019} spelling; "
                             f"API {api} takes subnetId",
                             "\"subnetId\": \"/subscriptions/S/resourceGroups/"
                             f"{vnet.resource_group_name or 'RG'}/providers/Microsoft.Network/virtualNetworks/"
                             f"{vnet.name or 'V'}/subnets/{vnet.subnet_name or 'N'}\"")
        elif any(old) and not all(old):
            vnet_obj.problem(None, "vnet-spelling", "name, subnetName and resourceGroupName go together",
                             f"or use subnetId (API {API_2020} and newer)")
        elif not vnet.subnet_id and not any(old):
            vnet_obj.problem(None, "required", "vnetConfig needs subnetId" if not before_2020(api) else
                             "vnetConfig needs name, subnetName and resourceGroupName")
        elif vnet.subnet_id and before_2020(api):
            vnet_obj.problem("subnetId", "vnet-spelling", f"subnetId is the API {API_2020} spelling; "
                             f"API {API_2019} takes name, subnetName and resourceGroupName",
                             f"use apiVersion {API_2020} or newer, or the three {API_2019} fields")
        else:
            resource_id_field(vnet_obj, "subnetId", vnet.subnet_id, SUBNET_ID_RE, "not a subnet resource ID",
                         "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Network/virtualNetworks/V/subnets/N")
        vnet_obj.finish()
    identities = obj.get("userAssignedIdentities", list, []) or []
    obj.finish()
    return m.VmProfile(vm_size=size, os_disk_size_gb=disk or 0, vnet_config=vnet,
                       user_assigned_identities=tuple(str(i) for i in identities))


def _source(props: ObjectReader, api: str) -> m.Source | None:
    obj = props.object("source", required=True)
    if obj is None:
        return None
    kind = obj.string("type", required=True, hint="PlatformImage, ManagedImage, SharedImageVersion or ISO")
    source: m.Source | None = None
    lowered = (kind or "").lower()
    if lowered == "platformimage":
        fields = [obj.string(f, required=True) for f in ("publisher", "offer", "sku")]
        version = obj.string("version", "latest") or "latest"
        if not is_version(version, latest=True) and not PLACEHOLDER_RE.search(version):
            obj.problem("version", "version-format", f"`{version}` is not `latest` or a version number",
                        "e.g. \"latest\" or \"18.04.201903060\" (`orchestrate image list` shows the imported versions)")
        plan = _plan_info(obj)
        obj.ignore("exactVersion")  # read-only, reported by newer APIs
        if all(fields):
            source = m.PlatformImageSource(*fields, version=version, plan_info=plan)  # type: ignore[misc]
    elif lowered == "managedimage":
        image_id = obj.string("imageId", required=True)
        resource_id_field(obj, "imageId", image_id, MANAGED_IMAGE_ID_RE, "not a managed image resource ID",
                     "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/images/NAME")
        source = m.ManagedImageSource(image_id) if image_id else None
    elif lowered == "sharedimageversion":
        version_id = obj.string("imageVersionId", required=True)
        if resource_id_field(obj, "imageVersionId", version_id, IMAGE_VERSION_ID_RE,
                        "not a gallery image version resource ID",
                        ".../galleries/G/images/DEF/versions/VER (VER may be `latest`)"):
            found = GALLERY_VERSION_RE.search(version_id)
            if found and not is_version(found.group(1), latest=True):
                obj.problem("imageVersionId", "version-format",
                            f"`{found.group(1)}` is not `latest` or an image version number",
                            ".../versions/1.0.0 or .../versions/latest")
        source = m.SharedImageVersionSource(version_id) if version_id else None
    elif lowered == "iso":
        uri = uri_field(obj, "sourceURI", required=True)
        sha = checksum_field(obj, required=True)
        if api != API_2019:
            obj.problem("type", "iso-retired", f"ISO sources exist only in API {API_2019}; AIB retired them",
                        f"use apiVersion {API_2019}, or a PlatformImage source")
        source = m.IsoSource(uri, sha) if uri and sha else None
    elif kind is not None:
        obj.problem("type", "source-type", f"unknown source type `{kind}`",
                    "use PlatformImage, ManagedImage, SharedImageVersion or ISO")
    if source is not None or kind is None or lowered in ("platformimage", "managedimage", "sharedimageversion", "iso"):
        obj.finish(f"for a {kind} source" if kind else None)
    return source


def _plan_info(obj: ObjectReader) -> m.PlanInfo | None:
    plan = obj.object("planInfo")
    if plan is None:
        return None
    values = [plan.string(f) for f in ("planName", "planProduct", "planPublisher")]
    plan.finish()
    if any(values) and not all(values):
        plan.problem(None, "plan-info", "planName, planProduct and planPublisher go together: all three or none")
        return None
    return m.PlanInfo(*values) if all(values) else None  # type: ignore[arg-type]


def _validate(props: ObjectReader, api: str) -> tuple[m.Validation | None, str]:
    obj = props.object("validate")
    if obj is None:
        return None, child(props.path_of("validate"), "inVMValidations")
    checks = tuple(read_customizers(obj, "inVMValidations", api, validation=True))
    result = m.Validation(
        in_vm_validations=checks,
        continue_distribute_on_failure=bool(obj.get("continueDistributeOnFailure", bool, False)),
        source_validation_only=bool(obj.get("sourceValidationOnly", bool, False)))
    obj.finish()
    check_unique_names(checks, obj.path_of("inVMValidations"), obj.problems)
    return result, obj.path_of("inVMValidations")


def _error_handling(props: ObjectReader) -> m.ErrorHandling:
    obj = props.object("errorHandling")
    if obj is None:
        return m.ErrorHandling()
    values = []
    for name in ("onCustomizerError", "onValidationError"):
        value = (obj.string(name) or "cleanup")
        if value.lower() not in ("cleanup", "abort"):
            obj.problem(name, "error-handling", f"`{value}` is not cleanup or abort")
            value = "cleanup"
        values.append(value.lower())
    obj.finish()
    return m.ErrorHandling(*values)


