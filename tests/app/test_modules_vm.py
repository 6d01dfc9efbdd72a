"""The modules view model: live states, toggles, and what a toggle would do before it is done."""

from __future__ import annotations

import pytest

from clients.app.viewmodels import ModulesVM
from clients.app.viewmodels.modules import ModuleRow, format_bytes
from clients.sdk import Client
from tests.app.conftest import Views
from tests.app.waiting import wait_until
from tests.conftest import DaemonProcess, StartDaemon
from tests.mqtt.broker import free_port


async def test_toggle_loads_and_unloads_a_module(views: Views, daemon: DaemonProcess) -> None:
    await views.connect(daemon)
    await wait_until(views.modules, lambda: views.modules.row("echo") is not None, what="module list")
    echo = views.modules.row("echo")
    assert echo is not None
    assert echo.state == "unloaded"
    assert await views.modules.toggle("echo") is True
    assert views.modules.row("echo").state == "active"  # type: ignore[union-attr]
    assert await views.modules.toggle("echo") is True
    assert views.modules.row("echo").state == "unloaded"  # type: ignore[union-attr]


async def test_state_follows_module_events_from_other_clients(views: Views, daemon: DaemonProcess) -> None:
    await views.connect(daemon)
    await wait_until(views.modules, lambda: views.modules.rows != [], what="the first module list")
    seen: list[str] = []
    views.modules.bind(
        lambda what, _d: (
            seen.append(views.modules.row("system").state)  # type: ignore[union-attr]
            if what == "rows" and views.modules.row("system")
            else None
        )
    )
    async with Client(daemon.rpc, daemon.events) as c:
        await c.call("module.load", {"name": "system"})
    await wait_until(views.modules, lambda: "active" in seen, what="system active via events")
    assert seen == ["loading", "loaded", "active"]


async def test_failed_toggle_shows_the_daemons_reason(views: Views, daemon_factory: StartDaemon) -> None:
    port = free_port()  # nothing listens there, and no model is named: the ollama module cannot load
    daemon = daemon_factory(config=f'[modules.ollama]\nurl = "http://127.0.0.1:{port}"\n')
    await views.connect(daemon)
    await views.modules.refresh()
    assert await views.modules.toggle("ollama") is False
    assert views.modules.error == (
        "ollama: module 'ollama' failed to load: ValueError: modules.ollama.model must name a model the Ollama "
        "server has (e.g. 'llama3.2:1b')"
    )
    assert views.modules.row("ollama").state == "failed"  # type: ignore[union-attr]
    assert await views.conn.require().call("sys.ping")  # the daemon still answers


@pytest.mark.model
async def test_plan_shows_the_slot_conflict_that_the_daemon_then_refuses(
    views: Views, model_daemon: DaemonProcess
) -> None:
    await views.connect(model_daemon)
    await views.modules.refresh()
    plan = views.modules.plan("ollama")
    assert (plan.action, plan.blocking, plan.ok) == ("load", ["llm"], False)
    assert plan.summary() == ["Conflicts with loaded: llm (unload first)"]
    assert await views.modules.toggle("ollama") is False
    assert "conflict" in views.modules.error or "llm" in views.modules.error


@pytest.mark.model
async def test_memory_of_loaded_modules_is_summed(views: Views, model_daemon: DaemonProcess) -> None:
    await views.connect(model_daemon)
    await views.modules.refresh()
    llm = views.modules.row("llm")
    assert llm is not None
    assert llm.on
    assert (llm.memory_estimate or 0) > 10_000_000
    assert views.modules.memory_in_use >= llm.memory_estimate  # type: ignore[operator]
    assert views.modules.plan("llm").summary() == [f"Frees about {format_bytes(llm.memory_estimate)}"]


def _offline_vm(rows: list[ModuleRow]) -> ModulesVM:
    vm = ModulesVM.__new__(ModulesVM)
    vm.rows = rows
    return vm


def test_plan_lists_dependencies_first_and_missing_ones() -> None:
    vm = _offline_vm(
        [
            ModuleRow("voice", depends=["audio", "llm"], memory_estimate=100),
            ModuleRow("audio", depends=["alsa"], memory_estimate=20),
            ModuleRow("llm", state="active", memory_estimate=1000),
        ]
    )
    plan = vm.plan("voice")
    assert plan.will_load == ["audio", "voice"]
    assert plan.missing == ["alsa"]
    assert plan.memory == 120
    assert plan.summary() == ["Also loads: audio", "Needs about 120 B of memory", "Missing dependencies: alsa"]


def test_plan_for_unload_names_every_module_that_needs_it() -> None:
    vm = _offline_vm(
        [
            ModuleRow("llm", state="active"),
            ModuleRow("chat", state="active", depends=["llm"]),
            ModuleRow("voice", state="active", depends=["chat"]),
            ModuleRow("tools", depends=["llm"]),
        ]
    )
    plan = vm.plan("llm")
    assert (plan.action, plan.dependents, plan.ok) == ("unload", ["chat", "voice"], False)


def test_plan_sees_conflicts_declared_on_either_side() -> None:
    vm = _offline_vm(
        [
            ModuleRow("sd", conflicts=["flux"]),
            ModuleRow("flux", state="active"),
            ModuleRow("x", conflicts=["sd"], state="active"),
        ]
    )
    assert vm.plan("sd").blocking == ["flux", "x"]
