"""File helpers: the sparse-aware sha256 equals hashlib over the whole content."""
from __future__ import annotations

import hashlib
import os

import pytest

from orchestrator.effects.files import CHUNK, sha256_file, write_atomic


@pytest.mark.parametrize("layout", [
    [],  # empty file
    [("data", 10)],
    [("hole", 3 * CHUNK + 17)],
    [("data", 5), ("hole", 2 * CHUNK), ("data", CHUNK + 3)],
    [("hole", CHUNK), ("data", 4096), ("hole", 5 * CHUNK + 1)],
])
def test_sparse_sha256_matches_plain_sha256(tmp_path, layout):
    path = tmp_path / "f"
    with open(path, "wb") as handle:
        for kind, length in layout:
            if kind == "hole":
                handle.seek(length, os.SEEK_CUR)
            else:
                handle.write(os.urandom(length))
        handle.truncate()
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_write_atomic_leaves_no_temporary(tmp_path):
    target = tmp_path / "dir" / "out.txt"
    write_atomic(target, "content", mode=0o600)
    assert target.read_text() == "content" and oct(target.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]
