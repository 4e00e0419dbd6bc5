"""Accept what AIB accepts, refuse what AIB refuses, warn where AIB silently ignores something:
one test per leniency rule, on the project's own templates in tests/data/lenient/."""
from __future__ import annotations

import json
from pathlib import Path

import hcl2
import pytest

from orchestrator.cli import main
from orchestrator.core.document import load_document
from orchestrator.core.plan import ResolvedSource, make_plan
from orchestrator.core.render import RenderContext, render_linux
from tests.helpers import dumps, linux_template

LENIENT = Path(__file__).resolve().parent / "data" / "lenient"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, home):
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(home))


def _validate(capsys, path: Path, *flags: str) -> tuple[int, dict]:
    code = main(["validate", "--json", *flags, str(path)])
    return code, json.loads(capsys.readouterr().out)


def _warnings(payload: dict) -> list[tuple[str, str, str]]:
    return [(w["severity"], w["path"], w["rule"]) for w in payload["warnings"]]


def test_the_request_body_az_image_builder_create_takes(capsys):
    code, payload = _validate(capsys, LENIENT / "az-request-body.json")
    assert code == 0 and payload["apiVersion"] == "2025-10-01"
    assert _warnings(payload) == [("note", "$", "api-version-default")]


def test_a_template_as_the_service_returns_it(capsys):
    code, payload = _validate(capsys, LENIENT / "get-response.json")
    assert code == 0, payload
    assert _warnings(payload) == [
        ("note", "$", "read-only"), ("note", "$", "api-version-default"),
        ("note", "$.properties.distribute[0].uri", "empty-means-unset"),
        ("note", "$.properties.stagingResourceGroup", "empty-means-unset")]
    [read_only] = [w for w in payload["warnings"] if w["rule"] == "read-only"]
    for field in ("$.id", "$.systemData", "$.properties.provisioningState", "$.properties.lastRunStatus",
                  "$.properties.exactStagingResourceGroup"):
        assert field in read_only["message"]
    assert main(["validate", "--strict", str(LENIENT / "get-response.json")]) == 0  # notes are not warnings


def test_loose_types_old_spellings_lower_case_kinds_and_misspellings(capsys):
    code, payload = _validate(capsys, LENIENT / "loose.json")
    assert code == 0, payload
    assert _warnings(payload) == [
        ("warning", "$.properties.buildTimeoutInMinutes", "type-coerced"),
        ("warning", "$.properties.vmProfile.osDiskSizeGB", "type-coerced"),
        ("warning", "$.properties.customize[0].script", "old-spelling"),
        ("warning", "$.properties.distribute[0].aritfactTags", "unknown-field")]
    [typo] = [w for w in payload["warnings"] if w["rule"] == "unknown-field"]
    assert typo["hint"] == "did you mean `artifactTags`?"
    template = load_document((LENIENT / "loose.json").read_text(), "loose")
    assert template.build_timeout_minutes == 90 and template.vm_profile.os_disk_size_gb == 30
    assert template.customize[0].script_uri == "https://example.com/setup.sh"
    assert template.customize[0].kind == "Shell" and template.distribute[0].kind == "VHD"


def test_strict_turns_warnings_into_errors(capsys):
    code, payload = _validate(capsys, LENIENT / "loose.json", "--strict")
    assert code == 2
    assert [(p["severity"], p["rule"]) for p in payload["error"]["problems"]] == [
        ("error", "type-coerced"), ("error", "type-coerced"), ("error", "old-spelling"), ("error", "unknown-field")]


def test_warnings_never_hide_errors_and_json_lists_both_apart(tmp_path, capsys):
    data = linux_template(buildTimeoutInMinutes=-1)
    data["properties"]["distribute"][0]["aritfactTags"] = {}
    path = tmp_path / "t.json"
    path.write_text(dumps(data))
    code, payload = _validate(capsys, path)
    assert code == 2
    assert [p["rule"] for p in payload["error"]["problems"]] == ["timeout-range"]
    assert [w["rule"] for w in payload["warnings"]] == ["unknown-field"]
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "timeout-range" in err and "warning: $.properties.distribute[0].aritfactTags" in err


@pytest.mark.parametrize("properties, path, rule", [
    ({"buildTimeoutInMinutes": "int"}, "$.properties.buildTimeoutInMinutes", "type"),  # a placeholder type
    ({"source": None}, "$.properties", "required"),
    ({"distribute": []}, "$.properties.distribute", "empty"),
    ({"distribute": [{"type": "VHD", "runOutputName": "has space"}]}, "$.properties.distribute[0].runOutputName",
     "run-output-name"),
])
def test_what_aib_refuses_stays_an_error(tmp_path, capsys, properties, path, rule):
    data = linux_template(**properties)
    file = tmp_path / "t.json"
    file.write_text(dumps(data))
    code, payload = _validate(capsys, file)
    assert code == 2 and (path, rule) in [(p["path"], p["rule"]) for p in payload["error"]["problems"]]


def test_a_type_that_is_not_an_image_template_stays_an_error(tmp_path, capsys):
    data = linux_template()
    data["type"] = "Microsoft.Compute/virtualMachines"
    file = tmp_path / "t.json"
    file.write_text(dumps(data))
    code, payload = _validate(capsys, file)
    assert code == 2 and [p["rule"] for p in payload["error"]["problems"]] == ["resource-type"]


@pytest.mark.parametrize("size, cpus, memory_mib", [
    ("Standard_B2as_v2", 2, 8192),  # in the table
    ("Standard_NC24ads_A100_v4", 24, 24 * 7 * 1024),  # from its name and family
    ("Standard_E64-32s_v3", 32, 64 * 8 * 1024),  # constrained vCPUs: the memory of the full size
    ("Standard_D96s_v6", 96, 96 * 4 * 1024),
])
def test_every_current_size_family_has_vcpus_and_memory(size, cpus, memory_mib):
    template = load_document(dumps(linux_template(vmProfile={"vmSize": size})), "t")
    plan = make_plan(template, ResolvedSource("x", "/x.qcow2", "qcow2", 2**30, "0" * 64), "t")
    assert (plan.cpus, plan.memory_mib) == (cpus, memory_mib)
    notes = [w for w in template.warnings if w.rule == "vm-size-derived"]
    assert bool(notes) == (size != "Standard_B2as_v2")


def test_a_size_name_of_no_known_shape_is_an_error(tmp_path, capsys):
    file = tmp_path / "t.json"
    file.write_text(dumps(linux_template(vmProfile={"vmSize": "Large"})))
    code, payload = _validate(capsys, file)
    assert code == 2 and payload["error"]["problems"][0]["rule"] == "vm-size"


MANAGED = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/base"


@pytest.mark.parametrize("customize, os_type, reason", [
    ([{"type": "PowerShell", "name": "p", "inline": ["Get-Date"]},
      {"type": "WindowsRestart", "name": "r"}], "Windows", "its Windows customizers"),
    ([{"type": "Shell", "name": "s", "inline": ["true"]}], "Linux", "a Shell customizer"),
    ([], "Linux", "the default (nothing in the template says Windows)"),
])
def test_os_of_a_source_whose_name_says_nothing_comes_from_the_customizers(tmp_path, capsys, customize, os_type,
                                                                           reason):
    data = linux_template(source={"type": "ManagedImage", "imageId": MANAGED}, customize=customize)
    file = tmp_path / "t.json"
    file.write_text(dumps(data))
    assert main(["plan", "--json", str(file)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["os_type"], plan["os_type_reason"]) == (os_type, reason)
    assert main(["plan", str(file)]) == 0
    assert f"({os_type}, from {reason})" in capsys.readouterr().out


def test_scripturi_scripts_run_as_root_and_inline_commands_as_the_build_user(tmp_path):
    data = linux_template(customize=[
        {"type": "Shell", "name": "fromUri", "scriptUri": "https://example.com/s.sh"},
        {"type": "Shell", "name": "inline", "inline": ["id -un"]}])
    template = load_document(dumps(data), "t")
    plan = make_plan(template, ResolvedSource("x", "/x.qcow2", "qcow2", 2**30, "0" * 64), "t")
    ctx = RenderContext(work_dir=str(tmp_path), output_dir=str(tmp_path / "out"), ssh_private_key="/k",
                        ssh_public_key="ssh-ed25519 AAAA k", accelerator="tcg",
                        downloads={"https://example.com/s.sh": "/cache/s.sh"})
    build = hcl2.loads(render_linux(plan, ctx).hcl)["build"][0]
    shells = [p['"shell"'] for p in build["provisioner"] if '"shell"' in p]  # python-hcl2 8 keeps the quotes
    by_script = {s["script"].strip('"'): s for s in shells}
    assert by_script["/cache/s.sh"]["execute_command"] == '"chmod +x {{ .Path }}; sudo {{ .Vars }} {{ .Path }}"'
    inline = by_script[str(tmp_path / "steps" / "02-inline.sh")]
    assert "execute_command" not in inline  # Packer's default: the build user


def test_problems_of_an_image_template_in_an_arm_file_point_into_the_file(tmp_path, capsys):
    image = linux_template(buildTimeoutInMinutes=-1)
    image["properties"]["distribute"][0]["aritfactTags"] = {}
    image["name"] = "web"
    arm = {"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
           "contentVersion": "1.0.0.0", "resources": [
               {"type": "Microsoft.Resources/tags", "apiVersion": "2021-04-01", "name": "default",
                "properties": {"tags": {}}}, image]}
    path = tmp_path / "arm.json"
    path.write_text(dumps(arm))
    code, payload = _validate(capsys, path)
    assert code == 2
    assert [p["path"] for p in payload["error"]["problems"]] == ["$.resources[1].properties.buildTimeoutInMinutes"]
    assert [w["path"] for w in payload["warnings"]] == ["$.resources[1].properties.distribute[0].aritfactTags"]


def test_the_store_s_record_of_a_source_says_its_os_when_the_template_does_not():
    template = load_document(dumps(linux_template(source={"type": "ManagedImage", "imageId": MANAGED},
                                                  customize=[])), "t")
    assert template.os_type_reason.startswith("the default")
    source = ResolvedSource("ManagedImage base", "/x.qcow2", "qcow2", 2**30, "0" * 64, os_type="Windows")
    plan = make_plan(template, source, "t")
    assert (plan.os_type, plan.os_type_reason) == ("Windows", "the image store's record of the source")
    shell = load_document(dumps(linux_template(source={"type": "ManagedImage", "imageId": MANAGED})), "t")
    assert make_plan(shell, source, "t").os_type == "Linux"  # a Shell step says Linux, whatever the store says
