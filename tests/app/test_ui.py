"""The real app, rendered offscreen in a subprocess per test and driven through the widgets.

Each test runs ``tests.app.drive_app`` (so Kivy's event loop and window never leak between tests), reads the
JSON it prints and checks the screenshots it saved under ``artifacts/screenshots/``. A reviewer can open those
files to see the app at phone size (360×780) and desktop size (1280×800).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import struct
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bus.auth import fingerprint
from clients.robot.node import RobotNode
from clients.sdk import Client, Subscription
from tests.conftest import ROOT, DaemonProcess, StartDaemon, clean_env

pytest.importorskip("kivy")

SHOTS = ROOT / "artifacts" / "screenshots"
PHONE, DESKTOP = "360x780", "1280x800"


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


async def drive(
    scenario: str,
    daemon: DaemonProcess,
    size: str,
    prefix: str,
    tmp_path: Path,
    env: dict[str, str] | None = None,
    on_line: Callable[[str], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Run the app with ``scenario``; ``on_line`` sees each line it prints while it runs."""
    kivy = {"SDL_VIDEODRIVER": "offscreen", "KIVY_NO_ARGS": "1", "KIVY_NO_CONSOLELOG": "1"}
    full_env = clean_env(tmp_path, {**kivy, "KIVY_HOME": str(tmp_path / "kivy"), **(env or {})})
    full_env.pop("DISPLAY", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.app.drive_app", scenario, daemon.rpc, daemon.events, size, str(SHOTS), prefix,
        str(tmp_path / "app"), cwd=ROOT, env=full_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(240):
            stderr = asyncio.ensure_future(proc.stderr.read())
            while line := (await proc.stdout.readline()).decode():
                lines.append(line.rstrip("\n"))
                if on_line is not None:
                    await on_line(lines[-1])
            err = (await stderr).decode()
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    results = [x for x in lines if x.startswith("RESULT ")]
    assert proc.returncode == 0, f"the app exited with {proc.returncode}:\n{err[-2000:]}{kivy_log(tmp_path)}"
    assert results, f"the app printed no result:\n{err[-2000:]}{kivy_log(tmp_path)}"
    result: dict[str, Any] = json.loads(results[-1].removeprefix("RESULT "))
    check_screenshots(result["screenshots"], size)
    return result


def kivy_log(tmp_path: Path) -> str:
    """Kivy sends stderr (tracebacks included) to its log file: the place to look when the app failed."""
    logs = sorted((tmp_path / "kivy" / "logs").glob("*.txt"))
    return "\n--- kivy log ---\n" + logs[-1].read_text(errors="replace")[-6000:] if logs else ""


def check_screenshots(files: dict[str, str], size: str) -> None:
    for what, file in files.items():
        path = Path(file)
        assert path.exists(), f"screenshot {what} is missing"
        assert path.stat().st_size > 0, f"screenshot {what} is empty"
        assert png_size(path) == tuple(int(x) for x in size.split("x")), f"screenshot {what} has the wrong size"


def assert_reply_on_screen(result: dict[str, Any]) -> None:
    reply = result["reply"]
    assert reply.strip(), "the app got no reply text"
    assert result["complete"] is True
    assert "Paris" in reply  # greedy decoding (temperature 0 in the daemon's config) of the real model
    assert reply in result["labels"], "the streamed reply is not in any label on screen"
    assert "What is the capital of France?" in result["labels"]


@pytest.mark.model
async def test_phone_conversation_shows_the_streamed_reply(model_daemon: DaemonProcess, tmp_path: Path) -> None:
    result = await drive("chat", model_daemon, PHONE, "phone", tmp_path)
    assert_reply_on_screen(result)
    assert result["title"] == "What is the capital of France?"
    assert {"chat", "modules", "status", "settings", "connect", "sessions"} <= set(result["screenshots"])
    assert result["theme"] == "light"
    assert result["copied"] == {"toast": "Copied", "clipboard": result["reply"]}
    assert result["toast_after_switch"] == "", "the Copied toast followed the user to the modules screen"
    # tapping "Turn on" for ollama first says that the loaded llm module is in the way (same slot)
    assert "Conflicts with loaded: llm (unload first)" in result["confirm"]
    assert "Turn on anyway" in result["confirm"]


@pytest.mark.model
async def test_desktop_conversation_shows_the_streamed_reply(model_daemon: DaemonProcess, tmp_path: Path) -> None:
    result = await drive("chat", model_daemon, DESKTOP, "desktop", tmp_path)
    assert_reply_on_screen(result)
    # wide window: the sessions list sits beside the conversation, no "Sessions" button
    assert "Sessions" not in result["labels"]
    assert any(label.endswith("conversations") for label in result["labels"])


async def _wait_listed(c: Client, sub: Subscription, robot_id: str, within: float = 15.0) -> None:
    """The daemon learns of the robot from its MQTT announcement, some time after both have started: wait for
    the robot.state event that says so, re-asking robot.list in case it came before our subscription was live."""
    async with asyncio.timeout(within):
        while True:
            listed = await c.call("robot.list")
            if any(r["id"] == robot_id and r.get("online") for r in listed["robots"]):
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    async for ev in sub:
                        if ev.body.get("id") == robot_id:
                            break


async def test_estop_is_in_the_top_bar_while_a_robot_moves_and_stops_it(
    robots_daemon: DaemonProcess, robot: RobotNode, tmp_path: Path
) -> None:
    async with Client(robots_daemon.rpc, robots_daemon.events) as c, c.subscribe("robot.state") as sub:
        await _wait_listed(c, sub, "rover")
        await c.call("robot.command", {"id": "rover", "action": "move", "params": {"speed": 0.2, "distance": 1}})
        async with asyncio.timeout(15):
            async for ev in sub:
                if ev.body.get("state") == "moving":
                    break
    result = await drive("estop", robots_daemon, PHONE, "phone", tmp_path)
    assert result["shown"]["opacity"] == 1
    assert result["shown"]["width"] > 0
    assert not result["shown"]["disabled"]
    assert result["after"]["opacity"] == 0
    assert result["after"]["width"] == 0
    assert result["after"]["state"] == "estop"
    assert robot.controller.estopped
    assert "E-STOP" in result["shown"]["labels"]
    assert "E-STOP" not in result["labels"]
    assert "1 robot, 1 moving" in result["shown"]["labels"]


async def test_pairing_shows_both_fingerprints_and_connects_once_allowed(
    daemon_factory: StartDaemon, tmp_path: Path
) -> None:
    data_dir = tmp_path / "curve"
    daemon = daemon_factory(env={"ENIGMA_SECURITY__CURVE": "true"}, data_dir=data_dir)
    server_public = json.loads((data_dir / "server.key").read_text())["public"]
    allowed: list[str] = []

    async def allow(line: str) -> None:
        if line.startswith("PAIRED "):
            public = line.removeprefix("PAIRED ")
            args = ["-m", "daemon", "--data-dir", str(data_dir), "keys", "allow", public, "--role", "user"]
            keys = await asyncio.create_subprocess_exec(
                sys.executable, *args, cwd=ROOT, env=clean_env(tmp_path), stdout=asyncio.subprocess.DEVNULL
            )
            assert await keys.wait() == 0
            allowed.append(public)

    env = {"ENIGMA_TEST_SERVER_KEY": server_public}
    result = await drive("pair", daemon, DESKTOP, "desktop", tmp_path, env=env, on_line=allow)
    (device_public,) = allowed
    pairing = next(label for label in result["labels"] if label.startswith("This device: "))
    assert pairing.startswith(f"This device: {fingerprint(device_public)}\nDaemon lab: {fingerprint(server_public)}")
    assert result["allow"].startswith(f"enigmad keys allow {shlex.quote(device_public)} --role user --name ")
    assert result["link"] == "lab · connected"
    assert "kitchen-pi" in result["labels"]  # the discovered daemon is listed
    assert "1 found" in result["labels"]
