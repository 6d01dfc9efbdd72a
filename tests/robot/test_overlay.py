"""The game overlay: detection, the game.state publisher, the line model, and the headless process end to end."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bus.mqtt_bridge import BridgeConfig, MqttBridge
from bus.mqtt_client import MqttCaller
from bus.mqtt_link import MqttSettings
from clients.overlay.detect import GameDetector, ProcessSource, StaticSource, load_rules
from clients.overlay.model import OverlayModel
from clients.overlay.publisher import GamePublisher
from daemon.hub import Hub
from tests.mqtt.broker import Mosquitto

ROOT = Path(__file__).resolve().parents[2]


def test_detector_finds_a_known_game_in_window_titles() -> None:
    state = GameDetector().detect(["Terminal", "Minecraft* 1.21.1 - Singleplayer"], "window")
    assert state.body() == {"game": "minecraft", "name": "Minecraft", "match": "Minecraft* 1.21.1 - Singleplayer",
                            "persona": None, "source": "window"}  # fmt: skip


def test_detector_reports_no_game_when_nothing_matches() -> None:
    assert GameDetector().detect(["bash", "firefox"]).game is None


def test_rules_file_replaces_the_defaults_and_carries_a_persona(tmp_path: Path) -> None:
    f = tmp_path / "games.json"
    f.write_text(json.dumps([{"id": "tetris", "name": "Tetris", "pattern": "^tetris", "persona": "coach"}]))
    state = GameDetector(load_rules(f)).detect(["Tetris Effect", "Minecraft"])
    assert (state.game, state.persona) == ("tetris", "coach")


def test_bad_rules_file_names_the_rule(tmp_path: Path) -> None:
    f = tmp_path / "games.json"
    f.write_text(json.dumps([{"id": "x", "name": "X", "pattern": "("}]))
    with pytest.raises(ValueError, match=r"rule 0 has a bad pattern"):
        load_rules(f)


def test_process_source_reads_process_names_from_proc(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "comm").write_text("factorio\n")
    (tmp_path / "42" / "cmdline").write_bytes(b"/opt/factorio/bin/x64/factorio\0--start\0")
    (tmp_path / "self").mkdir()
    assert ProcessSource(tmp_path).titles() == ["factorio", "factorio"]
    assert GameDetector().detect(ProcessSource(tmp_path).titles(), "process").name == "Factorio"


async def test_publisher_publishes_only_changes() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    async def publish(topic: str, body: dict[str, Any]) -> None:
        sent.append((topic, body))

    source = StaticSource(["Stardew Valley"])
    pub = GamePublisher(source, GameDetector(), publish)
    assert (await pub.poll_once()) is not None
    assert (await pub.poll_once()) is None
    source.items = ["desktop"]
    await pub.poll_once()
    assert [(t, b["game"]) for t, b in sent] == [("game.state", "stardew_valley"), ("game.state", None)]


def test_model_shows_assistant_answers_spoken_lines_and_game_changes() -> None:
    m = OverlayModel(max_lines=3, ttl=10)
    assert m.on_event("chat.message", {"role": "user", "text": "hi"}, 100.0) is None
    m.on_event("chat.message", {"role": "assistant", "text": "Build a  shelter\nbefore night."}, 101.0)
    m.on_event("voice.said", {"text": "Creeper behind you"}, 102.0)
    m.on_event("game.state", {"game": "minecraft", "name": "Minecraft"}, 103.0)
    m.on_event("game.state", {"game": "minecraft", "name": "Minecraft"}, 104.0)  # unchanged: no line
    assert [(ln.kind, ln.text) for ln in m.visible(105.0)] == [
        ("answer", "Build a shelter before night."),
        ("spoken", "Creeper behind you"),
        ("game", "Minecraft"),
    ]
    assert [ln.kind for ln in m.visible(111.5)] == ["spoken", "game"]  # the answer has faded


async def test_game_state_reaches_the_hub_through_mqtt(broker: Mosquitto) -> None:
    """The publisher's path for real: MqttCaller → bridge → bus.publish on the hub → game.state event."""
    hub = Hub()
    got: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    hub.add_listener("game.", lambda t, b: got.put_nowait((t, b)))

    async def bus_publish(call: Any) -> dict[str, Any]:
        hub.publish(call.body["topic"], call.body["body"])
        return {"topic": call.body["topic"]}

    hub.register("bus.publish", bus_publish, access="device")
    bridge = MqttBridge(hub, BridgeConfig(node_id="ov", mqtt=MqttSettings(url=broker.url)))
    await bridge.start(wait=10)
    caller = MqttCaller(MqttSettings(url=broker.url), "ov")
    await caller.start(wait=10)
    try:

        async def publish(topic: str, body: dict[str, Any]) -> Any:
            return await caller.call("bus.publish", {"topic": topic, "body": body})

        await GamePublisher(StaticSource(["Factorio 2.0"]), GameDetector(), publish).poll_once()
        topic, body = await asyncio.wait_for(got.get(), 10)
        assert (topic, body["game"], body["source"]) == ("game.state", "factorio", "static")
    finally:
        await caller.close()
        await bridge.close()


async def test_caller_raises_the_daemons_error(broker: Mosquitto) -> None:
    from bus.errors import UnknownMethod

    bridge = MqttBridge(Hub(), BridgeConfig(node_id="ov2", mqtt=MqttSettings(url=broker.url)))
    await bridge.start(wait=10)
    caller = MqttCaller(MqttSettings(url=broker.url), "ov2")
    await caller.start(wait=10)
    try:
        with pytest.raises(UnknownMethod, match=r"unknown method 'game\.nope'"):
            await caller.call("game.nope")
    finally:
        await caller.close()
        await bridge.close()


async def test_headless_overlay_prints_answers_from_the_bridge(broker: Mosquitto) -> None:
    hub = Hub()
    bridge = MqttBridge(hub, BridgeConfig(node_id="ov3", mqtt=MqttSettings(url=broker.url)))
    await bridge.start(wait=10)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clients.overlay", "--broker", broker.url, "--node", "ov3", "--headless",
        "--json", "--no-detect", cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        assert proc.stdout is not None
        ready = await asyncio.wait_for(proc.stderr.readline(), 20)
        assert b"listening" in ready
        # the overlay subscribed before printing "listening"; an answer published now reaches it
        hub.publish("chat.message", {"role": "assistant", "text": "Go left."})
        line = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
        assert (line["kind"], line["text"]) == ("answer", "Go left.")
    finally:
        proc.terminate()
        await proc.wait()
        await bridge.close()


async def test_window_renders_an_answer_offscreen(broker: Mosquitto, tmp_path: Path) -> None:
    pytest.importorskip("kivy")
    hub = Hub()
    bridge = MqttBridge(hub, BridgeConfig(node_id="ov4", mqtt=MqttSettings(url=broker.url)))
    await bridge.start(wait=10)
    env = {**os.environ, "SDL_VIDEODRIVER": "offscreen", "KIVY_HOME": str(tmp_path / "kivy"), "KIVY_NO_ARGS": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clients.overlay", "--broker", broker.url, "--node", "ov4", "--no-detect",
        "--screenshot", str(tmp_path / "shot.png"), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        assert proc.stdout is not None
        ready = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert b"listening" in ready
        hub.publish("chat.message", {"role": "assistant", "text": "Mine the iron first."})
        out = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert out.startswith(b"screenshot ")
        shot = Path(out.decode().split(" ", 1)[1].strip())
        assert (await asyncio.to_thread(shot.read_bytes))[:8] == b"\x89PNG\r\n\x1a\n"
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await bridge.close()
