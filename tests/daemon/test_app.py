"""The lifecycle in-process, where a test can plant a module that misbehaves."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.app import Daemon
from daemon.config import load_config
from daemon.module import ModuleState
from tests.conftest import StartDaemon
from tests.daemon.fake_modules import REGISTRY


def config(tmp_path: Path, **extra: object):
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    overrides = {
        "daemon.data_dir": str(tmp_path / "data"),
        "daemon.rpc": "tcp://127.0.0.1:0",
        "daemon.events": "tcp://127.0.0.1:0",
        **extra,
    }
    return load_config(env=env, overrides=overrides)


async def test_shutdown_time_limit_cuts_off_a_module_that_never_unloads(tmp_path: Path) -> None:
    d = Daemon(config(tmp_path, **{"daemon.shutdown_timeout": 1.0}), registry=REGISTRY)
    await d.start()
    assert d.manager is not None
    await d.manager.load("stuck")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(d.stop(), 10)
    assert loop.time() - started < 5
    db = sqlite3.connect(tmp_path / "data" / "enigma.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    assert not (tmp_path / "data" / "enigma.db-wal").exists()


async def test_start_serves_first_and_restores_autoload_in_the_background(tmp_path: Path) -> None:
    d = Daemon(config(tmp_path, **{"modules.autoload": ["alpha"]}), registry=REGISTRY)
    await d.start()
    try:
        assert d.manager is not None
        assert d.hub is not None
        assert d.core is not None
        assert d.server is not None
        assert d.manager.state("alpha") is not ModuleState.ACTIVE
        assert d.core.phase == "loading"
        assert d.hub.expects("alpha.hi")  # a call now waits for the module rather than being unknown
        await d.wait_loaded()
        assert d.manager.state("alpha") is ModuleState.ACTIVE
        assert d.hub.route("alpha.hi") is not None
        assert not d.hub.expects("alpha.hi")
        assert d.core.phase == "ready"
    finally:
        await d.stop()


async def test_reload_without_a_config_source_changes_nothing(tmp_path: Path) -> None:
    d = Daemon(config(tmp_path), registry=REGISTRY)
    await d.start()
    try:
        assert await d.reload() == []
    finally:
        await d.stop()


def test_port_in_use_is_a_start_failure_with_exit_1(daemon_factory: StartDaemon, tmp_path: Path) -> None:
    first = daemon_factory()
    second = daemon_factory("--rpc", first.rpc, data_dir=tmp_path / "other", wait=False)
    assert second.proc.wait(30) == 1
    assert f"enigmad: cannot start: cannot bind {first.rpc}" in second.log()
    db = sqlite3.connect(tmp_path / "other" / "enigma.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


@pytest.mark.parametrize("flag", ["--rpc", "--events"])
def test_ipc_endpoints_count_as_local(daemon_factory: StartDaemon, tmp_path: Path, flag: str) -> None:
    d = daemon_factory(flag, f"ipc://{tmp_path}/enigma-{flag[2:]}.sock")
    assert getattr(d, flag[2:]) == f"ipc://{tmp_path}/enigma-{flag[2:]}.sock"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """reload() configures the ``enigma`` loggers of this process; put them back for the other tests."""
    loggers = [logging.getLogger(n) for n in ("enigma", "asyncio")]
    saved = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    yield
    for lg, handlers, level, propagate in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


@pytest.mark.usefixtures("restore_logging")
async def test_reload_keeps_restart_only_values_until_the_restart(tmp_path: Path) -> None:
    first = config(tmp_path)
    moved = config(tmp_path, **{"daemon.data_dir": str(tmp_path / "elsewhere"), "daemon.log_level": "debug"})
    d = Daemon(first, registry=REGISTRY, reload_config=lambda: moved)
    await d.start()
    try:
        assert await d.reload() == ["daemon.data_dir", "daemon.log_level"]
        assert d.config.data_dir == tmp_path / "data"
        assert d.config.daemon.log_level == "debug"
    finally:
        await d.stop()
