"""The deploy proof's cost: `orchestrate build` of bench_build's template with the proof and
without it (--no-proof), alternating, on the same base image. Prints both times, the proof's
own recorded time (boot to login, checks), and the added time as a fraction of the build
(target: <= 0.5).

Usage: .venv/bin/python bench/bench_proof.py [ROUNDS=2]   (as root, after scripts/setup-host.sh)
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_build import PAGE, SCRIPT, base_image, import_base, template  # noqa: E402


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    base = base_image()
    if base is None:
        return 1
    with tempfile.TemporaryDirectory(prefix="orchestrator-bench-proof-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        files = work / "files"
        files.mkdir()
        (files / "setup.sh").write_text(SCRIPT)
        (files / "page.html").write_text(PAGE)
        env = dict(os.environ, ORCHESTRATOR_HOME=str(work / "home"), TMPDIR=str(work), ORCHESTRATOR_PROOF="on")
        orchestrate = [sys.executable, "-m", "orchestrator"]
        import_base(orchestrate, base, env)
        times: dict[str, list[float]] = {"with proof": [], "without": []}
        proof_seconds: list[float] = []
        boot_seconds: list[float] = []
        for round_number in range(rounds):
            order = ["with proof", "without"] if round_number % 2 == 0 else ["without", "with proof"]
            for kind in order:
                data = template(files)  # a changed inline step each time: a real build, never reused
                data["properties"]["customize"][0]["inline"].append(f"echo {kind!r} {round_number}")
                path = work / f"{round_number}-{len(times[kind])}.json"
                path.write_text(json.dumps(data))
                args = ["build", "--json", str(path)] + (["--no-proof"] if kind == "without" else [])
                started = time.monotonic()
                done = subprocess.run(orchestrate + args, env=env, capture_output=True, text=True)
                elapsed = time.monotonic() - started
                if done.returncode != 0:
                    print(f"{kind}: build failed (exit {done.returncode}):\n{done.stdout}{done.stderr}", file=sys.stderr)
                    return 1
                times[kind].append(elapsed)
                if kind == "with proof":
                    run = json.loads(done.stdout)["runId"]
                    status = json.loads(subprocess.run(orchestrate + ["status", "--json", run], env=env,
                                                       capture_output=True, text=True, check=True).stdout)
                    proof_seconds.append(status["proof"]["totalSeconds"])
                    boot_seconds.append(status["proof"]["bootSeconds"])
                print(f"round {round_number + 1}: {kind}: {elapsed:.1f} s", flush=True)
        with_proof, without = statistics.median(times["with proof"]), statistics.median(times["without"])
        print(f"build without proof (baseline): {without:.1f} s (median of {rounds})")
        print(f"build with proof:               {with_proof:.1f} s")
        print(f"proof as recorded:              {statistics.median(proof_seconds):.1f} s "
              f"(boot to login {statistics.median(boot_seconds):.1f} s)")
        print(f"added time / build: {(with_proof - without) / without:.2f} (target <= 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
