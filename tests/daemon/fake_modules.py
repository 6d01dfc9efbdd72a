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


class Gated(Module):
    """A load that takes as long as the test wants, with no sleep anywhere: ``load()`` registers ``gate.<name>``
    and waits until the test calls it (``{"fail": "why"}`` fails the load). ``gate.<name>`` is not declared in
    ``provides``, so a call to it never waits for the module itself; ``gated.hi`` is registered before the
    wait, as the LLM module registers its handlers before its model is up: calls to it must still wait."""

    name = "gated"
    provides: ClassVar[tuple[str, ...]] = ("gated.hi",)

    async def load(self) -> None:
        opened: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

        async def open_gate(call: Call) -> dict[str, Any]:
            if not opened.done():
                opened.set_result(call.body.get("fail"))
            return {"opened": True}

        self.ctx.register(f"gate.{self.name}", open_gate, access="admin")
        self.register_early()
        fail = await opened
        if fail:
            raise RuntimeError(fail)

    def register_early(self) -> None:
        self.ctx.register("gated.hi", _hi)

    def progress(self) -> str:
        return "waiting for the gate"


class GatedLLM(Gated):
    """A language-model module (slot ``llm``, the methods chat calls) behind the same gate: what ``chat.send``
    meets while the real model loads, with a reply the test can predict."""

    name = "gated_llm"
    slot = "llm"
    provides = ("llm.chat", "llm.stats")
    REPLY: ClassVar[tuple[str, ...]] = ("Hello", " from", " the gate")

    def register_early(self) -> None:
        self.ctx.register("llm.chat", self.chat, stream=True)
        self.ctx.register("llm.stats", self.stats, access="device")

    async def stats(self, call: Call) -> dict[str, Any]:
        return {"state": "ready", "backend": "gated", "model": "gated", "queue": 0, "active": 0}

    async def chat(self, call: Call) -> dict[str, Any]:
        for text in self.REPLY:
            await call.emit({"text": text})
        usage = {"model": "gated", "prompt_tokens": 1, "completion_tokens": len(self.REPLY), "finish_reason": "stop"}
        return {"usage": {**usage, "ttft_ms": 0.0, "total_ms": 0.0, "decode_tokens_per_s": None}}


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
    "Gated",
    "GatedLLM",
)
REGISTRY: dict[str, str] = {globals()[cls].name: f"tests.daemon.fake_modules:{cls}" for cls in NAMES} | {
    "missing_dep": "tests.daemon.no_such_file:Nothing"
}
