"""A test build of enigmad with one extra module whose method blocks the event loop on purpose.

Used to prove that the watchdog is fed from the loop itself: while the loop is blocked, no WATCHDOG=1 goes
out, so systemd would restart a daemon that hangs.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from bus.service import Call
from daemon.module import Module


class Blocker(Module):
    name = "blocker"
    description = "blocks the event loop (test build only)"
    provides = ("test.block",)

    async def load(self) -> None:
        self.ctx.register("test.block", self.block, access="admin")

    async def block(self, call: Call) -> dict[str, Any]:
        seconds = float(call.body.get("seconds", 1.0))
        time.sleep(seconds)  # noqa: ASYNC251 - deliberately on the loop: this is the fault under test
        return {"blocked": seconds}


if __name__ == "__main__":
    from daemon import __main__ as enigmad
    from daemon.modules import REGISTRY

    REGISTRY["blocker"] = f"{__name__.replace('__main__', 'tests.systemd.blocking_daemon')}:Blocker"
    sys.exit(enigmad.main(sys.argv[1:]))
