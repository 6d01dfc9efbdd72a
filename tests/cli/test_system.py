"""``enigma ping``, ``status``, ``methods`` and ``call`` against a real enigmad."""

from __future__ import annotations

import json

from tests.cli.conftest import Run, pointed_at, runner
from tests.conftest import DaemonProcess, StartDaemon
from tests.daemon import gated_daemon
from tests.daemon.raw_client import RawClient


def test_ping_json_carries_pong_boot_id_and_round_trip(cli: Run, shared_daemon: DaemonProcess) -> None:
    r = cli("ping", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["pong"] is True
    assert len(doc["boot_id"]) >= 8
    assert doc["rpc"] == shared_daemon.rpc
    assert doc["rtt_ms"] > 0


def test_ping_human_names_the_daemon_and_its_boot(cli: Run, shared_daemon: DaemonProcess) -> None:
    boot = json.loads(cli("ping", "--json").stdout)["boot_id"]
    r = cli("ping")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"pong from enigmad at {shared_daemon.rpc} (boot {boot[:8]}) in ")
    assert r.stdout.endswith(" ms\n")


def test_status_json_is_the_daemons_status(cli: Run, shared_daemon: DaemonProcess) -> None:
    r = cli("status", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["endpoints"] == {"rpc": shared_daemon.rpc, "events": shared_daemon.events}
    assert doc["pid"] == shared_daemon.proc.pid
    assert {"name": "echo", "state": "unloaded"} in doc["modules"]
    assert doc["caller"]["role"] == "admin"


def test_status_human_shows_fields_and_a_module_table(cli: Run, shared_daemon: DaemonProcess) -> None:
    r = cli("status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"daemon     {shared_daemon.rpc}"
    assert f"pid        {shared_daemon.proc.pid}" in lines
    table = lines[lines.index("modules") + 1 :]
    assert table[0].split() == ["NAME", "STATE"]
    assert ["echo", "unloaded"] in [row.split() for row in table]


def test_methods_lists_core_methods_with_access(cli: Run) -> None:
    r = cli("methods", "module.", "--json")
    assert r.returncode == 0, r.stderr
    access = {m["method"]: m["access"] for m in json.loads(r.stdout)["methods"]}
    assert access == {"module.list": "user", "module.load": "admin", "module.unload": "admin"}


def test_call_prints_the_reply_of_any_method(cli: Run) -> None:
    r = cli("call", "sys.ping", "probe=7", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["probe"] == 7
    assert doc["pong"] is True


def test_call_stream_prints_chunks_then_the_result_as_json_lines(cli: Run) -> None:
    assert cli("modules", "load", "echo").returncode == 0
    r = cli("call", "echo.count", "n=3", "--stream", "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert lines == [{"chunk": {"i": 0}}, {"chunk": {"i": 1}}, {"chunk": {"i": 2}}, {"result": {"count": 3}}]


def test_call_unknown_method_exits_1_with_the_daemons_message(cli: Run) -> None:
    r = cli("call", "no.such")
    assert r.returncode == 1
    assert r.stderr == "enigma: unknown method 'no.such' (unknown_method)\n"
    assert cli("ping").returncode == 0  # and the daemon still answers


def test_call_with_a_body_the_schema_rejects_exits_1_naming_the_field(cli: Run) -> None:
    assert cli("modules", "load", "echo").returncode == 0
    r = cli("call", "echo.count", "n=-1", "--json")
    assert r.returncode == 1
    err = json.loads(r.stdout)["error"]
    assert err["code"] == "bad_request"
    assert err["details"] == {"field": "n"}
    assert r.stderr.startswith("enigma: echo.count: n: -1 is less than the minimum of 0")


def test_stream_without_chunks_in_time_exits_4(cli: Run) -> None:
    assert cli("modules", "load", "echo").returncode == 0
    r = cli("call", "echo.count", "n=2", "delay=30", "--stream", "--timeout", "0.5")
    assert r.returncode == 4
    assert r.stdout == '{"i":0}\n'
    assert r.stderr == "enigma: echo.count: no answer within 0.5 s (timeout) — give it longer with --timeout SECONDS\n"


async def test_status_shows_the_phase_and_what_is_still_loading(
    daemon_factory: StartDaemon, cli_env: dict[str, str]
) -> None:
    d = daemon_factory(config="[modules]\nautoload = ['gated']\n", main=gated_daemon.MAIN, loaded=False)
    cli = runner(pointed_at(d, cli_env))
    c = RawClient(d.rpc, d.events)
    try:
        await gated_daemon.wait_module_state(c, "gated", "loading")
        r = cli("status")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert "phase      loading" in lines
        table = lines[lines.index("loading") + 1 :]
        assert table[0].split() == ["NAME", "STATE", "FOR", "WAITING", "STAGE"]
        assert table[1].split()[:2] == ["gated", "loading"]
        assert table[1].endswith(" 0  waiting for the gate")
        await c.call("gate.gated")
        await gated_daemon.wait_module_state(c, "gated", "active")
    finally:
        c.close()
    d.wait_loaded()
    r = cli("status")
    assert "phase      ready" in r.stdout.splitlines()
    assert "loading" not in r.stdout.splitlines()
