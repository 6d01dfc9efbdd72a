"""Waiting on a view model: re-check on every change it notifies, with a time limit (no polling, no sleeps).

Shared by the in-process view-model tests and the ``drive_app`` subprocess that drives the real window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


async def wait_until(vm: Any, check: Callable[[], bool], within: float = 20.0, what: str = "condition") -> None:
    """Wait for ``check()`` to hold, re-checking on every change ``vm`` notifies (no polling, no sleeps)."""
    changed = asyncio.Event()
    unbind = vm.bind(lambda _what, _detail: changed.set())
    try:
        async with asyncio.timeout(within):
            while not check():
                changed.clear()
                await changed.wait()
    except TimeoutError:
        raise AssertionError(f"timed out after {within}s waiting for {what}") from None
    finally:
        unbind()
