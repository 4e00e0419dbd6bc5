"""A template is untrusted input: each rule with the hostile input that broke it, asserting
the clear error and that nothing outside the test's data home changed."""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.config import FILE_SOURCE_MAX_BYTES, Config, load_config
from orchestrator.core.document import load_document
from orchestrator.core.paths import safe_component
from orchestrator.core.plan import ResolvedSource, TargetPlan, make_plan
from orchestrator.distribute.vhd import VhdDistributor, vhd_destination
from orchestrator.effects.downloads import DownloadCache, Limits, display_url
from orchestrator.effects.files import remove_stale_parts, write_atomic
from orchestrator.effects.hostpolicy import HostPolicy
from orchestrator.effects.runlog import RunLog
from orchestrator.effects.sshkeys import make_key_pair
from orchestrator.effects.state import StateStore
from orchestrator.errors import Canceled, DownloadFailed, EnvironmentProblem, UsageError
from orchestrator.pipeline.fetch import fetch_all
from tests.conftest import QuietHTTPServer
from tests.helpers import dumps, linux_template


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, home):
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(home))
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under root except the data home: (size, mtime, sha256)."""
    seen = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_relative_to(skip):
            seen[str(path)] = (path.stat().st_size, path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return seen


def _problems(capsys, *argv: str) -> tuple[int, list[dict]]:
    code = main([*argv[:1], "--json", *argv[1:]])
    out = capsys.readouterr().out
    return code, (json.loads(out)["error"]["problems"] if code else [])


def _template_file(tmp_path: Path, data: dict, name: str = "t.json") -> Path:
    path = tmp_path / "templates" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(dumps(data))
    return path


# --- writes stay where they belong -------------------------------------------------------

@pytest.mark.parametrize("uri, needle", [
    ("/etc/passwd", "system path"),
    ("file:///etc/passwd", "system path"),
    ("/", "system path"),
    ("/usr/lib/x.vhd", "system path"),
    ("/boot/vmlinuz", "system path"),
    ("/dev/sda", "system path"),
    ("/proc/self/mem", "system path"),
    ("/sys/kernel/x", "system path"),
    ("relative/image.vhd", "relative path"),
    ("file:image.vhd", "relative file: URI"),
    ("file://otherhost/srv/image.vhd", "names host"),
    ("/srv/images/", "directory"),
    ("/srv/../etc/passwd", "climbs"),
    ("/srv/images/a\nb.vhd", "control characters"),
    ("/srv/elsewhere/image.vhd", "outside the data home"),
])
def test_hostile_vhd_uri_is_refused_at_validate_and_plan(tmp_path, home, capsys, uri, needle):
    path = _template_file(tmp_path, linux_template(distribute=[{"type": "VHD", "runOutputName": "v", "uri": uri}]))
    before = _snapshot(tmp_path, home)
    for verb in ("validate", "plan", "build"):
        code, problems = _problems(capsys, verb, str(path))
        assert code == 2, verb
        [problem] = [p for p in problems if p["rule"] == "vhd-destination"]
        assert {p["path"] for p in problems} == {"$.properties.distribute[0].uri"}, problems
        assert needle in problem["message"] and problem["hint"], problem
    assert _snapshot(tmp_path, home) == before
    assert not home.exists() or not list(home.rglob("*.vhd"))


def _configure(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)


def test_vhd_uri_under_a_configured_directory_is_allowed_but_not_an_existing_foreign_file(tmp_path, home, capsys):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    foreign = images / "foreign.vhd"
    foreign.write_bytes(b"not ours")
    _configure(home, f'[paths]\nvhd_dirs = ["{images}"]\n')
    ok = _template_file(tmp_path, linux_template(distribute=[
        {"type": "VHD", "runOutputName": "v", "uri": f"file://{images}/new.vhd"}]))
    assert _problems(capsys, "validate", str(ok)) == (0, [])
    for uri, needle in ((str(foreign), "was not written by orchestrator"), (str(images / "sub"), "is a directory")):
        bad = _template_file(tmp_path, linux_template(distribute=[{"type": "VHD", "runOutputName": "v", "uri": uri}]))
        code, problems = _problems(capsys, "plan", str(bad))
        assert code == 2 and needle in problems[0]["message"]
    assert foreign.read_bytes() == b"not ours"


def test_a_symlink_out_of_an_allowed_directory_is_followed_and_refused(tmp_path, home, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "escape").symlink_to("/etc")
    _configure(home, f'[paths]\nvhd_dirs = ["{images}"]\n')
    path = _template_file(tmp_path, linux_template(distribute=[
        {"type": "VHD", "runOutputName": "v", "uri": f"{images}/escape/passwd"}]))
    code, problems = _problems(capsys, "validate", str(path))
    assert code == 2 and "leads to the system path /etc/passwd" in problems[0]["message"]


def test_a_file_orchestrator_wrote_may_be_written_again(tmp_path, home):
    config = Config(home=home).ensure()
    store = StateStore(config.db_path)
    vhd = config.artifacts_dir / "mine.vhd"
    vhd.write_bytes(b"x")
    run = store.start_run("t", None, lambda rid: home / "log")
    store.set_output(run, "v", "VHD", "Succeeded", artifact_id=str(vhd))
    from orchestrator.effects.hostpolicy import vhd_write_problem

    policy = HostPolicy.of(config, None)
    assert vhd_write_problem(str(vhd), policy, store.wrote_artifact) is None
    other = config.artifacts_dir / "other.vhd"
    other.write_bytes(b"y")
    assert "not written by orchestrator" in vhd_write_problem(str(other), policy, store.wrote_artifact)[0]


@pytest.mark.parametrize("name", ["..", ".", "../../etc", "a/b", "x\x00y", "tab\there", "new\nline", "", ".hidden"])
def test_template_names_never_leave_their_directory(tmp_path, name):
    config = Config(home=tmp_path / "home").ensure()
    component = safe_component(name)
    assert component not in ("", ".", "..") and "/" not in component and not component.startswith(".")
    assert all(ch.isprintable() for ch in component)
    dest = vhd_destination(config, name, TargetPlan(run_output_name=name, kind="VHD"), "run1")
    assert dest.resolve().is_relative_to(config.artifacts_dir.resolve())
    assert dest.parent.parent.parent == config.artifacts_dir


def test_safe_component_is_injective():
    names = ["a/b", "a_b", "a%2Fb", "a b", "..", "%2E%2E", "A", "a"]
    assert len({safe_component(n) for n in names}) == len(names)


def test_dot_dot_run_output_name_builds_under_the_artifacts(tmp_path, home, capsys):
    path = _template_file(tmp_path, linux_template(distribute=[{"type": "VHD", "runOutputName": ".."}]))
    code, _ = _problems(capsys, "validate", str(path))
    assert code == 0  # AIB's pattern allows it; the path it becomes stays inside
    config = Config(home=home)
    dest = vhd_destination(config, "t", TargetPlan(run_output_name="..", kind="VHD"), "r")
    assert dest == config.artifacts_dir / "t" / "%2E%2E" / "r.vhd"


# --- nothing from a template reaches YAML, HCL, shell or a file name unescaped -------------

def test_a_name_with_a_newline_cannot_add_cloud_init_keys(tmp_path, home, capsys):
    hostile = "web\nbootcmd:\n  - touch /tmp/pwned\n#"
    data = linux_template()
    data["name"] = hostile
    path = _template_file(tmp_path, data)
    out = tmp_path / "render"
    assert main(["render", str(path), "-o", str(out)]) == 0, capsys.readouterr().err
    user_data = (out / "seed" / "user-data").read_text()
    config = yaml.safe_load(user_data)
    assert set(config) == {"users", "ssh_pwauth", "disable_root", "locale", "manage_etc_hosts",
                           "cloud_config_modules", "cloud_final_modules", "ssh_genkeytypes"}
    [key] = config["users"][0]["ssh_authorized_keys"]
    assert "\n" not in key and key.startswith("ssh-ed25519 ")
    assert not [line for line in user_data.splitlines() if line.startswith(("bootcmd", "  - touch"))]
    meta = yaml.safe_load((out / "seed" / "meta-data").read_text())
    assert set(meta) == {"instance-id"} and "\n" not in meta["instance-id"]


def test_key_comment_is_reduced_to_safe_characters(tmp_path):
    _, public = make_key_pair(tmp_path / "k", "x\nssh-rsa AAAA evil")
    assert public.count("\n") == 0 and len(public.split(" ")) == 3


# --- reads stay where they belong --------------------------------------------------------

@pytest.mark.parametrize("uri, needle", [
    ("file:///etc/shadow", "outside the directories"),
    ("file:///proc/self/environ", "/proc, /sys or /dev"),
    ("file:///dev/zero", "/proc, /sys or /dev"),
    ("file://otherhost/etc/hosts", "names host"),
])
def test_file_sources_outside_the_allowed_directories_are_refused(tmp_path, home, capsys, uri, needle):
    path = _template_file(tmp_path, linux_template(customize=[
        {"type": "File", "name": "steal", "sourceUri": uri, "destination": "/tmp/x"},
        {"type": "Shell", "name": "run", "scriptUri": uri}]))
    code, problems = _problems(capsys, "validate", str(path))
    assert code == 2
    assert [p["path"] for p in problems] == ["$.properties.customize[0].sourceUri", "$.properties.customize[1].scriptUri"]
    assert all(needle in p["message"] and p["rule"] == "file-source" for p in problems), problems


def test_file_sources_beside_the_template_or_in_the_data_home_are_allowed(tmp_path, home, capsys):
    (tmp_path / "templates").mkdir()
    beside = tmp_path / "templates" / "setup.sh"
    beside.write_text("echo hi\n")
    config = Config(home=home).ensure()
    config.files_dir.mkdir()
    kept = config.files_dir / "page.html"
    kept.write_text("<p/>")
    path = _template_file(tmp_path, linux_template(customize=[
        {"type": "Shell", "name": "a", "scriptUri": beside.as_uri()},
        {"type": "File", "name": "b", "sourceUri": kept.as_uri(), "destination": "/tmp/p.html"}]))
    assert _problems(capsys, "validate", str(path)) == (0, [])


def test_a_file_source_is_checked_again_when_it_is_read(tmp_path, home):
    config = Config(home=home).ensure()
    policy = HostPolicy.of(config, tmp_path / "templates")
    from orchestrator.effects.hostpolicy import file_read_problem

    limits = Limits.within(60, check_file=lambda uri: file_read_problem(uri, policy))
    with pytest.raises(DownloadFailed, match="refusing to read file:///etc/shadow"):
        DownloadCache(config.cache_dir).fetch("file:///etc/shadow", None, "test", limits)


def test_a_file_its_invoker_could_not_read_is_refused_under_sudo(tmp_path, home, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("needs root to act as sudo")
    secret = tmp_path / "templates" / "secret.sh"
    secret.parent.mkdir()
    secret.write_text("x")
    os.chmod(secret, 0o600)  # root's file; the sudo caller (uid 65534) may not read it
    monkeypatch.setenv("SUDO_UID", "65534")
    from orchestrator.effects.hostpolicy import file_read_problem

    policy = HostPolicy.of(Config(home=home), secret.parent)
    assert "not readable by the user who runs orchestrator" in file_read_problem(secret.as_uri(), policy)[0]
    os.chmod(secret, 0o644)
    assert file_read_problem(secret.as_uri(), policy) is None


# --- downloads are bounded ---------------------------------------------------------------

class _Server:
    """A real HTTP server on 127.0.0.1 whose handler the test writes."""

    def __init__(self, handle: Callable[[http.server.BaseHTTPRequestHandler], None]) -> None:
        self.release = threading.Event()  # set at teardown: a handler that waits returns
        self.first_byte_sent = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                handle(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Callable[..., _Server]]:
    made: list[_Server] = []

    def make(handle):
        made.append(_Server(handle))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_a_response_shorter_than_its_content_length_fails(tmp_path, server):
    def handle(h):
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.write(b"only a part")
        h.wfile.flush()
        h.close_connection = True

    srv = server(handle)
    cache = DownloadCache(tmp_path / "c")
    with pytest.raises(DownloadFailed, match="ended after 11 of the 1,000 bytes"):
        cache.fetch(f"{srv.url}/s.sh", None, "customizer 'x'", Limits.within(30))
    assert not [p for p in (tmp_path / "c" / "sha256").iterdir()]


def _trickle(srv_ref: list, every: float):
    def handle(h):
        h.send_response(200)
        h.send_header("Content-Length", "100")
        h.end_headers()
        for _ in range(100):
            try:
                h.wfile.write(b"x")
                h.wfile.flush()
            except OSError:  # the client gave up, as it should
                return
            srv_ref[0].first_byte_sent.set()
            if srv_ref[0].release.wait(every):
                return
    return handle


def test_a_stalled_download_fails_after_the_stall_timeout(tmp_path, server):
    ref: list = []
    srv = server(_trickle(ref, every=20))  # a byte every 20 s
    ref.append(srv)
    with pytest.raises(DownloadFailed, match="stalled: no data for 0.5 s"):
        DownloadCache(tmp_path / "c").fetch(f"{srv.url}/slow", None, "t", Limits.within(120, stall_seconds=0.5))


def test_a_trickling_download_fails_at_its_deadline(tmp_path, server):
    ref: list = []
    srv = server(_trickle(ref, every=0.2))  # never stalls, never finishes in time
    ref.append(srv)
    with pytest.raises(DownloadFailed, match="did not finish in time"):
        DownloadCache(tmp_path / "c").fetch(f"{srv.url}/slow", None, "t", Limits.within(1.5, stall_seconds=5))


def test_cancel_stops_a_download_at_once(tmp_path, server):
    ref: list = []
    srv = server(_trickle(ref, every=20))
    ref.append(srv)
    cancel = threading.Event()
    threading.Thread(target=lambda: (srv.first_byte_sent.wait(30), cancel.set()), daemon=True).start()
    with pytest.raises(Canceled, match="canceled while fetching"):
        DownloadCache(tmp_path / "c").fetch(f"{srv.url}/slow", None, "t",
                                            Limits.within(120, stall_seconds=60, cancel=cancel))


def test_redirects_go_to_http_and_https_only(tmp_path, server):
    def handle(h):
        h.send_response(302)
        h.send_header("Location", "file:///etc/passwd")
        h.send_header("Content-Length", "0")
        h.end_headers()

    srv = server(handle)
    with pytest.raises(DownloadFailed, match="redirects are followed to http and https only"):
        DownloadCache(tmp_path / "c").fetch(f"{srv.url}/r", None, "t", Limits.within(30))


def test_a_file_source_over_20_mib_is_refused_with_its_size(tmp_path, home, http_root):
    root, url = http_root
    big = root / "big.bin"
    with open(big, "wb") as handle:
        handle.truncate(25 * 2**20)
    data = linux_template(customize=[{"type": "File", "name": "big", "sourceUri": f"{url}/big.bin",
                                      "destination": "/tmp/big.bin"}])
    template = load_document(dumps(data), "t")
    source = ResolvedSource("test", "/nonexistent.qcow2", "qcow2", 2**30, "0" * 64)
    plan = make_plan(template, source, "t")
    config = Config(home=home).ensure()
    with RunLog(tmp_path / "log") as log, pytest.raises(DownloadFailed) as err:
        fetch_all(plan, DownloadCache(config.cache_dir), config, HostPolicy.of(config, None), log,
                  threading.Event(), float("inf"))
    assert "26,214,400 bytes" in err.value.message and f"{FILE_SOURCE_MAX_BYTES:,}" in err.value.message
    assert "20 MiB" in (err.value.hint or "")


def test_scripts_are_capped_by_the_configuration(tmp_path, home):
    _configure(home, "[downloads]\nscript_max_mib = 1\n")
    assert load_config().script_max_bytes == 2**20


def test_a_tampered_cache_entry_is_fetched_again(tmp_path, http_root):
    root, url = http_root
    (root / "s.sh").write_bytes(b"echo good\n")
    digest = hashlib.sha256(b"echo good\n").hexdigest()
    cache = DownloadCache(tmp_path / "c")
    first = cache.fetch(f"{url}/s.sh", digest, "t")
    first.path.write_bytes(b"echo evil\n")  # changed on disk after it was verified
    again = cache.fetch(f"{url}/s.sh", digest, "t")
    assert again.path.read_bytes() == b"echo good\n" and not again.from_cache and "no longer matched" in again.note
    again.path.write_bytes(b"echo evil\n")
    (root / "s.sh").unlink()
    with pytest.raises(DownloadFailed, match="HTTP 404"):  # never the tampered copy
        cache.fetch(f"{url}/s.sh", digest, "t")


def test_part_files_of_a_killed_download_are_removed(tmp_path):
    folder = tmp_path / "c" / "sha256"
    folder.mkdir(parents=True)
    dead = folder / ".abc.part-999999999"
    mine = folder / f".def.part-{os.getpid()}"
    dead.write_bytes(b"half")
    mine.write_bytes(b"busy")
    cache = DownloadCache(tmp_path / "c")
    assert cache.removed_parts == [dead] and not dead.exists() and mine.exists()
    assert remove_stale_parts(folder) == []


def test_credentials_and_signed_queries_never_reach_messages():
    shown = display_url("https://user:s3cret@blob.example/c/s.sh?sv=2020&sig=SIGNATURE")
    assert "s3cret" not in shown and "SIGNATURE" not in shown and shown.startswith("https://blob.example/c/s.sh")


def test_a_checksum_mismatch_names_the_url_without_its_secrets(tmp_path, http_root):
    root, url = http_root
    (root / "s.sh").write_bytes(b"echo\n")
    secret = url.replace("http://", "http://user:s3cret@") + "/s.sh?sig=SIGNATURE"
    with pytest.raises(DownloadFailed) as err:
        DownloadCache(tmp_path / "c").fetch(secret, "0" * 64, "t", Limits.within(30))
    assert "sha256 mismatch" in err.value.message and "/s.sh" in err.value.message
    assert "s3cret" not in err.value.message and "SIGNATURE" not in err.value.message


# --- keys and secrets are private --------------------------------------------------------

def test_the_data_home_and_its_files_are_owner_only(tmp_path, home, capsys):
    assert main(["image", "list"]) == 0
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for sub in ("images", "runs", "artifacts", "cache"):
        assert stat.S_IMODE((home / sub).stat().st_mode) == 0o700, sub
    assert stat.S_IMODE((home / "state.db").stat().st_mode) == 0o600


def test_a_private_key_is_never_wider_than_0600(tmp_path):
    old = os.umask(0)  # even with a permissive umask
    try:
        path, _ = make_key_pair(tmp_path / "id", "c")
        write_atomic(tmp_path / "script.sh", "secret")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "script.sh").stat().st_mode) == 0o600


def test_render_o_writes_owner_only_files(tmp_path, home, capsys):
    path = _template_file(tmp_path, linux_template())
    out = tmp_path / "render"
    assert main(["render", str(path), "-o", str(out)]) == 0
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    assert modes and set(modes.values()) == {0o600}, modes


# --- input limits ------------------------------------------------------------------------

@pytest.mark.parametrize("content, needle", [
    ("[" * 5000 + "]" * 5000, "nest 5000 levels deep"),
    ('{"a": ' + "7" * 5000 + "}", "5000 digits"),
    ('{"a": NaN}', "NaN"),
])
def test_hostile_json_is_a_clear_error(tmp_path, capsys, content, needle):
    path = tmp_path / "t.json"
    path.write_text(content)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and "internal error" not in err


def test_a_huge_template_is_refused_before_it_is_read(tmp_path, capsys):
    path = tmp_path / "t.json"
    with open(path, "wb") as handle:
        handle.truncate(5 * 2**20)
    assert main(["validate", str(path)]) == 2
    assert "larger than 4 MiB" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_a_device_or_fifo_as_template_is_refused(tmp_path, capsys, kind):
    path = Path("/dev/zero")
    if kind == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
    assert main(["validate", str(path)]) == 2
    assert "not a regular file" in capsys.readouterr().err


def test_a_locked_state_database_is_a_clear_host_error(home):
    config = Config(home=home).ensure()
    StateStore(config.db_path)
    holder = sqlite3.connect(config.db_path)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(EnvironmentProblem) as err:
            # WAL: readers read on; a writer waits for the lock, then says so
            StateStore(config.db_path, lock_timeout=0.2).start_run("t", None, lambda rid: home / "log")
    finally:
        holder.close()
    assert str(config.db_path) in err.value.message and "locked" in err.value.message
    assert err.value.exit_code == 6 and err.value.hint


def test_a_corrupt_state_database_names_the_file(home, capsys):
    Config(home=home).ensure()
    (home / "state.db").write_bytes(b"this is not sqlite" * 100)
    assert main(["runs"]) == 6
    err = capsys.readouterr().err
    assert f"{home / 'state.db'} is corrupt" in err and "mv " in err and "Traceback" not in err


def test_validate_and_plan_create_no_data_home(tmp_path, home, capsys):
    path = _template_file(tmp_path, linux_template())
    assert main(["validate", str(path)]) == 0
    assert main(["plan", str(path)]) == 0
    assert not home.exists()


def test_a_bad_configuration_file_names_its_line(home, capsys):
    _configure(home, "[paths]\nvhd_dirs = ]\n")
    assert main(["image", "list"]) == 2
    err = capsys.readouterr().err
    assert "config.toml is not valid TOML" in err and "line 2" in err
    _configure(home, '[paths]\nvhd_dirs = ["/"]\n')
    with pytest.raises(UsageError, match="may not allow the whole file system"):
        load_config()


# --- reuse is by content -----------------------------------------------------------------

def test_an_artifact_changed_since_is_not_reused(tmp_path):
    vhd = tmp_path / "a.vhd"
    vhd.write_bytes(b"A" * 4096)
    info = vhd.stat()
    output = {"type": "VHD", "properties": {
        "path": str(vhd), "fileBytes": 4096, "sha256": hashlib.sha256(b"A" * 4096).hexdigest(),
        "_stat": [info.st_size, info.st_mtime_ns, info.st_ino]}}
    vhd_kind = VhdDistributor()
    assert vhd_kind.reusable(output).ok and vhd_kind.reusable(output).why == ""
    os.utime(vhd, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))  # touched, same bytes: hashed, reused
    verdict = vhd_kind.reusable(output)
    assert verdict.ok and "still matches" in verdict.why
    vhd.write_bytes(b"B" * 4096)  # same size, other bytes
    verdict = vhd_kind.reusable(output)
    assert not verdict.ok and "changed since" in verdict.why
    vhd.unlink()
    assert not vhd_kind.reusable(output).ok


# --- the build VM's console --------------------------------------------------------------

def test_vnc_is_off_unless_asked_for_and_then_has_a_password(tmp_path, home, capsys):
    path = _template_file(tmp_path, linux_template())
    assert main(["render", str(path)]) == 0
    hcl = capsys.readouterr().out
    assert '["-vnc", "none"]' in hcl and "vnc_use_password" not in hcl
    _configure(home, "[build_vm]\nvnc = true\n")
    assert main(["render", str(path)]) == 0
    hcl = capsys.readouterr().out
    assert '"-vnc"' not in hcl and "vnc_use_password = true" in hcl and 'vnc_bind_address = "127.0.0.1"' in hcl


# --- fuzzing: hostile shapes never crash and never point outside ---------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_PIECES = st.sampled_from(["..", ".", "/", "//", "etc", "passwd", "\x00", "\n", "bootcmd:", "%2e%2e", "%00",
                           "file://", "file:", "localhost", "~", "${HOME}", "{{ .Path }}", "a b", "ü", "proc",
                           "sys", "dev", "x.vhd", "-", "'", '"'])
_HOSTILE = st.lists(_PIECES, min_size=1, max_size=8).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(uri=_HOSTILE, name=_HOSTILE, run_output=_HOSTILE)
def test_fuzzed_names_and_uris_end_in_a_clear_answer(tmp_path, uri, name, run_output):
    home = tmp_path / "fuzzhome"
    data = linux_template(distribute=[{"type": "VHD", "runOutputName": run_output, "uri": uri},
                                      {"type": "VHD", "runOutputName": run_output + "2"}],
                          customize=[{"type": "File", "name": "f", "sourceUri": uri, "destination": "/tmp/x"}])
    data["name"] = name
    path = tmp_path / "fuzz.json"
    path.write_text(json.dumps(data))
    code = main(["--home", str(home), "validate", "--json", str(path)])
    assert code in (0, 2)
    if code == 0:  # whatever passed stays inside the data home
        config = Config(home=home)
        dest = vhd_destination(config, name, TargetPlan(run_output_name=run_output, kind="VHD"), "r")
        assert dest.resolve().is_relative_to(config.artifacts_dir.resolve())
    assert not home.exists()
