"""A fresh SSH key pair for each run: the build VM accepts only this run's key."""
from __future__ import annotations

import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.effects.files import write_atomic

_COMMENT_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=-]")


def make_key_pair(path: Path, comment: str) -> tuple[Path, str]:
    """Writes the private key to `path` (created 0600, never wider) and returns its path and
    the public key line. The comment is reduced to safe characters: it ends up in the guest's
    authorized_keys, where a newline would start another key."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    write_atomic(path, private, mode=0o600)
    safe = _COMMENT_UNSAFE.sub("_", comment)[:100] or "orchestrator"
    return path, f"{public.decode()} {safe}"
