"""What orderctl prints: tables through rich, JSON for scripts, and progress while a command waits for orders.

Colour only on a terminal and never with NO_COLOR set. Identifier columns (order ids, product ids, queue names)
are never shortened: on a terminal the other columns wrap to make room; piped, a table is as wide as its rows.
"""

import json
import os
import sys
from dataclasses import dataclass
from io import StringIO
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


@dataclass(frozen=True)
class Col:
    header: str
    #: An identifier: never wrapped nor shortened.
    key: bool = False
    right: bool = False


def _no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))


def console(file: TextIO | None = None) -> Console:
    file = file or sys.stdout
    return Console(file=file, highlight=False, no_color=_no_color() or not file.isatty(), soft_wrap=False)


def text(value: Any) -> str:
    return "" if value is None else str(value)


def render(columns: list[Col], rows: list[list[Any]]) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for i, col in enumerate(columns):
        widest = max([len(col.header), *(len(text(row[i])) for row in rows)])
        table.add_column(
            col.header,
            justify="right" if col.right else "left",
            no_wrap=col.key,
            min_width=widest if col.key else None,
            overflow="fold",
        )
    for row in rows:
        table.add_row(*(text(v) for v in row))
    return table


def table(columns: list[Col], rows: list[list[Any]], *, file: TextIO | None = None) -> None:
    """Print ``rows`` under ``columns``: rich on a terminal, plain aligned lines without trailing blanks otherwise."""
    file = file or sys.stdout
    if file.isatty():
        console(file).print(render(columns, rows))
        return
    buffer = StringIO()
    Console(file=buffer, width=1_000_000, no_color=True, highlight=False).print(render(columns, rows))
    file.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))


def as_json(value: Any) -> None:
    """Print ``value`` as JSON; Decimal amounts as strings (exact), times in ISO 8601."""
    print(json.dumps(value, indent=2, default=_default))


def _default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


class OrderProgress:
    """Orders with an outcome out of the total, while a command waits (on stderr: stdout keeps the results).

    A rich progress bar on a terminal; otherwise one plain line per order as its outcome arrives."""

    def __init__(self, total: int, *, what: str = "orders done", file: TextIO | None = None) -> None:
        self.total, self.count = total, 0
        self.file = file or sys.stderr
        self._bar: Progress | None = None
        if self.file.isatty():
            self._bar = Progress(
                TextColumn(what),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
                console=console(self.file),
                transient=False,
            )
            self._task = self._bar.add_task("", total=total)

    def __enter__(self) -> "OrderProgress":
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def done(self, order_id: str, status: str) -> None:
        self.count += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=f"{order_id}: {status}")
        else:
            print(f"[{self.count}/{self.total}] {order_id}: {status}", file=self.file, flush=True)
