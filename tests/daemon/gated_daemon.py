"""A test build of enigmad: the built-in modules plus ``gated`` and ``gated_llm`` (``tests.daemon.fake_modules``),
whose loads last until the test opens their gate, so a test can look at a daemon whose modules are loading.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.daemon.raw_client import RawClient

MAIN = "tests.daemon.gated_daemon"  # for DaemonLauncher.start(main=…)


async def wait_module_state(c: RawClient, name: str, state: str) -> None:
    """Until module ``name`` is in ``state``: subscribed first, then checked, so no transition slips between."""
    await c.subscribe("module.state")
    listed = {m["name"]: m["state"] for m in (await c.call("module.list"))["modules"]}
    if listed[name] != state:
        await c.wait_event("module.state", lambda b: b["name"] == name and b["state"] == state)


async def open_gate(c: RawClient, name: str, fail: str | None = None) -> None:
    """Let ``name``'s load finish (or fail with ``fail``), once it has begun: its gate exists from then on."""
    await wait_module_state(c, name, "loading")
    await c.call(f"gate.{name}", {"fail": fail} if fail else {})


if __name__ == "__main__":
    from daemon import __main__ as enigmad
    from daemon.modules import REGISTRY
    from tests.daemon.fake_modules import REGISTRY as FAKES

    REGISTRY.update({name: FAKES[name] for name in ("gated", "gated_llm")})
    sys.exit(enigmad.main(sys.argv[1:]))
