"""Terminal helpers shared by the command groups: clear errors and progress bars."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


@contextmanager
def clear_errors(*errors: type[Exception]) -> Iterator[None]:
    """Turn ``errors`` into one red, unwrapped line and exit code 2 (no traceback)."""
    try:
        yield
    except errors as exc:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[float, float], None]]:
    """A progress bar on stderr (only on a terminal); yields ``update(done, total)``."""
    with Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not sys.stderr.isatty(),
    ) as bar:
        task = bar.add_task(label, total=1.0)

        def update(done: float, total: float) -> None:
            bar.update(task, completed=done, total=total)

        yield update
