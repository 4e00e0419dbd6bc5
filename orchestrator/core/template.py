"""Reads an AIB image template (parsed JSON) into the model, reporting every problem at once."""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from orchestrator.core import model as m
from orchestrator.core.problems import Problem, child
from orchestrator.core.reader import ObjectReader
from orchestrator.core.vmsizes import VM_SIZES
from orchestrator.errors import TemplateInvalid

API_2019 = "2019-05-01-preview"
API_2020 = "2020-02-14"
KNOWN_API_VERSIONS = (API_2019, API_2020, "2021-10-01", "2022-02-14", "2022-07-01",
                      "2023-07-01", "2024-02-01", "2024-07-01", "2025-10-01")
_API_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
RUN_OUTPUT_NAME_RE = re.compile(r"^[A-Za-z0-9\-_.]{1,64}$")
_PLACEHOLDER_RE = re.compile(r"<[A-Za-z][A-Za-z0-9 _.\-]*>")
_SUB_RG = r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
MANAGED_IMAGE_ID_RE = re.compile(rf"^{_SUB_RG}Microsoft\.Compute/images/[^/]+$", re.IGNORECASE)
GALLERY_IMAGE_ID_RE = re.compile(
    rf"^{_SUB_RG}Microsoft\.Compute/galleries/[^/]+/images/[^/]+(/versions/[^/]+)?$", re.IGNORECASE)
IMAGE_VERSION_ID_RE = re.compile(
    rf"^{_SUB_RG}Microsoft\.Compute/galleries/[^/]+/images/[^/]+/versions/[^/]+$", re.IGNORECASE)
SUBNET_ID_RE = re.compile(
    rf"^{_SUB_RG}Microsoft\.Network/virtualNetworks/[^/]+/subnets/[^/]+$", re.IGNORECASE)
URI_SCHEMES = ("http://", "https://", "file://")
# magnitude and unit, as Packer's restart_timeout reads it: 5m, 2h, 90s, 1h30m
_TIMEOUT_RE = re.compile(r"^(\d+(\.\d+)?(ms|s|m|h))+$")
# `az vm image list` versions (18.04.201903060) and gallery image versions (1.1.1)
_VERSION_RE = re.compile(r"^\d+(\.\d+)*$")
_GALLERY_VERSION_RE = re.compile(r"/versions/([^/]+)$", re.IGNORECASE)
# the values AIB documents for a SharedImage target's storageAccountType (API 2020-02-14)
SHARED_IMAGE_STORAGE_TYPES = ("Standard_LRS", "Standard_ZRS")
# Fields whose values are commands or scripts: `<...>` there is content, not a placeholder.
_COMMAND_FIELDS = {"inline", "restartcommand", "restartcheckcommand", "searchcriteria", "filters"}
_TEMPLATE_TYPE = "microsoft.virtualmachineimages/imagetemplates"
# some public samples write only the provider namespace
_TEMPLATE_TYPES = (_TEMPLATE_TYPE, "microsoft.virtualmachineimages")
_WINDOWS_HINTS = ("windows",)


def load_template(data: Any, source: str = "template") -> m.ImageTemplate:
    """Returns the model, or raises TemplateInvalid listing every problem."""
    problems: list[Problem] = []
    template = read_template(data, problems)
    if problems or template is None:
        raise TemplateInvalid(problems, source)
    return template


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
    if kind is not None and kind.lower() not in _TEMPLATE_TYPES:
        root.problem("type", "resource-type", f"`{kind}` is not an image template",
                     "use \"type\": \"Microsoft.VirtualMachineImages/imageTemplates\"")
    api = root.string("apiVersion", required=True, hint=f"e.g. \"{API_2020}\"")
    if api is not None and not _API_RE.match(api):
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
    root.ignore("id", "comments", "$schema")
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
    customize = tuple(_customizers(props, "customize", api))
    validate, checks_path = _validate(props, api)
    error_handling = _error_handling(props)
    distribute = tuple(props.objects("distribute", lambda obj: _target(obj, api), required=True))
    if props.has("distribute") and not distribute and not any(p.path.startswith(props.path_of("distribute")) for p in problems):
        props.problem("distribute", "empty", "at least one distribution target is required",
                      "add e.g. {\"type\": \"VHD\", \"runOutputName\": \"vhd\"}")
    staging = props.string("stagingResourceGroup")
    props.ignore("provisioningState", "provisioningError", "lastRunStatus", "exactStagingResourceGroup",
                 "autoRun", "optimize", "managedResourceTags")
    props.finish()

    _check_unique_names(customize, props.path_of("customize"), problems)
    _check_run_outputs(distribute, props.path_of("distribute"), problems)
    os_type = infer_os_type(source, customize)
    _check_file_destinations(customize, os_type, props.path_of("customize"), problems)
    _check_customizer_os(customize, os_type, props.path_of("customize"), problems)
    if validate is not None:
        _check_file_destinations(validate.in_vm_validations, os_type, checks_path, problems)
        _check_customizer_os(validate.in_vm_validations, os_type, checks_path, problems)
    if source is None:
        return None
    return m.ImageTemplate(
        api_version=api, source=source, distribute=distribute, customize=customize, name=name,
        location=location, tags=tags, identity=identity, depends_on=depends_on,
        build_timeout_minutes=timeout or m.DEFAULT_TIMEOUT_MINUTES, vm_profile=vm_profile,
        validate=validate, error_handling=error_handling, staging_resource_group=staging,
        os_type=os_type,
    )


def find_placeholders(value: Any, path: str) -> list[Problem]:
    """Every `<placeholder>` a sample template still holds, reported together."""
    found: list[Problem] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if _PLACEHOLDER_RE.search(key):
                found.append(_placeholder(child(path, key), key))
            if key.lower() not in _COMMAND_FIELDS:
                found.extend(find_placeholders(item, child(path, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(find_placeholders(item, child(path, index)))
    elif isinstance(value, str) and _PLACEHOLDER_RE.search(value):
        found.append(_placeholder(path, value))
    return found


def _placeholder(path: str, text: str) -> Problem:
    names = ", ".join(dict.fromkeys(_PLACEHOLDER_RE.findall(text)))
    return Problem(path, "placeholder", f"unfilled placeholder {names}",
                   "replace it with a real value, or pass a parameters file")


def infer_os_type(source: m.Source | None, customize: tuple[m.Customizer, ...]) -> str:
    if isinstance(source, m.PlatformImageSource):
        text = f"{source.publisher} {source.offer}".lower()
        if any(word in text for word in _WINDOWS_HINTS):
            return "Windows"
        return "Linux"
    windows_only = (m.WindowsRestartCustomizer, m.WindowsUpdateCustomizer, m.PowerShellCustomizer)
    if any(isinstance(c, windows_only) for c in customize) and not any(
            isinstance(c, m.ShellCustomizer) for c in customize):
        return "Windows"
    if any(isinstance(c, m.FileCustomizer) and re.match(r"^[A-Za-z]:\\", c.destination) for c in customize):
        return "Windows"
    return "Linux"


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
    if size.lower() not in VM_SIZES:
        obj.problem("vmSize", "vm-size", f"unknown VM size `{size}`",
                    "use an Azure size such as Standard_D1_v2, Standard_D2s_v3 or Standard_B2s")
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
        elif any(old) and not _before_2020(api):
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
            vnet_obj.problem(None, "required", "vnetConfig needs subnetId" if not _before_2020(api) else
                             "vnetConfig needs name, subnetName and resourceGroupName")
        elif vnet.subnet_id and _before_2020(api):
            vnet_obj.problem("subnetId", "vnet-spelling", f"subnetId is the API {API_2020} spelling; "
                             f"API {API_2019} takes name, subnetName and resourceGroupName",
                             f"use apiVersion {API_2020} or newer, or the three {API_2019} fields")
        else:
            _resource_id(vnet_obj, "subnetId", vnet.subnet_id, SUBNET_ID_RE, "not a subnet resource ID",
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
        if not _is_version(version, latest=True) and not _PLACEHOLDER_RE.search(version):
            obj.problem("version", "version-format", f"`{version}` is not `latest` or a version number",
                        "e.g. \"latest\" or \"18.04.201903060\" (`orchestrate image list` shows the imported versions)")
        plan = _plan_info(obj)
        obj.ignore("exactVersion")  # read-only, reported by newer APIs
        if all(fields):
            source = m.PlatformImageSource(*fields, version=version, plan_info=plan)  # type: ignore[misc]
    elif lowered == "managedimage":
        image_id = obj.string("imageId", required=True)
        _resource_id(obj, "imageId", image_id, MANAGED_IMAGE_ID_RE, "not a managed image resource ID",
                     "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/images/NAME")
        source = m.ManagedImageSource(image_id) if image_id else None
    elif lowered == "sharedimageversion":
        version_id = obj.string("imageVersionId", required=True)
        if _resource_id(obj, "imageVersionId", version_id, IMAGE_VERSION_ID_RE,
                        "not a gallery image version resource ID",
                        ".../galleries/G/images/DEF/versions/VER (VER may be `latest`)"):
            found = _GALLERY_VERSION_RE.search(version_id)
            if found and not _is_version(found.group(1), latest=True):
                obj.problem("imageVersionId", "version-format",
                            f"`{found.group(1)}` is not `latest` or an image version number",
                            ".../versions/1.0.0 or .../versions/latest")
        source = m.SharedImageVersionSource(version_id) if version_id else None
    elif lowered == "iso":
        uri = _uri(obj, "sourceURI", required=True)
        sha = _checksum(obj, required=True)
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


def _uri(obj: ObjectReader, name: str, *, required: bool) -> str | None:
    uri = obj.string(name, required=required)
    if uri and not uri.lower().startswith(URI_SCHEMES) and not _PLACEHOLDER_RE.search(uri):
        obj.problem(name, "uri-scheme", f"`{uri}` is not an http, https or file URI",
                    "e.g. https://host/script.sh or file:///srv/scripts/script.sh")
        return None
    return uri


def _checksum(obj: ObjectReader, *, required: bool = False) -> str | None:
    value = obj.string("sha256Checksum", required=required, nonempty=False)
    if value is None or value == "":
        return None
    if not _SHA256_RE.match(value):
        obj.problem("sha256Checksum", "checksum-format", "not a sha256 checksum (64 hex digits)",
                    "sha256sum FILE prints it")
        return None
    return value.lower()


def _customizers(props: ObjectReader, name: str, api: str, *, validation: bool = False) -> list[m.Customizer]:
    counter = iter(range(1, 10_000))
    # names given in the template: a generated name must not take one of them
    items = props.raw(name)
    given = {str(value).lower() for item in (items if isinstance(items, list) else ()) if isinstance(item, dict)
             for key, value in item.items() if key.lower() == "name" and isinstance(value, str)}

    def read(obj: ObjectReader) -> m.Customizer | None:
        return _customizer(obj, next(counter), validation, api, given)

    return props.objects(name, read)


def _customizer(obj: ObjectReader, index: int, validation: bool, api: str = API_2020,
                given: set[str] | frozenset[str] = frozenset()) -> m.Customizer | None:
    kind = obj.string("type", required=True, hint="Shell, PowerShell, File, WindowsRestart or WindowsUpdate")
    if kind is None:
        return None
    name = obj.string("name") or _generated_name(kind, index, given)
    lowered = kind.lower()
    allowed = ("shell", "powershell", "file") if validation else (
        "shell", "powershell", "file", "windowsrestart", "windowsupdate")
    if lowered not in allowed:
        obj.problem("type", "customizer-type", f"unknown {'validation' if validation else 'customizer'} type `{kind}`",
                    f"use one of: {', '.join(allowed)}")
        return None
    result: m.Customizer | None
    if lowered in ("shell", "powershell"):
        uri = _uri(obj, "scriptUri", required=False)
        sha = _checksum(obj)
        inline = obj.strings("inline", nonempty=True)
        def given(name: str) -> bool:  # null is no value, as for every other optional field
            return obj.has(name) and obj.raw(name) is not None

        if given("scriptUri") == given("inline"):
            obj.problem(None, "script-or-inline", f"a {kind} customizer needs exactly one of scriptUri or inline")
        if sha and not given("scriptUri"):
            obj.problem("sha256Checksum", "checksum-without-uri", "sha256Checksum goes with scriptUri")
        if lowered == "shell":
            result = m.ShellCustomizer(name, uri, sha, inline)
        else:
            elevated = obj.get("runElevated", bool, False)
            as_system = obj.get("runAsSystem", bool, False)
            if as_system and not elevated:
                obj.problem("runAsSystem", "run-as-system", "runAsSystem needs runElevated: true")
            codes_field = _exit_codes_field(obj, api)
            codes = obj.get(codes_field, list, None)
            valid: tuple[int, ...] = (0,)
            if codes is not None:
                if all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
                    valid = tuple(codes) or (0,)
                else:
                    obj.problem(codes_field, "type", "must be a list of integers", "e.g. [0, 3010]")
            result = m.PowerShellCustomizer(name, uri, sha, inline, bool(elevated), bool(as_system), valid)
    elif lowered == "file":
        uri = _uri(obj, "sourceUri", required=True)
        if uri and not _PLACEHOLDER_RE.search(uri) and _names_a_folder(uri):
            obj.problem("sourceUri", "file-source", f"`{uri}` names a folder, not a file",
                        "a File customizer downloads one file: zip the folder, then unzip it with a "
                        "Shell or PowerShell customizer")
        destination = obj.string("destination", required=True)
        sha = _checksum(obj)
        result = m.FileCustomizer(name, uri, destination, sha) if uri and destination else None
    elif lowered == "windowsrestart":
        command = obj.string("restartCommand") or m.WindowsRestartCustomizer.restart_command
        check = obj.string("restartCheckCommand")
        timeout = obj.string("restartTimeout") or "5m"
        if not _TIMEOUT_RE.match(timeout):
            obj.problem("restartTimeout", "duration", f"`{timeout}` is not a duration",
                        "a number and a unit: 5m, 90s, 2h (or 1h30m)")
            timeout = "5m"
        result = m.WindowsRestartCustomizer(name, command, check, timeout)
    else:
        criteria = obj.string("searchCriteria") or m.WindowsUpdateCustomizer.search_criteria
        filters = obj.strings("filters") or ()
        for i, item in enumerate(filters):
            if not re.match(r"^\s*(include|exclude)\s*:", item, re.IGNORECASE):
                obj.problems.append(Problem(child(obj.path_of("filters"), i), "update-filter",
                                            "a filter starts with `include:` or `exclude:`",
                                            "e.g. \"exclude:$_.Title -like '*Preview*'\""))
        limit = obj.get("updateLimit", int, 1000)
        if limit is not None and limit < 1:
            obj.problem("updateLimit", "update-limit", "must be 1 or more")
            limit = 1000
        result = m.WindowsUpdateCustomizer(name, criteria, filters, limit or 1000)
    obj.finish(f"for a {kind} customizer")
    return result


def _validate(props: ObjectReader, api: str) -> tuple[m.Validation | None, str]:
    obj = props.object("validate")
    if obj is None:
        return None, child(props.path_of("validate"), "inVMValidations")
    checks = tuple(_customizers(obj, "inVMValidations", api, validation=True))
    result = m.Validation(
        in_vm_validations=checks,
        continue_distribute_on_failure=bool(obj.get("continueDistributeOnFailure", bool, False)),
        source_validation_only=bool(obj.get("sourceValidationOnly", bool, False)))
    obj.finish()
    _check_unique_names(checks, obj.path_of("inVMValidations"), obj.problems)
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


def _resource_id(obj: ObjectReader, key: str, value: str | None, pattern: re.Pattern[str],
                 message: str, hint: str) -> bool:
    """Reports `key` when its value is not a resource ID of the kind `pattern` matches; an
    absent value and one holding a `<placeholder>` are not checked. True when the value is a
    real ID of that kind (the caller may check more of it)."""
    if not value or _PLACEHOLDER_RE.search(value):
        return False
    if not pattern.match(value):
        obj.problem(key, "resource-id", message, hint)
        return False
    return True


def _target(obj: ObjectReader, api: str = API_2020) -> m.Target | None:
    kind = obj.string("type", required=True, hint="ManagedImage, SharedImage or VHD")
    run_output = obj.string("runOutputName", required=True)
    if run_output and not RUN_OUTPUT_NAME_RE.match(run_output) and not _PLACEHOLDER_RE.search(run_output):
        obj.problem("runOutputName", "run-output-name",
                    f"`{run_output}` does not match ^[A-Za-z0-9-_.]{{1,64}}$",
                    "letters, digits, '-', '_' and '.', at most 64")
    tags = obj.string_map("artifactTags")
    lowered = (kind or "").lower()
    target: m.Target | None = None
    if lowered == "managedimage":
        image_id = obj.string("imageId", required=True)
        _resource_id(obj, "imageId", image_id, MANAGED_IMAGE_ID_RE, "not a managed image resource ID",
                     "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/images/NAME")
        location = obj.string("location", required=True)
        if run_output and image_id and location:
            target = m.ManagedImageTarget(run_output, image_id, location, tags)
    elif lowered == "sharedimage":
        gallery_id = obj.string("galleryImageId", required=True)
        if _resource_id(obj, "galleryImageId", gallery_id, GALLERY_IMAGE_ID_RE,
                        "not a gallery image (or image version) resource ID",
                        "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/galleries/G/images/DEF"):
            _check_explicit_version(obj, gallery_id, api)
        # API 2020-02-14 and older replicate with replicationRegions only (targetRegions came later)
        older = api <= API_2020
        if older and not obj.has("replicationRegions") and not obj.has("targetRegions"):
            obj.problem(None, "required", "`replicationRegions` is required",
                        f"API {api}: list the regions to replicate to, one of them the gallery's region")
        replication = obj.strings("replicationRegions", nonempty=older) or ()
        regions = tuple(obj.objects("targetRegions", _target_region))
        if replication and regions:
            obj.problem("targetRegions", "regions", "give replicationRegions or targetRegions, not both")
        scheme, major = _versioning(obj)
        account = obj.string("storageAccountType")
        if (account and older and account.lower() not in (a.lower() for a in SHARED_IMAGE_STORAGE_TYPES)
                and not _PLACEHOLDER_RE.search(account)):
            obj.problem("storageAccountType", "storage-account-type",
                        f"`{account}` is not {' or '.join(SHARED_IMAGE_STORAGE_TYPES)}",
                        f"API {api} stores image versions as Standard_LRS (the default) or Standard_ZRS")
        target = m.SharedImageTarget(
            run_output or "", gallery_id or "", replication, regions,
            bool(obj.get("excludeFromLatest", bool, False)), account,
            scheme, major, tags) if run_output and gallery_id else None
    elif lowered == "vhd":
        uri = obj.string("uri")
        tags = tuple({**dict(tags), **dict(obj.string_map("tags"))}.items())  # VHD's spelling of artifactTags
        target = m.VhdTarget(run_output, uri, tags) if run_output else None
    elif kind is not None:
        obj.problem("type", "target-type", f"unknown distribution type `{kind}`",
                    "use ManagedImage, SharedImage or VHD")
        return None
    obj.finish(f"for a {kind} target" if kind else None)
    return target


def _target_region(obj: ObjectReader) -> m.TargetRegion | None:
    name = obj.string("name", required=True)
    count = obj.get("replicaCount", int, 1)
    if count is not None and not 1 <= count <= 100:
        obj.problem("replicaCount", "replica-count", "must be 1 to 100")
    account = obj.string("storageAccountType")
    obj.finish()
    return m.TargetRegion(name, count or 1, account) if name else None


def _versioning(obj: ObjectReader) -> tuple[str | None, int | None]:
    v = obj.object("versioning")
    if v is None:
        return None, None
    scheme = v.string("scheme", required=True)
    major = v.get("major", int, None)
    if scheme and scheme.lower() not in ("latest", "source"):
        v.problem("scheme", "versioning", f"`{scheme}` is not Latest or Source")
    if major is not None and scheme and scheme.lower() != "latest":
        v.problem("major", "versioning", "major goes with scheme Latest")
    v.finish()
    return scheme, major


def _before_2020(api: str) -> bool:
    """API 2019-05-01-preview (or another version older than 2020-02-14)."""
    return api < API_2020


def _is_version(value: str, *, latest: bool) -> bool:
    return bool(_VERSION_RE.match(value)) or (latest and value.lower() == "latest")


def _generated_name(kind: str, index: int, given: set[str] | frozenset[str]) -> str:
    name, n = f"{kind}{index}", 2
    while name.lower() in given:
        name, n = f"{kind}{index}-{n}", n + 1
    return name


def _names_a_folder(uri: str) -> bool:
    try:
        path = urlsplit(uri).path
    except ValueError:  # e.g. a broken IPv6 host; the download reports it
        return False
    return path.rsplit("/", 1)[-1] == ""


def _exit_codes_field(obj: ObjectReader, api: str) -> str:
    """validExitCodes; AIB's 2019-05-01-preview reference also spells it valid_exit_codes."""
    if not obj.has("valid_exit_codes"):
        return "validExitCodes"
    if not _before_2020(api):
        obj.ignore("valid_exit_codes")
        obj.problem("valid_exit_codes", "field-spelling", f"valid_exit_codes is the API {API_2019} spelling",
                    "use validExitCodes")
        return "validExitCodes"
    if obj.has("validExitCodes"):
        obj.ignore("valid_exit_codes")
        obj.problem("valid_exit_codes", "field-spelling", "give validExitCodes or valid_exit_codes, not both")
        return "validExitCodes"
    return "valid_exit_codes"


def _check_explicit_version(obj: ObjectReader, gallery_id: str, api: str) -> None:
    """galleryImageId names an image definition (versions numbered by AIB) or, from API
    2020-02-14 on, an explicit version to create."""
    found = _GALLERY_VERSION_RE.search(gallery_id)
    if found is None:
        return
    if _before_2020(api):
        obj.problem("galleryImageId", "gallery-version",
                    f"API {api} numbers image versions itself: galleryImageId names an image definition",
                    f"drop /versions/{found.group(1)}, or use apiVersion {API_2020} or newer")
    elif not _is_version(found.group(1), latest=False):
        obj.problem("galleryImageId", "version-format", f"`{found.group(1)}` is not an image version number",
                    ".../versions/1.0.0, or end at the image definition to number versions automatically")


def _check_unique_names(items: tuple[m.Customizer, ...], path: str, problems: list[Problem]) -> None:
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        key = item.name.lower()
        if key in seen:
            problems.append(Problem(child(child(path, index), "name"), "unique-name",
                                    f"name `{item.name}` is used by entry {seen[key]} too",
                                    "give every customizer its own name"))
        else:
            seen[key] = index


def _check_run_outputs(targets: tuple[m.Target, ...], path: str, problems: list[Problem]) -> None:
    seen: dict[str, int] = {}
    for index, target in enumerate(targets):
        key = target.run_output_name.lower()
        if key in seen and not _PLACEHOLDER_RE.search(key):
            problems.append(Problem(child(child(path, index), "runOutputName"), "unique-run-output",
                                    f"runOutputName `{target.run_output_name}` is used by entry {seen[key]} too",
                                    "every distribution target needs its own runOutputName"))
        seen.setdefault(key, index)


def _check_customizer_os(items: tuple[m.Customizer, ...], os_type: str, path: str,
                         problems: list[Problem]) -> None:
    windows_only = (m.WindowsRestartCustomizer, m.WindowsUpdateCustomizer)
    for index, item in enumerate(items):
        where = child(child(path, index), "type")
        if os_type == "Linux" and isinstance(item, windows_only):
            problems.append(Problem(where, "customizer-os", f"{item.kind} customizers run on Windows only",
                                    "a Linux Shell step may reboot the VM itself"))
        elif os_type == "Windows" and isinstance(item, m.ShellCustomizer):
            problems.append(Problem(where, "customizer-os", "Shell customizers run on Linux only",
                                    "use a PowerShell customizer on Windows"))


def _check_file_destinations(items: tuple[m.Customizer, ...], os_type: str, path: str,
                             problems: list[Problem]) -> None:
    for index, item in enumerate(items):
        if not isinstance(item, m.FileCustomizer):
            continue
        dest = item.destination
        where = child(child(path, index), "destination")
        if os_type == "Linux":
            parts = dest.split("/")
            if not dest.startswith("/tmp/") or ".." in parts or dest.endswith("/") or "\x00" in dest:
                problems.append(Problem(where, "file-destination",
                                        f"`{dest}` is not a file path under /tmp",
                                        "on Linux AIB uploads only to /tmp; move the file with a Shell step after"))
        elif not re.match(r"^[A-Za-z]:\\[^\x00]*[^\\]$", dest):
            problems.append(Problem(where, "file-destination",
                                    f"`{dest}` is not a full Windows file path",
                                    "e.g. c:\\buildArtifacts\\index.html (the folder must exist)"))
