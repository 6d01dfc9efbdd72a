"""Starting the long-running processes of the tests (enigmad, mosquitto) so that they never outlive pytest.

Fixtures stop what they start, but a pytest that is killed (SIGKILL, the OOM killer, a CI runner's timeout) runs
no teardown: an orphaned test daemon once ran for an hour. On Linux each child asks the kernel for SIGKILL when
its parent dies (``PR_SET_PDEATHSIG``). The kernel means the parent *thread*, so every start goes through one
thread that lives as long as pytest: a daemon started from ``asyncio.to_thread`` would otherwise be killed when
the event loop's worker thread ends with its test, while a module-scoped fixture still holds it.

``STARTS`` counts what was started (by kind); the root conftest prints it at the end of the session, so that a
change that starts more daemons than before shows in the CI log.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

STARTS: collections.Counter[str] = collections.Counter()

_PR_SET_PDEATHSIG = 1
# One thread for every start: a child's death signal follows the thread that forked it (see above).
_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-spawner")


def _death_signal() -> Callable[[], None] | None:
    """The ``preexec_fn`` that ties a child to this process, or None where prctl does not exist."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl  # looked up here: the child, between fork and exec, only calls it
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect: nobody would send the signal
            os.kill(os.getpid(), signal.SIGKILL)

    return die_with_parent


_preexec = _death_signal()


def popen(kind: str, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(args, **kwargs)`` for a process of ``kind`` ("enigmad", "mosquitto"), killed by the
    kernel if pytest dies, and counted in ``STARTS``."""
    STARTS[kind] += 1
    return _spawner.submit(subprocess.Popen, list(args), preexec_fn=_preexec, **kwargs).result()
