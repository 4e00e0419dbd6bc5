"""One exception hierarchy. Each error says what went wrong, where, and what to do.

The CLI is the only place that turns these into messages and exit codes;
everything else raises them.
"""
from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from orchestrator.core.problems import Problem


class ExitCode(IntEnum):
    OK = 0
    BUILD_FAILED = 1
    INVALID_INPUT = 2  # template, parameters, CLI arguments
    DOWNLOAD_FAILED = 3  # unreachable URL or sha256 mismatch
    CUSTOMIZER_FAILED = 4
    TIMEOUT = 5
    ENVIRONMENT = 6  # missing tool, base image not imported, data home unusable
    PARTIALLY_SUCCEEDED = 7  # some distribution targets were written, others failed
    VALIDATION_FAILED = 8  # an inVMValidation failed (outputs distributed only with continueDistributeOnFailure)
    PROOF_FAILED = 9  # the finished image failed its deploy proof: nothing was distributed
    NOT_VERIFIED = 10  # `verify`: the artifact or its provenance statement was changed, or another key signed it
    NO_PROVENANCE = 11  # `verify`: no provenance statement found for the artifact
    NIGHTLY_FAILED = 12  # `nightly`: one or more templates failed (the others ran; see the summary)
    CANCELED = 130


class OrchestratorError(Exception):
    exit_code: ExitCode = ExitCode.BUILD_FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(OrchestratorError):
    exit_code = ExitCode.INVALID_INPUT


class TemplateInvalid(OrchestratorError):
    """A template broke one or more rules; every problem is listed, not just the first."""

    exit_code = ExitCode.INVALID_INPUT

    def __init__(self, problems: Sequence["Problem"], source: str = "template") -> None:
        # errors only; the warnings and notes found with them are kept apart, never hidden
        self.problems = [p for p in problems if p.is_error]
        self.warnings = [p for p in problems if not p.is_error]
        count = len(self.problems)
        super().__init__(
            f"{source} is invalid: {count} problem{'s' if count != 1 else ''}",
            hint="fix each problem at the JSON path shown, then run `orchestrate validate` again",
        )


class DownloadFailed(OrchestratorError):
    exit_code = ExitCode.DOWNLOAD_FAILED


class ChecksumMismatch(DownloadFailed):
    def __init__(self, url: str, expected: str, actual: str, where: str) -> None:
        super().__init__(
            f"sha256 mismatch for {url} ({where}): expected {expected}, got {actual}",
            hint="the file changed or the checksum is wrong: check the source, then update "
            "sha256Checksum (sha256sum FILE prints it)",
        )
        self.expected = expected
        self.actual = actual


class CustomizerFailed(OrchestratorError):
    exit_code = ExitCode.CUSTOMIZER_FAILED


class ValidationFailed(OrchestratorError):
    """An inVMValidation failed (runSubState Validating)."""

    exit_code = ExitCode.VALIDATION_FAILED


class ProofFailed(OrchestratorError):
    """The finished image, booted as a fresh VM, failed a deploy check."""

    exit_code = ExitCode.PROOF_FAILED


class BuildTimeout(OrchestratorError):
    exit_code = ExitCode.TIMEOUT


class BuildFailed(OrchestratorError):
    exit_code = ExitCode.BUILD_FAILED


class EnvironmentProblem(OrchestratorError):
    exit_code = ExitCode.ENVIRONMENT


class SourceNotFound(EnvironmentProblem):
    """The template's source image is not in the local catalog or store."""


class Canceled(OrchestratorError):
    exit_code = ExitCode.CANCELED


# --- provenance (`orchestrate verify`, signing) ------------------------------------------------
class StatementMissing(OrchestratorError):
    """No provenance statement for the artifact (none beside it, none recorded for it)."""

    exit_code = ExitCode.NO_PROVENANCE


class StatementInvalid(OrchestratorError):
    """The statement is no signed in-toto statement, was changed after signing, or another key signed it."""

    exit_code = ExitCode.NOT_VERIFIED


class DigestMismatch(OrchestratorError):
    """The artifact's sha256 is not the one its (valid) statement signs: the artifact changed."""

    exit_code = ExitCode.NOT_VERIFIED


class ArtifactUnreadable(OrchestratorError):
    """The artifact to verify is not a readable file (or names no recorded run output)."""

    exit_code = ExitCode.INVALID_INPUT


class SigningKeyProblem(EnvironmentProblem):
    """The host's provenance key cannot be made, read or used."""


# --- checkpoints (effects/checkpoint_store.py) -------------------------------------------------
class CheckpointFailed(BuildFailed):
    """A checkpoint layer cannot be registered (not a frozen qcow2 layer under the store, its
    parent is not registered, or another layer is already registered at its path)."""
