"""Times N queued `orchestrate build`s of a small template started at once on this host
(N = 1, 2, 4 by default), with the admission queue's capacity set to the host ([capacity] cpus =
the host's CPUs, memory_mib = 3/4 of its memory, in the data home's config.toml), against N
sequential raw `packer build`s of bench/handwritten.pkr.hcl plus the same qemu-img VHD
conversion, in the same process on the same base image. Prints, per N, both wall times (start to
the last finish), both throughputs (builds per hour) and the ratio ours/theirs; for N = 1 that
ratio is the queue's overhead (target: <= 1.02), for N >= 2 it says whether concurrent admission
beats sequential builds (it should where the host's cores allow).

The template is bench/bench_build.py's with vmSize Standard_B1ms (1 vCPU, 2 GiB): a 4 GiB OS disk,
four customizers (inline, script, file, inline), a VHD target. Each of the N builds has its own name (`--name bench-<i>`: two runs of
one template name never build at once) and `--force` (nothing is reused from an earlier build).

The baseline is bench/handwritten.pkr.hcl with `-var cpus=1 -var memory=2048`: the same VM
and the same four customizers as the template (bench/bench_build.py's, resized).

Usage: .venv/bin/python bench/bench_queue.py [--sizes 1,2,4] [--rounds 1]
       (as root, after scripts/setup-host.sh)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))  # bench_build's template

from orchestrator.config import default_home  # noqa: E402
from orchestrator.effects.catalog import version_key  # noqa: E402
from orchestrator.effects.state import StateStore  # noqa: E402

from bench_build import PAGE, SCRIPT, handwritten_seed, import_base  # noqa: E402 - shared with bench_build
HCL = HERE / "handwritten.pkr.hcl"


def template(files: Path) -> dict:
    """bench_build.py's template (the same four customizers as handwritten.pkr.hcl), with a
    1 vCPU / 2 GiB build VM so that two fit on two cores."""
    from bench_build import template as build_template  # noqa: PLC0415

    data = build_template(files)
    data["properties"]["vmProfile"]["vmSize"] = "Standard_B1ms"  # 1 vCPU, 2 GiB
    return data


def host_memory_mib() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,2,4", help="comma-separated numbers of builds at once (default 1,2,4)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per size (default 1)")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes {args.sizes!r} is not a comma-separated list of numbers")
    if not args.sizes or min(args.sizes) < 1 or args.rounds < 1:
        parser.error("--sizes and --rounds must be positive")
    return args


def per_hour(builds: int, seconds: float) -> float:
    return builds * 3600.0 / seconds


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    records = StateStore(default_home() / "state.db").images("Debian", "debian-12", "12")
    if not records:
        print("no Debian 12 base image imported: run scripts/setup-host.sh first", file=sys.stderr)
        return 1
    base = max(records, key=lambda r: version_key(r.version)).path
    cores = os.cpu_count() or 1
    memory_mib = host_memory_mib() * 3 // 4
    hcl_vars = ["-var", "cpus=1", "-var", "memory=2048"]
    baseline_vm = "1 vCPU / 2048 MiB"
    print(f"host: {cores} CPUs; capacity: cpus = {cores}, memory_mib = {memory_mib}; "
          f"ours: Standard_B1ms (1 vCPU / 2048 MiB); baseline VM: {baseline_vm}", flush=True)

    with tempfile.TemporaryDirectory(prefix="orchestrator-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        home = work / "home"
        files = work / "files"
        files.mkdir()
        (files / "setup.sh").write_text(SCRIPT)
        (files / "page.html").write_text(PAGE)
        env = dict(os.environ, ORCHESTRATOR_HOME=str(home), ORCHESTRATOR_ACCELERATOR="tcg",
                   CHECKPOINT_DISABLE="1", PACKER_CACHE_DIR=str(work / "packer-cache"),
                   TMPDIR=str(work))  # the raw baseline's packer_to_cdrom* go with the rest
        env.pop("ORCHESTRATOR_CONFIG", None)  # the capacity is config.toml in the data home
        orchestrate = [sys.executable, "-m", "orchestrator"]
        import_base(orchestrate, base, env)
        (home / "config.toml").write_text(f"[capacity]\ncpus = {cores}\nmemory_mib = {memory_mib}\n")
        (work / "t.json").write_text(json.dumps(template(files)))
        seed, key = handwritten_seed(work)

        def ours(n: int) -> float:
            """N builds started at once; the wall time from their start to the last one's end."""
            logs = work / "logs"
            logs.mkdir(exist_ok=True)
            finished: list[float] = [0.0] * n
            procs, streams = [], []
            started = time.monotonic()
            for i in range(n):
                out = open(logs / f"bench-{i}.out", "w+")
                err = open(logs / f"bench-{i}.err", "w+")
                streams.append((out, err))
                procs.append(subprocess.Popen(
                    orchestrate + ["build", "--force", "--name", f"bench-{i}", "--progress", "none", "--json",
                                   str(work / "t.json")], env=env, stdout=out, stderr=err))

            def wait(i: int) -> None:
                procs[i].wait()
                finished[i] = time.monotonic()

            waiters = [threading.Thread(target=wait, args=(i,)) for i in range(n)]
            for t in waiters:
                t.start()
            for t in waiters:
                t.join()
            elapsed = max(finished) - started
            failed = False
            for i, (proc, (out, err)) in enumerate(zip(procs, streams)):
                out.seek(0)
                err.seek(0)
                stdout, stderr = out.read(), err.read()
                out.close()
                err.close()
                if proc.returncode != 0:
                    failed = True
                    print(f"orchestrate build --name bench-{i} exited {proc.returncode}:\n{stderr}{stdout}",
                          file=sys.stderr)
                    continue
                print(f"    bench-{i}: done after {finished[i] - started:6.1f} s", flush=True)
                try:  # the VHDs are not needed: give their space back at once
                    for output in json.loads(stdout).get("runOutputs", []):
                        path = output.get("properties", {}).get("path")
                        if path and Path(path).resolve().is_relative_to(work.resolve()):
                            Path(path).unlink(missing_ok=True)
                except (ValueError, OSError):
                    pass
            if failed:
                sys.exit(1)
            return elapsed

        def theirs_one() -> float:
            shutil.rmtree(work / "out", ignore_errors=True)
            started = time.monotonic()
            for command in (
                    ["packer", "build", "-color=false",
                     "-var", f"base_image={base}", "-var", f"output_dir={work / 'out'}",
                     "-var", f"ssh_key={key}", "-var", f"seed_dir={seed}", "-var", f"files_dir={files}",
                     *hcl_vars, str(HCL)],
                    ["qemu-img", "convert", "-O", "vpc", "-o", "subformat=fixed,force_size",
                     str(work / "out" / "disk.qcow2"), str(work / "hand.vhd")]):
                done = subprocess.run(command, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"{command[0]} exited {done.returncode}:\n{done.stderr}{done.stdout[-4000:]}",
                          file=sys.stderr)
                    sys.exit(1)
            return time.monotonic() - started

        def theirs(n: int) -> float:
            """N raw builds one after another."""
            total = 0.0
            for i in range(n):
                one = theirs_one()
                total += one
                print(f"    raw {i}: {one:6.1f} s", flush=True)
            (work / "hand.vhd").unlink(missing_ok=True)
            return total

        results: dict[int, dict[str, list[float]]] = {}
        for n in args.sizes:
            times = results[n] = {"ours": [], "theirs": []}
            for round_ in range(args.rounds):  # alternate the order so that neither always goes first
                order = [("ours", ours), ("theirs", theirs)]
                for label, run in order if round_ % 2 == 0 else list(reversed(order)):
                    print(f"  N={n} round {round_ + 1}: {label} ...", flush=True)
                    times[label].append(run(n))
                    print(f"  N={n} round {round_ + 1}: {label:6s} {times[label][-1]:7.1f} s", flush=True)

    print()
    print(f"{'N':>3} {'orchestrate s':>14} {'raw seq s':>10} {'ours/h':>8} {'raw/h':>8} {'ratio':>7}  verdict")
    for n, times in results.items():
        ours_s = sum(times["ours"]) / len(times["ours"])
        theirs_s = sum(times["theirs"]) / len(times["theirs"])
        ratio = ours_s / theirs_s
        if n == 1:
            verdict = f"queue overhead {ratio:.3f} (target <= 1.02): {'met' if ratio <= 1.02 else 'NOT met'}"
        else:
            at_once = min(n, cores)  # each build VM is 1 vCPU
            verdict = (f"concurrent {'beats' if ratio < 1 else 'does NOT beat'} sequential "
                       f"({at_once} at once on {cores} cores" + ("" if cores >= n else f", < N={n}") + ")")
        print(f"{n:>3} {ours_s:>14.1f} {theirs_s:>10.1f} {per_hour(n, ours_s):>8.1f} {per_hour(n, theirs_s):>8.1f} "
              f"{ratio:>7.3f}  {verdict}")
    if 1 in results:
        ours_1 = sum(results[1]["ours"]) / len(results[1]["ours"])
        theirs_1 = sum(results[1]["theirs"]) / len(results[1]["theirs"])
        print(f"queue overhead (N=1 orchestrate / one raw build): {ours_1 / theirs_1:.3f}  (target <= 1.02; "
              f"mean of {args.rounds} round(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
