"""The REST API's request rate (`orchestrate serve`, over TLS, one process): GETs of one template
and lists of 1,000 templates (100 a page), from CLIENTS threads with keep-alive sessions; then
the latency a real build running on this host (bench_build's template) adds: one client with a
GET every 20 ms (as a dashboard or an SDK's poller asks), idle and while the build runs, worst
and 99th percentile; and, for the record, CLIENTS clients flat out while the build runs (their
own load on the same two cores is in those figures). Targets: >= 500 GETs a second here, no
request slower than 100 ms while a build runs. The baseline printed beside it, in the same run:
the same GETs of a fixed answer from a bare ASGI app on uvicorn with the same certificate (what
TLS, HTTP and Python cost by themselves).

Usage: .venv/bin/python bench/bench_api.py [SECONDS=5] [CLIENTS=4]   (after scripts/setup-host.sh)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import requests  # noqa: E402

import bench_build  # noqa: E402
from tests.api_helpers import GROUP, SUBSCRIPTION, start_server  # noqa: E402


BASELINE = """
import socket, sys, uvicorn
body = b'{"ok": true}'
async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
sock = socket.socket(); sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1); sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(app, ssl_certfile=sys.argv[1], ssl_keyfile=sys.argv[2], log_level="warning",
                              lifespan="off")).run(sockets=[sock])
"""


def baseline_rate(tls: Path, ca: str, seconds: float, clients: int) -> float:
    """GETs a second of a fixed JSON answer from a bare ASGI app on uvicorn, same TLS and port kind."""
    process = subprocess.Popen([sys.executable, "-c", BASELINE, str(tls / "server.pem"), str(tls / "server.key")],
                               stdout=subprocess.PIPE, text=True)
    try:
        port = int(process.stdout.readline())
        url = f"https://127.0.0.1:{port}/"
        deadline = time.monotonic() + 30
        while True:  # it listens once uvicorn has started: the first answer says so
            try:
                requests.get(url, verify=ca, timeout=5)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
        count, _ = hammer(url, "", ca, seconds, clients)
        return count / seconds
    finally:
        process.terminate()
        process.wait(timeout=30)


PACE = 0.02  # seconds between two GETs of the paced client
SERVER_SIDE: list[float] = []  # Server-Timing of each answer: the server's own part of a latency


def hammer(url: str, token: str, ca: str, seconds: float, clients: int) -> tuple[int, list[float]]:
    """GETs of `url` from `clients` threads for `seconds`: (count, latencies)."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        session = _session(token)
        mine, server = [], []
        while time.monotonic() < stop:
            seconds, answer = _timed_get(session, url, ca)
            mine.append(seconds)
            timing = answer.headers.get("server-timing", "")
            if "dur=" in timing:
                server.append(float(timing.split("dur=", 1)[1]) / 1000)
        with lock:
            latencies.extend(mine)
            SERVER_SIDE.extend(server)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies), latencies


def paced(url: str, token: str, ca: str, seconds: float, interval: float) -> list[float]:
    """One client, one GET every `interval` seconds (a dashboard or an SDK polling, not a load
    test): the latencies. What a running build adds to a request, without the clients' own
    load on the same two cores."""
    session = _session(token)
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        latency, _ = _timed_get(session, url, ca)
        latencies.append(latency)
        time.sleep(max(0.0, interval - latency))  # pacing, not synchronization
    return latencies


def _session(token: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def _timed_get(session: requests.Session, url: str, ca: str) -> tuple[float, requests.Response]:
    started = time.perf_counter()
    answer = session.get(url, verify=ca, timeout=30)
    latency = time.perf_counter() - started
    if answer.status_code != 200:
        raise SystemExit(f"GET {url}: {answer.status_code} {answer.text}")
    return latency, answer


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else 0.0


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    clients = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    base = bench_build.base_image()
    if base is None:
        return 1
    with tempfile.TemporaryDirectory(prefix="orchestrator-bench-api-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        home = work / "home"
        env = dict(os.environ, ORCHESTRATOR_HOME=str(home), ORCHESTRATOR_PROOF="off", TMPDIR=str(work))
        orchestrate = [sys.executable, "-m", "orchestrator"]
        bench_build.import_base(orchestrate, base, env)
        from orchestrator.config import load_config
        from orchestrator.effects import api_state
        from orchestrator.effects.state import StateStore
        from orchestrator.service import templates as stored

        state = StateStore(load_config(str(home)).db_path)
        files = work / "files"
        files.mkdir()
        (files / "setup.sh").write_text(bench_build.SCRIPT)
        (files / "page.html").write_text(bench_build.PAGE)
        body = json.dumps(bench_build.template(files))
        made = time.monotonic()
        for index in range(1000):
            name = f"t{index:04d}"
            resource = api_state.Resource(name, SUBSCRIPTION, GROUP, "local", {}, {})
            stored.create(state, name, body, {}, None, also=lambda db, r=resource: api_state.put_resource(db, r))
        print(f"1,000 templates stored in {time.monotonic() - made:.1f} s", flush=True)
        token = api_state.create_token(state, "bench", "contributor", f"/subscriptions/{SUBSCRIPTION}")
        server = start_server(home)
        try:
            prefix = (f"{server.url}/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/"
                      "Microsoft.VirtualMachineImages/imageTemplates")
            one = f"{prefix}/t0500?api-version=2024-02-01"
            hammer(one, token, server.ca, 1.0, clients)  # warm-up
            count, idle = hammer(one, token, server.ca, seconds, clients)
            get_rate = count / seconds
            idle_paced = paced(one, token, server.ca, seconds, PACE)
            bare_rate = baseline_rate(home / "tls", server.ca, seconds, clients)
            session = _session(token)
            started, pages, listed, url = time.perf_counter(), 0, 0, f"{prefix}?api-version=2024-02-01"
            while url:
                page = session.get(url, verify=server.ca, timeout=60).json()
                pages, listed, url = pages + 1, listed + len(page["value"]), page.get("nextLink")
            list_seconds = time.perf_counter() - started
            assert listed == 1000, listed
            (work / "bb.json").write_text(body)
            build = subprocess.Popen(orchestrate + ["build", "--name", "bb", str(work / "bb.json")], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            busy_count, busy, busy_paced = 0, [], []
            SERVER_SIDE.clear()
            while build.poll() is None:  # GETs for as long as the build runs: paced, then a burst
                busy_paced += paced(one, token, server.ca, 4.0, PACE)
                n, latencies = hammer(one, token, server.ca, 1.0, clients)
                busy_count, busy = busy_count + n, busy + latencies
            if build.returncode != 0:
                print(f"the build during the benchmark failed (exit {build.returncode})", file=sys.stderr)
                return 1
        finally:
            server.process.terminate()
            server.process.communicate(timeout=30)
    print(f"\nGET one template, {clients} clients, {seconds:.0f} s:  {get_rate:7.0f} requests/s (target >= 500); "
          f"median {percentile(idle, 0.5) * 1000:.1f} ms, p99 {percentile(idle, 0.99) * 1000:.1f} ms")
    print(f"bare uvicorn + TLS, fixed answer:    {bare_rate:7.0f} requests/s (ratio {get_rate / bare_rate:.2f})")
    print(f"list 1,000 templates ({pages} pages):      {list_seconds:7.2f} s ({listed / list_seconds:.0f} templates/s)")
    print(f"GET every {PACE * 1000:.0f} ms, idle ({len(idle_paced)} requests): worst {max(idle_paced) * 1000:.1f} ms, "
          f"p99 {percentile(idle_paced, 0.99) * 1000:.1f} ms")
    print(f"GET every {PACE * 1000:.0f} ms while a build runs ({len(busy_paced)} requests): worst "
          f"{max(busy_paced, default=0) * 1000:.1f} ms, p99 {percentile(busy_paced, 0.99) * 1000:.1f} ms "
          f"(target: none over 100 ms; ratio of the worst to idle's {max(busy_paced, default=0) / max(idle_paced):.1f})")
    print(f"{clients} clients flat out while a build runs ({busy_count} requests, the clients on the same cores): worst "
          f"{max(busy, default=0) * 1000:.1f} ms, p99 {percentile(busy, 0.99) * 1000:.1f} ms")
    print(f"  of which the server's own part (Server-Timing): worst {max(SERVER_SIDE, default=0) * 1000:.1f} ms, "
          f"p99 {percentile(SERVER_SIDE, 0.99) * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
