"""One progress protocol for the whole toolkit.

A progress hook is any callable ``hook(step, completed=None, total=None)``; pyannote uses
the same shape. Library code only calls hooks; the CLI chooses the implementation:
``NullProgress`` (quiet, tests), ``LogProgress`` (CI logs) or ``RichProgress`` (bars).
"""
from __future__ import annotations

import logging
import time
from typing import Optional, Protocol

log = logging.getLogger("twin.progress")


class ProgressHook(Protocol):
    def __call__(self, step: str, completed: Optional[float] = None, total: Optional[float] = None) -> None: ...


class NullProgress:
    def __call__(self, step, completed=None, total=None):
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class LogProgress(NullProgress):
    """Logs a line per step and at most one line every ``every`` seconds per step."""

    def __init__(self, every: float = 10.0):
        self.every = every
        self._last: dict[str, float] = {}

    def __call__(self, step, completed=None, total=None):
        now = time.monotonic()
        done = total is not None and completed is not None and completed >= total
        if step not in self._last or done or now - self._last[step] >= self.every:
            self._last[step] = now
            if total:
                log.info("%s: %d/%d", step, completed or 0, total)
            else:
                log.info("%s", step)


class RichProgress(NullProgress):
    """Progress bars on a terminal (stderr), one task per step."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TimeRemainingColumn(),
                                  console=Console(stderr=True), transient=False)
        self._tasks: dict[str, int] = {}

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)

    def __call__(self, step, completed=None, total=None):
        task = self._tasks.get(step)
        if task is None:
            task = self._tasks[step] = self._progress.add_task(step, total=total)
        self._progress.update(task, completed=completed or 0, total=total)

