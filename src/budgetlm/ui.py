"""Terminal output shared by every command: a rich console and progress bars.

With `--json` the one JSON object owns stdout, so human-readable output and progress go to stderr.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

_state = {"json": False, "console": None}


def set_json_mode(on: bool) -> None:
    _state["json"] = on
    _state["console"] = None


def json_mode() -> bool:
    return bool(_state["json"])


def console() -> Console:
    """The console for human output: stdout normally, stderr under --json."""
    if _state["console"] is None:
        _state["console"] = Console(stderr=_state["json"], highlight=False, soft_wrap=True)
    return _state["console"]  # type: ignore[return-value]


def info(message: str) -> None:
    console().print(message)


def warn(message: str) -> None:
    """Warnings always go to stderr, one line each."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[yellow]warning:[/] {message}")


def table(title: str, columns: list[str], rows: list[list[object]]) -> None:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="right" if c != columns[0] else "left")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    console().print(t)


@contextmanager
def progress(description: str, total: float | None, unit: str = "") -> Iterator[Progress]:
    """A progress bar on stderr (never disturbs --json stdout); silent when stderr is no terminal
    unless BUDGETLM_PROGRESS=1."""
    import os

    enabled = sys.stderr.isatty() or os.environ.get("BUDGETLM_PROGRESS") == "1"
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn() if unit == "" else TextColumn("{task.completed:,.0f}/{task.total:,.0f} " + unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    ]
    with Progress(*columns, console=Console(stderr=True), disable=not enabled, transient=False) as p:
        p.add_task(description, total=total, status="")
        yield p
