"""The small machinery every view model shares: change notification and owned background tasks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("enigma.app")

Listener = Callable[[str, Any], None]


class Observable:
    """Listeners hear ``(what, detail)`` after each change, e.g. ``("line", 7)`` when message 7 grew.

    A listener that raises is logged and skipped: one broken widget must not stop the others from updating.
    """

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.error = ""

    def bind(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` on every change; returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def notify(self, what: str, detail: Any = None) -> None:
        for listener in list(self._listeners):
            try:
                listener(what, detail)
            except Exception:
                log.exception("listener %r failed on %s", listener, what)

    def set_error(self, message: str) -> None:
        self.error = message
        self.notify("error", message)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "") -> asyncio.Task[Any]:
        """Run ``coro`` in the background, owned by this view model (``aclose`` cancels it)."""
        task = asyncio.get_running_loop().create_task(coro, name=name or None)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("background task %s failed: %r", task.get_name(), exc, exc_info=exc)
            self.set_error(f"{type(exc).__name__}: {exc}")

    async def aclose(self) -> None:
        """Cancel the background tasks and wait for them to end."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
