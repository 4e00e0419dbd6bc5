"""A fresh SSH key pair for each run: the build VM accepts only this run's key."""
from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.effects.files import write_atomic


def make_key_pair(directory: Path, comment: str) -> tuple[Path, str]:
    """Writes `id_ed25519` (mode 0600) and returns its path and the public key line."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    path = directory / "id_ed25519"
    write_atomic(path, private, mode=0o600)
    return path, f"{public.decode()} {comment}"
