"""``module.*``: list the modules and switch them on and off (the state machine lives in ``daemon.manager``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bus.service import Call
from daemon.handlers import Core
from daemon.hub import Hub

NAME_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 64}},
    "required": ["name"],
}


def register(hub: Hub, core: Core) -> list[Callable[[], None]]:
    manager = core.manager

    async def list_modules(call: Call) -> dict[str, Any]:
        """``{"modules": [{"name", "description", "state", "depends", "conflicts", "slot", "provides",
        "memory_estimate", "error", "info"?}]}`` — every module this daemon knows, loaded or not."""
        return {"modules": manager.list()}

    async def load(call: Call) -> dict[str, Any]:
        """Load ``{"name"}`` and its dependencies; replies ``{"name", "state", "loaded": [names]}``. The user's
        wish is kept: the module is loaded again at the next start. Errors: ``not_found`` (no such module or
        dependency), ``conflict`` (a loaded module or slot is in the way), ``unavailable`` (not enough memory,
        or the module's own load failed — it is then ``failed`` with the message)."""
        name = call.body["name"]
        loaded = await manager.load(name)
        return {"name": name, "state": str(manager.state(name)), "loaded": loaded}

    async def unload(call: Call) -> dict[str, Any]:
        """Unload ``{"name"}``; replies ``{"name", "state"}``. It stays off after a restart. ``conflict`` while
        loaded modules depend on it (the message names them); ``not_found`` for an unknown name."""
        name = call.body["name"]
        await manager.unload(name)
        return {"name": name, "state": str(manager.state(name))}

    return [
        hub.register("module.list", list_modules, access="user", schema={"type": "object"}),
        hub.register("module.load", load, access="admin", schema=NAME_SCHEMA),
        hub.register("module.unload", unload, access="admin", schema=NAME_SCHEMA),
    ]
