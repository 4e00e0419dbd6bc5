"""`orchestrate` verbs of issue 12 (provenance): filled in by their own change."""
from __future__ import annotations

from typing import Any


def add_parsers(sub: Any) -> None:
    """Adds this module's verbs to the `orchestrate` parser (none yet)."""
