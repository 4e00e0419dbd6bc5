"""What a run reports while it runs, as events a front shows (a live view on a terminal, plain
lines, JSON lines for CI). Every text passes the run's redactor first."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from orchestrator.core.redact import Redactor


@dataclass(frozen=True)
class Event:
    kind: str  # "phase" (runSubState and what), "step" (a customizer starts), "note", "log" (a log line)
    what: str
    elapsed: float
    run_id: str | None = None
    sub_state: str | None = None
    step: int | None = None
    steps: int | None = None
    source: str | None = None  # of a log line: the customizer or phase it belongs to

    def as_dict(self) -> dict[str, Any]:
        """For JSON lines, in the camelCase of orchestrator's other JSON (runId, runSubState)."""
        names = {"run_id": "runId", "sub_state": "runSubState"}
        return {names.get(k, k): v for k, v in asdict(self).items() if v is not None}


Sink = Callable[[Event], None]


class Reporter:
    """Turns the engine's reports into events; callable with a text, as the distribute targets
    and the store phase report their notes."""

    def __init__(self, sink: Sink = lambda event: None, redact: Redactor | None = None) -> None:
        self.sink = sink
        self.redact = redact or Redactor()
        self.run_id: str | None = None
        self.sub_state: str | None = None
        self.started = time.monotonic()

    def _emit(self, kind: str, what: str, **fields: Any) -> None:
        try:
            self.sink(Event(kind, self.redact(what), round(time.monotonic() - self.started, 1), self.run_id,
                            self.sub_state, **fields))
        except OSError:  # the progress pipe was closed (`| head`): the build goes on, unwatched
            self.sink = lambda event: None

    def phase(self, sub_state: str, what: str) -> None:
        self.sub_state = sub_state
        self._emit("phase", what)

    def step(self, position: int, count: int, name: str, kind: str = "customizer") -> None:
        self._emit("step", f"step {position} of {count}: {name}", step=position, steps=count, source=kind)

    def note(self, what: str) -> None:
        self._emit("note", what)

    def line(self, source: str, text: str) -> None:
        self._emit("log", text, source=source)

    def __call__(self, what: str) -> None:
        self.note(what)
