"""Linux HCL rendering: parsed back with python-hcl2, accepted by `packer validate`, and
user text reaches the guest byte-exact through script files, never through HCL."""
from __future__ import annotations

import ast
import os
import subprocess
from pathlib import Path

import hcl2
import pytest

from orchestrator.core.plan import ResolvedSource, make_plan
from orchestrator.core.render import RenderContext, render_linux
from orchestrator.core.template import load_template
from orchestrator.effects.sshkeys import make_key_pair
from orchestrator.core import model as m
from tests.helpers import PROJECT_TEMPLATES, image_template_data, linux_template, load_sample

HOSTILE = [
    "echo ${HOME} %{if x} {{ .Path }} {{user `x`}} \"quoted\" 'single' \\back\\slash",
    "printf '%s\\n' '}}' '{{' '$${' '%%{'",
    'cat <<"EOF"\nline ${x}\nEOF',
]


def _source(tmp_path: Path) -> ResolvedSource:
    image = tmp_path / "base.qcow2"
    image.write_bytes(b"")
    return ResolvedSource("PlatformImage test", str(image), "qcow2", 3 * 1024**3, "0" * 64, "1.0.0")


def _render(tmp_path: Path, data: dict | m.ImageTemplate, downloads: dict | None = None, checkpoints=None):
    template = data if isinstance(data, m.ImageTemplate) else load_template(data)
    plan = make_plan(template, _source(tmp_path), "test")
    work = tmp_path / "work"
    ctx = RenderContext(str(work), str(work / "out"), str(work / "id_ed25519"), "ssh-ed25519 AAAAC3 test", "tcg",
                        downloads or {}, checkpoints=checkpoints)
    rendered = render_linux(plan, ctx)
    for rel, content in rendered.files.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(content)
    (work / "build.pkr.hcl").write_text(rendered.hcl)
    make_key_pair(work / "id_ed25519", "test")
    return plan, rendered, work


def _unquote(value: str) -> str:
    # python-hcl2 v8 keeps the quotes and escapes of string literals
    assert value.startswith('"') and value.endswith('"'), value
    return ast.literal_eval(value.replace("$${", "${").replace("%%{", "%{"))


def test_rendered_hcl_parses_and_keeps_step_order(tmp_path):
    data = linux_template(customize=[
        {"type": "Shell", "name": "first", "inline": ["echo 1"]},
        {"type": "File", "name": "upload", "sourceUri": "https://h/f.txt", "destination": "/tmp/f.txt"},
        {"type": "Shell", "name": "remote", "scriptUri": "https://h/s.sh"},
    ])
    downloads = {"https://h/f.txt": str(tmp_path / "f.txt"), "https://h/s.sh": str(tmp_path / "s.sh")}
    _, rendered, work = _render(tmp_path, data, downloads)
    parsed = hcl2.loads(rendered.hcl)
    source = parsed["source"][0]['"qemu"']['"build"']
    assert _unquote(source["accelerator"]) == "tcg"
    assert source["use_backing_file"] is True or source["use_backing_file"] == "true"
    assert _unquote(source["disk_size"]) == "3072M"
    netdev = source["qemuargs"][0]
    assert "hostfwd=tcp:127.0.0.1:" in netdev[1]
    provisioners = parsed["build"][0]["provisioner"]
    kinds = [next(iter(p)) for p in provisioners]
    assert kinds == ['"shell"', '"file"', '"shell"', '"shell"']
    scripts = [_unquote(list(p.values())[0].get("script", '""')) for p in provisioners]
    assert scripts[0].endswith("steps/01-first.sh")
    assert scripts[2] == str(tmp_path / "s.sh")
    assert scripts[3].endswith("steps/90-generalize.sh")
    assert [b.source for b in rendered.provisioners] == [
        "customizer:first", "customizer:upload", "customizer:remote", "generalize"]


@pytest.mark.parametrize("command", HOSTILE)
def test_inline_commands_reach_script_files_byte_exact(tmp_path, command):
    data = linux_template(customize=[{"type": "Shell", "name": "x", "inline": [command, "true"]}])
    _, rendered, work = _render(tmp_path, data)
    script = (work / "steps/01-x.sh").read_text()
    assert script == f"#!/bin/sh -e\n{command}\ntrue\n"
    assert command not in rendered.hcl
    for marker in ("${HOME}", "{{user", "%{if", "'}}'", "${x}"):
        assert marker not in rendered.hcl


def test_hostile_names_and_destinations_do_not_inject(tmp_path):
    name = 'evil"\n}\nprovisioner "shell-local" { inline = ["touch /tmp/pwned"] } #'
    dest = "/tmp/a'b ${x} {{ .Path }} \"c\".txt"
    data = linux_template(customize=[
        {"type": "Shell", "name": name, "inline": ["true"]},
        {"type": "File", "name": "f", "sourceUri": "https://h/f", "destination": dest},
    ])
    _, rendered, work = _render(tmp_path, data, {"https://h/f": str(tmp_path / "f")})
    parsed = hcl2.loads(rendered.hcl)
    kinds = [next(iter(p)) for p in parsed["build"][0]["provisioner"]]
    assert '"shell-local"' not in kinds
    assert all(line.count("touch /tmp/pwned") == 0 or line.lstrip().startswith("#")
               for line in rendered.hcl.splitlines())
    place = next(p for p in (work / "steps").iterdir() if p.name.endswith(".place.sh")).read_text()
    moved = subprocess.run(["sh", "-c", place.split("\n")[-2].replace("mv -f --", "printf '%s\\n'")],
                           capture_output=True, text=True)
    assert moved.stdout.splitlines()[-1] == dest


def test_plain_file_destination_is_uploaded_directly(tmp_path):
    data = linux_template(customize=[{"type": "File", "name": "f", "sourceUri": "https://h/f",
                                      "destination": "/tmp/dir/page-1.html"}])
    _, rendered, _ = _render(tmp_path, data, {"https://h/f": str(tmp_path / "f")})
    assert [(b.kind, dict(b.attrs).get("destination")) for b in rendered.provisioners] == [
        ("file", "/tmp/dir/page-1.html"), ("shell", None)]
    assert not [rel for rel in rendered.files if rel.endswith(".place.sh")]


def test_powershell_on_linux_runs_with_pwsh(tmp_path):
    data = linux_template(customize=[
        {"type": "Shell", "name": "s", "inline": ["true"]},
        {"type": "PowerShell", "name": "p", "inline": ["Write-Output '${x} {{ .Path }}'"], "runElevated": True,
         "validExitCodes": [0, 3010]}])
    _, rendered, work = _render(tmp_path, data)
    block = rendered.provisioners[1]
    attrs = dict(block.attrs)
    assert block.source == "customizer:p" and attrs["valid_exit_codes"] == [0, 3010]
    assert attrs["execute_command"] == "chmod +x {{ .Path }}; sudo {{ .Vars }} pwsh -NoProfile -File {{ .Path }}"
    assert (work / "steps/02-p.ps1").read_text() == "Write-Output '${x} {{ .Path }}'\n"


def test_disk_grows_to_os_disk_size(tmp_path):
    plan, rendered, _ = _render(tmp_path, linux_template(vmProfile={"vmSize": "Standard_D2s_v3", "osDiskSizeGB": 8}))
    assert plan.disk_size_mib == 8192 and (plan.cpus, plan.memory_mib) == (2, 8192)
    assert 'disk_size        = "8192M"' in rendered.hcl


def test_disk_cannot_shrink(tmp_path):
    from orchestrator.errors import TemplateInvalid

    with pytest.raises(TemplateInvalid) as err:
        _render(tmp_path, linux_template(vmProfile={"osDiskSizeGB": 2}))
    [problem] = err.value.problems
    assert (problem.path, problem.rule) == ("$.properties.vmProfile.osDiskSizeGB", "disk-grow-only")
    assert "can only grow" in problem.message


def test_generalize_script_prefers_override_and_cleans_up(tmp_path):
    _, _, work = _render(tmp_path, linux_template())
    script = (work / "steps/90-generalize.sh").read_text()
    assert "if [ -f /tmp/DeprovisioningScript.sh ]; then" in script
    assert "/usr/sbin/waagent -force -deprovision+user && export HISTSIZE=0 && sync" in script
    finalize = script.split("<<'FINALIZE'\n", 1)[1]
    for needle in ("userdel -f -r packer", "rm -f /etc/ssh/ssh_host_*", ": > /etc/machine-id",
                   "find /var/lib/cloud -mindepth 1 -maxdepth 1 ! -name seed",
                   "systemctl stop cloud-config.service cloud-final.service", "shutdown -P now"):
        assert needle in finalize


def test_seed_has_only_this_runs_key(tmp_path):
    _, rendered, _ = _render(tmp_path, linux_template())
    user_data = rendered.files["seed/user-data"]
    assert user_data.startswith("#cloud-config\n")
    assert "ssh-ed25519 AAAAC3 test" in user_data and "lock_passwd: true" in user_data
    assert "ssh_pwauth: false" in user_data


def test_packer_validate_accepts_rendered_hcl(tmp_path, packer):
    data = linux_template(customize=[
        {"type": "Shell", "name": "x", "inline": HOSTILE},
        {"type": "File", "name": "f", "sourceUri": "https://h/f", "destination": "/tmp/f"},
    ])
    (tmp_path / "f").write_text("x")
    _, _, work = _render(tmp_path, data, {"https://h/f": str(tmp_path / "f")})
    env = dict(os.environ, CHECKPOINT_DISABLE="1")
    result = subprocess.run([packer, "validate", str(work / "build.pkr.hcl")], capture_output=True, text=True,
                            env=env, cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr


def test_escaping_sample_reaches_its_scripts_byte_exact(tmp_path):
    sample = PROJECT_TEMPLATES / "linux-escaping.json"
    first, upload, last = image_template_data(sample)["properties"]["customize"]
    local = tmp_path / "motd.txt"
    _, rendered, work = _render(tmp_path, load_sample(sample), {upload["sourceUri"]: str(local)})
    scripts = {b.source: dict(b.attrs)["script"] for b in rendered.provisioners if b.kind == "shell"}
    for step in (first, last):
        script = Path(scripts[f"customizer:{step['name']}"])
        assert script.read_text() == "#!/bin/sh -e\n" + "\n".join(step["inline"]) + "\n"
        syntax = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert syntax.returncode == 0, syntax.stderr
    code = "\n".join(line for line in rendered.hcl.splitlines() if not line.lstrip().startswith("#"))
    for marker in ("${HOME}", "%{not-hcl}", "{{user", "%{y}", "caf\u00e9", "${x}"):
        assert marker not in code, marker
    place = Path(scripts[f"customizer:{upload['name']}"]).read_text()
    moved = subprocess.run(["sh", "-c", place.split("\n")[-2].replace("mv -f --", "printf '%s\\n'")],
                           capture_output=True, text=True)
    assert moved.stdout.splitlines()[-1] == upload["destination"]


def test_large_vm_sizes_are_fitted_to_the_host(tmp_path, monkeypatch):
    from orchestrator.pipeline import sizing as engine
    from orchestrator.effects.runlog import RunLog

    plan, _, _ = _render(tmp_path, linux_template(vmProfile={"vmSize": "Standard_D16s_v3"}))
    assert (plan.cpus, plan.memory_mib) == (16, 65536)
    monkeypatch.setattr(engine, "host_resources", lambda: (4, 10_000))
    with RunLog(tmp_path / "log") as log:
        fitted = engine.fit_to_host(plan, log)
    assert (fitted.cpus, fitted.memory_mib) == (4, 7_500)  # the host's CPUs, 3/4 of its memory
    text = (tmp_path / "log").read_text()
    assert "Standard_D16s_v3 asks for 16 vCPU / 65536 MiB" in text
    assert "this host has 4 CPUs / 10000 MiB: the build VM gets 4 vCPU / 7500 MiB" in text

    (tmp_path / "s").mkdir()
    small, _, _ = _render(tmp_path / "s", linux_template(vmProfile={"vmSize": "Standard_B1s"}))
    with RunLog(tmp_path / "log2") as log:
        assert engine.fit_to_host(small, log) is small
    assert (tmp_path / "log2").read_text() == ""


def test_this_host_is_measured():
    from orchestrator.pipeline.sizing import host_resources

    cpus, memory = host_resources()
    assert cpus == int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout)
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total_mib = int(meminfo["MemTotal"].split()[0]) // 1024
    assert abs(memory - total_mib) <= 1
