"""What a module is: a small class that declares itself and wires its handlers in ``load()``.

The module manager (``daemon.manager``) owns the state machine and never imports a concrete module by name;
the registry in ``daemon.modules`` lists them. A module registers handlers and listeners through
``ModuleContext.register``/``listen`` so that unloading removes exactly what loading added.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from daemon.hub import Hub


class ModuleState(StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    ACTIVE = "active"
    UNLOADING = "unloading"
    FAILED = "failed"


@dataclass
class ModuleContext:
    """Everything a module may touch. ``services`` holds shared daemon objects (e.g. ``"store"``)."""

    hub: Hub
    config: dict[str, Any]  # this module's own config section ([modules.<name>] in the TOML file)
    data_dir: Path
    node_id: str
    log: logging.Logger
    services: dict[str, Any] = field(default_factory=dict)
    _undo: list[Callable[[], None]] = field(default_factory=list)

    def register(self, method: str, handler: Any, **kwargs: Any) -> None:
        """``Hub.register`` that is undone automatically when the module unloads."""
        self._undo.append(self.hub.register(method, handler, **kwargs))

    def listen(self, prefix: str, listener: Any) -> None:
        """``Hub.add_listener`` that is undone automatically when the module unloads."""
        self._undo.append(self.hub.add_listener(prefix, listener))

    def publish(self, topic: str, body: dict[str, Any]) -> None:
        self.hub.publish(topic, body)

    def undo_all(self) -> None:
        while self._undo:
            self._undo.pop()()


class Module:
    """Base class. Subclasses set the class attributes and implement ``load``/``unload``."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    depends: ClassVar[tuple[str, ...]] = ()
    conflicts: ClassVar[tuple[str, ...]] = ()
    # Modules that declare the same slot (e.g. "llm") conflict with each other: one backend per slot.
    slot: ClassVar[str | None] = None
    # Method names this module registers, shown in module.list before it is loaded.
    provides: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: ModuleContext) -> None:
        self.ctx = ctx

    def memory_estimate(self) -> int:
        """Bytes of memory the module expects to need once loaded (checked before loading)."""
        return 0

    async def load(self) -> None:
        """Acquire resources and register handlers via ``self.ctx.register``. Raise to fail the load."""

    async def unload(self) -> None:
        """Release resources. Handlers registered through the context are removed by the manager."""

    def info(self) -> dict[str, Any]:
        """Extra, module-specific facts for ``module.list`` (e.g. the model a backend has loaded)."""
        return {}

    def progress(self) -> str:
        """What ``load()`` is doing right now, in a few words (``"loading SmolLM2-135M-Instruct"``), or ``""``.

        Shown by ``sys.status`` and systemd's ``STATUS=`` while the module loads, so that a user facing a slow
        start sees what it waits for. Called on the loop: it must only read an attribute or two."""
        return ""
