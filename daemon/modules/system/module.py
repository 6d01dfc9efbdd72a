"""``system``: facts about the machine the daemon runs on, on request and as a periodic event.

``system.info`` answers what an operator asks first when something is slow or full (host, CPUs, load, memory,
disk left for the data dir); while active the module publishes the changing part as ``system.stats`` every
``interval`` seconds (``[modules.system] interval = 10``), so dashboards and overlays need not poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import socket
import time
from typing import Any, Final

from bus.service import Call
from daemon.module import Module, method

STATS: Final = "system.stats"  # {"ts", "load", "memory": {"total", "available"}, "disk": {"total", "free"}}
CONFIG_SCHEMA: Final = {
    "type": "object",
    "properties": {"interval": {"type": "number", "exclusiveMinimum": 0, "default": 10.0}},
    "additionalProperties": False,
}


def meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """MemTotal and MemAvailable in bytes (zeros where /proc is not there)."""
    out = {"total": 0, "available": 0}
    keys = {"MemTotal:": "total", "MemAvailable:": "available"}
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                key = keys.get(line.split(":", 1)[0] + ":")
                if key:
                    out[key] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


class SystemModule(Module):
    name = "system"
    description = "Host facts (CPU, load, memory, disk) on request and as periodic system.stats events."
    config_schema = CONFIG_SCHEMA

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self._task: asyncio.Task[None] | None = None
        self.interval = 0.0  # seconds between system.stats events, from the checked config at load()

    async def load(self) -> None:
        self.interval = float(self.ctx.config["interval"])
        self.ctx.serve(self)
        self._task = asyncio.create_task(self._publish_stats(), name="system.stats")

    async def unload(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def stats(self) -> dict[str, Any]:
        """The part that changes: load average, memory, disk free of the data dir."""
        disk = shutil.disk_usage(self.ctx.data_dir)
        return {
            "ts": time.time(),
            "load": list(os.getloadavg()),
            "memory": meminfo(),
            "disk": {"path": str(self.ctx.data_dir), "total": disk.total, "free": disk.free},
        }

    @method("system.info", access="device", schema={"type": "object"})
    async def info_handler(self, call: Call) -> dict[str, Any]:
        """Host name, OS, Python, CPU count, plus the current ``stats()``."""
        return {
            "host": socket.gethostname(),
            "node_id": self.ctx.node_id,
            "platform": platform.platform(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count() or 1,
            "interval": self.interval,
            **self.stats(),
        }

    async def _publish_stats(self) -> None:
        while True:
            try:
                self.ctx.publish(STATS, self.stats())
            except OSError as exc:
                self.ctx.log.warning("cannot read system stats: %s", exc)
            await asyncio.sleep(self.interval)

    def info(self) -> dict[str, Any]:
        return {"interval": self.interval}
