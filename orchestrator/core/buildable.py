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
            if not isinstance(check, (m.ShellCustomizer, m.FileCustomizer)):
                problems.append(Problem(f"$.properties.validate.inVMValidations[{index}].type",
                                        "validation-not-buildable",
                                        f"{check.kind} validations are not supported for Linux builds",
                                        "use Shell (or File) validations"))
    return problems


def _validation_settings(template: m.ImageTemplate) -> list[Problem]:
    """sourceValidationOnly validates the source as it is, so it takes no customizers (they
    would never run): refused rather than ignored."""
    validate = template.validate
    if validate and validate.source_validation_only and template.customize:
        return [Problem("$.properties.validate.sourceValidationOnly", "source-validation-with-customizers",
                        "sourceValidationOnly validates the source image as it is: the "
                        f"{len(template.customize)} customizer(s) in customize would never run",
                        "drop customize, or set sourceValidationOnly to false to customize, then validate")]
    return []
