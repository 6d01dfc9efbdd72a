"""The status view model: the daemon at a glance, the model's state, and robots with their e-stop."""

from __future__ import annotations

import pytest

from clients.robot.node import RobotNode
from tests.app.conftest import Views
from tests.app.waiting import wait_until
from tests.conftest import DaemonProcess, StartDaemon
from tests.daemon import gated_daemon
from tests.daemon.raw_client import RawClient


async def test_status_shows_the_daemon_at_a_glance(views: Views, daemon_factory: StartDaemon) -> None:
    await views.connect(daemon_factory())  # its own: the shared one may still count an earlier test's client
    await views.status.refresh()
    rows = dict(views.status.summary())
    assert rows["Daemon"].startswith(views.conn.node_id or "?")
    assert rows["Clients"] == "1"
    assert rows["Model"] == "no language model loaded"
    assert views.status.uptime > 0
    assert views.status.robots_available is False


@pytest.mark.model
async def test_status_shows_the_model_and_follows_its_state(views: Views, model_daemon: DaemonProcess) -> None:
    await views.connect(model_daemon)
    await views.status.refresh()
    assert views.status.llm is not None
    rows = dict(views.status.summary())
    assert rows["Model"].endswith("(native)")
    assert "SmolLM2" in rows["Model"] or "smollm2" in rows["Model"].lower()
    busy_seen: list[str] = []
    views.status.bind(lambda what, d: busy_seen.append(d.get("state")) if what == "llm" and d else None)
    await views.chat.send("Count to three.")
    await wait_until(views.status, lambda: "ready" in busy_seen, what="llm back to ready")
    assert "busy" in busy_seen


async def test_a_moving_robot_shows_and_estop_stops_it(
    views: Views, robots_daemon: DaemonProcess, robot: RobotNode
) -> None:
    await views.connect(robots_daemon)
    await wait_until(
        views.status,
        lambda: views.status.robots.get("rover", {}).get("driver") == "sim",
        what="the robot's announcement",
    )
    assert views.status.robots["rover"]["online"] is True
    assert views.status.moving == []
    result = await views.status.command("rover", "move", {"speed": 0.2, "distance": 1.0})
    assert result == {}
    await wait_until(views.status, lambda: views.status.moving == ["rover"], what="robot moving")
    assert await views.status.estop() is True
    assert views.status.last_estop == "enigma/robot/all/estop"
    await wait_until(views.status, lambda: views.status.moving == [], what="robot stopped")
    assert views.status.robots["rover"]["state"] == "estop"
    assert robot.controller.estopped


async def test_refused_robot_command_shows_the_robots_reason(
    views: Views, robots_daemon: DaemonProcess, robot: RobotNode
) -> None:
    await views.connect(robots_daemon)
    await wait_until(views.status, lambda: "rover" in views.status.robots, what="the robot")
    assert await views.status.command("rover", "move", {"speed": 9, "distance": 1}) is None
    assert views.status.error == "rover move: move.speed=9 is out of range [-0.5, 0.5]"


async def test_estop_without_the_robots_module_says_so(views: Views, daemon: DaemonProcess) -> None:
    await views.connect(daemon)
    assert await views.status.estop() is False
    assert views.status.error == "e-stop failed: unknown method 'robot.command'"


async def test_status_shows_what_the_daemon_is_still_loading(views: Views, daemon_factory: StartDaemon) -> None:
    config = "[modules]\nautoload = ['gated_llm']\n"
    d = daemon_factory(config=config, main=gated_daemon.MAIN, loaded=False)
    c = RawClient(d.rpc, d.events)
    try:
        await gated_daemon.wait_module_state(c, "gated_llm", "loading")
        await views.connect(d)
        await views.status.refresh()
        rows = dict(views.status.summary())
        assert rows["Starting up"].startswith("gated_llm: waiting for the gate, ")
        assert rows["Model"].startswith("loading (gated_llm: waiting for the gate, ")
        assert views.status.llm is None  # llm.stats was not asked: it would have waited for the model
        await c.call("gate.gated_llm")
    finally:
        c.close()
    await wait_until(views.status, lambda: views.status.llm is not None, what="the model's stats once it is up")
    rows = dict(views.status.summary())
    assert "Starting up" not in rows
    assert rows["Model"] == "gated (gated)"
