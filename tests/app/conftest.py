"""Fixtures for the app: its files in tmp_path, view models wired to one connection, daemons with the model.

The model daemon (``llm`` + ``chat`` with short, greedy replies) is session-scoped: loading the model is the
expensive part, so the app's tests share it. Tests that stop or kill a daemon mid-reply chat through the fake
Ollama server of the serving tests instead (``held_ollama``): it holds the reply after its first token, so the
daemon is certainly mid-reply, and no model is loaded for a daemon that is about to go away.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bus.mqtt_link import MqttSettings
from clients.app.store import AppStore, DaemonEntry
from clients.app.viewmodels import ChatVM, ConnectionVM, ModulesVM, SettingsVM, StatusVM
from clients.robot.commands import Limits
from clients.robot.drivers.sim import SimDriver
from clients.robot.node import RobotNode
from tests.conftest import DaemonLauncher, DaemonProcess, module_daemon, unload_all
from tests.mqtt.broker import Mosquitto
from tests.serve.conftest import FakeOllamaThread

MODEL_CONFIG = """
[modules]
autoload = ["llm", "chat"]

[modules.llm]
context_length = 512
max_batch = 4

[modules.llm.sampling]
temperature = 0
max_tokens = 24

[modules.chat]
flush_tokens = 1
"""


def ollama_config(url: str) -> str:
    """Chat through the ``ollama`` LLM module against the fake Ollama server at ``url``."""
    return f"""
[modules]
autoload = ["ollama", "chat"]

[modules.ollama]
url = "{url}"
model = "smollm2:135m"

[modules.chat]
flush_tokens = 1
"""


@dataclass
class Views:
    store: AppStore
    conn: ConnectionVM
    chat: ChatVM
    modules: ModulesVM
    status: StatusVM
    settings: SettingsVM

    async def connect(self, daemon: DaemonProcess, name: str = "test", within: float = 30.0) -> None:
        await self.conn.connect(DaemonEntry(name, daemon.rpc, daemon.events))
        await self.conn.wait_connected(within)

    async def aclose(self) -> None:
        for vm in (self.chat, self.modules, self.status, self.settings, self.conn):
            await vm.aclose()


def make_views(root: Path, heartbeat: float = 2.0) -> Views:
    store = AppStore(root)
    conn = ConnectionVM(store, heartbeat=heartbeat, request_timeout=20.0)
    return Views(store, conn, ChatVM(conn), ModulesVM(conn), StatusVM(conn), SettingsVM(store, conn))


@pytest.fixture
async def views(tmp_path: Path) -> AsyncIterator[Views]:
    v = make_views(tmp_path / "app")
    try:
        yield v
    finally:
        await v.aclose()


@pytest.fixture(scope="session")
def model_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One enigmad with the real default model and the chat module, shared by the app's tests (each test makes
    its own sessions, so they do not see each other's conversations)."""
    launcher = DaemonLauncher(tmp_path_factory.mktemp("app-model"))
    try:
        yield launcher.start(config=MODEL_CONFIG, ready_timeout=120.0)
    finally:
        launcher.stop_all()


@pytest.fixture(scope="session")
def app_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One enigmad with defaults for the app's tests that only connect to a daemon and call it."""
    yield from module_daemon(tmp_path_factory)


@pytest.fixture
def daemon(app_daemon: DaemonProcess) -> DaemonProcess:
    """The app's shared daemon, every module unloaded as a fresh start with defaults has them. A test that counts
    the daemon's clients, or stops or reconfigures it, starts its own with ``daemon_factory``."""
    unload_all(app_daemon)
    return app_daemon


@pytest.fixture
def held_ollama() -> Iterator[FakeOllamaThread]:
    """A fake Ollama server that sends the first token of each reply, then holds the rest until released."""
    with FakeOllamaThread() as fake:
        fake.configure(hold=True)
        try:
            yield fake
        finally:
            fake.release()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


class StillClock:
    """The robot's clock: it never advances, so a commanded move stays in progress until the e-stop."""

    def __call__(self) -> float:
        return 1000.0


@pytest.fixture
async def robot(broker: Mosquitto) -> AsyncIterator[RobotNode]:
    node = RobotNode(
        "rover", SimDriver(), MqttSettings(url=broker.url, backoff_max=0.2), limits=Limits(), clock=StillClock(),
        autorun=False,
    )  # fmt: skip
    await node.start(wait=10)
    try:
        yield node
    finally:
        await node.close()


@pytest.fixture
def robots_daemon(broker: Mosquitto, daemon_factory: Callable[..., Any]) -> DaemonProcess:
    config = f'[modules]\nautoload = ["robots"]\n\n[modules.robots]\nbroker = "{broker.url}"\n'
    d: DaemonProcess = daemon_factory(config=config)
    return d
