"""How a front shows a run's progress: a live view on a terminal (rich), plain lines when
stderr is not one, JSON lines for CI systems. Events come already redacted."""
from __future__ import annotations

import json
import sys
import time
from typing import IO, Callable

from orchestrator.service.progress import Event

MODES = ("auto", "live", "plain", "json", "none")


def open_view(mode: str, stream: IO[str] | None = None) -> tuple[Callable[[Event], None], Callable[[], None]]:
    """(sink, close) for a progress mode; `auto` is live on a terminal, plain lines otherwise."""
    stream = stream or sys.stderr
    if mode == "auto":
        mode = "live" if stream.isatty() else "plain"
    if mode == "none":
        return (lambda event: None), (lambda: None)
    if mode == "json":
        def json_line(event: Event) -> None:
            stream.write(json.dumps(event.as_dict(), ensure_ascii=False) + "\n")
            stream.flush()
        return json_line, (lambda: None)
    if mode == "live":
        view = LiveView(stream)
        return view.take, view.close
    return PlainView(stream).take, (lambda: None)


class PlainView:
    """One line per phase, step and note (log lines stay in the log: `logs -f` shows them)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def take(self, event: Event) -> None:
        if event.kind in ("phase", "note"):
            self.stream.write(f"[{event.elapsed:6.1f}s] {event.what}\n")
            self.stream.flush()


class LiveView:
    """The phase, the current customizer ("step 3 of 7: installNginx"), the elapsed time and
    the last log line, redrawn in place; phases and notes stay above it as plain lines."""

    def __init__(self, stream: IO[str]) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream, highlight=False, soft_wrap=False)
        self.phase = "starting"
        self.sub_state = ""
        self.step = ""
        self.last_line = ""
        self.started = time.monotonic()
        self.run_id = ""
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=True,
                         get_renderable=self._render)
        self.live.start()

    def _render(self):
        from rich.text import Text

        elapsed = time.monotonic() - self.started
        head = Text()
        head.append(f"{self.run_id} ", style="bold")
        head.append(f"{self.sub_state or 'Running'}", style="cyan")
        head.append(f"  {self.step or self.phase}  ")
        head.append(f"{int(elapsed // 60):02d}:{int(elapsed % 60):02d}", style="yellow")
        tail = Text(self.last_line[-self.console.width + 4:] if self.last_line else "", style="dim")
        return Text.assemble(head, "\n  ", tail)

    def take(self, event: Event) -> None:
        self.run_id = event.run_id or self.run_id
        self.sub_state = event.sub_state or self.sub_state
        if event.kind == "log":
            self.last_line = event.what
        elif event.kind == "step":
            self.step = event.what
        else:
            if event.kind == "phase":
                self.phase, self.step = event.what, ""
            self.live.console.print(f"[{event.elapsed:6.1f}s] {event.what}", markup=False, highlight=False)

    def close(self) -> None:
        self.live.stop()
