"""enigmad's life: graceful SIGTERM mid-stream, SIGHUP reload, refusals at start, keys and CURVE roles."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import pytest
import zmq

from bus.errors import Forbidden
from tests.conftest import DaemonProcess, StartDaemon, run_enigmad
from tests.daemon.raw_client import RawClient


def assert_store_closed_cleanly(d: DaemonProcess) -> None:
    wal = d.db_path.with_name("enigma.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    db = sqlite3.connect(d.db_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


async def test_sigterm_mid_stream_ends_the_stream_with_an_error_and_exits_0(daemon: DaemonProcess) -> None:
    c = RawClient(daemon.rpc)
    try:
        await c.call("module.load", {"name": "echo"})
        kinds = []
        async for env in c.stream("echo.count", {"n": 100_000, "delay": 0.01}):
            kinds.append(env.kind)
            if len(kinds) == 1:
                daemon.send_signal(signal.SIGTERM)
        assert env.kind == "error"
        assert env.body["code"] == "cancelled"
    finally:
        c.close()
    assert daemon.proc.wait(20) == 0
    assert_store_closed_cleanly(daemon)
    assert "daemon: stopped" in daemon.log()


async def test_a_second_sigterm_does_not_cut_shutdown_short(daemon: DaemonProcess) -> None:
    c = RawClient(daemon.rpc)
    try:
        await c.call("module.load", {"name": "echo"})
        async for env in c.stream("echo.count", {"n": 100_000, "delay": 0.01}):
            if env.kind == "chunk" and env.seq == 0:
                daemon.send_signal(signal.SIGTERM)
                daemon.send_signal(signal.SIGTERM)
    finally:
        c.close()
    assert daemon.proc.wait(20) == 0
    assert_store_closed_cleanly(daemon)


async def test_sigint_also_stops_gracefully(daemon: DaemonProcess) -> None:
    assert daemon.stop(signal.SIGINT) == 0
    assert_store_closed_cleanly(daemon)


async def test_sighup_applies_a_new_autoload_list_without_dropping_clients(daemon_factory: StartDaemon) -> None:
    d = daemon_factory(config="[daemon]\nlog_level = 'info'\n")
    assert d.config_path is not None
    config_file = d.config_path
    c = RawClient(d.rpc, d.events)
    try:
        await c.subscribe("sys.reloaded")
        await c.subscribe("module.state")
        config_file.write_text("[daemon]\nlog_level = 'debug'\n[modules]\nautoload = ['echo']\n")
        d.send_signal(signal.SIGHUP)
        seen = []
        while not seen or seen[-1][0] != "sys.reloaded":
            seen.append(await c.next_event())
        assert seen[-1][1]["changed"] == ["daemon.log_level", "modules.autoload"]
        assert ("module.state", {"name": "echo", "state": "active"}) in seen
        assert (await c.call("echo.say", {"text": "still here"}))["text"] == "still here"
    finally:
        c.close()


async def test_sighup_with_a_broken_config_keeps_the_running_one(daemon_factory: StartDaemon) -> None:
    d = daemon_factory(config="[daemon]\nlog_level = 'info'\n")
    c = RawClient(d.rpc, d.events)
    try:
        await c.subscribe("sys.reloaded")
        assert d.config_path is not None
        d.config_path.write_text("[daemon]\nlog_level = 3\n")
        d.send_signal(signal.SIGHUP)
        reloaded = await c.wait_event("sys.reloaded")
        assert reloaded["changed"] == []
        assert "daemon.log_level: expected a string, got an integer in " in reloaded["error"]
        assert (await c.call("sys.ping"))["pong"] is True
    finally:
        c.close()


def test_non_loopback_endpoint_without_keys_is_refused(daemon_factory: StartDaemon) -> None:
    d = daemon_factory("--rpc", "tcp://0.0.0.0:0", "--events", "tcp://127.0.0.1:0", wait=False, loopback_ports=False)
    assert d.proc.wait(30) == 2
    assert "enigmad: refusing to serve daemon.rpc=tcp://0.0.0.0:0 (from --rpc) without CURVE keys" in d.log().strip()
    assert len(d.log().strip().splitlines()) == 1


def test_store_from_a_newer_enigmad_is_refused(daemon_factory: StartDaemon, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = sqlite3.connect(data / "enigma.db")
    db.executescript(
        "CREATE TABLE schema_migrations (area TEXT, version INTEGER, applied REAL, PRIMARY KEY (area, version));"
        "INSERT INTO schema_migrations VALUES ('core', 9, 0);"
    )
    db.close()
    d = daemon_factory(wait=False)
    assert d.proc.wait(30) == 1
    assert "enigmad: cannot start: " in d.log()
    assert "'core' schema is at version 9, but this enigmad knows only up to 1" in d.log()


def test_unreadable_server_key_is_a_start_failure(daemon_factory: StartDaemon, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "server.key").write_text("not json")
    d = daemon_factory(config="[security]\ncurve = true\n", wait=False)
    assert d.proc.wait(30) == 1
    assert "enigmad: cannot start: cannot read key pair " in d.log()


def test_check_config_prints_the_effective_config(tmp_path: Path) -> None:
    cfg = tmp_path / "ok.toml"
    cfg.write_text("[modules]\nautoload = ['echo']\n[modules.echo]\ngreeting = 'hi'\n")
    out = run_enigmad(tmp_path, "--config", str(cfg), "--check-config", "--rpc", "tcp://127.0.0.1:7799")
    assert out.returncode == 0, out.stderr
    effective = json.loads(out.stdout)
    assert effective["daemon"]["rpc"] == "tcp://127.0.0.1:7799"
    # clean_env's ENIGMA_MODULES__LLM__COMPILE=off is there too: the environment layers over the file
    assert effective["modules"] == {"autoload": ["echo"], "echo": {"greeting": "hi"}, "llm": {"compile": "off"}}


def test_check_config_names_the_bad_key_and_file_and_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[security]\ncurve = 'sure'\n")
    out = run_enigmad(tmp_path, "--config", str(cfg), "--check-config")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"enigmad: config error: security.curve: expected a boolean, got the string 'sure' in {cfg.resolve()}"
    )


def test_check_config_refuses_an_unknown_autoload_module(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[modules]\nautoload = ['nosuch']\n")
    out = run_enigmad(tmp_path, "--config", str(cfg), "--check-config")
    assert out.returncode == 2
    assert "modules.autoload: unknown module 'nosuch' in " in out.stderr


def test_keys_show_creates_the_server_key_once(tmp_path: Path) -> None:
    first = run_enigmad(tmp_path, "--data-dir", str(tmp_path / "d"), "keys", "show")
    second = run_enigmad(tmp_path, "--data-dir", str(tmp_path / "d"), "keys", "show")
    assert first.returncode == second.returncode == 0
    assert "(created now)" in first.stdout
    assert "(created now)" not in second.stdout
    assert first.stdout.splitlines()[0] == second.stdout.splitlines()[0]
    assert (tmp_path / "d" / "server.key").stat().st_mode & 0o777 == 0o600


def test_keys_allow_list_and_revoke(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "d")]
    public = zmq.curve_keypair()[0].decode()
    allowed = run_enigmad(tmp_path, *data, "keys", "allow", "--role", "user", "--name", "phone", "--", public)
    assert allowed.returncode == 0, allowed.stderr
    listed = run_enigmad(tmp_path, *data, "keys", "list").stdout
    assert "user" in listed
    assert "phone" in listed
    assert public in listed
    assert run_enigmad(tmp_path, *data, "keys", "revoke", "phone").returncode == 0
    again = run_enigmad(tmp_path, *data, "keys", "revoke", "phone")
    assert again.returncode == 1
    assert "no allowed key or name 'phone'" in again.stderr


def test_keys_allow_takes_a_key_that_starts_with_a_dash_after_double_dash(tmp_path: Path) -> None:
    key = "-" + zmq.curve_keypair()[0].decode()[1:]
    out = run_enigmad(tmp_path, "--data-dir", str(tmp_path / "d"), "keys", "allow", "--role", "device", "--", key)
    assert out.returncode == 0, out.stderr
    assert key in run_enigmad(tmp_path, "--data-dir", str(tmp_path / "d"), "keys", "list").stdout


def test_keys_allow_refuses_a_malformed_key(tmp_path: Path) -> None:
    out = run_enigmad(tmp_path, "--data-dir", str(tmp_path / "d"), "keys", "allow", "short", "--role", "user")
    assert out.returncode == 2
    assert out.stderr.strip() == "enigmad: public key must be a 40-character Z85 string"


async def test_curve_caller_gets_the_role_of_its_key(daemon_factory: StartDaemon, tmp_path: Path) -> None:
    data = tmp_path / "data"
    public, secret = zmq.curve_keypair()
    allow = run_enigmad(tmp_path, "--data-dir", str(data), "keys", "allow", "--role", "device", "--", public.decode())
    assert allow.returncode == 0, allow.stderr
    server_public = json.loads((data / "server.key").read_text())["public"] if (data / "server.key").exists() else None
    assert server_public is None  # the daemon creates its pair at first start
    d = daemon_factory(config="[security]\ncurve = true\n")
    server_public = json.loads((data / "server.key").read_text())["public"]
    c = RawClient(d.rpc, curve={"server": server_public.encode(), "public": public, "secret": secret})
    try:
        assert (await c.call("sys.ping"))["pong"] is True
        with pytest.raises(Forbidden, match=r"role 'device' may not call 'module\.load' \(needs 'admin'\)"):
            await c.call("module.load", {"name": "echo"})
    finally:
        c.close()


def test_a_pasted_key_that_starts_with_a_dash_is_accepted_without_double_dash(tmp_path: Path) -> None:
    key = "-" + "a" * 39
    out = run_enigmad(tmp_path, "--data-dir", str(tmp_path / "d"), "keys", "allow", key, "--role", "user")
    assert out.returncode == 0, out.stderr
    listed = run_enigmad(tmp_path, "--data-dir", str(tmp_path / "d"), "keys", "list")
    assert key in listed.stdout
