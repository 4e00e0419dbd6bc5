"""The pure core imports nothing from the effects, the engine or the CLI."""
from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "orchestrator" / "core"
FORBIDDEN = ("orchestrator.effects", "orchestrator.engine", "orchestrator.cli", "orchestrator.commands",
             "subprocess", "sqlite3", "urllib.request", "socket", "libvirt", "paramiko", "winrm")


def test_core_imports_no_effects():
    offenders = []
    for path in sorted(CORE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(FORBIDDEN)]
    assert offenders == []
    assert len(list(CORE.glob("*.py"))) >= 8
