"""Typed services: what the core offers its modules (and modules each other) without anyone importing anyone.

A module never imports another module's package, ``daemon.app`` or the running daemon. What it needs from
outside itself it gets in one of two ways:

- through the hub, by method name (``llm.chat``, ``robot.list``): the loose coupling the bus gives clients too;
- as a typed service from ``ctx.services.get(Kind)``, where ``Kind`` is a Protocol (or a core class such as
  ``daemon.store.Store``) defined here in the core. The daemon offers ``Store``, ``Node`` and ``NodeKeys`` at
  start; a module may offer its own with ``ctx.provide(Kind, impl)`` (withdrawn when it unloads) and declares
  what it cannot load without in ``requires``, which the manager checks before loading it.

``LiveRestore`` is the one operation the ``backup.*`` handlers may perform on the running daemon.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from bus.errors import Unavailable

if TYPE_CHECKING:
    import asyncio

    from typing_extensions import TypeForm

    from bus.auth import AllowList, KeyPair
    from daemon.backup import Restorable

T = TypeVar("T")


class Node(Protocol):
    """Who this daemon is and where it answers."""

    @property
    def node_id(self) -> str: ...

    @property
    def boot_id(self) -> str: ...

    @property
    def version(self) -> str: ...

    def endpoints(self) -> dict[str, str]:
        """``{"rpc", "events"}`` as bound, or ``{}`` while the server is not up yet (``sys.started`` follows)."""
        ...


class NodeKeys(Protocol):
    """The daemon's CURVE identity, shared with ``enigmad keys`` and the ZeroMQ server."""

    def curve(self) -> tuple[KeyPair, AllowList]:
        """The server key pair (created on first use) and the allow-list the server admits clients by."""
        ...


@dataclass(frozen=True, slots=True)
class Restored:
    """What a live restore did, as ``backup.restore`` replies it."""

    modules: list[str]  # active once the restore finished
    state_files: list[str]  # the state files (server key, allow-list …) the archive replaced
    before_restore: Path | None  # where the replaced database was kept
    restart_needed: bool  # a restored server key or node id takes effect at the next start


class LiveRestore(Protocol):
    """The running daemon as the ``backup.*`` handlers see it: what to copy, and one operation to replace it."""

    def store_path(self) -> Path:
        """The open database (``unavailable`` while the daemon is starting or stopping)."""
        ...

    def state_paths(self) -> dict[str, Path]:
        """The state files a backup carries besides the database."""
        ...

    @property
    def backup_max_bytes(self) -> int: ...

    async def restore(self, restorable: Restorable, *, keep: asyncio.Task[Any] | None) -> Restored:
        """Swap the daemon's state for ``restorable`` while it runs: end requests in flight (except ``keep``),
        unload the modules, replace the database and state files, reopen, load the modules the restored
        wishes ask for. On a failure the previous database is put back and the error re-raised."""
        ...


class Services:
    """The registry of typed services, one per kind; lookups are by the kind itself, so they type-check.

    A kind is taken as a ``TypeForm`` (PEP 747), not a ``type[T]``: most kinds are Protocols, and a type checker
    accepts a Protocol class for ``type[T]`` only where it may be instantiated, which a lookup key never is.
    """

    def __init__(self) -> None:
        self._by_kind: dict[TypeForm[Any], Any] = {}

    def provide(self, kind: TypeForm[T], impl: T) -> Callable[[], None]:
        """Offer ``impl`` as ``kind``; returns the function that withdraws it. One provider per kind."""
        if kind in self._by_kind:
            raise ValueError(f"a {kind.__name__} service is already offered")
        self._by_kind[kind] = impl

        def withdraw() -> None:
            if self._by_kind.get(kind) is impl:
                del self._by_kind[kind]

        return withdraw

    def find(self, kind: TypeForm[T]) -> T | None:
        return cast("T | None", self._by_kind.get(kind))

    def get(self, kind: TypeForm[T]) -> T:
        """The ``kind`` service; ``unavailable`` naming it when nothing offers it."""
        impl = self.find(kind)
        if impl is None:
            raise Unavailable(f"no {kind.__name__} service is available")
        return impl

    def missing(self, kinds: tuple[type, ...]) -> list[str]:
        """The names of the kinds in ``kinds`` that nothing offers."""
        return [k.__name__ for k in kinds if k not in self._by_kind]
