"""Fetch phase: every scriptUri/sourceUri of the plan, bounded and verified, before the VM boots."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from orchestrator.config import FILE_SOURCE_MAX_BYTES, Config
from orchestrator.core.plan import BuildPlan
from orchestrator.effects.downloads import DownloadCache, Fetched, Limits, display_url
from orchestrator.effects.hostpolicy import HostPolicy, file_read_problem
from orchestrator.effects.mirrors import Mirror, mirror_for, mirror_read_problem
from orchestrator.effects.runlog import RunLog
from orchestrator.errors import BuildTimeout, Canceled, ChecksumMismatch, DownloadFailed


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
        mirror = mirror_for(item.url, config.mirrors)
        check = mirror_read_problem(mirror) if mirror and mirror.directory else (
            lambda uri: file_read_problem(uri, policy))
        limits = Limits(max_bytes=limit, stall_seconds=config.download_stall_seconds, deadline=deadline,
                        cancel=cancel, check_file=check)
        where = f"customizer {item.customizer!r}, {item.json_path}"
        try:
            fetched = _fetch(cache, item.url, mirror, item.sha256, where, limits, config)
        except (DownloadFailed, Canceled) as exc:
            # the build's deadline, seen by the download first or by the run's timer (a stop)
            timed_out = getattr(cancel, "timed_out", False) or time.monotonic() >= build_deadline
            if timed_out and not isinstance(exc, ChecksumMismatch):
                raise BuildTimeout(f"the build timed out after buildTimeoutInMinutes while fetching "
                                   f"{display_url(item.url)} ({where})",
                                   hint="raise buildTimeoutInMinutes, or check the server") from None
            raise
        if fetched.note:
            log.write("orchestrator", f"{display_url(item.url)}: {fetched.note}")
        verified = "sha256 verified" if item.sha256 else "no sha256Checksum given"
        served = f" from mirror {mirror.target} ({display_url(mirror.url)})" if mirror and not fetched.from_cache else ""
        log.write("orchestrator", f"fetched {display_url(item.url)}{served} for {item.customizer!r}: {fetched.size} "
                  f"bytes, sha256 {fetched.sha256} ({verified}{', from cache' if fetched.from_cache else ''})")
        paths[item.url] = str(fetched.path)
        digests[item.url] = fetched.sha256
    return FetchResult(paths, digests)


def _fetch(cache: DownloadCache, url: str, mirror: Mirror | None, sha256: str | None, where: str, limits: Limits,
           config: Config) -> Fetched:
    """From the mirror when one serves the URL; a URL that cannot be fetched says how to mirror it."""
    try:
        fetched = cache.fetch(mirror.url if mirror else url, sha256, where, limits)
    except ChecksumMismatch:
        raise
    except DownloadFailed as exc:
        if mirror is not None:
            raise DownloadFailed(f"{display_url(url)} ({where}) is mirrored by {mirror.target}, which cannot serve "
                                 f"it: {exc.message}", hint=f"put the file at {display_url(mirror.url)}, or fix "
                                 f"[mirrors] in {config.setting_source()}") from None
        if url.lower().startswith(("http://", "https://")):
            parts = url.split("/")
            prefix = "/".join(parts[:3]) + "/"
            raise DownloadFailed(exc.message, hint=(exc.hint + "; " if exc.hint else "") +
                                 f"on a host that cannot reach it, mirror it: [mirrors] \"{prefix}\" = "
                                 f"\"/srv/mirror/DIR\" (or a local http URL) in {config.setting_source()}") from None
        raise
    return Fetched(url, fetched.path, fetched.sha256, fetched.size, fetched.from_cache, fetched.note)
