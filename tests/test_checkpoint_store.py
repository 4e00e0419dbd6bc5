"""The checkpoint store with real qcow2 chains (qemu-img, qemu-io), a real SQLite state and the
real CLI: registering frozen layers, finding an intact chain by key, dropping broken ones,
eviction to the cap (leaves first, least recently used, never an active run's chain), prune and
the sweep of unregistered files; the pure selection on its own."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.config import load_config
from orchestrator.core.checkpoints import Layer, select_evictions, select_prune
from orchestrator.effects.checkpoint_store import CheckpointStore, backing_file, layer_path
from orchestrator.effects.proc import process_start_time
from orchestrator.effects.state import StateStore
from orchestrator.errors import CheckpointFailed, UsageError

SIZE = "64M"


# --- real qcow2 chains -----------------------------------------------------------------------

def qcow2(path: Path, backing: Path | None = None, fill: int | None = None) -> Path:
    """A qcow2 image (on `backing`), 1 MiB of byte `fill` written into it if given."""
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"] + (["-F", "qcow2", "-b", str(backing)] if backing else [])
    subprocess.run([*argv, str(path), SIZE], check=True, capture_output=True)
    if fill is not None:
        write(path, fill)
    return path


def write(path: Path, fill: int, offset: str = "0") -> None:
    if shutil.which("qemu-io"):
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {fill:#x} {offset} 1M", str(path)],
                       check=True, capture_output=True)
        return
    raw = path.with_suffix(".raw")  # without qemu-io: the same layer rebuilt from raw bytes
    raw.write_bytes(bytes([fill]) * 2**20)
    backing = backing_file(path)
    out = path.with_suffix(".new")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", *(["-B", backing, "-F", "qcow2"] if backing
                    else []), str(raw), str(out)], check=True, capture_output=True)
    os.replace(out, path)
    raw.unlink()


@pytest.fixture
def setup(config, tmp_path):
    state = StateStore(config.db_path)
    base = qcow2(tmp_path / "source.qcow2", fill=0x11)  # the source image, outside the store
    return CheckpointStore(config, state), state, base


def run_of(state: StateStore, template: str, *, alive: bool = False) -> str:
    """A run record; `alive`: Running with this process as its build process, else Succeeded."""
    me = os.getpid()
    run_id = state.start_run(template, None, lambda r: f"/nonexistent/{r}.log", pid=me,
                             pid_start_time=process_start_time(me))
    if not alive:
        state.update_run(run_id, run_state="Succeeded", pid=None)
    return run_id


def build(store: CheckpointStore, run_id: str, template: str, keys: list[str], base: Path,
          started_from: str | None = None) -> list:
    """A run's chain: one filled layer per key on `started_from` (or the source), registered."""
    made, below = [], Path(started_from) if started_from else base
    first = len(store.chain(started_from)) + 1 if started_from else 1
    for index, key in enumerate(keys, start=first):
        path = qcow2(layer_path(store.config, key, run_id), below, fill=0x40 + index)
        made.append(store.register(run_id, template, key, index, f"step{index}", path,
                                   str(below) if (started_from or made) else None))
        below = path
    return made


def set_used(state: StateStore, path: str, when: float) -> None:
    with state._connect() as db:
        db.execute("UPDATE checkpoints SET last_used_at = ? WHERE path = ?", (when, path))


def key(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


# --- registering -----------------------------------------------------------------------------

def test_register_records_the_layer_and_is_idempotent(setup):
    store, state, base = setup
    run = run_of(state, "t", alive=True)
    one, two = build(store, run, "t", [key(1), key(2)], base)
    assert store.config.checkpoints_dir.stat().st_mode & 0o777 == 0o700
    for cp in (one, two):
        data = Path(cp.path).read_bytes()
        assert cp.sha256 == hashlib.sha256(data).hexdigest()
        assert cp.size_bytes == os.stat(cp.path).st_blocks * 512 and cp.size_bytes > 2**20  # the 1 MiB written
        assert os.stat(cp.path).st_mode & 0o777 == 0o400
    assert (one.parent, two.parent, two.step_index, two.step_name) == (None, one.path, 2, "step2")
    assert backing_file(two.path) == one.path and backing_file(one.path) == str(base)
    assert store.chain(two.path) == [one, two] and store.for_run(run) == [one, two]
    assert store.register(run, "t", key(2), 2, "step2", two.path, one.path) == two  # again: the same row
    with pytest.raises(CheckpointFailed, match="already registered"):
        store.register("other-run", "t", key(9), 2, "step2", two.path, one.path)
    # what does not fit is refused: a wrong parent, an unregistered one, a file outside the store
    three = qcow2(layer_path(store.config, key(3), run), Path(two.path))
    with pytest.raises(CheckpointFailed, match="not on its parent"):
        store.register(run, "t", key(3), 3, "step3", three, one.path)
    stray = qcow2(store.config.checkpoints_dir / f"x-{run}.qcow2", base)
    with pytest.raises(CheckpointFailed, match="not a registered checkpoint"):
        store.register(run, "t", key(4), 2, "s", qcow2(layer_path(store.config, key(4), run), stray), stray)
    with pytest.raises(CheckpointFailed, match="not in the checkpoint store"):
        store.register(run, "t", key(5), 1, "s", qcow2(base.parent / "elsewhere.qcow2", base), None)
    not_qcow2 = layer_path(store.config, key(6), run)
    not_qcow2.write_bytes(b"x" * 4096)
    with pytest.raises(CheckpointFailed, match="not a qcow2 image"):
        store.register(run, "t", key(6), 1, "s", not_qcow2, None)
    assert [c.path for c in store.listing()] == [one.path, two.path]


# --- finding ---------------------------------------------------------------------------------

def test_find_gives_the_newest_intact_chain_of_a_key(setup):
    store, state, base = setup
    first, second = run_of(state, "t"), run_of(state, "t")
    old = build(store, first, "t", [key(1), key(2)], base)
    new = build(store, second, "t", [key(1), key(2)], base)
    assert old[1].path != new[1].path  # same key, two runs: both rows stay
    found, reasons = store.find(key(2))
    assert found == new[1] and reasons == []
    assert store.find(key(1))[0] == new[0]
    assert store.find(key(7)) == (None, [])
    # a layer that was only touched (same bytes) stays usable; its new stat is recorded
    os.utime(new[0].path, ns=(10**18, 10**18))
    found, reasons = store.find(key(2))
    assert found == new[1] and reasons == []
    assert store.get(new[0].path).stat[1] == 10**18


def test_a_removed_or_changed_lower_layer_makes_find_fail_with_a_reason(setup):
    store, state, base = setup
    first, second = run_of(state, "t"), run_of(state, "t")
    old = build(store, first, "t", [key(1), key(2), key(3)], base)
    new = build(store, second, "t", [key(1), key(2), key(3)], base)
    Path(new[0].path).unlink()  # the newest chain's bottom layer is gone: the older chain is used
    found, reasons = store.find(key(3))
    assert found == old[2]
    assert len(reasons) == 1 and f"its layer {new[0].path} is gone" in reasons[0]
    assert "and 2 layer(s) above it" in reasons[0]
    assert all(store.get(c.path) is None and not Path(c.path).exists() for c in new)  # dropped, files too
    # the older chain's middle layer changes (its bytes): nothing of key 3 is usable any more
    os.chmod(old[1].path, 0o600)
    write(Path(old[1].path), 0x77, offset="2M")
    found, reasons = store.find(key(3))
    assert found is None
    assert len(reasons) == 1 and f"its layer {old[1].path} changed since it was registered (s" in reasons[0]
    assert store.get(old[0].path) == old[0] and store.get(old[1].path) is None and store.get(old[2].path) is None
    assert store.find(key(1))[0] == old[0]  # the layer below the changed one is still good


def test_a_checkpoint_whose_source_image_is_gone_is_not_used_but_kept(setup):
    store, state, base = setup
    [cp] = build(store, run_of(state, "t"), "t", [key(1)], base)
    base.unlink()
    found, reasons = store.find(key(1))
    assert found is None and reasons == [f"{cp.describe()} not used: the source image it stands on, {base}, is gone"]
    assert store.get(cp.path) == cp


def test_claim_records_the_start_and_fails_once_the_checkpoint_is_gone(setup):
    store, state, base = setup
    one, two = build(store, run_of(state, "t"), "t", [key(1), key(2)], base)
    set_used(state, one.path, 1.0)
    set_used(state, two.path, 1.0)
    user = run_of(state, "t", alive=True)
    assert store.claim(user, two.path)
    assert state.run(user)["started_from"] == two.path
    assert store.get(one.path).last_used_at > 1.0 and store.get(two.path).last_used_at > 1.0
    assert store.evict(0) == [] and store.get(two.path) is not None  # in use: nothing goes
    state.update_run(user, run_state="Failed")
    assert {r.path for r in store.evict(0)} == {one.path, two.path}
    assert not store.claim(user, two.path)


# --- eviction --------------------------------------------------------------------------------

def test_eviction_keeps_the_cap_leaves_first_least_recently_used(setup):
    store, state, base = setup
    a1, a2 = build(store, run_of(state, "a"), "a", [key(1), key(2)], base)
    [b1] = build(store, run_of(state, "b"), "b", [key(11)], base)
    set_used(state, a1.path, 100.0)  # the oldest, but a2 stands on it
    set_used(state, b1.path, 200.0)
    set_used(state, a2.path, 300.0)
    total = store.total_bytes()
    assert total == a1.size_bytes + a2.size_bytes + b1.size_bytes
    assert store.evict(total) == []  # at the cap: nothing
    [gone] = store.evict(total - 1)
    assert gone.path == b1.path and gone.checkpoint == dataclasses.replace(b1, last_used_at=200.0)
    assert "least recently used" in gone.reason and not Path(b1.path).exists()
    [gone] = store.evict(a1.size_bytes + a2.size_bytes - 1)
    assert gone.path == a2.path and store.get(a1.path) is not None and Path(a1.path).exists()
    assert store.total_bytes() == a1.size_bytes
    assert [r.path for r in store.evict(0)] == [a1.path] and store.listing() == []
    assert list(store.config.checkpoints_dir.iterdir()) == []


def test_eviction_never_takes_an_active_runs_chain(setup):
    store, state, base = setup
    a1, a2 = build(store, run_of(state, "a"), "a", [key(1), key(2)], base)
    [b1] = build(store, run_of(state, "b"), "b", [key(11)], base)
    resumed = run_of(state, "a", alive=True)  # started from a1 and makes its own layer on it
    assert store.claim(resumed, a1.path)
    [r2] = build(store, resumed, "a", [key(3)], base, started_from=a1.path)
    assert r2.parent == a1.path and r2.step_index == 2
    making = run_of(state, "c", alive=True)  # a run still building its first layers
    [c1] = build(store, making, "c", [key(21)], base)
    protected = store.protected()
    assert protected[a1.path] == f"active run {resumed} started from it"
    assert protected[r2.path] == f"made by active run {resumed}" and protected[c1.path] == f"made by active run {making}"
    assert a2.path not in protected and b1.path not in protected
    removed = store.evict(0)
    assert {r.path for r in removed} == {a2.path, b1.path}
    assert {c.path for c in store.listing()} == {a1.path, r2.path, c1.path}
    assert all(Path(p).exists() for p in (a1.path, r2.path, c1.path))
    assert store.evict(0, protect=[c1.path]) == []
    state.update_run(resumed, run_state="Failed")  # ended: its chain can go, the active one's not
    assert {r.path for r in store.evict(0)} == {a1.path, r2.path}
    assert [c.path for c in store.listing()] == [c1.path]


def test_the_sweep_removes_unregistered_files_only(setup):
    store, state, base = setup
    done, active = run_of(state, "t"), run_of(state, "t", alive=True)
    [kept] = build(store, done, "t", [key(1)], base)
    leftover = qcow2(layer_path(store.config, key(2), done), Path(kept.path))  # never registered (killed)
    partial = qcow2(Path(str(layer_path(store.config, key(3), done)) + ".part"), leftover)
    writing = qcow2(Path(str(layer_path(store.config, key(4), active)) + ".part"), base)  # a running build's
    unrelated = store.config.checkpoints_dir / "notes.txt"
    unrelated.write_text("not a layer")
    removed = store.sweep()
    assert {r.path for r in removed} == {str(leftover), str(partial)}
    assert all(r.checkpoint is None and r.error is None for r in removed)
    assert writing.exists() and Path(kept.path).exists() and unrelated.exists()
    # the unregistered layer a running build stands on stays too
    below = qcow2(layer_path(store.config, key(5), done), base)
    qcow2(layer_path(store.config, key(6), active), below)
    assert store.sweep() == [] and below.exists()


# --- prune -----------------------------------------------------------------------------------

def test_prune_by_template_age_or_all_keeps_what_is_used(setup):
    store, state, base = setup
    a1, a2 = build(store, run_of(state, "a"), "a", [key(1), key(2)], base)
    # template b starts from a's first checkpoint (the same source and first step)
    [b2] = build(store, run_of(state, "b"), "b", [key(12)], base, started_from=a1.path)
    [c1] = build(store, run_of(state, "c"), "c", [key(21)], base)
    set_used(state, c1.path, 1.0)
    report = store.prune(template="A")
    assert [r.path for r in report.removed] == [a2.path]
    assert [(k.checkpoint.path, k.reason) for k in report.kept] == [(a1.path, "1 checkpoint(s) that stay are built on it")]
    report = store.prune(older_than_days=1)
    assert [r.path for r in report.removed] == [c1.path] and report.kept == ()
    user = run_of(state, "b", alive=True)
    assert store.claim(user, b2.path)
    report = store.prune(everything=True)
    assert report.removed == ()
    assert {(k.checkpoint.path, k.reason) for k in report.kept} == {
        (b2.path, f"active run {user} started from it"),
        (a1.path, f"below a layer that must stay (active run {user} started from it)")}


# --- the pure selection ----------------------------------------------------------------------

def test_select_evictions_on_its_own():
    L = Layer
    layers = [L("a", None, 10, 1, 0), L("b", "a", 10, 5, 0), L("c", "a", 10, 3, 0), L("d", None, 10, 4, 0)]
    assert select_evictions(layers, [], 40).remove == ()
    chosen = select_evictions(layers, [], 25)
    assert chosen.remove == ("c", "d") and chosen.remaining_bytes == 20 and not chosen.over_cap
    assert select_evictions(layers, [], 0).remove == ("c", "d", "b", "a")
    guarded = select_evictions(layers, ["b"], 0)  # b and the a below it stay
    assert guarded.remove == ("c", "d") and guarded.over_cap and guarded.remaining_bytes == 20
    ties = [L("y", None, 10, 1, 2), L("x", None, 10, 1, 2), L("w", None, 10, 1, 1)]
    assert select_evictions(ties, [], 10).remove == ("w", "x")
    with pytest.raises(ValueError):
        select_evictions(layers, [], -1)


def test_select_prune_on_its_own():
    layers = [Layer("a", None, 1, 1, 0), Layer("b", "a", 1, 1, 0), Layer("c", "b", 1, 1, 0)]
    decided = select_prune(layers, [], ["a", "b", "c"])
    assert [(d.path, d.remove) for d in decided] == [("c", True), ("b", True), ("a", True)]
    decided = {d.path: d for d in select_prune(layers, [], ["a", "b"])}  # c stays: b and a with it
    assert not decided["a"].remove and not decided["b"].remove and "1 checkpoint(s)" in decided["b"].reason
    decided = {d.path: d for d in select_prune(layers, ["b"], ["a", "b", "c"], {"b": "used by run r"})}
    assert decided["c"].remove and decided["b"].reason == "used by run r" and not decided["a"].remove


# --- configuration and the CLI ---------------------------------------------------------------

def test_checkpoints_configuration(tmp_path):
    home = tmp_path / "h"
    assert load_config(str(home)).checkpoints_max_bytes == 20 * 2**30 and load_config(str(home)).checkpoints_enabled
    file = tmp_path / "c.toml"
    assert load_config(str(home)).checkpoints_warm  # warm checkpoints: on unless turned off
    file.write_text("[checkpoints]\nmax_gib = 0.5\nenabled = false\nwarm = false\n")
    config = load_config(str(home), str(file))
    assert config.checkpoints_max_bytes == 2**29 and not config.checkpoints_enabled and not config.checkpoints_warm
    file.write_text("[checkpoints]\nmax_gib = 0\n")
    assert load_config(str(home), str(file)).checkpoints_max_bytes == 0
    file.write_text("[checkpoints]\nmax_gib = -1\n")
    with pytest.raises(UsageError, match="max_gib = -1 is not a size in GiB"):
        load_config(str(home), str(file))


@pytest.fixture
def orchestrate(config):
    """`orchestrate --home HOME ...`, in this process."""
    return lambda *argv: cli.main(["--home", str(config.home), *argv])


def test_the_cli_lists_and_prunes(setup, orchestrate, capsys):
    store, state, base = setup
    assert orchestrate("checkpoints", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out)["checkpoints"] == []
    a1, a2 = build(store, run_of(state, "alpha"), "alpha", [key(1), key(2)], base)
    user = run_of(state, "beta", alive=True)
    assert store.claim(user, a1.path)
    assert orchestrate("checkpoints", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["totalBytes"] == a1.size_bytes + a2.size_bytes and listed["capBytes"] == 20 * 2**30
    rows = {r["stepIndex"]: r for r in listed["checkpoints"]}
    assert rows[1]["inUse"] and rows[1]["inUseReason"] == f"active run {user} started from it"
    assert not rows[2]["inUse"] and rows[2]["key"] == key(2) and rows[2]["parent"] == a1.path
    assert rows[2]["template"] == "alpha" and rows[2]["stepName"] == "step2" and rows[2]["sizeBytes"] == a2.size_bytes
    assert orchestrate("checkpoints", "list", "--template", "alpha") == 0
    text = capsys.readouterr().out
    assert f"{key(1)[:12]}  alpha" in text and "1 step1" in text and "in use" in text
    assert "2 checkpoint(s) of template alpha" in text and "of the 20 GiB cap" in text
    assert orchestrate("checkpoints", "prune", "--all", "--json") == 0
    pruned = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in pruned["removed"]] == [a2.path] and pruned["freedBytes"] == a2.size_bytes
    assert [(k["path"], k["reason"]) for k in pruned["kept"]] == [(a1.path, f"active run {user} started from it")]
    assert not Path(a2.path).exists() and Path(a1.path).exists()
    assert orchestrate("checkpoints", "prune", "--older-than", "-1", "--json") == 2
    assert json.loads(capsys.readouterr().out)["error"]["kind"] == "UsageError"
    state.update_run(user, run_state="Succeeded")
    assert orchestrate("checkpoints", "prune") == 0  # no selection: down to the cap (20 GiB: nothing)
    assert "0 removed (0.0 MiB freed), 0 kept" in capsys.readouterr().out
    assert orchestrate("checkpoints", "prune", "--template", "alpha") == 0
    assert f"removed {key(1)[:12]} step 1 'step1' of alpha" in capsys.readouterr().out
    assert store.listing() == []


# --- a killed run, a kept disk -----------------------------------------------------------------

def test_recovery_registers_the_layers_a_killed_run_froze(setup):
    from orchestrator.service.recovery import recover

    store, state, base = setup
    gone = subprocess.Popen(["true"])
    gone.wait()
    run_id = state.start_run("t", None, lambda r: f"/nonexistent/{r}.log", pid=gone.pid, pid_start_time=1)
    staging = store.config.home / "staging" / run_id
    staging.mkdir(parents=True)
    state.update_run(run_id, staging_dir=str(staging))
    layer = qcow2(layer_path(store.config, key(1), run_id), base, fill=0x51)  # frozen by the hook
    overlay = qcow2(Path(str(layer_path(store.config, key(2), run_id)) + ".part"), layer)  # being written
    (staging / "checkpoints.jsonl").write_text(json.dumps(
        {"position": 1, "key": key(1), "name": "one", "path": str(layer), "parent": None, "seconds": 0.1}) + "\n")
    assert recover(store.config, state) == [run_id]
    kept = store.get(layer)
    assert kept is not None and kept.run_id == run_id and kept.step_name == "one"
    assert "1 checkpoint(s) it took kept for a resume" in state.run(run_id)["message"]
    assert not overlay.exists() and not staging.exists()
    assert store.find(key(1))[0].path == kept.path  # what `--resume` of it starts from


def test_a_kept_build_vm_disk_keeps_the_layers_it_stands_on(setup):
    from orchestrator.pipeline.checkpoints import CheckpointRun

    store, state, base = setup
    run_id = run_of(state, "t")
    one, = build(store, run_id, "t", [key(1)], base)
    staging = store.config.home / "staging" / run_id
    staging.mkdir(parents=True)
    # the failed VM was writing the overlay after checkpoint 1, in the store, named relatively
    overlay = Path(str(layer_path(store.config, key(2), run_id)) + ".part")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-u", "-b", Path(one.path).name,
                    str(overlay), SIZE], check=True, cwd=overlay.parent)
    journal = staging / "checkpoints.jsonl"
    journal.write_text(json.dumps({"position": 1, "key": key(1), "name": "step1", "path": one.path,
                                   "parent": None, "seconds": 0.1}) + "\n")
    manifest = {"log": str(journal), "packer_disk": str(staging / "packer-output" / "disk.qcow2"),
                "top": str(staging / "top.qcow2"), "first": 1, "last": 3,
                "layers": {str(i): {"key": key(i), "path": str(layer_path(store.config, key(i), run_id))}
                           for i in (1, 2, 3)}}
    disk = CheckpointRun(None, None, manifest, 0, None).keep_current_disk()  # errorHandling abort
    assert disk == staging / "top.qcow2" and not overlay.exists()
    assert backing_file(disk) == one.path  # named absolutely now that it left the store's directory
    assert store.evict(cap_bytes=0) == [] and store.get(one.path) is not None
    assert "a kept build VM disk stands on it" in store.protected()[one.path]
    shutil.rmtree(staging)  # the user is done with it: the layers go like any others
    assert [r.path for r in store.evict(cap_bytes=0)] == [one.path]


def test_a_warm_state_counts_with_its_layer_is_checked_and_goes_with_it(setup, orchestrate, capsys):
    from orchestrator.core.warm import MachineConfig
    from orchestrator.effects import warm_states

    store, state, base = setup
    run_id = run_of(state, "t")
    path = qcow2(layer_path(store.config, key(1), run_id), base, fill=0x61)
    saved, saved_key = Path(str(path) + ".state.zst"), Path(str(path) + ".key")
    saved.write_bytes(os.urandom(256 * 1024))  # as the hook leaves them (it writes them owner-only)
    saved_key.write_text("KEY\n")
    machine = MachineConfig("QEMU 7.2", "tcg", 2, 1024, 3072)
    row = store.register(run_id, "t", key(1), 1, "step1", path, None,
                         ({"state": str(saved), "key": str(saved_key), "pause_seconds": 1.1}, machine, "ssh-ed25519 A"))
    assert row.warm and row.state_bytes >= 256 * 1024 and store.total_bytes() == row.size_bytes + row.state_bytes
    assert orchestrate("checkpoints", "list", "--json") == 0
    [shown] = json.loads(capsys.readouterr().out)["checkpoints"]
    assert shown["warm"] and shown["stateBytes"] == row.state_bytes
    assert orchestrate("checkpoints", "list") == 0
    assert re.search(r" warm +0\.\d MiB ", capsys.readouterr().out)
    warm = store.warm_state(path)
    assert warm_states.usable(warm, row.sha256, machine) is None
    assert "memory (MiB) 1024, this build 2048" in warm_states.usable(
        warm, row.sha256, MachineConfig("QEMU 7.2", "tcg", 2, 2048, 3072))
    assert "the layer was replaced" in warm_states.usable(warm, "0" * 64, machine)
    with open(saved, "r+b") as handle:  # a truncated state is refused before QEMU starts
        handle.truncate(1000)
    assert "changed since it was saved" in warm_states.usable(warm, row.sha256, machine)
    assert [r.path for r in store.evict(cap_bytes=0)] == [row.path]
    assert not saved.exists() and not saved_key.exists() and store.warm_state(path) is None
