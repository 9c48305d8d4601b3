"""The CLI's progress bar (rich): ``LABEL ━━━━━━ 12/200 0:00:41 [detail]`` on stderr, gone when done."""

from __future__ import annotations

from typing import Any


def progress_bar(label: str, *, detail: bool = False, console: Any = None) -> Any:
    """A ``rich.progress.Progress`` (use it as a context manager): ``label``, the bar, done/total,
    elapsed time and, with ``detail``, the task's description (``prog.update(task, description=...)``).
    ``console``: where it draws (default: stderr, so stdout stays for results and JSON)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    cols: list[Any] = [TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if detail:
        cols.append(TextColumn("{task.description}"))
    return Progress(*cols, console=console if console is not None else Console(stderr=True), transient=True)
