"""Small real modules (they implement the Module contract) that exercise each rule of the module manager."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from bus.service import Call
from daemon.module import Module


async def _hi(call: Call) -> dict[str, Any]:
    return {"hi": True}


class Alpha(Module):
    name = "alpha"
    description = "the base others depend on"
    provides = ("alpha.hi",)
    loads: ClassVar[int] = 0
    unloads: ClassVar[list[str]] = []  # shared order log across modules

    async def load(self) -> None:
        type(self).loads += 1
        self.ctx.register("alpha.hi", _hi)

    async def unload(self) -> None:
        Alpha.unloads.append(self.name)


class Beta(Module):
    name = "beta"
    depends = ("alpha",)

    async def unload(self) -> None:
        Alpha.unloads.append(self.name)


class Gamma(Module):
    name = "gamma"
    conflicts = ("alpha",)


class Orphan(Module):
    name = "orphan"
    depends = ("ghost",)


class SlotOne(Module):
    name = "slot_one"
    slot = "llm"


class SlotTwo(Module):
    name = "slot_two"
    slot = "llm"


class Big(Module):
    name = "big"

    def memory_estimate(self) -> int:
        return 8 * 1024**3


class Broken(Module):
    name = "broken"
    provides = ("broken.half",)

    async def load(self) -> None:
        self.ctx.register("broken.half", _hi)
        raise RuntimeError("model file missing")


class Liar(Module):
    name = "liar"
    provides = ("liar.never",)


class Slow(Module):
    """Blocks in load() until the test releases it, to make two loads overlap."""

    name = "slow"
    gate: ClassVar[asyncio.Event | None] = None
    entered: ClassVar[asyncio.Event | None] = None
    loads: ClassVar[int] = 0

    async def load(self) -> None:
        type(self).loads += 1
        assert Slow.entered is not None
        assert Slow.gate is not None
        Slow.entered.set()
        await Slow.gate.wait()


class Stuck(Module):
    """Never finishes unloading: the daemon's shutdown time limit must cut it off."""

    name = "stuck"

    async def unload(self) -> None:
        await asyncio.Event().wait()


class CycleA(Module):
    name = "cycle_a"
    depends = ("cycle_b",)


class CycleB(Module):
    name = "cycle_b"
    depends = ("cycle_a",)


NAMES = (
    "Alpha",
    "Beta",
    "Gamma",
    "Orphan",
    "SlotOne",
    "SlotTwo",
    "Big",
    "Broken",
    "Liar",
    "Slow",
    "CycleA",
    "CycleB",
    "Stuck",
)
REGISTRY: dict[str, str] = {globals()[cls].name: f"tests.daemon.fake_modules:{cls}" for cls in NAMES} | {
    "missing_dep": "tests.daemon.no_such_file:Nothing"
}
