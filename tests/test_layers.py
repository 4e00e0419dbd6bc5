"""The pure core imports nothing from the effects, the engine or the CLI."""
from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "orchestrator" / "core"
FORBIDDEN = ("orchestrator.effects", "orchestrator.engine", "orchestrator.cli", "orchestrator.commands",
             "subprocess", "sqlite3", "urllib.request", "socket", "libvirt", "paramiko", "winrm")


def forbidden_imports(source: str) -> list[str]:
    """The modules `source` imports (anywhere, functions included) that the core must not."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return [n for n in names if n.startswith(FORBIDDEN)]


def test_the_check_sees_imports_everywhere():
    source = ("import os, subprocess\nfrom orchestrator.core import model\n"
              "def f():\n    from orchestrator.effects.files import write_atomic\n    import urllib.request\n")
    assert forbidden_imports(source) == ["subprocess", "orchestrator.effects.files", "urllib.request"]


def test_core_imports_no_effects():
    modules = sorted(CORE.rglob("*.py"))  # the arm/ package's modules too
    assert {"arm/__init__.py", "arm/expand.py", "document.py", "model.py", "plan.py", "render.py",
            "render_windows.py", "template.py", "paths.py"} <= {str(p.relative_to(CORE)) for p in modules}
    offenders = [f"{path.relative_to(CORE)}: {name}" for path in modules
                 for name in forbidden_imports(path.read_text())]
    assert offenders == []
