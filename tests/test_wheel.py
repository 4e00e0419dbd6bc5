"""The package installs like a package: a wheel built from this tree, installed into a fresh
venv, renders Linux and Windows templates from a directory outside the repository, with the
Packer templates and guest scripts it ships (packer_templates/, mapped into the package)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import dumps, linux_template

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("pyproject.toml", "orchestrator", "packer_templates")  # what the wheel is built from
DATA_FILES = ("orchestrator/py.typed", "orchestrator/packer_templates/linux.pkr.hcl.j2",
              "orchestrator/packer_templates/windows.pkr.hcl.j2",
              "orchestrator/packer_templates/windows/generalize.ps1",
              "orchestrator/packer_templates/windows/windows-update.ps1")


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{argv} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def _can_build_without_isolation() -> bool:
    """setuptools builds wheels itself from 70.1 on; before, it needs the `wheel` package."""
    if importlib.util.find_spec("wheel") is not None:
        return True
    import setuptools

    return tuple(int(p) for p in setuptools.__version__.split(".")[:2]) >= (70, 1)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A copy of the sources, so that setuptools' build/ and egg-info stay out of the working tree.
    source = tmp_path_factory.mktemp("source")
    for name in SHIPPED:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    dist = tmp_path_factory.mktemp("dist")
    isolation = ["--no-build-isolation"] if _can_build_without_isolation() else []  # else setuptools from the index
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(dist), str(source)])
    wheels = list(dist.glob("orchestrator-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel; the dependencies come from the site-packages directories
    this test runs with, added after the venv's own (a .pth line: the .pth files in there, such
    as an editable install's finder, are not run)."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)])
    python = root / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
          str(wheel)])
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    deps = dict.fromkeys(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    (site / "_orchestrator_test_deps.pth").write_text("".join(f"{path}\n" for path in deps))
    return root


def _outside(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(ORCHESTRATOR_HOME=str(tmp_path / "home"), ORCHESTRATOR_ACCELERATOR="tcg")
    return cwd, env


def test_wheel_ships_every_module_the_templates_and_py_typed(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(DATA_FILES) <= names
    modules = {str(p.relative_to(REPO)) for p in (REPO / "orchestrator").rglob("*.py")}
    assert modules - names == set(), "pyproject.toml's [tool.setuptools] packages misses a package"


def test_installed_wheel_renders_linux_hcl_outside_the_repo(venv: Path, tmp_path: Path):
    cwd, env = _outside(tmp_path)
    template = cwd / "t.json"
    template.write_text(dumps(linux_template()))
    where = _run([str(venv / "bin" / "python"), "-c", "import orchestrator; print(orchestrator.__file__)"],
                 cwd=cwd, env=env).stdout.strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(REPO)
    result = _run([str(venv / "bin" / "python"), "-m", "orchestrator", "render", str(template)], cwd=cwd, env=env)
    assert 'source "qemu"' in result.stdout and "build {" in result.stdout
    console = _run([str(venv / "bin" / "orchestrate"), "render", str(template)], cwd=cwd, env=env)
    assert console.stdout == result.stdout


def test_installed_wheel_renders_windows_scripts(venv: Path, tmp_path: Path):
    cwd, env = _outside(tmp_path)
    data = linux_template(customize=[{"type": "PowerShell", "name": "hi", "inline": ["Write-Output hi"]},
                                     {"type": "WindowsUpdate", "name": "updates"}])
    data["properties"]["source"] = {"type": "PlatformImage", "publisher": "MicrosoftWindowsServer",
                                    "offer": "WindowsServer", "sku": "2019-Datacenter", "version": "latest"}
    template = cwd / "win.json"
    template.write_text(dumps(data))
    out = cwd / "out"
    _run([str(venv / "bin" / "orchestrate"), "render", "-o", str(out), str(template)], cwd=cwd, env=env)
    scripts = "".join(p.read_text(encoding="utf-8-sig") for p in out.rglob("*.ps1"))
    for name in ("generalize.ps1", "windows-update.ps1"):  # the bodies the wheel ships
        body = (REPO / "packer_templates" / "windows" / name).read_text(encoding="utf-8")
        assert body in scripts
