"""Every public AIB sample validates (placeholders and ARM parameters filled from tests/data),
plans, and renders HCL that `packer validate` accepts."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.cli import main
from tests.helpers import DATA, SAMPLES_DIR, fill_placeholders

SAMPLES = sorted(SAMPLES_DIR.glob("*.json"))


@pytest.fixture(autouse=True)
def _isolated_home(monkeypatch, tmp_path):
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ORCHESTRATOR_ACCELERATOR", "tcg")


def _filled(tmp_path: Path, sample: Path) -> tuple[Path, list[str]]:
    path = tmp_path / sample.name
    text = fill_placeholders(sample.read_text())
    path.write_text(text)
    params = ["--parameters", str(DATA / "sample-parameters.json")] if '"resources"' in text else []
    return path, params


def test_there_are_samples_of_every_kind():
    names = " ".join(p.name for p in SAMPLES)
    assert len(SAMPLES) >= 15 and "Win" in names and "armTemplate" in names and "trigger" in names


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name[:50])
def test_unfilled_sample_reports_its_placeholders(sample, capsys):
    assert main(["validate", "--json", str(sample)]) == 2
    problems = json.loads(capsys.readouterr().out)["error"]["problems"]
    assert problems and {p["rule"] for p in problems} <= {"placeholder", "parameter-missing"}


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name[:50])
def test_filled_sample_validates_and_plans(sample, tmp_path, capsys):
    path, params = _filled(tmp_path, sample)
    assert main(["validate", "--json", str(path), *params]) == 0, capsys.readouterr()
    assert json.loads(capsys.readouterr().out)["ok"] is True
    if sample.name.endswith("_trigger.json"):
        return
    assert main(["plan", "--json", str(path), *params]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["steps"] and plan["targets"]
    assert [s["index"] for s in plan["steps"]] == list(range(1, len(plan["steps"]) + 1))


BUILDABLE = [p for p in SAMPLES if not p.name.endswith("_trigger.json")]


@pytest.mark.skipif(shutil.which("packer") is None, reason="packer is installed by scripts/setup-host.sh")
@pytest.mark.parametrize("sample", BUILDABLE, ids=lambda p: p.name[:50])
def test_sample_hcl_passes_packer_validate(sample, tmp_path, capsys):
    path, params = _filled(tmp_path, sample)
    out = tmp_path / "render"
    assert main(["render", str(path), *params, "-o", str(out)]) == 0
    hcl = out / "build.pkr.hcl"
    text = hcl.read_text()
    # render does not fetch downloads: stand-ins where `orchestrate build` would cache them
    for line in text.splitlines():
        key, _, value = line.strip().partition(" = ")
        if key in ("script", "source", "iso_url") and not Path(json.loads(value)).exists():
            Path(json.loads(value)).parent.mkdir(parents=True, exist_ok=True)
            Path(json.loads(value)).write_text("#!/bin/sh\n")
    env = dict(os.environ, CHECKPOINT_DISABLE="1")
    # the directory: Packer then also reads the Windows render's winrm.auto.pkrvars.hcl
    result = subprocess.run(["packer", "validate", str(out)], capture_output=True, text=True, env=env,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    windows = "Win" in sample.name
    assert ('"winrm"' in text) == windows and ('"ssh"' in text) != windows


def test_trigger_kind_is_checked_and_not_buildable(tmp_path, capsys):
    bad = tmp_path / "trigger.json"
    bad.write_text('{"location": "local", "properties": {"kind": "Nightly", "when": 1}}')
    assert main(["validate", "--json", str(bad)]) == 2
    problems = json.loads(capsys.readouterr().out)["error"]["problems"]
    assert {(p["path"], p["rule"]) for p in problems} == {("$.properties.kind", "trigger-kind"),
                                                          ("$.properties.when", "unknown-field")}
    good = tmp_path / "good.json"
    good.write_text('{"location": "local", "properties": {"kind": "SourceImage"}}')
    assert main(["build", str(good)]) == 2
    assert "is an image template trigger, not an image template" in capsys.readouterr().err
