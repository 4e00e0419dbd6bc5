"""Field readers and patterns shared by the template loader's sections (pure)."""
from __future__ import annotations

import re

from orchestrator.core.reader import ObjectReader

API_2019 = "2019-05-01-preview"
API_2020 = "2020-02-14"
KNOWN_API_VERSIONS = (API_2019, API_2020, "2021-10-01", "2022-02-14", "2022-07-01",
                      "2023-07-01", "2024-02-01", "2024-07-01", "2025-10-01")
NEWEST_API = KNOWN_API_VERSIONS[-1]
API_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
RUN_OUTPUT_NAME_RE = re.compile(r"^[A-Za-z0-9\-_.]{1,64}$")
PLACEHOLDER_RE = re.compile(r"<[A-Za-z][A-Za-z0-9 _.\-]*>")
SUB_RG = r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
MANAGED_IMAGE_ID_RE = re.compile(rf"^{SUB_RG}Microsoft\.Compute/images/[^/]+$", re.IGNORECASE)
GALLERY_IMAGE_ID_RE = re.compile(
    rf"^{SUB_RG}Microsoft\.Compute/galleries/[^/]+/images/[^/]+(/versions/[^/]+)?$", re.IGNORECASE)
IMAGE_VERSION_ID_RE = re.compile(
    rf"^{SUB_RG}Microsoft\.Compute/galleries/[^/]+/images/[^/]+/versions/[^/]+$", re.IGNORECASE)
SUBNET_ID_RE = re.compile(
    rf"^{SUB_RG}Microsoft\.Network/virtualNetworks/[^/]+/subnets/[^/]+$", re.IGNORECASE)
URI_SCHEMES = ("http://", "https://", "file://")
# magnitude and unit, as Packer's restart_timeout reads it: 5m, 2h, 90s, 1h30m
TIMEOUT_RE = re.compile(r"^(\d+(\.\d+)?(ms|s|m|h))+$")
# `az vm image list` versions (18.04.201903060) and gallery image versions (1.1.1)
VERSION_RE = re.compile(r"^\d+(\.\d+)*$")
GALLERY_VERSION_RE = re.compile(r"/versions/([^/]+)$", re.IGNORECASE)
# the values AIB documents for a SharedImage target's storageAccountType (API 2020-02-14)
SHARED_IMAGE_STORAGE_TYPES = ("Standard_LRS", "Standard_ZRS")
# Fields whose values are commands or scripts: `<...>` there is content, not a placeholder.
COMMAND_FIELDS = {"inline", "restartcommand", "restartcheckcommand", "searchcriteria", "filters"}
TEMPLATE_TYPE = "microsoft.virtualmachineimages/imagetemplates"
# some public samples write only the provider namespace
TEMPLATE_TYPES = (TEMPLATE_TYPE, "microsoft.virtualmachineimages")
WINDOWS_HINTS = ("windows",)


def uri_field(obj: ObjectReader, name: str, *, required: bool) -> str | None:
    uri = obj.string(name, required=required)
    if uri and not uri.lower().startswith(URI_SCHEMES) and not PLACEHOLDER_RE.search(uri):
        obj.problem(name, "uri-scheme", f"`{uri}` is not an http, https or file URI",
                    "e.g. https://host/script.sh or file:///srv/scripts/script.sh")
        return None
    return uri


def checksum_field(obj: ObjectReader, *, required: bool = False) -> str | None:
    value = obj.string("sha256Checksum", required=required, nonempty=False)
    if value is None or value == "":
        return None
    if not SHA256_RE.match(value):
        obj.problem("sha256Checksum", "checksum-format", "not a sha256 checksum (64 hex digits)",
                    "sha256sum FILE prints it")
        return None
    return value.lower()


def resource_id_field(obj: ObjectReader, key: str, value: str | None, pattern: re.Pattern[str],
                 message: str, hint: str) -> bool:
    """Reports `key` when its value is not a resource ID of the kind `pattern` matches; an
    absent value and one holding a `<placeholder>` are not checked. True when the value is a
    real ID of that kind (the caller may check more of it)."""
    if not value or PLACEHOLDER_RE.search(value):
        return False
    if not pattern.match(value):
        obj.problem(key, "resource-id", message, hint)
        return False
    return True


def before_2020(api: str) -> bool:
    """API 2019-05-01-preview (or another version older than 2020-02-14)."""
    return api < API_2020


def is_version(value: str, *, latest: bool) -> bool:
    return bool(VERSION_RE.match(value)) or (latest and value.lower() == "latest")
