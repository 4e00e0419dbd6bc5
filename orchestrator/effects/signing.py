"""The host's provenance key and DSSE envelopes: signing statements and checking them.

securesystemslib does the cryptography and the envelope format: `CryptoSigner` (ed25519 over
pyca/cryptography), `SSlibKey` (the public key and its keyid, the sha256 of its canonical
form) and `dsse.Envelope` (the pre-authentication encoding, the signature, the JSON form).

The key lives in the data home, `keys/provenance-ed25519.key` (PKCS#8 PEM, owner-only 0600,
never shown) with its public half beside it (`.pub`, SubjectPublicKeyInfo PEM: what others
verify with). `orchestrate keys init` (run by scripts/setup-host.sh) makes it; the first
signature makes it too when it is missing. Two processes making it at once keep one key: the
private key is linked into place only if no other is there.
"""
from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (Encoding, PublicFormat, load_pem_private_key,
                                                          load_pem_public_key)
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner, SSlibKey

from orchestrator.config import Config, make_private_dir
from orchestrator.core.provenance import PAYLOAD_TYPE
from orchestrator.effects.files import PRIVATE_FILE, open_private, temp_name, write_atomic
from orchestrator.errors import SigningKeyProblem, StatementInvalid, StatementMissing

KEY_NAME = "provenance-ed25519"
PUBLIC_FILE = 0o644


@dataclass(frozen=True)
class HostKey:
    private_path: Path
    public_path: Path
    signer: CryptoSigner

    @property
    def public(self) -> SSlibKey:
        return self.signer.public_key

    @property
    def keyid(self) -> str:
        return self.signer.public_key.keyid


def key_paths(config: Config) -> tuple[Path, Path]:
    keys = config.home / "keys"
    return keys / f"{KEY_NAME}.key", keys / f"{KEY_NAME}.pub"


def public_pem(key: SSlibKey) -> str:
    crypto = Ed25519PublicKey.from_public_bytes(bytes.fromhex(key.keyval["public"]))
    return crypto.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def ensure_key(config: Config) -> tuple[HostKey, bool]:
    """The host key, made if missing: (key, whether this call made it). Idempotent."""
    private, public = key_paths(config)
    made = False
    if not private.exists():
        make_private_dir(private.parent, hint="check the data home's permissions")
        made = _create(private)
    key = _load(private, public)
    _write_public(key)
    return key, made


def load_key(config: Config) -> HostKey | None:
    """The host key if there is one (never made here: verifying needs no new key)."""
    private, public = key_paths(config)
    if not private.exists():
        return None
    return _load(private, public)


def host_public_key(config: Config) -> SSlibKey | None:
    """The key that verifies this host's statements: derived from the private key, or, for a
    user who may not read that, its `.pub`; None when the host has no key yet."""
    private, public = key_paths(config)
    if private.exists() and os.access(private, os.R_OK):
        return _load(private, public).public
    return read_public_key(public) if public.exists() else None


def read_public_key(path: Path) -> SSlibKey:
    """An ed25519 public key from a PEM file (what `orchestrate keys show` prints)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyProblem(f"cannot read the public key {path}: {exc.strerror}",
                                hint="name a PEM public key file (`orchestrate keys show` on the building host "
                                     "prints it)") from None
    try:
        crypto = load_pem_public_key(data)
    except ValueError as exc:
        raise SigningKeyProblem(f"{path} is not a PEM public key ({exc})",
                                hint="`orchestrate keys show` on the building host prints its key") from None
    if not isinstance(crypto, Ed25519PublicKey):
        raise SigningKeyProblem(f"{path} is not an ed25519 public key", hint="orchestrator signs with ed25519 keys")
    return SSlibKey.from_crypto(crypto)


def _create(private: Path) -> bool:
    """Writes a new private key, owner-only from its first byte, linked into place only if no
    key is there yet; False when another process made one first (that one is kept)."""
    signer = CryptoSigner.generate_ed25519()
    tmp = temp_name(private)
    tmp.unlink(missing_ok=True)
    try:
        with os.fdopen(open_private(tmp, PRIVATE_FILE), "wb") as handle:
            handle.write(signer.private_bytes)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, private)  # fails if a key exists: never replaces one
        except FileExistsError:
            return False
        _fsync_dir(private.parent)
        return True
    except OSError as exc:
        raise SigningKeyProblem(f"cannot write the provenance key {private}: {exc.strerror}",
                                hint="check the data home's permissions and free space") from None
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load(private: Path, public: Path) -> HostKey:
    hint = (f"move {private} aside and run `orchestrate keys init` for a new key (statements signed "
            "with the old key then verify only with its public key, `--key`)")
    try:
        info = private.lstat()
        if not stat.S_ISREG(info.st_mode):
            raise SigningKeyProblem(f"the provenance key {private} is not a regular file", hint=hint)
        if info.st_mode & 0o077:  # someone widened it: owner-only again before it is used
            os.chmod(private, PRIVATE_FILE)
        data = private.read_bytes()
    except OSError as exc:
        raise SigningKeyProblem(f"cannot read the provenance key {private}: {exc.strerror}",
                                hint="run orchestrate as the data home's owner") from None
    try:
        crypto = load_pem_private_key(data, None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyProblem(f"the provenance key {private} is unreadable ({exc})", hint=hint) from None
    if not isinstance(crypto, Ed25519PrivateKey):
        raise SigningKeyProblem(f"the provenance key {private} is not an ed25519 key", hint=hint)
    return HostKey(private, public, CryptoSigner(crypto))


def _write_public(key: HostKey) -> None:
    pem = public_pem(key.public)
    try:
        if key.public_path.exists() and key.public_path.read_text() == pem:
            return
        write_atomic(key.public_path, pem, mode=PUBLIC_FILE)
    except OSError as exc:
        raise SigningKeyProblem(f"cannot write the public key {key.public_path}: {exc.strerror}",
                                hint="check the data home's permissions and free space") from None


def sign(key: HostKey, payload: bytes) -> dict[str, Any]:
    """A DSSE envelope (JSON data) of an in-toto statement's payload, signed by the host key."""
    envelope = Envelope(payload, PAYLOAD_TYPE, {})
    envelope.sign(key.signer)
    return envelope.to_dict()


def read_envelope(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StatementMissing(f"the statement {path} does not exist",
                               hint="name the artifact's `.intoto.json` (beside a VHD, or under the data "
                                    "home's attestations/RUN/)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StatementInvalid(f"cannot read the statement {path}: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StatementInvalid(f"the statement {path} is not JSON ({exc}): it was changed or is no statement",
                               hint=TAMPERED_HINT) from None
    if not isinstance(data, dict):
        raise StatementInvalid(f"the statement {path} is not a DSSE envelope", hint=TAMPERED_HINT)
    return data


TAMPERED_HINT = ("do not trust the artifact; rebuild it (`orchestrate build --force`), or restore the "
                 "statement that was written with it")


def verify(envelope_data: dict[str, Any], key: SSlibKey, where: str) -> bytes:
    """The signed payload, once the envelope's signature verifies with `key`; StatementInvalid
    saying which of (not an envelope, another key, changed since signed) it is."""
    try:
        envelope = Envelope.from_dict(json.loads(json.dumps(envelope_data)))  # from_dict edits its input
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise StatementInvalid(f"the statement {where} is not a DSSE envelope ({type(exc).__name__}: {exc})",
                               hint=TAMPERED_HINT) from None
    except Exception as exc:  # securesystemslib's FormatError and base64 errors
        raise StatementInvalid(f"the statement {where} is not a DSSE envelope ({exc})", hint=TAMPERED_HINT) from None
    if envelope.payload_type != PAYLOAD_TYPE:
        raise StatementInvalid(f"the statement {where} carries {envelope.payload_type!r}, not an in-toto statement",
                               hint=TAMPERED_HINT)
    if not envelope.signatures:
        raise StatementInvalid(f"the statement {where} is not signed", hint=TAMPERED_HINT)
    if key.keyid not in envelope.signatures:
        signed_by = ", ".join(sorted(envelope.signatures))
        raise StatementInvalid(
            f"the statement {where} is signed by key {signed_by}, not by the key it is checked with ({key.keyid})",
            hint="verify on the host that built it, or pass that host's public key with --key FILE "
                 "(`orchestrate keys show` there prints it)")
    try:
        envelope.verify([key], 1)
    except VerificationError:
        raise StatementInvalid(f"the signature of the statement {where} does not verify with key {key.keyid}: "
                               "the statement was changed after it was signed", hint=TAMPERED_HINT) from None
    return envelope.payload
