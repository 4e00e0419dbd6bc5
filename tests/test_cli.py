"""The CLI as a user meets it: exit codes, messages with hints, --json, never a traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import dumps, linux_template


def orchestrate(*args: str, home: Path, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, ORCHESTRATOR_HOME=str(home), **(env or {}))
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                          env=full_env, timeout=120)


def write(tmp_path: Path, data, name: str = "t.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else dumps(data))
    return path


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout


def test_validate_ok(tmp_path, home):
    result = orchestrate("validate", str(write(tmp_path, linux_template())), home=home)
    assert result.returncode == 0 and "valid (Linux" in result.stdout


def test_validate_reports_every_problem_with_path_and_hint(tmp_path, home):
    data = linux_template(buildTimeoutInMinutes=99999)
    data["properties"]["customize"][0]["oops"] = True
    result = orchestrate("validate", str(write(tmp_path, data)), home=home)
    assert result.returncode == 2
    no_traceback(result)
    assert "$.properties.buildTimeoutInMinutes: 99999 is out of range" in result.stderr
    assert "$.properties.customize[0].oops: unknown field `oops`" in result.stderr
    assert "hint:" in result.stderr


def test_validate_json_lists_problems(tmp_path, home):
    data = linux_template(buildTimeoutInMinutes=-5)
    result = orchestrate("validate", "--json", str(write(tmp_path, data)), home=home)
    assert result.returncode == 2
    payload = json.loads(result.stdout)
    assert payload["ok"] is False
    assert payload["error"]["problems"] == [{
        "path": "$.properties.buildTimeoutInMinutes", "rule": "timeout-range",
        "message": "-5 is out of range: 0 to 960 minutes", "hint": "0 or absent means the default, 240 minutes",
        "severity": "error"}]
    assert payload["warnings"] == []


@pytest.mark.parametrize("content, needle", [
    ("{ not json", "not valid JSON at line 1, column 3"),
    ("[]", "a template must be a JSON object"),
    ("\"just a string\"", "a template must be a JSON object"),
])
def test_broken_files(tmp_path, home, content, needle):
    result = orchestrate("validate", str(write(tmp_path, content)), home=home)
    assert result.returncode == 2 and needle in result.stderr
    no_traceback(result)


def test_missing_file_and_directory(tmp_path, home):
    missing = orchestrate("validate", str(tmp_path / "nope.json"), home=home)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    directory = orchestrate("build", str(tmp_path), home=home)
    assert directory.returncode == 2 and "is a directory" in directory.stderr
    no_traceback(directory)


def test_bad_arguments(tmp_path, home):
    result = orchestrate("frobnicate", home=home)
    assert result.returncode == 2 and "error:" in result.stderr and "hint:" in result.stderr
    no_traceback(result)
    bad_param = orchestrate("validate", str(write(tmp_path, linux_template())), "-p", "novalue", home=home)
    assert bad_param.returncode == 2 and "is not NAME=VALUE" in bad_param.stderr


def test_bad_accelerator_setting(tmp_path, home):
    result = orchestrate("validate", str(write(tmp_path, linux_template())), home=home,
                         env={"ORCHESTRATOR_ACCELERATOR": "warp"})
    assert result.returncode == 2 and "is not auto, kvm or tcg" in result.stderr


def test_build_refuses_unimported_source_before_anything_starts(tmp_path, home):
    result = orchestrate("build", str(write(tmp_path, linux_template())), home=home)
    assert result.returncode == 6
    assert "is not in the local catalog" in result.stderr and "orchestrate image import" in result.stderr
    assert orchestrate("runs", "--json", home=home).stdout.strip() == "[]"


def test_build_refuses_unsupported_targets_with_paths(tmp_path, home):
    data = linux_template(distribute=[{"type": "VHD", "runOutputName": "ok", "uri": "https://blob/x.vhd"}])
    result = orchestrate("build", str(write(tmp_path, data)), home=home)
    assert result.returncode == 2
    assert "$.properties.distribute[0].uri" in result.stderr and "not a local path" in result.stderr


def test_image_import_errors(tmp_path, home):
    missing = orchestrate("image", "import", str(tmp_path / "x.qcow2"), "--publisher", "P", "--offer", "O",
                          "--sku", "S", "--version", "1.0", home=home)
    assert missing.returncode == 2 and "no image file" in missing.stderr
    latest = orchestrate("image", "import", str(tmp_path / "x.qcow2"), "--publisher", "P", "--offer", "O",
                         "--sku", "S", "--version", "latest", home=home)
    assert latest.returncode == 2 and "resolved at build time" in latest.stderr
    beta = orchestrate("image", "import", str(tmp_path / "x.qcow2"), "--publisher", "P", "--offer", "O",
                       "--sku", "S", "--version", "1.0-beta", home=home)
    assert beta.returncode == 2 and "is not a version number" in beta.stderr


def test_unknown_run(home):
    result = orchestrate("status", "nope", home=home)
    assert result.returncode == 2 and "no run 'nope'" in result.stderr


def test_arm_functions_take_resource_group_and_subscription_from_environment(tmp_path, home):
    deployment = {"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
                  "contentVersion": "1.0.0.0", "parameters": {"size": {"type": "int", "defaultValue": 0}},
                  "resources": [{
                      "type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-02-14",
                      "name": "arm", "location": "[resourceGroup().location]",
                      "properties": {**linux_template()["properties"], "vmProfile": {"osDiskSizeGB": "[parameters('size')]"},
                                     "distribute": [{"type": "ManagedImage", "runOutputName": "img",
                                                     "location": "[resourceGroup().location]",
                                                     "imageId": "[resourceId('Microsoft.Compute/images', 'golden')]"}]}}]}
    path = write(tmp_path, deployment)
    result = orchestrate("plan", "--json", str(path), "-p", "size=8", home=home,
                         env={"ORCHESTRATOR_LOCATION": "pool-a", "ORCHESTRATOR_SUBSCRIPTION_ID": "1111",
                              "ORCHESTRATOR_RESOURCE_GROUP": "images"})
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["targets"][0]["regions"] == ["pool-a"]
    assert plan["targets"][0]["artifact_id"] == "/subscriptions/1111/resourceGroups/images/providers/Microsoft.Compute/images/golden"
    assert plan["name"] == "arm"
    missing = orchestrate("validate", str(path), "-p", "nosuch=1", home=home)
    assert missing.returncode == 2 and "$.parameters" in missing.stderr


def test_a_json_file_that_is_no_template_gets_one_clear_problem(tmp_path, home):
    result = orchestrate("validate", str(write(tmp_path, {"<region>": "x", "foo": 1})), home=home)
    assert result.returncode == 2
    assert result.stderr.count("[not-a-template]") == 1 and "[unknown-field]" not in result.stderr


def test_a_repeated_hint_is_printed_once(tmp_path, home):
    data = linux_template()
    data["a"], data["b"] = 1, 2
    result = orchestrate("validate", str(write(tmp_path, data)), home=home)
    assert result.stderr.count("unknown field") == 2
    assert result.stderr.count("check the spelling against AIB") == 1
