"""Rich progress bars shared by the batch commands (training-set, materialize)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

__all__ = ["count_bar", "fraction_bar"]


@contextmanager
def fraction_bar(console: Console, label: str) -> Iterator[Callable[[float], None]]:
    """A bar fed with a completion fraction in [0, 1]."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task(label, total=1.0)
        yield lambda done: progress.update(task, completed=done)
        progress.update(task, completed=1.0)


@contextmanager
def count_bar(console: Console, label: str) -> Iterator[Callable[[str, int], None]]:
    """A spinner-like bar fed with (what, how many so far): total unknown up front."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,.0f} keys"),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task(label, total=None)
        done: dict[str, int] = {}

        def advance(what: str, count: int) -> None:
            done[what] = count
            progress.update(task, completed=sum(done.values()), description=f"{label}: {what}")

        yield advance
