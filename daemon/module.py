"""What a module is: one package under ``daemon/modules/<name>/`` whose ``module.py`` holds a small class that
declares itself — its settings as a JSON schema, its bus methods next to their handlers, the core services it
needs — and wires them in ``load()``.

The module manager (``daemon.manager``) owns the state machine and never imports a concrete module by name;
the registry in ``daemon.modules`` lists them. Before building a module the manager checks its
``[modules.<name>]`` table against ``config_schema`` (``daemon.settings``) and hands it over with the defaults
filled in. A handler is declared where it is written, with ``@method("area.verb", access=…, schema=…)``, on
the module class or on a service class the module lists in ``handlers``; ``provides`` (what ``module.list``
shows before the module is loaded) is derived from those declarations, and ``load()`` puts them on the hub with
``ctx.serve(obj)``. Everything a module adds through its context (methods, listeners, services) is removed
when it unloads. Modules never import each other: they call each other's methods through the hub, or use a
typed service (``daemon.services``) from ``ctx.services``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from daemon.services import Services
from daemon.settings import FREE_FORM, validate

if TYPE_CHECKING:
    from typing_extensions import TypeForm

    from daemon.hub import Hub

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
_MARK = "__enigma_method__"


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """How one handler is offered on the bus (the keywords of ``Hub.register``)."""

    name: str
    access: str = "user"
    stream: bool = False
    schema: dict[str, Any] | None = None
    summary: str = ""


def method(
    name: str, *, access: str = "user", stream: bool = False, schema: dict[str, Any] | None = None, summary: str = ""
) -> Callable[[F], F]:
    """Declare the decorated handler as the bus method ``name``: the access role it needs, whether it streams,
    the JSON schema its body must match. ``ModuleContext.serve`` registers it; the docstring is its summary."""

    def mark(fn: F) -> F:
        setattr(fn, _MARK, MethodSpec(name, access, stream, schema, summary))
        return fn

    return mark


def declared_methods(cls: type) -> list[tuple[str, MethodSpec]]:
    """``(attribute, spec)`` for every ``@method`` handler on ``cls`` and its bases, in declaration order."""
    seen: dict[str, tuple[str, MethodSpec]] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            spec = getattr(value, _MARK, None)
            if isinstance(spec, MethodSpec):
                seen[attr] = (attr, spec)
    return list(seen.values())


class ModuleState(StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    ACTIVE = "active"
    UNLOADING = "unloading"
    FAILED = "failed"


@dataclass
class ModuleContext:
    """Everything a module may touch: the hub, its own settings, its data dir, and the typed services of the
    core and of other modules (``services.get(Store)``)."""

    hub: Hub
    config: dict[str, Any]  # this module's own [modules.<name>] table; checked and completed by the manager
    data_dir: Path
    node_id: str
    log: logging.Logger
    services: Services = field(default_factory=Services)
    # Where a dotted key of the config was set ("in /etc/enigma/enigmad.toml", "from $ENIGMA_…"), for errors.
    origin: Callable[[str], str] = field(default=lambda _key: "")
    _undo: list[Callable[[], None]] = field(default_factory=list)

    def register(self, method: str, handler: Any, **kwargs: Any) -> None:
        """``Hub.register`` that is undone automatically when the module unloads."""
        self._undo.append(self.hub.register(method, handler, **kwargs))

    def serve(self, obj: object) -> list[str]:
        """Register every ``@method`` handler of ``obj`` (a module or one of its service objects) on the hub;
        undone when the module unloads. Returns the method names."""
        names = []
        for attr, spec in declared_methods(type(obj)):
            kwargs = {"access": spec.access, "stream": spec.stream, "schema": spec.schema, "summary": spec.summary}
            self.register(spec.name, getattr(obj, attr), **kwargs)
            names.append(spec.name)
        return names

    def provide(self, kind: TypeForm[T], impl: T) -> None:
        """Offer ``impl`` to other modules as the service ``kind`` (a Protocol of ``daemon.services``) until
        this module unloads."""
        self._undo.append(self.services.provide(kind, impl))

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
    # Method names this module registers, shown in module.list before it is loaded: derived from the ``@method``
    # handlers of the class and of the service classes in ``handlers``.
    provides: ClassVar[tuple[str, ...]] = ()
    handlers: ClassVar[tuple[type, ...]] = ()
    # The JSON schema of [modules.<name>], with defaults; checked by the manager before the module is built.
    config_schema: ClassVar[dict[str, Any]] = FREE_FORM
    # Service types (daemon.services) that must be offered before this module can load.
    requires: ClassVar[tuple[type, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "provides" in vars(cls):
            return  # stated by hand (a module that registers through ``ctx.register`` only)
        names: list[str] = []
        for klass in (*cls.handlers, cls):
            names += [spec.name for _attr, spec in declared_methods(klass) if spec.name not in names]
        cls.provides = tuple(names)

    def __init__(self, ctx: ModuleContext) -> None:
        self.ctx = ctx

    @classmethod
    def check_config(cls, config: dict[str, Any], origin: Callable[[str], str] = lambda _key: "") -> dict[str, Any]:
        """``config`` checked against ``config_schema``, defaults filled in (``SettingsError`` naming the key and
        its ``origin`` otherwise): what the manager hands the module as ``ctx.config``."""
        return validate(f"modules.{cls.name}", cls.config_schema, config, origin)

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
