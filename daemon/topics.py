"""The event topics the daemon core publishes, with the shape of their bodies, in one place.

The names themselves are protocol, shared with clients that cannot import the daemon: they come from
``bus.topics``. Modules keep their own topic constants beside their code (``system.stats`` in
``daemon.modules.system.module``); a topic one module publishes and another reads is named here, since modules
never import each other.
"""

from __future__ import annotations

from typing import Final, NotRequired, TypedDict

from bus.topics import (
    LLM_STATE,
    MODULE,
    MODULE_STATE,
    SYS,
    SYS_LOADED,
    SYS_RELOADED,
    SYS_RESTORED,
    SYS_STARTED,
    SYS_STOPPING,
)

__all__ = [
    "LLM_STATE",  # published by the llm module, read by chat
    "MODULE_STATE",
    "RESERVED_PREFIXES",
    "SYS_LOADED",
    "SYS_RELOADED",
    "SYS_RESTORED",
    "SYS_STARTED",
    "SYS_STOPPING",
    "ModuleStateBody",
]


class ModuleStateBody(TypedDict):
    """MODULE_STATE, a module changed state: {"name": "echo", "state": "active"}; "error" when it is "failed"."""

    name: str
    state: str
    error: NotRequired[str]


# The bodies of the daemon's own events:
# SYS_STARTED / SYS_STOPPING, the daemon is up / going down: {"node_id", "boot_id", "version"} and
#   {"node_id", "boot_id", "reason"}.
# SYS_LOADED, the modules a start restores in the background are done (active or failed): {"active": [names],
#   "failed": {name: error}, "seconds": float}. From here on sys.status says phase "ready".
# SYS_RESTORED, a backup was restored live (backup.restore): {"node_id", "backup": {node_id, created, schema, …},
#   "modules"}.
# SYS_RELOADED, the config was reloaded (SIGHUP): {"changed": [dotted keys]}, or {"changed": [], "error"} when it
#   was refused.

# Prefixes only the daemon itself may publish on; ``bus.publish`` refuses them with ``forbidden``.
RESERVED_PREFIXES: Final[tuple[str, ...]] = (SYS, MODULE)
