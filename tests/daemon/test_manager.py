"""The module manager: states and their events, dependencies, conflicts, slots, memory, failures, wishes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bus.errors import Conflict, NotFound, Unavailable
from daemon.hub import Hub
from daemon.manager import ModuleManager
from daemon.module import ModuleContext, ModuleState
from daemon.store import Store
from tests.daemon import fake_modules
from tests.daemon.fake_modules import REGISTRY, Alpha, Slow

GiB = 1024**3


class Rig:
    def __init__(self, hub: Hub, store: Store, tmp: Path, mem: int | None = 16 * GiB) -> None:
        self.hub, self.store = hub, store
        self.events: list[dict[str, Any]] = []
        hub.add_listener("module.state", lambda _t, body: self.events.append(body))
        self.manager = ModuleManager(hub, store, REGISTRY, self.ctx, mem_available=lambda: mem)
        self.tmp = tmp

    def ctx(self, name: str) -> ModuleContext:
        return ModuleContext(self.hub, {}, self.tmp, "node", logging.getLogger(f"enigma.module.{name}"))

    def states(self, name: str) -> list[str]:
        return [e["state"] for e in self.events if e["name"] == name]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path)
    yield s
    await s.close()


@pytest.fixture
def rig(store: Store, tmp_path: Path) -> Rig:
    Alpha.loads = 0
    Alpha.unloads.clear()
    return Rig(Hub(), store, tmp_path)


async def test_load_walks_loading_loaded_active_and_publishes_each(rig: Rig) -> None:
    assert await rig.manager.load("alpha") == ["alpha"]
    assert rig.states("alpha") == ["loading", "loaded", "active"]
    assert rig.manager.state("alpha") is ModuleState.ACTIVE
    assert rig.hub.route("alpha.hi") is not None


async def test_unload_publishes_unloading_then_unloaded_and_removes_handlers(rig: Rig) -> None:
    await rig.manager.load("alpha")
    await rig.manager.unload("alpha")
    assert rig.states("alpha")[-2:] == ["unloading", "unloaded"]
    assert rig.hub.route("alpha.hi") is None
    assert Alpha.unloads == ["alpha"]


async def test_loading_an_active_module_again_does_nothing(rig: Rig) -> None:
    await rig.manager.load("alpha")
    assert await rig.manager.load("alpha") == []
    assert Alpha.loads == 1


async def test_unknown_module_is_not_found(rig: Rig) -> None:
    with pytest.raises(NotFound, match=r"no module named 'nope' \(known: alpha, beta"):
        await rig.manager.load("nope")


async def test_dependency_is_loaded_first(rig: Rig) -> None:
    assert await rig.manager.load("beta") == ["alpha", "beta"]
    assert rig.manager.state("alpha") is ModuleState.ACTIVE
    assert [e["name"] for e in rig.events if e["state"] == "active"] == ["alpha", "beta"]


async def test_missing_dependency_is_named(rig: Rig) -> None:
    with pytest.raises(NotFound, match=r"module 'orphan' depends on 'ghost', which is not available"):
        await rig.manager.load("orphan")
    assert rig.manager.state("orphan") is ModuleState.UNLOADED


async def test_dependency_cycle_is_a_conflict(rig: Rig) -> None:
    with pytest.raises(Conflict, match=r"dependency cycle: cycle_a -> cycle_b -> cycle_a"):
        await rig.manager.load("cycle_a")


async def test_declared_conflict_names_the_loaded_module(rig: Rig) -> None:
    await rig.manager.load("alpha")
    with pytest.raises(Conflict, match=r"module 'gamma' conflicts with loaded module 'alpha'; unload 'alpha' first"):
        await rig.manager.load("gamma")
    assert rig.states("gamma") == []


async def test_conflict_declared_by_the_loaded_side_also_blocks(rig: Rig) -> None:
    await rig.manager.load("gamma")
    with pytest.raises(Conflict, match=r"module 'alpha' conflicts with loaded module 'gamma'"):
        await rig.manager.load("alpha")


async def test_same_slot_is_a_conflict_naming_module_and_slot(rig: Rig) -> None:
    await rig.manager.load("slot_one")
    with pytest.raises(Conflict, match=r"'slot_two' and loaded module 'slot_one' both fill slot 'llm'") as exc:
        await rig.manager.load("slot_two")
    assert exc.value.details == {"blocking": "slot_one", "slot": "llm"}


async def test_memory_refusal_states_both_figures(store: Store, tmp_path: Path) -> None:
    rig = Rig(Hub(), store, tmp_path, mem=512 * 1024**2)
    with pytest.raises(Unavailable, match=r"'big' needs about 8\.0 GiB of memory but only 512\.0 MiB is available"):
        await rig.manager.load("big")
    assert rig.manager.state("big") is ModuleState.UNLOADED


async def test_failed_load_ends_failed_with_message_and_undoes_registrations(rig: Rig) -> None:
    with pytest.raises(Unavailable, match=r"module 'broken' failed to load: RuntimeError: model file missing") as exc:
        await rig.manager.load("broken")
    assert exc.value.details == {"cause": "RuntimeError"}
    assert rig.states("broken") == ["loading", "failed"]
    assert rig.events[-1] == {"name": "broken", "state": "failed", "error": "RuntimeError: model file missing"}
    assert rig.hub.route("broken.half") is None
    assert rig.manager.list()[[m["name"] for m in rig.manager.list()].index("broken")]["error"] == (
        "RuntimeError: model file missing"
    )


async def test_module_that_does_not_register_what_it_provides_fails(rig: Rig) -> None:
    with pytest.raises(Unavailable, match=r"'liar' declares liar\.never but did not register it"):
        await rig.manager.load("liar")
    assert rig.states("liar") == ["loading", "loaded", "failed"]


async def test_unimportable_module_is_unavailable(rig: Rig) -> None:
    with pytest.raises(Unavailable, match=r"'missing_dep' cannot be imported: ModuleNotFoundError"):
        await rig.manager.load("missing_dep")


async def test_unload_refused_while_dependents_are_loaded(rig: Rig) -> None:
    await rig.manager.load("beta")
    with pytest.raises(Conflict, match=r"cannot unload 'alpha': loaded modules depend on it: beta; unload them first"):
        await rig.manager.unload("alpha")
    assert rig.manager.state("alpha") is ModuleState.ACTIVE


async def test_unload_of_failed_module_resets_it(rig: Rig) -> None:
    with pytest.raises(Unavailable):
        await rig.manager.load("broken")
    await rig.manager.unload("broken")
    assert rig.manager.state("broken") is ModuleState.UNLOADED
    assert rig.events[-1] == {"name": "broken", "state": "unloaded"}


async def test_concurrent_loads_of_one_module_load_it_once(rig: Rig) -> None:
    Slow.loads, Slow.gate, Slow.entered = 0, asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(rig.manager.load("slow"))
    second = asyncio.create_task(rig.manager.load("slow"))
    await asyncio.wait_for(Slow.entered.wait(), 5)
    Slow.gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, second), 5) == [["slow"], []]
    assert Slow.loads == 1


async def test_unload_waits_for_a_load_in_progress(rig: Rig) -> None:
    Slow.loads, Slow.gate, Slow.entered = 0, asyncio.Event(), asyncio.Event()
    loading = asyncio.create_task(rig.manager.load("slow"))
    await asyncio.wait_for(Slow.entered.wait(), 5)
    unloading = asyncio.create_task(rig.manager.unload("slow"))
    Slow.gate.set()
    await asyncio.wait_for(asyncio.gather(loading, unloading), 5)
    assert rig.states("slow") == ["loading", "loaded", "active", "unloading", "unloaded"]


async def test_wishes_survive_a_restart(store: Store, tmp_path: Path) -> None:
    first = Rig(Hub(), store, tmp_path)
    await first.manager.load("beta")
    await first.manager.load("slot_two")
    await first.manager.unload("slot_two")
    second = Rig(Hub(), store, tmp_path)
    await second.manager.restore(autoload=["slot_two", "slot_one"])
    active = {m["name"] for m in second.manager.list() if m["state"] == "active"}
    assert active == {"alpha", "beta", "slot_one"}  # slot_two was switched off by the user: it stays off


async def test_restore_leaves_a_failing_module_failed_and_goes_on(store: Store, tmp_path: Path) -> None:
    rig = Rig(Hub(), store, tmp_path)
    await rig.manager.restore(autoload=["broken", "alpha"])
    assert rig.manager.state("broken") is ModuleState.FAILED
    assert rig.manager.state("alpha") is ModuleState.ACTIVE


async def test_shutdown_unloads_dependents_first_and_keeps_wishes(rig: Rig) -> None:
    await rig.manager.load("beta")
    await rig.manager.shutdown()
    assert Alpha.unloads == ["beta", "alpha"]
    assert await rig.store.wishes() == {"beta": True}


async def test_list_shows_declarations_before_loading(rig: Rig) -> None:
    by_name = {m["name"]: m for m in rig.manager.list()}
    assert by_name["beta"]["depends"] == ["alpha"]
    assert by_name["slot_one"]["slot"] == "llm"
    assert by_name["alpha"]["provides"] == ["alpha.hi"]
    assert by_name["big"]["memory_estimate"] == 8 * GiB
    assert by_name["alpha"]["state"] == "unloaded"
    assert by_name["missing_dep"]["error"].startswith("ModuleNotFoundError")


def test_registry_names_match_the_classes() -> None:
    assert set(REGISTRY) - {"missing_dep"} == {getattr(fake_modules, c).name for c in fake_modules.NAMES}
