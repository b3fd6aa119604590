"""Terminal output shared by every command: a rich console and progress bars.

With `--json` the one JSON object owns stdout, so human-readable output and progress go to stderr.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

_state = {"json": False, "console": None}


def set_json_mode(on: bool) -> None:
    _state["json"] = on
    _state["console"] = None


def json_mode() -> bool:
    return bool(_state["json"])


# Written to a file or a pipe (a log, `| tee`), rich would lay tables out for 80 columns and cut the
# names in them short; there is no terminal to fit, so a log gets this width unless COLUMNS says.
LOG_WIDTH = 160


def _width(stderr: bool) -> int | None:
    stream = sys.stderr if stderr else sys.stdout
    interactive = getattr(stream, "isatty", lambda: False)()
    return None if interactive or os.environ.get("COLUMNS") else LOG_WIDTH


def console() -> Console:
    """The console for human output: stdout normally, stderr under --json."""
    if _state["console"] is None:
        _state["console"] = Console(stderr=_state["json"], highlight=False, soft_wrap=True, width=_width(_state["json"]))
    return _state["console"]  # type: ignore[return-value]


def info(message: str) -> None:
    console().print(message)


def warn(message: str) -> None:
    """Warnings always go to stderr, one line each."""
    Console(stderr=True, highlight=False, soft_wrap=True, width=_width(True)).print(f"[yellow]warning:[/] {message}")


def table(title: str, columns: list[str], rows: list[list[object]]) -> None:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="right" if c != columns[0] else "left")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    console().print(t)


PROGRESS_EVERY_S = 30.0  # seconds between plain progress lines when stderr is not a terminal


class Progress:
    """Progress of a long job. On a terminal: one bar (percent done, elapsed, one time-left figure).
    Elsewhere (a log file, nohup, Slurm, CI): a plain line on stderr every `every_s` seconds, and a
    last one when a job that long ends, so a log shows the job moving (short jobs stay quiet)."""

    def __init__(self, description: str, total: float | None, unit: str = "", every_s: float | None = None,
                 eta: bool = True, heartbeat: bool = False):
        import os
        import threading
        import time

        self.description, self.total, self.unit = description, total, unit
        env = os.environ.get("BUDGETLM_PROGRESS_EVERY")
        self.every_s = every_s if every_s is not None else float(env) if env else PROGRESS_EVERY_S
        self.completed, self.status = 0.0, ""
        self._said: tuple[float, str] | None = None  # (completed, status) of the last line written
        self.t0 = self.last_line = time.perf_counter()
        self.tty = sys.stderr.isatty() and not os.environ.get("BUDGETLM_PLAIN_PROGRESS")
        self._bar = None
        # heartbeat: a job with no steps to report (tokenizer training, an export) still writes a line
        # every `every_s` to a log, from a daemon thread, so the log shows it alive
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True) if heartbeat and not self.tty else None
        if self.tty:
            columns = [TextColumn("[bold]{task.description}"), BarColumn(),
                       TextColumn("{task.percentage:>3.0f}%") if total else TextColumn(""),
                       TimeElapsedColumn()]
            if eta:
                columns.append(TimeRemainingColumn())
            columns.append(TextColumn("{task.fields[status]}"))
            self._bar = RichProgress(*columns, console=Console(stderr=True), transient=False)
            self._task = self._bar.add_task(description, total=total, status="")

    def __enter__(self) -> "Progress":
        if self._bar is not None:
            self._bar.start()
        if self._beat is not None:
            self._beat.start()
        return self

    def __exit__(self, *exc) -> None:
        import time

        if self._beat is not None:
            self._stop.set()
            self._beat.join()
        if self._bar is not None:
            self._bar.stop()
        elif (exc[0] is None and time.perf_counter() - self.t0 >= self.every_s
              and self._said != (self.completed, self.status)):  # the last line already says where it ended
            self._line()

    def advance(self, _task: int = 0, amount: float = 1.0) -> None:
        """Add `amount` done (the first argument is ignored: the signature of rich's advance)."""
        self.update(completed=self.completed + amount)

    def update(self, completed: float | None = None, status: str | None = None) -> None:
        import time

        if completed is not None:
            self.completed = completed
        if status is not None:
            self.status = status
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, status=self.status)
        elif time.perf_counter() - self.last_line >= self.every_s:
            self._line()

    def _heartbeat(self) -> None:
        import time

        while not self._stop.wait(max(self.every_s, 0.05)):
            if time.perf_counter() - self.last_line >= self.every_s:
                self._line()

    def _line(self) -> None:
        with self._lock:
            self._write_line()

    def _write_line(self) -> None:
        import time

        from budgetlm.config import format_duration

        self.last_line = time.perf_counter()
        self._said = (self.completed, self.status)
        done = f"{100 * self.completed / self.total:3.0f}%" if self.total else self._amount(self.completed)
        head = f"{self.description}: {done}" if self.total or self.completed else self.description
        parts = [head, self.status, f"elapsed {format_duration(self.last_line - self.t0)}"]
        sys.stderr.write("  ".join(p for p in parts if p) + "\n")
        sys.stderr.flush()

    def _amount(self, x: float) -> str:
        return f"{x / 1e6:,.1f} MB" if self.unit == "bytes" else f"{x:,.0f} {self.unit}".strip()


def progress(description: str, total: float | None, unit: str = "", every_s: float | None = None,
             eta: bool = True, heartbeat: bool = False) -> Progress:
    """`with ui.progress("reading", total=n_bytes, unit="bytes") as bar: bar.advance(0, n)`; see Progress.
    Progress always goes to stderr, so it never disturbs --json on stdout."""
    return Progress(description, total, unit, every_s, eta, heartbeat)
