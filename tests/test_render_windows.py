"""The Windows renderer: every Windows sample (the project's; the public ones when
$ORCHESTRATOR_SAMPLES is set) validates with the real Packer 1.6.6, the
provisioners come in the plan's order, user text never reaches the HCL unescaped, and a real
`packer build` (null builder, WinRM communicator against a fake WinRM server on 127.0.0.1)
proves that the strings which must live in HCL reach the guest byte-exact.

Runs in seconds: `packer validate` takes about 1 s, the one `packer build` about 12 s.
"""
from __future__ import annotations

import base64
import http.server
import os
import re
import subprocess
import threading
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import ClassVar, Iterator

import hcl2
import pytest

from orchestrator.errors import TemplateInvalid
from hcl2 import SerializationOptions
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.core.checkpoint_steps import CheckpointPlan
from orchestrator.core.plan import BuildPlan, ResolvedSource, make_plan
from orchestrator.core.render import RenderContext, RenderedBuild
from orchestrator.core.render_windows import (
    FINALIZE_SCRIPT,
    SEED_PASSWORD_FILE,
    UPDATE_RESTART_COMMAND,
    UPDATE_ROUNDS,
    UTF8_BOM,
    go_template_literal,
    packer_environment,
    powershell_literal,
    render_windows,
    windows_seed_files,
)
from orchestrator.core import model as m
from orchestrator.core.template import load_template
from tests.helpers import PROJECT_TEMPLATES, image_template_data, is_trigger, is_windows, load_sample, sample_cases

WINDOWS_SAMPLES = sample_cases(lambda p: is_windows(p) and not is_trigger(p))
EVERY_KIND = PROJECT_TEMPLATES / "windows-platform-managed-image.json"
PASSWORD = "Aa1-per-run-password-0123456789"


# ---------------------------------------------------------------------------------------------
# Rendering, writing, validating
# ---------------------------------------------------------------------------------------------


def make_build(tmp_path: Path, data: dict | m.ImageTemplate, name: str = "win",
               checkpoints: CheckpointPlan | None = None) -> tuple[BuildPlan, RenderContext, RenderedBuild]:
    template = data if isinstance(data, m.ImageTemplate) else load_template(data, name)
    assert template.os_type == "Windows"
    base = tmp_path / "images" / "windows.qcow2"
    base.parent.mkdir(parents=True, exist_ok=True)
    base.write_bytes(b"")
    source = ResolvedSource("PlatformImage MicrosoftWindowsServer:WindowsServer:2022:latest", str(base),
                            "qcow2", 127 * 1024 ** 3, "0" * 64, "1.0.0")
    plan = make_plan(template, source, name)
    downloads = {}
    for index, item in enumerate(plan.downloads):
        path = tmp_path / "cache" / f"download-{index}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"download {index} for {item.customizer}\n".encode())
        downloads[item.url] = str(path)
    work = tmp_path / "work"
    ctx = RenderContext(work_dir=str(work), output_dir=str(work / "packer-output"),
                        ssh_private_key=str(work / "id_ed25519"), ssh_public_key="ssh-ed25519 AAAAtest orchestrator",
                        accelerator="tcg", downloads=downloads, checkpoints=checkpoints)
    return plan, ctx, render_windows(plan, ctx)


def write_build(ctx: RenderContext, rendered: RenderedBuild, hcl: str | None = None) -> Path:
    work = Path(ctx.work_dir)
    for rel, content in {**rendered.files, **windows_seed_files(PASSWORD)}.items():
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode("utf-8"))
    hcl_path = work / "build.pkr.hcl"
    hcl_path.write_text(rendered.hcl if hcl is None else hcl, encoding="utf-8")
    return hcl_path


def run_packer(packer: str, *args: str, cwd: Path, password: str | None = PASSWORD,
               timeout: int = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PKR_VAR_")}
    env.update({"CHECKPOINT_DISABLE": "1", "PACKER_NO_COLOR": "1", "PACKER_CACHE_DIR": str(cwd / ".packer-cache")})
    if password is not None:
        env.update(packer_environment(password))
    return subprocess.run([packer, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def parse_hcl(text: str) -> dict:
    return hcl2.loads(text, serialization_options=SerializationOptions(
        strip_string_quotes=True, with_comments=False, explicit_blocks=False))


def hcl_text_value(value: str) -> str:
    """python-hcl2 undoes the backslash escapes; the template escapes `$${`/`%%{` remain."""
    return value.replace("$${", "${").replace("%%{", "%{")


def parsed_provisioners(hcl: str) -> list[tuple[str, dict]]:
    build = parse_hcl(hcl)["build"][0]
    return [next(iter(p.items())) for p in build["provisioner"]]


def expected_kinds(plan: BuildPlan) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for step in plan.steps:
        source = f"customizer:{step.name}" if step.phase == "customize" else f"validation:{step.name}"
        kinds = {
            "PowerShell": ["powershell"],
            "File": ["file", "powershell"],
            "WindowsRestart": ["breakpoint", "windows-restart"],
            "WindowsUpdate": ["powershell", "windows-restart"] * UPDATE_ROUNDS,
        }[step.kind]
        out += [(source, kind) for kind in kinds]
    return out + [("generalize", "powershell")]


def assert_blocks_match_hcl(rendered: RenderedBuild) -> None:
    parsed = parsed_provisioners(rendered.hcl)
    assert [kind for kind, _ in parsed] == [b.kind for b in rendered.provisioners]
    for block, (_, attrs) in zip(rendered.provisioners, parsed):
        assert list(attrs) == [key for key, _ in block.attrs]
        for key, value in block.attrs:
            got = attrs[key]
            if key == "elevated_password" and value != "":
                assert got == "${var.winrm_password}"
            elif isinstance(value, str):
                assert hcl_text_value(got) == value
            elif isinstance(value, tuple):
                assert got == list(value)
            else:
                assert got == value


# ---------------------------------------------------------------------------------------------
# The public samples
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sample", WINDOWS_SAMPLES)
def test_sample_renders_and_validates(tmp_path: Path, sample: Path, packer: str) -> None:
    plan, ctx, rendered = make_build(tmp_path, load_sample(sample), "sample")
    written = image_template_data(sample)["properties"]
    assert [s.kind for s in plan.steps if s.phase == "customize"] == [c["type"] for c in written["customize"]]
    assert [(b.source, b.kind) for b in rendered.provisioners] == expected_kinds(plan)
    assert_blocks_match_hcl(rendered)
    hcl_path = write_build(ctx, rendered)
    result = run_packer(packer, "validate", str(hcl_path), cwd=hcl_path.parent)
    assert result.returncode == 0, result.stdout + result.stderr

    source = parse_hcl(rendered.hcl)["source"][0]["qemu"]["build"]
    assert source["communicator"] == "winrm" and source["winrm_username"] == "packer"
    assert source["winrm_password"] == "${var.winrm_password}"
    assert source["accelerator"] == "tcg" and source["use_backing_file"] is True
    assert source["qemu_img_args"][0]["create"] == ["-F", "qcow2"]
    assert source["qemuargs"][0] == ["-netdev", "user,id=user.0,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:5985"]
    assert source["cpus"] == plan.cpus and source["memory"] == plan.memory_mib
    assert source["disk_size"] == f"{plan.disk_size_mib}M"
    assert source["cd_files"] == [str(Path(ctx.work_dir) / SEED_PASSWORD_FILE)]
    assert source["shutdown_command"] == f"cmd /c {FINALIZE_SCRIPT}"
    assert PASSWORD not in rendered.hcl


def test_sample_vm_size_and_disk_reach_the_qemu_source(tmp_path: Path) -> None:
    # Standard_D2s_v3 is 2 vCPUs and 8 GiB; osDiskSizeGB 127 on a 127 GiB source keeps 127 GiB
    _, _, rendered = make_build(tmp_path, load_sample(EVERY_KIND), "sample")
    source = parse_hcl(rendered.hcl)["source"][0]["qemu"]["build"]
    assert (source["cpus"], source["memory"], source["disk_size"]) == (2, 8192, f"{127 * 1024}M")


def test_sample_with_every_kind_keeps_aib_order(tmp_path: Path) -> None:
    plan, _, rendered = make_build(tmp_path, load_sample(EVERY_KIND))
    assert [(s.kind, s.name) for s in plan.steps] == [
        ("PowerShell", "prepareFolders"), ("WindowsRestart", "WindowsRestart2"), ("File", "landingPage"),
        ("PowerShell", "recordBuild"), ("WindowsUpdate", "WindowsUpdate5")]
    kinds = [k for k, _ in parsed_provisioners(rendered.hcl)]
    assert kinds[:6] == ["powershell", "breakpoint", "windows-restart", "file", "powershell", "powershell"]
    assert kinds[6:-1] == ["powershell", "windows-restart"] * UPDATE_ROUNDS
    assert kinds[-1] == "powershell"
    assert rendered.provisioners[-1].source == "generalize"


def test_escaping_sample_reaches_its_scripts_byte_exact(tmp_path: Path) -> None:
    sample = PROJECT_TEMPLATES / "windows-escaping.json"
    written = image_template_data(sample)["properties"]
    _, ctx, rendered = make_build(tmp_path, load_sample(sample), "escaping")
    (first, _, restart, _) = written["customize"]
    block = next(b for b in rendered.provisioners if b.source == f"customizer:{first['name']}")
    script = rendered.files[str(Path(dict(block.attrs)["script"]).relative_to(ctx.work_dir))]
    assert script == UTF8_BOM + "\n".join(first["inline"]) + "\n"
    assert dict(block.attrs)["valid_exit_codes"] == (0, 1641, 3010)
    assert dict(block.attrs)["elevated_user"] == "packer"
    (restart_attrs,) = [attrs for kind, attrs in parsed_provisioners(rendered.hcl)
                        if kind == "windows-restart" and "restart_check_command" in attrs]
    assert hcl_text_value(restart_attrs["restart_command"]) == go_template_literal(restart["restartCommand"])
    assert hcl_text_value(restart_attrs["restart_check_command"]) == go_template_literal(restart["restartCheckCommand"])
    assert restart_attrs["restart_timeout"] == "1h30m"
    body = hcl_code(rendered.hcl)
    assert unescaped_sequences(body[body.index('source "qemu"'):]) == ["{{ .SSHHostPort }}-:"]


# ---------------------------------------------------------------------------------------------
# Hostile input
# ---------------------------------------------------------------------------------------------

HOSTILE_COMMAND = ("Write-Output \"${x} %{y} {{ .Path }} {{ build_name }} {{{ }} $${z} %%{w}\" 'single' "
                   "c:\\dir\\ \u2018curly\u2019 caf\u00e9 \U0001F600")
HOSTILE_DESTINATION = "C:\\dir with 'quote' and \u2019curly\u2019\\${x} %{y} {{ .Path }} \"q\"\\file.txt"
HOSTILE_RESTART = ('shutdown /r /f /t 0 /c "{{ .Path }} ${x} %{y} $${z} %%{w} {{{ {{"{{"}} }} {{- x -}}"'
                   " c:\\dir\\ \\\" tab\there\nnext-line caf\u00e9")
HOSTILE_CHECK = 'echo {{ build_name }} ${x} %{y} "quoted" > c:\\buildArtifacts\\restart.txt'
HOSTILE_CRITERIA = "IsInstalled=0 and Type='Software' ${x} {{ .Path }}"
HOSTILE_FILTERS = ["exclude:$_.Title -like '*Preview*'", "exclude:$_.Title -match '{{ .Path }}|${x}|%{y}|\u2019'",
                   "include:$true"]
HOSTILE_NAME = 'evil "name" ${x} %{y} {{ .Path }}\n# provisioner "shell" {'
HOSTILE_FRAGMENTS = ["${x}", "%{y}", "{{ .Path }}", "{{ build_name }}", "Write-Output", "\u2018curly",
                     "IsInstalled=0 and Type", "-like '*Preview*'", "dir with 'quote'"]


def hostile_template(*, with_update: bool = True, url: str = "http://127.0.0.1:1") -> dict:
    customize: list[dict] = [
        {"type": "PowerShell", "name": HOSTILE_NAME, "inline": [HOSTILE_COMMAND, "line1\nline2", "exit 0"]},
        {"type": "PowerShell", "name": "elevated", "scriptUri": f"{url}/script.ps1", "runElevated": True},
        {"type": "PowerShell", "name": "as-system", "inline": ["whoami"], "runElevated": True,
         "runAsSystem": True, "validExitCodes": [0, 3010]},
        {"type": "File", "name": "artifact", "sourceUri": f"{url}/index.html", "destination": HOSTILE_DESTINATION},
        {"type": "WindowsRestart", "name": "restart", "restartCommand": HOSTILE_RESTART,
         "restartCheckCommand": HOSTILE_CHECK, "restartTimeout": "10m"},
    ]
    if with_update:
        customize.append({"type": "WindowsUpdate", "name": "updates", "searchCriteria": HOSTILE_CRITERIA,
                          "filters": HOSTILE_FILTERS, "updateLimit": 7})
    return {
        "type": "Microsoft.VirtualMachineImages/imageTemplates",
        "apiVersion": "2022-02-14",
        "location": "westus2",
        "properties": {
            "source": {"type": "PlatformImage", "publisher": "MicrosoftWindowsServer", "offer": "WindowsServer",
                       "sku": "2022-datacenter", "version": "latest"},
            "customize": customize,
            "validate": {"inVMValidations": [
                {"type": "PowerShell", "name": "check", "inline": ["Test-Path 'C:\\buildArtifacts' {{ .Path }}"]},
            ]},
            "distribute": [{"type": "VHD", "runOutputName": "vhd"}],
        },
    }


def hcl_code(hcl: str) -> str:
    """The HCL without its `#` comment lines (step names appear there, one line, inert)."""
    return "\n".join(line for line in hcl.splitlines() if not line.lstrip().startswith("#"))


def powershell_single_quoted_value(literal: str) -> str:
    """PowerShell's tokenizer for a single-quoted string: any of ' U+2018..U+201B ends it
    unless the next character is one of them too, in which case that next one is kept."""
    quotes = "'\u2018\u2019\u201a\u201b"
    assert literal[0] in quotes
    out, i = [], 1
    while True:
        ch = literal[i]
        if ch in quotes:
            if i + 1 < len(literal) and literal[i + 1] in quotes:
                out.append(literal[i + 1])
                i += 2
                continue
            assert i == len(literal) - 1, f"the string ends early: {literal!r}"
            return "".join(out)
        out.append(ch)
        i += 1


GO_ESCAPE_IN_HCL = '{{\\"{{\\"}}'


def unescaped_sequences(code: str) -> list[str]:
    """HCL template sequences that would be interpreted: `${`/`%{` not written as `$${`/`%%{`,
    and Go-template `{{` not written as the action `{{"{{"}}` (in HCL source: `{{\\"{{\\"}}`)."""
    found, i = [], 0
    while i < len(code):
        if code.startswith(("$${", "%%{"), i):
            i += 3
        elif code.startswith(GO_ESCAPE_IN_HCL, i):
            i += len(GO_ESCAPE_IN_HCL)
        elif code.startswith(("${", "%{", "{{"), i):
            found.append(code[i:i + 20])
            i += 2
        else:
            i += 1
    return found


def test_hostile_text_stays_out_of_the_hcl(tmp_path: Path) -> None:
    plan, ctx, rendered = make_build(tmp_path, hostile_template(), "hostile")
    code = hcl_code(rendered.hcl)
    for fragment in HOSTILE_FRAGMENTS:
        assert fragment not in code.replace("$${", "").replace("%%{", "").replace(GO_ESCAPE_IN_HCL, ""), fragment
    # Past the variable block, the only sequence Packer interprets is our own port variable.
    body = code[code.index('source "qemu"'):]
    assert unescaped_sequences(body) == ["{{ .SSHHostPort }}-:"]
    # The only user strings in HCL: the WindowsRestart commands, HCL- and Go-template-escaped.
    restart = next(attrs for kind, attrs in parsed_provisioners(rendered.hcl)
                   if kind == "windows-restart" and "restart_check_command" in attrs)
    assert hcl_text_value(restart["restart_command"]) == go_template_literal(HOSTILE_RESTART)
    assert hcl_text_value(restart["restart_check_command"]) == go_template_literal(HOSTILE_CHECK)
    assert restart["restart_timeout"] == "10m"
    # A name's newline cannot start HCL code: the comment stays one line.
    lines = [line for line in rendered.hcl.splitlines() if 'evil "name"' in line]
    assert lines and all(line.lstrip().startswith("# customizer:evil") for line in lines)
    assert_blocks_match_hcl(rendered)
    assert [(b.source, b.kind) for b in rendered.provisioners] == expected_kinds(plan)


def test_hostile_build_validates(tmp_path: Path, packer: str) -> None:
    # `packer validate` runs every provisioner's Prepare, i.e. the Go-template pass as well.
    _, ctx, rendered = make_build(tmp_path, hostile_template(), "hostile")
    hcl_path = write_build(ctx, rendered)
    result = run_packer(packer, "validate", str(hcl_path), cwd=hcl_path.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_inline_commands_reach_the_ps1_byte_exact(tmp_path: Path) -> None:
    _, ctx, rendered = make_build(tmp_path, hostile_template(), "hostile")
    block = rendered.provisioners[0]
    script = dict(block.attrs)["script"]
    rel = str(Path(script).relative_to(ctx.work_dir))
    content = rendered.files[rel]
    assert content.startswith(UTF8_BOM)
    assert content == UTF8_BOM + HOSTILE_COMMAND + "\nline1\nline2\nexit 0\n"
    raw = write_build(ctx, rendered).parent.joinpath(rel).read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    assert HOSTILE_COMMAND.encode("utf-8") in raw
    assert block.log_keys == (script,)
    validation = [b for b in rendered.provisioners if b.source == "validation:check"]
    assert len(validation) == 1
    check = rendered.files[str(Path(dict(validation[0].attrs)["script"]).relative_to(ctx.work_dir))]
    assert "Test-Path 'C:\\buildArtifacts' {{ .Path }}\n" in check


def test_file_destination_is_a_powershell_literal(tmp_path: Path) -> None:
    _, ctx, rendered = make_build(tmp_path, hostile_template(), "hostile")
    blocks = [b for b in rendered.provisioners if b.source == "customizer:artifact"]
    assert [b.kind for b in blocks] == ["file", "powershell"]
    upload = dict(blocks[0].attrs)
    assert upload["source"] == ctx.downloads["http://127.0.0.1:1/index.html"]
    assert upload["destination"] == "C:/Windows/Temp/orchestrator-upload-4"
    script = rendered.files[str(Path(dict(blocks[1].attrs)["script"]).relative_to(ctx.work_dir))]
    line = next(l for l in script.splitlines() if l.startswith("$destination = "))
    literal = line[len("$destination = "):]
    assert powershell_single_quoted_value(literal) == HOSTILE_DESTINATION
    assert "''quote''" in literal and "\u2019\u2019curly\u2019\u2019" in literal
    assert "$upload = 'C:\\Windows\\Temp\\orchestrator-upload-4'" in script
    assert "[System.IO.File]::Move($upload, $destination)" in script


@pytest.mark.parametrize("text", ["", "plain", "it's", "''", "\u2018\u2019\u201a\u201b", "a'\nb", "${x} $(y) `z"])
def test_powershell_literal(text: str) -> None:
    assert powershell_single_quoted_value(powershell_literal(text)) == text


@given(st.text(alphabet=st.sampled_from("ab'\u2018\u2019\u201a\u201b\"$`{}\n\\")) | st.text())
def test_powershell_literal_round_trips(text: str) -> None:
    assert powershell_single_quoted_value(powershell_literal(text)) == text


def test_go_template_literal() -> None:
    assert go_template_literal("no braces") == "no braces"
    assert go_template_literal("{{ .Path }}") == '{{"{{"}} .Path }}'
    assert go_template_literal("{{{") == '{{"{{"}}{'
    assert go_template_literal("a}}b") == "a}}b"


def test_elevation_and_exit_codes(tmp_path: Path) -> None:
    _, ctx, rendered = make_build(tmp_path, hostile_template(), "hostile")
    by_source = {b.source: dict(b.attrs) for b in rendered.provisioners if b.kind == "powershell"}
    plain = by_source[f"customizer:{HOSTILE_NAME}"]
    assert "elevated_user" not in plain and plain["valid_exit_codes"] == (0,)
    elevated = by_source["customizer:elevated"]
    assert elevated["script"] == ctx.downloads["http://127.0.0.1:1/script.ps1"]
    assert elevated["elevated_user"] == "packer"
    assert elevated["elevated_password"].text == "var.winrm_password"
    system = by_source["customizer:as-system"]
    assert system["elevated_user"] == "SYSTEM" and system["elevated_password"] == ""
    assert system["valid_exit_codes"] == (0, 3010)
    parsed = [attrs for kind, attrs in parsed_provisioners(rendered.hcl) if kind == "powershell"]
    assert parsed[1]["elevated_password"] == "${var.winrm_password}"


def test_windows_update_data_and_rounds(tmp_path: Path) -> None:
    _, ctx, rendered = make_build(tmp_path, hostile_template(), "hostile")
    blocks = [b for b in rendered.provisioners if b.source == "customizer:updates"]
    assert [b.kind for b in blocks] == ["powershell", "windows-restart"] * UPDATE_ROUNDS
    scripts = {dict(b.attrs)["script"] for b in blocks if b.kind == "powershell"}
    assert len(scripts) == 1
    for number, block in enumerate(blocks[0::2], 1):
        attrs = dict(block.attrs)
        assert attrs["elevated_user"] == "SYSTEM"
        assert attrs["environment_vars"] == (f"ORCHESTRATOR_UPDATE_ROUND={number}",
                                             f"ORCHESTRATOR_UPDATE_ROUNDS={UPDATE_ROUNDS}")
        assert attrs["valid_exit_codes"] == (0, 101)
    for block in blocks[1::2]:
        assert dict(block.attrs)["restart_command"] == UPDATE_RESTART_COMMAND
    data = rendered.files[str(Path(scripts.pop()).relative_to(ctx.work_dir))]
    values = dict(re.findall(r"^\$(\w+) = (.*)$", data.split("# ---- end of data ----")[0], re.MULTILINE))
    assert powershell_single_quoted_value(values["SearchCriteria"]) == HOSTILE_CRITERIA
    assert values["UpdateLimit"] == "7"
    filters = re.findall(r"'(?:[^'\u2018-\u201b]|['\u2018-\u201b]{2})*'", values["Filters"])
    assert [powershell_single_quoted_value(f) for f in filters] == HOSTILE_FILTERS
    for needle in ("Microsoft.Update.Session", "CreateUpdateSearcher()", "$searcher.Search($SearchCriteria)",
                   "CreateUpdateDownloader()", "CreateUpdateInstaller()", "$selected.Count -ge $UpdateLimit",
                   "'include'", "'exclude'", "Where-Object -FilterScript $block", "exit 101"):
        assert needle in data, needle


def test_windows_update_defaults(tmp_path: Path) -> None:
    data = hostile_template()
    data["properties"]["customize"][-1] = {"type": "WindowsUpdate"}
    _, ctx, rendered = make_build(tmp_path, data)
    script = next(dict(b.attrs)["script"] for b in rendered.provisioners if b.source == "customizer:WindowsUpdate6")
    text = rendered.files[str(Path(script).relative_to(ctx.work_dir))]
    assert "$SearchCriteria = 'BrowseOnly=0 and IsInstalled=0'\n" in text
    assert "$Filters = @()\n" in text and "$UpdateLimit = 1000\n" in text


def test_generalize_runs_sysprep_or_the_override(tmp_path: Path) -> None:
    _, ctx, rendered = make_build(tmp_path, hostile_template(), "hostile")
    last = rendered.provisioners[-1]
    assert last.source == "generalize" and last.kind == "powershell"
    attrs = dict(last.attrs)
    assert attrs["elevated_user"] == "SYSTEM"
    text = rendered.files[str(Path(attrs["script"]).relative_to(ctx.work_dir))]
    assert text.startswith(UTF8_BOM)
    assert "$OverridePath = 'C:\\DeprovisioningScript.ps1'\n" in text
    assert "Test-Path -LiteralPath $OverridePath" in text
    assert "Say \"running $OverridePath (written by a customizer) instead of the default Sysprep\"" in text
    assert "Say 'running default: Sysprep.exe /oobe /generalize /quiet /quit'" in text
    assert "function Say([string] $Text) { Write-Output \"orchestrator-generalize: $Text\" }" in text
    for needle in ("'RdAgent'", "'WindowsAzureTelemetryService'", "'WindowsAzureGuestAgent'",
                   "Join-Path $sysprepDir 'unattend.xml'", "Remove-Item -LiteralPath $unattend -Force",
                   "'Sysprep.exe') /oobe /generalize /quiet /quit",
                   "HKLM:\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Setup\\State",
                   "'IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE'", "Get-Service -Name $Name -ErrorAction SilentlyContinue"):
        assert needle in text, needle
    assert text.index("'IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE'") > text.index("/oobe /generalize /quiet /quit")


def test_log_keys_identify_each_step(tmp_path: Path) -> None:
    _, _, rendered = make_build(tmp_path, hostile_template(), "hostile")
    for block in rendered.provisioners:
        if block.kind == "windows-restart":
            assert block.log_keys == ()  # it follows a block of the same source
        else:
            assert block.log_keys and all(block.log_keys)
    markers = [b for b in rendered.provisioners if b.kind == "breakpoint"]
    assert [b.source for b in markers] == ["customizer:restart"]
    assert dict(markers[0].attrs)["note"] == markers[0].log_keys[0]


def test_render_is_pure(tmp_path: Path) -> None:
    _, ctx, first = make_build(tmp_path, hostile_template(), "hostile")
    _, _, second = make_build(tmp_path, hostile_template(), "hostile")
    assert first == second
    assert hash(first.provisioners) == hash(second.provisioners)  # frozen all the way down
    assert not Path(ctx.work_dir).exists()
    assert all(not Path(rel).is_absolute() and ".." not in Path(rel).parts for rel in first.files)


def test_shell_customizer_is_rejected(tmp_path: Path) -> None:
    data = hostile_template(with_update=False)
    data["properties"]["customize"].append({"type": "Shell", "name": "sh", "inline": ["true"]})
    with pytest.raises(TemplateInvalid) as err:  # the loader refuses it before any rendering
        make_build(tmp_path, data)
    assert [(p.path, p.rule) for p in err.value.problems] == [("$.properties.customize[5].type", "customizer-os")]


def test_password_must_be_supplied(tmp_path: Path, packer: str) -> None:
    _, ctx, rendered = make_build(tmp_path, load_sample(PROJECT_TEMPLATES / "windows-vhd.json"), "sample")
    hcl_path = write_build(ctx, rendered)
    unset = run_packer(packer, "validate", str(hcl_path), cwd=hcl_path.parent, password=None)
    assert unset.returncode != 0 and 'Unset variable "winrm_password"' in unset.stdout + unset.stderr
    short = subprocess.run([packer, "validate", "-var", "winrm_password=short", str(hcl_path)], cwd=hcl_path.parent,
                           capture_output=True, text=True, env={**os.environ, "CHECKPOINT_DISABLE": "1"}, timeout=120)
    assert short.returncode != 0 and "16 characters or more" in short.stdout + short.stderr


@pytest.mark.parametrize("password", ["Aa1-short", "aa1-all-lower-case-0123", "AA1-ALL-UPPER-CASE-0123",
                                      "Aa-no-digits-at-all-here", "Aa1-{{ .Path }}-0123456789",
                                      'Aa1-"quote"-$x-0123456789', "Aa1 space 0123456789xyz", "Aa1-" + "x" * 124])
def test_unsafe_passwords_are_refused(password: str) -> None:
    with pytest.raises(ValueError):
        windows_seed_files(password)
    with pytest.raises(ValueError):
        packer_environment(password)


def test_password_helpers() -> None:
    assert windows_seed_files(PASSWORD) == {SEED_PASSWORD_FILE: PASSWORD}
    assert packer_environment(PASSWORD) == {"PKR_VAR_winrm_password": PASSWORD}


# ---------------------------------------------------------------------------------------------
# The proof: a real `packer build` against a fake WinRM server records what reaches the guest
# ---------------------------------------------------------------------------------------------

_NS = {"a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
       "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
       "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"}
_DONE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done"


class FakeWinRM(http.server.BaseHTTPRequestHandler):
    """Just enough WS-Management for Packer's WinRM communicator: every command succeeds and
    prints the phrases Packer's connect and restart checks look for."""

    commands: list[str]
    auth: list[str]
    refuse: ClassVar[list[int]] = []  # [n]: the first n requests get 401, as from a guest with another password

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.auth.append(self.headers.get("Authorization", ""))
        request = self.rfile.read(int(self.headers["Content-Length"]))
        if self.refuse and self.refuse[0] > 0:
            self.refuse[0] -= 1
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        root = ET.fromstring(request)
        action = root.find(".//a:Action", _NS).text or ""
        if action.endswith("/transfer/Create"):
            shell = uuid.uuid4()
            body = (f'<x:ResourceCreated xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer">'
                    f'<a:ReferenceParameters><w:SelectorSet><w:Selector Name="ShellId">{shell}</w:Selector>'
                    f'</w:SelectorSet></a:ReferenceParameters></x:ResourceCreated>')
            reply = "http://schemas.xmlsoap.org/ws/2004/09/transfer/CreateResponse"
        elif action.endswith("/shell/Command"):
            self.commands.append(root.find(".//rsp:Command", _NS).text or "")
            body = f"<rsp:CommandResponse><rsp:CommandId>{uuid.uuid4()}</rsp:CommandId></rsp:CommandResponse>"
            reply = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandResponse"
        elif action.endswith("/shell/Receive"):
            command = root.find(".//rsp:DesiredStream", _NS).get("CommandId")
            secret = base64.b64decode(self.auth[-1].split()[-1]).split(b":", 1)[-1] if self.auth[-1] else b""
            out = base64.b64encode(b"WinRM connected. fake-guest restarted. echo: " + secret + b"\r\n").decode()
            body = (f'<rsp:ReceiveResponse><rsp:Stream Name="stdout" CommandId="{command}">{out}</rsp:Stream>'
                    f'<rsp:Stream Name="stdout" CommandId="{command}" End="true"></rsp:Stream>'
                    f'<rsp:Stream Name="stderr" CommandId="{command}" End="true"></rsp:Stream>'
                    f'<rsp:CommandState CommandId="{command}" State="{_DONE}"><rsp:ExitCode>0</rsp:ExitCode>'
                    f'</rsp:CommandState></rsp:ReceiveResponse>')
            reply = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/ReceiveResponse"
        else:  # Signal, Delete
            body, reply = "", action + "Response"
        payload = (f'<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"'
                   f' xmlns:a="{_NS["a"]}" xmlns:w="{_NS["w"]}" xmlns:rsp="{_NS["rsp"]}"><s:Header>'
                   f'<a:Action>{reply}</a:Action></s:Header><s:Body>{body}</s:Body></s:Envelope>').encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/soap+xml;charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def fake_winrm() -> Iterator[tuple[int, list[str], list[str]]]:
    commands: list[str] = []
    auth: list[str] = []
    handler = type("Handler", (FakeWinRM,), {"commands": commands, "auth": auth})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], commands, auth
    finally:
        server.shutdown()
        server.server_close()


def null_source(hcl: str, port: int) -> str:
    """The rendered build with its qemu source swapped for a null source that reaches the fake
    WinRM server: the provisioners stay exactly as rendered."""
    start = hcl.index('source "qemu" "build" {')
    end = hcl.index("\n}\n", start) + 3
    source = f'''source "null" "build" {{
  communicator   = "winrm"
  winrm_host     = "127.0.0.1"
  winrm_port     = {port}
  winrm_username = "packer"
  winrm_password = var.winrm_password
  winrm_timeout  = "2m"
}}
'''
    swapped = hcl[:start] + source + hcl[end:]
    return swapped.replace('sources = ["source.qemu.build"]', 'sources = ["source.null.build"]')


def uploads(commands: list[str]) -> dict[str, bytes]:
    """winrmcp uploads a file as `echo <base64> >> "%TEMP%\\winrmcp-<id>.tmp"` chunks."""
    files: dict[str, bytes] = {}
    for command in commands:
        match = re.fullmatch(r'echo (\S+) >> "%TEMP%\\(winrmcp-[0-9a-f-]+\.tmp)"', command)
        if match:
            files[match.group(2)] = files.get(match.group(2), b"") + base64.b64decode(match.group(1))
    return files


def decoded_powershell(commands: list[str]) -> list[str]:
    out = []
    for command in commands:
        match = re.fullmatch(r"powershell\.exe -EncodedCommand (\S+)", command)
        if match:
            out.append(base64.b64decode(match.group(1)).decode("utf-16-le"))
    return out


def test_packer_delivers_rendered_strings_byte_exact(tmp_path: Path, fake_winrm: tuple[int, list[str], list[str]],
                                                     packer: str) -> None:
    from orchestrator.effects.packer import SourceTracker

    port, commands, auth = fake_winrm
    _, ctx, rendered = make_build(tmp_path, hostile_template(with_update=False), "hostile")
    hcl_path = write_build(ctx, rendered, null_source(rendered.hcl, port))
    result = run_packer(packer, "build", "-color=false", str(hcl_path), cwd=hcl_path.parent, timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output

    # WindowsRestart's strings went through HCL and the Go-template pass: byte-exact anyway.
    assert HOSTILE_RESTART in commands
    assert HOSTILE_CHECK in commands
    assert commands.index(HOSTILE_CHECK) > commands.index(HOSTILE_RESTART)
    # The build account logged in with the variable's value (HTTP Basic). The fake guest
    # prints it back: Packer masks it, as the variable is sensitive.
    assert f"Basic {base64.b64encode(f'packer:{PASSWORD}'.encode()).decode()}" in auth
    assert PASSWORD not in output and "echo: <sensitive>" in output
    # Every generated script and the File customizer's content arrived unchanged.
    uploaded = list(uploads(commands).values())
    work = Path(ctx.work_dir)
    for rel in rendered.files:
        assert (work / rel).read_bytes() in uploaded, rel
    for path in ctx.downloads.values():
        assert Path(path).read_bytes() in uploaded
    restores = "\n".join(decoded_powershell(commands))
    assert '[System.IO.Path]::GetFullPath("C:\\Windows\\Temp\\orchestrator-upload-4"' in restores
    assert HOSTILE_DESTINATION not in "\n".join(commands) + restores  # it lives in the .ps1 only
    # runElevated as the build user: Packer's scheduled-task wrapper got the variable's value;
    # runAsSystem and the SYSTEM steps got SYSTEM.
    wrappers = [data.decode("utf-8", "replace") for data in uploaded if b"<UserId>" in data]
    assert sum("<UserId>packer</UserId>" in w and f'$password = "{PASSWORD}"' in w for w in wrappers) == 1
    assert sum("<UserId>SYSTEM</UserId>" in w for w in wrappers) == 2  # as-system, generalize

    # Packer's own output lets the run log attribute each line to its customizer.
    tracker = SourceTracker(rendered.provisioners)
    started = [s for s in map(tracker.feed, result.stdout.splitlines()) if s]
    assert started == [f"customizer:{HOSTILE_NAME}", "customizer:elevated", "customizer:as-system",
                       "customizer:artifact", "customizer:restart", "validation:check", "generalize"]
