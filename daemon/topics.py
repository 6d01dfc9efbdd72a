"""The event topics the daemon core publishes, with the shape of their bodies, in one place.

Modules keep their own topic constants beside their code (``system.stats`` in ``daemon.modules.system.module``);
a topic one module publishes and another reads lives here, since modules never import each other.
"""

from __future__ import annotations

from typing import Final, NotRequired, TypedDict

# A module changed state: {"name": "echo", "state": "active"} — "error" is present when state is "failed".
MODULE_STATE: Final = "module.state"


class ModuleStateBody(TypedDict):
    name: str
    state: str
    error: NotRequired[str]


# The daemon is up / going down: {"node_id", "boot_id", "version"} and {"node_id", "boot_id", "reason"}.
SYS_STARTED: Final = "sys.started"
SYS_STOPPING: Final = "sys.stopping"
# The modules a start restores in the background are done (active or failed): {"active": [names],
# "failed": {name: error}, "seconds": float}. From here on sys.status says phase "ready".
SYS_LOADED: Final = "sys.loaded"
# A backup was restored live (backup.restore): {"node_id", "backup": {node_id, created, schema, …}, "modules"}.
SYS_RESTORED: Final = "sys.restored"
# The config was reloaded (SIGHUP): {"changed": [dotted keys]}, or {"changed": [], "error"} when it was refused.
SYS_RELOADED: Final = "sys.reloaded"

# Prefixes only the daemon itself may publish on; ``bus.publish`` refuses them with ``forbidden``.
RESERVED_PREFIXES: Final[tuple[str, ...]] = ("sys.", "module.")

# The language model's state, published by whichever llm backend module is active, read by chat for the model's
# name: {"state", "model", "active", "queue", …} (docs/protocol.md, llm.stats).
LLM_STATE: Final = "llm.state"
