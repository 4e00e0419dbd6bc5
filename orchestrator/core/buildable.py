"""What `orchestrate build` can build on this kind of host, as path-tagged problems.

A template can be valid AIB and still ask for something the local build does not do yet;
those are refused before anything starts, each with its JSON path.
"""
from __future__ import annotations

from orchestrator.core import model as m
from orchestrator.core.problems import Problem


def build_problems(template: m.ImageTemplate) -> list[Problem]:
    problems: list[Problem] = []
    if template.os_type == "Windows":
        problems.append(Problem("$.properties.source", "windows-build",
                                "Windows images cannot be built by `orchestrate build` yet",
                                "`orchestrate render` produces the WinRM Packer HCL; run it on a host with a Windows base image"))
    if isinstance(template.source, m.IsoSource):
        problems.append(Problem("$.properties.source.type", "source-not-buildable",
                                f"{template.source.kind} sources cannot be built yet (AIB retired them in 2020)",
                                "use a PlatformImage (`orchestrate image list`), ManagedImage or SharedImageVersion "
                                "source (`orchestrate store list`)"))
    for index, target in enumerate(template.distribute):
        path = f"$.properties.distribute[{index}]"
        if isinstance(target, m.VhdTarget) and target.uri and not (target.uri.startswith("/") or target.uri.lower().startswith("file://")):
            problems.append(Problem(f"{path}.uri", "vhd-uri",
                                    f"`{target.uri}` is not a local path: on-prem a VHD is written to this host",
                                    "use file:///path/to/image.vhd or an absolute path, or drop uri"))
    for index, customizer in enumerate(template.customize):
        if template.os_type == "Linux" and not isinstance(customizer, (m.ShellCustomizer, m.FileCustomizer)):
            problems.append(Problem(f"$.properties.customize[{index}].type", "customizer-not-buildable",
                                    f"{customizer.kind} customizers are not supported for Linux builds",
                                    "use Shell or File customizers"))
    problems += _validation_settings(template)
    if template.validate and template.validate.in_vm_validations and template.os_type == "Linux":
        for index, check in enumerate(template.validate.in_vm_validations):
            if not isinstance(check, m.ShellCustomizer):
                problems.append(Problem(f"$.properties.validate.inVMValidations[{index}].type",
                                        "validation-not-buildable",
                                        f"{check.kind} validations are not supported for Linux builds",
                                        "use Shell validations"))
    return problems


def _validation_settings(template: m.ImageTemplate) -> list[Problem]:
    """The build runs inVMValidations after the customizers, and a failing one fails the build
    (nothing is distributed, the build VM is removed). Settings that ask for anything else are
    refused until they are built, not ignored."""
    problems: list[Problem] = []
    validate = template.validate
    if validate and validate.source_validation_only:
        problems.append(Problem("$.properties.validate.sourceValidationOnly", "validation-not-buildable",
                                "sourceValidationOnly (validate the source image, skip customizing) "
                                "is not supported by `orchestrate build` yet",
                                "drop it or set it to false: the build customizes, then runs the validations"))
    if validate and validate.continue_distribute_on_failure:
        problems.append(Problem("$.properties.validate.continueDistributeOnFailure", "validation-not-buildable",
                                "continueDistributeOnFailure (distribute even when a validation fails) "
                                "is not supported by `orchestrate build` yet",
                                "drop it or set it to false: a failing validation fails the build and "
                                "nothing is distributed"))
    if template.error_handling.on_validation_error != "cleanup":
        problems.append(Problem("$.properties.errorHandling.onValidationError", "validation-not-buildable",
                                f"onValidationError `{template.error_handling.on_validation_error}` (keep the build "
                                "VM after a failed validation) is not supported by `orchestrate build` yet",
                                "drop it or use cleanup (the default); onCustomizerError: abort does keep the "
                                "build VM's disk when a customizer fails"))
    return problems
