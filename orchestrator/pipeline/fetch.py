"""Fetch phase: every scriptUri/sourceUri of the plan, bounded and verified, before the VM boots."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from orchestrator.config import FILE_SOURCE_MAX_BYTES, Config
from orchestrator.core.plan import BuildPlan
from orchestrator.effects.downloads import DownloadCache, Limits, display_url
from orchestrator.effects.hostpolicy import HostPolicy, file_read_problem
from orchestrator.effects.runlog import RunLog
from orchestrator.errors import Canceled


@dataclass(frozen=True)
class FetchResult:
    paths: dict[str, str]  # url -> verified local file
    digests: dict[str, str]  # url -> sha256


def fetch_all(plan: BuildPlan, cache: DownloadCache, config: Config, policy: HostPolicy, log: RunLog,
              cancel: threading.Event, build_deadline: float) -> FetchResult:
    for part in cache.removed_parts:
        log.write("orchestrator", f"removed {part.name}, left by a download that was killed")
    deadline = min(build_deadline, time.monotonic() + config.download_seconds)
    paths: dict[str, str] = {}
    digests: dict[str, str] = {}
    for step in plan.steps:
        item = step.download
        if item is None:
            continue
        if cancel.is_set():
            raise Canceled("the build was canceled while fetching files")
        limit = FILE_SOURCE_MAX_BYTES if step.kind == "File" else config.script_max_bytes
        limits = Limits(max_bytes=limit, stall_seconds=config.download_stall_seconds, deadline=deadline,
                        cancel=cancel, check_file=lambda uri: file_read_problem(uri, policy))
        fetched = cache.fetch(item.url, item.sha256, f"customizer {item.customizer!r}, {item.json_path}", limits)
        if fetched.note:
            log.write("orchestrator", f"{display_url(item.url)}: {fetched.note}")
        verified = "sha256 verified" if item.sha256 else "no sha256Checksum given"
        log.write("orchestrator", f"fetched {display_url(item.url)} for {item.customizer!r}: {fetched.size} bytes, "
                  f"sha256 {fetched.sha256} ({verified}{', from cache' if fetched.from_cache else ''})")
        paths[item.url] = str(fetched.path)
        digests[item.url] = fetched.sha256
    return FetchResult(paths, digests)
