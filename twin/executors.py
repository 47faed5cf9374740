"""Where per-item work runs.

Per-item work is a plain top-level function ``fn(item, params) -> dict`` (picklable, no
globals), so the same code runs inline, in a local process pool, or as Ray tasks. An
executor yields ``(index, ok, result_or_error)`` as items finish, in any order; the
caller (``StageContext.map``) journals results and restores the input order.
"""
from __future__ import annotations

import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Any, Callable, Iterator, Protocol, Sequence

ItemFn = Callable[[Any, dict], dict]
Outcome = tuple[int, bool, Any]


def call_item(fn: ItemFn, item: Any, params: dict) -> tuple[bool, Any]:
    """Run one item; failures come back as a one-line reason plus the traceback's tail."""
    try:
        return True, fn(item, params)
    except Exception as exc:  # noqa: BLE001 - an item's failure is data, not a crash
        tail = traceback.format_exc(limit=3).strip().splitlines()[-1]
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else tail
        return False, reason


class Executor(Protocol):
    name: str
    workers: int

    def map(self, fn: ItemFn, items: Sequence[Any], params: dict) -> Iterator[Outcome]: ...

    def close(self) -> None: ...


class InlineExecutor:
    """Runs items one after another in this process (``--workers 1``)."""

    name = "inline"
    workers = 1

    def map(self, fn, items, params):
        for i, item in enumerate(items):
            ok, value = call_item(fn, item, params)
            yield i, ok, value

    def close(self):
        return None


class LocalExecutor:
    """A pool of ``workers`` processes (spawned, so torch threads in the parent are safe)."""

    name = "local"

    def __init__(self, workers: int = 2):
        self.workers = max(1, int(workers))
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=get_context("spawn"))
        return self._pool

    def map(self, fn, items, params):
        if not items:
            return
        pool = self._get_pool()
        pending = {pool.submit(call_item, fn, item, params): i for i, item in enumerate(items)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                i = pending.pop(fut)
                ok, value = fut.result()
                yield i, ok, value

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


EXECUTORS: dict[str, Callable[..., Executor]] = {}


def register_executor(name: str, factory: Callable[..., Executor]) -> None:
    EXECUTORS[name] = factory


register_executor("local", lambda workers=1, **_: InlineExecutor() if workers <= 1 else LocalExecutor(workers))


def make_executor(name: str = "local", workers: int = 1, **options) -> Executor:
    from .errors import UsageError
    if name not in EXECUTORS:
        raise UsageError(f"unknown executor {name!r}; choose one of: {', '.join(sorted(EXECUTORS))}")
    return EXECUTORS[name](workers=workers, **options)
