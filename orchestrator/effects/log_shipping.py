"""A fleet run's customization.log, shipped into the state database as it grows (the file stays
the record on the host that built it): `orchestrate logs [-f]` on any host of the fleet reads it
there. What is shipped is the file's own text, redacted as it was written."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator

SHIP_SECONDS = 0.5
CHUNK_BYTES = 256 * 1024


class LogShipper:
    def __init__(self, state: Any, run_id: str, path: Path) -> None:
        self.state, self.run_id, self.path = state, run_id, path
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._ship, daemon=True, name=f"ship {run_id}")
        self._position = 0
        self._seq = _last_seq(state, run_id)  # a run dispatched again goes on after what its first host shipped

    def __enter__(self) -> "LogShipper":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=60)

    def _ship(self) -> None:
        while True:
            finished = self._done.wait(SHIP_SECONDS)  # the engine writes the file: look again
            try:
                self._send()
            except Exception:  # noqa: BLE001 - the database away: the file keeps it, the next round sends it
                pass
            if finished:
                try:  # an empty chunk: the log is complete (a follower may stop)
                    self._insert("")
                except Exception:  # noqa: BLE001
                    pass
                return

    def _send(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._position)
                data = handle.read()
        except FileNotFoundError:
            return
        cut = data.rfind(b"\n") + 1  # whole lines only
        if not cut:
            return
        for start in range(0, cut, CHUNK_BYTES):
            chunk = data[start:min(cut, start + CHUNK_BYTES)]
            self._insert(chunk.decode("utf-8", errors="replace"))
            self._position += len(chunk)

    def _insert(self, text: str) -> None:
        with self.state.transaction() as db:
            db.execute("INSERT INTO run_log (run_id, seq, data) VALUES (?, ?, ?)", (self.run_id, self._seq + 1, text))
        self._seq += 1


def _last_seq(state: Any, run_id: str) -> int:
    with state.transaction() as db:
        row = db.execute("SELECT MAX(seq) FROM run_log WHERE run_id = ?", (run_id,)).fetchone()
    return int(row[0] or 0)


def shipped(state: Any, run_id: str, after: int = 0) -> Iterator[tuple[int, str]]:
    """(seq, text) of the chunks shipped after `after`; an empty text ends a build's log."""
    with state.transaction() as db:
        rows = db.execute("SELECT seq, data FROM run_log WHERE run_id = ? AND seq > ? ORDER BY seq",
                          (run_id, after)).fetchall()
    for row in rows:
        yield int(row[0]), row[1]
