"""The event topics of protocol v1 (docs/protocol.md §8) that the bus and its clients name, defined once.

Transports and clients depend on ``bus`` alone, so the topics they subscribe to, filter on or answer live here
rather than in the daemon; the daemon publishes under the same constants (``daemon.topics`` takes its own from
this module). A topic is dotted ``area.what``; a prefix ends with the dot, as ZeroMQ's SUB filter expects.
"""

from __future__ import annotations

from typing import Final

# The daemon itself. sys.heartbeat: {"node_id", "boot_id", "ts"} every heartbeat interval, on the event socket
# and (to clients with work in flight) on the request socket.
SYS: Final = "sys."
SYS_HEARTBEAT: Final = "sys.heartbeat"
SYS_STARTED: Final = "sys.started"
SYS_STOPPING: Final = "sys.stopping"
SYS_LOADED: Final = "sys.loaded"
SYS_RESTORED: Final = "sys.restored"
SYS_RELOADED: Final = "sys.reloaded"

# The module manager: {"name", "state", "error"?} on every transition.
MODULE: Final = "module."
MODULE_STATE: Final = "module.state"

# Published by modules (their bodies are documented beside the module that publishes them).
CHAT_MESSAGE: Final = "chat.message"
LLM_STATE: Final = "llm.state"
ROBOT: Final = "robot."
ROBOT_STATE: Final = "robot.state"
ROBOT_TELEMETRY: Final = "robot.telemetry"
VOICE: Final = "voice."
