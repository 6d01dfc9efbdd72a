"""Shared fixtures: a real ``enigmad`` subprocess on free loopback ports with its own data dir.

``daemon_factory(*flags, env=…, data_dir=…, config=…)`` starts one (several per test are fine: same
``data_dir`` twice gives a restart) and waits until its modules have loaded (``loaded=False``: only until it
answers); ``daemon`` is one started with defaults. Each yields a ``DaemonProcess``
with ``.rpc``, ``.events`` (the real endpoints from the ready line), ``.proc``, ``.data_dir``, ``.log_path``,
``.config_path``, ``.log()``, ``.send_signal()``, ``.stop()``. Everything started is stopped at teardown
(SIGTERM, then SIGKILL after a timeout), and dies with pytest if pytest is killed (``tests/spawn.py``).
``DaemonLauncher(base_dir)`` is the same for wider-scoped fixtures. ``broker`` is a mosquitto of the test's own on
a free port; ``run_enigmad(tmp, *args)`` runs one command.

Starting a daemon costs about a second of both cores, loading the real model 20-30 s, so tests share them where
isolation is not what they test: ``module_launcher`` and ``shared_daemon`` live for a test module
(``fresh_shared_daemon`` unloads every module before each test), ``serving_daemon`` serves the real model to the
whole session. A test that stops, restarts or reconfigures a daemon, or checks a fresh state, starts its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import spawn
from tests.mqtt.broker import Mosquitto

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"^enigmad ready rpc=(\S+) events=(\S+)$")
# Printed once the modules a start loads (in the background, after "ready") are active or failed.
LOADED = re.compile(r"^enigmad loaded active=(\S+) failed=(\S+)$")
START_TIMEOUT = 30.0


class DaemonProcess:
    """One running enigmad started by the fixture."""

    def __init__(self, proc: subprocess.Popen[str], data_dir: Path, log_path: Path) -> None:
        self.proc = proc
        self.data_dir = data_dir
        self.log_path = log_path
        self.rpc = ""
        self.events = ""
        self.config_path: Path | None = None
        self.stdout_lines: list[str] = []
        self.loaded_line = ""
        self._ready = threading.Event()
        self._loaded = threading.Event()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    @classmethod
    def spawn(
        cls, args: list[str], data_dir: Path, log_path: Path, env: dict[str, str], config_path: Path | None = None
    ) -> DaemonProcess:
        """Start the command line ``args``: stderr goes to ``log_path``, stdout carries the ready line; the process
        dies with pytest (``tests/spawn.py``)."""
        with open(log_path, "w") as log_file:
            proc = spawn.popen(
                "enigmad",
                args,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
            )
        d = cls(proc, data_dir, log_path)
        d.config_path = config_path
        return d

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.stdout_lines.append(line)
            m = READY.match(line)
            if m and not self._ready.is_set():
                self.rpc, self.events = m.group(1), m.group(2)
                self._ready.set()
            if LOADED.match(line) and not self._loaded.is_set():
                self.loaded_line = line
                self._loaded.set()
        self._ready.set()  # stdout closed: the process is gone; wait_ready() reports why
        self._loaded.set()

    def wait_ready(self, timeout: float = START_TIMEOUT, *, loaded: bool = True) -> DaemonProcess:
        """Wait for the ready line (the bus answers) and, unless ``loaded=False``, for the loaded line too: the
        modules load in the background after "ready", and most tests mean to use them. ``timeout`` is for both."""
        deadline = time.monotonic() + timeout
        if not self._ready.wait(timeout) or not self.rpc:
            self.kill()
            raise RuntimeError(f"enigmad did not become ready (exit code {self.proc.poll()}):\n{self.log()}")
        if loaded:
            self.wait_loaded(max(0.0, deadline - time.monotonic()))
        return self

    def wait_loaded(self, timeout: float = START_TIMEOUT) -> DaemonProcess:
        """Wait for the loaded line: every module the start loads is active or failed."""
        if not self._loaded.wait(timeout) or not self.loaded_line:
            self.kill()
            raise RuntimeError(
                f"enigmad did not finish loading its modules (exit code {self.proc.poll()}):\n{self.log()}"
            )
        return self

    @property
    def db_path(self) -> Path:
        return self.data_dir / "enigma.db"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def send_signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send ``sig`` and wait for the exit code (SIGKILL and fail if it does not exit in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGABRT)  # -X faulthandler: every thread's stack goes to the log
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(5)
                self.kill()
                raise AssertionError(f"enigmad did not exit within {timeout}s of {sig!r}:\n{self.log()}") from None
        self._reader.join(timeout=5)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def clean_env(tmp: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a daemon under test: no ENIGMA_* or XDG settings leak in from the developer's shell,
    but the switches that force a kernel path (ENIGMA_KERNELS, ENIGMA_AMX) do, so that a run forced onto one
    path (docs/engine.md) runs its daemons there too."""
    forcing = ("ENIGMA_KERNELS", "ENIGMA_AMX")
    env = {
        k: v for k, v in os.environ.items() if k in forcing or not k.startswith(("ENIGMA_", "XDG_", "NOTIFY_SOCKET"))
    }
    env["XDG_CONFIG_HOME"] = str(tmp / "xdg-config")
    env["XDG_DATA_HOME"] = str(tmp / "xdg-data")
    env["PYTHONUNBUFFERED"] = "1"
    # A daemon under test loads no model unless the test configures modules.autoload itself.
    env["ENIGMA_DEFAULT_AUTOLOAD"] = ""
    # Building the compiled decode step takes minutes for the default model on two cores; the daemons under test
    # stay eager, and tests/engine/test_aot.py and test_compile.py build it for a tiny model.
    env["ENIGMA_MODULES__LLM__COMPILE"] = "off"
    env.update(extra or {})
    return env


StartDaemon = Callable[..., DaemonProcess]


def run_enigmad(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one ``enigmad`` command to completion (``keys``, ``restore`` …) with the environment of ``tmp``."""
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        cwd=ROOT,
        env=clean_env(tmp),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


class DaemonLauncher:
    """Starts daemons whose files live under ``base``, and stops them all; for fixtures of any scope."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.started: list[DaemonProcess] = []
        self._counter = iter(range(1_000_000))

    def start(
        self,
        *flags: str,
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
        config: str | None = None,
        wait: bool = True,
        loopback_ports: bool = True,
        ready_timeout: float = START_TIMEOUT,
        loaded: bool = True,
        main: str = "daemon",
    ) -> DaemonProcess:
        """Start enigmad with ``flags``; ``config`` is TOML text written to a file passed with ``--config``
        (``.config_path``). ``data_dir`` defaults to ``<base>/data``, so a second start is a restart. ``wait``
        waits for the ready line and, unless ``loaded=False``, for the modules to have loaded. ``main`` is the
        module run with ``-m``: a test build of enigmad with extra modules (``tests.daemon.gated_daemon``)."""
        n = next(self._counter)
        data_dir = data_dir or self.base / "data"
        args = [sys.executable, "-X", "faulthandler", "-m", main, "--data-dir", str(data_dir)]
        if loopback_ports:
            args += ["--rpc", "tcp://127.0.0.1:0", "--events", "tcp://127.0.0.1:0"]
        config_path = None
        if config is not None:
            config_path = self.base / f"enigmad-{n}.toml"
            config_path.write_text(config)
            args += ["--config", str(config_path)]
        args += list(flags)
        log_path = self.base / f"enigmad-{n}.log"
        d = DaemonProcess.spawn(args, data_dir, log_path, clean_env(self.base, env), config_path)
        self.started.append(d)
        return d.wait_ready(ready_timeout, loaded=loaded) if wait else d

    def stop_all(self, timeout: float = 20.0) -> None:
        for d in self.started:
            if d.proc.poll() is None:
                try:
                    d.stop(timeout=timeout)
                except AssertionError:
                    d.kill()
            if d.proc.stdout is not None:
                d.proc.stdout.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A mosquitto of our own on a free loopback port (``tests/mqtt/broker.py``), stopped at teardown."""
    b = Mosquitto(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[StartDaemon]:
    """``start(*flags, env=, data_dir=, config=, wait=, loopback_ports=, ready_timeout=, loaded=, main=)`` →
    ``DaemonProcess``."""
    launcher = DaemonLauncher(tmp_path)
    yield launcher.start
    launcher.stop_all()


@pytest.fixture
def daemon(daemon_factory: StartDaemon) -> DaemonProcess:
    """One enigmad with default config on free loopback ports."""
    return daemon_factory()


@pytest.fixture(scope="module")
def module_launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonLauncher]:
    """Daemons that live for a whole test module (for tests that only read, or are refused)."""
    launcher = DaemonLauncher(tmp_path_factory.mktemp("module"))
    yield launcher
    launcher.stop_all()


def module_daemon(
    tmp_path_factory: pytest.TempPathFactory, env: dict[str, str] | None = None
) -> Iterator[DaemonProcess]:
    """The body of a module-scoped fixture: one enigmad with defaults (and ``env``), stopped after the module."""
    launcher = DaemonLauncher(tmp_path_factory.mktemp("shared"))
    try:
        yield launcher.start(env=env)
    finally:
        launcher.stop_all()


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One enigmad with default config for all the tests of a module that only need *a* daemon: starting one
    costs about a second of both cores. Tests that stop, restart or reconfigure a daemon, or count its clients,
    start their own with ``daemon_factory``. Ask for ``fresh_shared_daemon`` to find no module loaded."""
    yield from module_daemon(tmp_path_factory)


def unload_all(d: DaemonProcess) -> None:
    """Unload every module a test left loaded or failed, so that the next test finds the daemon's modules as a
    start with defaults leaves them (all unloaded)."""
    from clients.sdk import SyncClient

    client = SyncClient(d.rpc, d.events, timeout=10.0)
    try:
        for m in client.call("module.list")["modules"]:
            if m["state"] != "unloaded":
                client.call("module.unload", {"name": m["name"]})
    finally:
        client.close()


@pytest.fixture
def fresh_shared_daemon(shared_daemon: DaemonProcess) -> DaemonProcess:
    """The module's ``shared_daemon`` with every module unloaded, as a fresh start with defaults has them."""
    unload_all(shared_daemon)
    return shared_daemon


# The real default model as ./scripts/serve serves it (quantized kernels), but eager: see clean_env.
SERVING_CONFIG = """
[modules]
autoload = ["llm", "chat"]

[modules.llm]
context_length = 512
max_batch = 8

[modules.chat]
flush_tokens = 1
"""


# Not autoloaded: a test that speaks MQTT to the model loads the module, and unloads it when done.
SERVING_MQTT = """
[modules.mqtt]
broker = "{url}"
node_id = "{node}"
roles = {{ ops = "user" }}
"""
SERVING_NODE = "serving"


@pytest.fixture(scope="session")
def session_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A mosquitto for the session's shared daemons (``serving_daemon``'s ``mqtt`` module talks to it)."""
    b = Mosquitto(tmp_path_factory.mktemp("session-broker"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="session")
def serving_daemon(tmp_path_factory: pytest.TempPathFactory, session_broker: Mosquitto) -> Iterator[DaemonProcess]:
    """One enigmad serving the real default model (``SERVING_CONFIG``) for every test that chats with it and leaves
    it serving: loading the model takes 20-30 s of both cores. Tests make their own sessions, a test that switches
    the model switches it back, and one that loads ``mqtt`` (node ``SERVING_NODE`` on ``session_broker``) unloads
    it again."""
    launcher = DaemonLauncher(tmp_path_factory.mktemp("serving"))
    config = SERVING_CONFIG + SERVING_MQTT.format(url=session_broker.url, node=SERVING_NODE)
    try:
        yield launcher.start(config=config, ready_timeout=600.0)
    finally:
        launcher.stop_all()


def pytest_configure(config: pytest.Config) -> None:
    """A run started in the background of a non-interactive shell (as CI may start it) inherits SIGINT
    ignored, and so would every process the tests start: a child that ignores SIGINT at start-up never turns
    Ctrl-C into KeyboardInterrupt. Tests that press Ctrl-C need the ordinary disposition in their children."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_report_header(config: pytest.Config) -> str:
    """Name the CPU's SIMD features and the kernel set the engine runs here: a run is only comparable with
    another on the same path (ENIGMA_KERNELS / ENIGMA_AMX force one)."""
    from engine import kernels

    return f"enigma kernels: {kernels.describe()}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many daemons and brokers the run started: each costs seconds, so a change that starts more of them
    than it needs shows here (fixtures share them where a test does not need its own)."""
    counts = ", ".join(f"{kind} {n}" for kind, n in sorted(spawn.STARTS.items())) or "none"
    terminalreporter.write_line(f"processes started: {counts}")
