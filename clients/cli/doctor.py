"""``enigma doctor``: check a setup end to end and say what to fix.

One line per check — ``ok``, ``warn``, ``fail`` or ``skip`` (the check does not apply, with why) — and for
anything not ok a hint that names the command to run. The checks, in the order a problem blocks the next:

- daemon: enigmad answers at the endpoint (its version and uptime);
- config: the daemon runs with its config; locally ``enigmad --check-config`` validates the file (when the
  ``enigmad`` command is installed here);
- modules: none is ``failed``;
- model: an LLM module is active with a model (and ``model.list`` answers when the daemon serves it);
- mqtt: when the mqtt module is on, its broker accepts a TCP connection;
- disk: free space where the data dir is (``system.info`` when the ``system`` module is loaded, else statvfs
  when the data dir is on this machine);
- permissions: the data dir is 0700/0750 and owned by the daemon's user; key files are not world-readable.

Exit status 0 when nothing failed (warnings included), 1 when any check failed; ``--json`` prints
``{"ok", "checks": [{"name", "status", "message", "hint"}]}``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

# Only what building the parser needs is imported at the top: ``enigma --help`` must start fast.
if TYPE_CHECKING:
    from pathlib import Path

    from clients.cli.context import Context
    from clients.cli.render import Output

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
CONNECT_TIMEOUT = 3.0  # seconds for the broker's TCP handshake
CHECK_CONFIG_TIMEOUT = 30.0
DISK_FAIL = 200 * 1024**2  # below this the store cannot grow much and model downloads fail
DISK_WARN = 2 * 1024**3
LLM_MODULES = ("llm", "ollama", "llamacpp")


class Check(NamedTuple):
    name: str
    status: str
    message: str
    hint: str = ""


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "doctor",
        parents=[common],
        help="check the setup end to end and say what to fix",
        description="Check that enigmad answers, its config is valid, a model is loadable, the MQTT broker is "
        "reachable (when the mqtt module is on), the data dir has space and safe permissions. Exit status 1 when "
        "a check fails.",
    )
    p.add_argument("--config", metavar="PATH", help="the daemon's config file, for the local config check")
    p.set_defaults(run=doctor)


def doctor(ctx: Context) -> None:
    """Runs every check, prints the report, and exits 1 when any check failed (0 otherwise)."""
    import asyncio

    checks = asyncio.run(run_checks(ctx))
    ctx.render.show(report(checks))
    if any(c.status == FAIL for c in checks):
        # The report is the whole answer (stdout stays one JSON document with --json): no extra error line.
        raise SystemExit(1)


def report(checks: list[Check]) -> Output:
    from clients.cli.render import Column, Table

    rows = [c._asdict() | {"detail": c.message + (f" — {c.hint}" if c.hint else "")} for c in checks]
    columns = [Column("status", "STATUS", state=True), Column("name", "CHECK"), Column("detail", "DETAIL")]
    failed = [c.name for c in checks if c.status == FAIL]
    data = {"ok": not failed, "failed": failed, "checks": [c._asdict() for c in checks]}
    return Table(columns, rows, data=data)


# -- the checks --------------------------------------------------------------------------------------------------
async def run_checks(ctx: Context) -> list[Check]:
    local = ctx.is_local()
    checks: list[Check] = []
    status, methods, modules, sysinfo = await _ask_daemon(ctx, checks)
    effective = None
    if local:
        effective = _local_config(ctx, checks, daemon_up=status is not None)
    elif status is not None:
        checks.append(Check("config", OK, "the running daemon loaded its config (on its host: enigmad --check-config)"))
    else:
        checks.append(Check("config", SKIP, "the daemon is on another host: run enigmad --check-config there"))
    if status is not None:
        checks.append(_modules_check(modules))
        checks.append(await _model_check(ctx, modules, methods))
        checks.append(_mqtt_check(modules, local))
    else:
        for name in ("modules", "model", "mqtt"):
            checks.append(Check(name, SKIP, "needs a running daemon"))
    data_dir = _data_dir(status, effective, local)
    checks.append(_disk_check(sysinfo, data_dir))
    checks.append(_permissions_check(status, effective, data_dir))
    return checks


async def _ask_daemon(
    ctx: Context, checks: list[Check]
) -> tuple[dict[str, Any] | None, set[str], list[dict[str, Any]], dict[str, Any] | None]:
    """sys.status, the method names, module.list and system.info (if served), or Nones when it is down."""
    from bus.errors import BusError
    from clients.cli.exits import CliError
    from clients.cli.render import duration

    try:
        async with ctx.client() as c:
            status = await c.call("sys.status", {}, timeout=ctx.timeout)
            methods = {m.get("method", "") for m in (await c.call("sys.methods", {}, timeout=ctx.timeout))["methods"]}
            modules = (await c.call("module.list", {}, timeout=ctx.timeout)).get("modules", [])
            sysinfo = None
            if "system.info" in methods:
                sysinfo = await c.call("system.info", {}, timeout=ctx.timeout)
    except CliError as exc:
        hint = "start it: sudo systemctl start enigmad (or run enigmad); logs: journalctl -u enigmad"
        checks.append(Check("daemon", FAIL, exc.message.split(" — ")[0], hint))
        return None, set(), [], None
    except BusError as exc:
        hint = "see its log: journalctl -u enigmad -e"
        checks.append(Check("daemon", FAIL, f"enigmad at {ctx.rpc} answered with an error: {exc.message}", hint))
        return None, set(), [], None
    up = duration(status.get("uptime"))
    message = f"enigmad {status.get('version', '?')} at {ctx.rpc}, node {status.get('node_id')}, up {up}"
    checks.append(Check("daemon", OK, message))
    return status, methods, modules, sysinfo


def _enigmad() -> str | None:
    """The ``enigmad`` command beside this interpreter (a venv) or on PATH."""
    import shutil
    from pathlib import Path

    beside = Path(sys.executable).parent / "enigmad"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("enigmad")


def _local_config(ctx: Context, checks: list[Check], *, daemon_up: bool) -> dict[str, Any] | None:
    """Run ``enigmad --check-config``; returns the effective config it printed (None when it could not)."""
    import json
    import subprocess

    exe = _enigmad()
    if exe is None:
        if daemon_up:
            checks.append(Check("config", OK, "the running daemon loaded its config (no local enigmad to check it)"))
        else:
            checks.append(Check("config", SKIP, "enigmad is not installed here, so its config cannot be checked"))
        return None
    args = [exe, "--check-config"] + (["--config", ctx.args.config] if ctx.args.config else [])
    try:
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=CHECK_CONFIG_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        checks.append(Check("config", WARN, f"could not run {exe} --check-config: {exc}"))
        return None
    if proc.returncode != 0:
        line = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        checks.append(Check("config", FAIL, line, "fix the key it names, then: sudo systemctl reload enigmad"))
        return None
    source = next((ln for ln in proc.stderr.splitlines() if ln.startswith("# config file:")), "")
    where = source.removeprefix("# config file:").strip()
    verdict = "no config file: the built-in defaults apply" if where in ("", "(none)") else f"{where} is valid"
    running = "; the running daemon loaded its config" if daemon_up else ""
    checks.append(Check("config", OK, verdict + running))
    try:
        effective = json.loads(proc.stdout)
    except ValueError:
        return None
    return effective if isinstance(effective, dict) else None


def _modules_check(modules: list[dict[str, Any]]) -> Check:
    failed = [m for m in modules if m.get("state") == "failed"]
    active = [m["name"] for m in modules if m.get("state") == "active"]
    if failed:
        names = ", ".join(f"{m['name']} ({m.get('error') or 'no message'})" for m in failed)
        first = failed[0]["name"]
        return Check("modules", WARN, f"failed: {names}", f"fix the cause, then: enigma modules load {first}")
    return Check("modules", OK, f"active: {', '.join(active) or 'none'}")


async def _model_check(ctx: Context, modules: list[dict[str, Any]], methods: set[str]) -> Check:
    llms = [m for m in modules if m.get("name") in LLM_MODULES or m.get("slot") == "llm"]
    active = [m for m in llms if m.get("state") == "active"]
    failed = [m for m in llms if m.get("state") == "failed"]
    if active:
        m = active[0]
        info = m.get("info") or {}
        model = info.get("model") or info.get("path") or "its default model"
        extra = ""
        if "model.list" in methods:
            extra = await _model_list_note(ctx)
        return Check("model", OK, f"{m['name']} is active with {model}{extra}")
    if failed:
        m = failed[0]
        return Check(
            "model",
            FAIL,
            f"the {m['name']} module failed to load: {m.get('error') or 'no message'}",
            f"check [modules.{m['name']}] model in the config, then: enigma modules load {m['name']}",
        )
    if not llms:
        return Check("model", SKIP, "this daemon has no LLM module")
    return Check(
        "model", WARN, "no LLM module is loaded: chat and ask will not answer", "load one: enigma modules load llm"
    )


async def _model_list_note(ctx: Context) -> str:
    from bus.errors import BusError

    try:
        async with ctx.client() as c:
            models = (await c.call("model.list", {}, timeout=ctx.timeout)).get("models", [])
    except BusError as exc:
        return f" (model.list failed: {exc.message})"
    return f"; {len(models)} model(s) in the store"


def _mqtt_check(modules: list[dict[str, Any]], local: bool) -> Check:
    import socket
    from urllib.parse import urlsplit

    mqtt = next((m for m in modules if m.get("name") == "mqtt"), None)
    if mqtt is None or mqtt.get("state") not in ("active", "failed"):
        return Check("mqtt", SKIP, "the mqtt module is not loaded")
    if mqtt.get("state") == "failed":
        return Check(
            "mqtt",
            FAIL,
            f"the mqtt module failed: {mqtt.get('error') or 'no message'}",
            "check [modules.mqtt] host/port and that the broker runs (systemctl status mosquitto)",
        )
    info = mqtt.get("info") or {}
    broker = str(info.get("broker", ""))
    url = urlsplit(broker)
    host, port = url.hostname, url.port or (8883 if url.scheme == "mqtts" else 1883)
    if not host:
        return Check("mqtt", WARN, "the mqtt module does not say which broker it uses")
    connected = info.get("connected")
    if not local and host in ("127.0.0.1", "localhost", "::1"):
        # The broker is on the daemon's host: only the daemon's own view counts.
        if connected:
            return Check("mqtt", OK, f"the daemon is connected to {broker}")
        return Check("mqtt", FAIL, f"the daemon is not connected to {broker}", "is mosquitto running on that host?")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        return Check(
            "mqtt",
            FAIL,
            f"cannot connect to the broker {host}:{port}: {exc.strerror or exc}",
            "start it (sudo systemctl start mosquitto) or fix [modules.mqtt] host/port",
        )
    if connected is False:
        return Check("mqtt", WARN, f"{host}:{port} accepts connections but the daemon is not connected (yet)")
    return Check("mqtt", OK, f"broker {host}:{port} reachable" + (", daemon connected" if connected else ""))


def _data_dir(status: dict[str, Any] | None, effective: dict[str, Any] | None, local: bool) -> Path | None:
    from pathlib import Path

    if not local:
        return None
    if status is not None and status.get("data_dir"):
        return Path(status["data_dir"])
    if effective is not None:
        d = effective.get("daemon", {}).get("data_dir")
        if d:
            return Path(d)
    return None


def _disk_check(sysinfo: dict[str, Any] | None, data_dir: Path | None) -> Check:
    disk = (sysinfo or {}).get("disk") if sysinfo else None
    if isinstance(disk, dict) and "free" in disk:
        free, total, source = int(disk["free"]), int(disk.get("total") or 0), "system.info"
    elif data_dir is not None:
        probe = data_dir if data_dir.exists() else next((p for p in data_dir.parents if p.exists()), None)
        if probe is None:
            return Check("disk", SKIP, f"{data_dir} does not exist")
        try:
            st = os.statvfs(probe)
        except OSError as exc:
            return Check("disk", SKIP, f"cannot stat {probe}: {exc.strerror}")
        free, total, source = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize, str(probe)
    else:
        return Check("disk", SKIP, "the data dir is on another host; load the system module to check it remotely")
    text = f"{_size(free)} free of {_size(total)} ({source})"
    if free < DISK_FAIL:
        return Check("disk", FAIL, text, "free some space: the store and new models need room to grow")
    if free < DISK_WARN:
        return Check("disk", WARN, text, "less than 2 GiB left: a model download or a backup may not fit")
    return Check("disk", OK, text)


def _permissions_check(status: dict[str, Any] | None, effective: dict[str, Any] | None, data_dir: Path | None) -> Check:
    import stat

    if data_dir is None:
        return Check("permissions", SKIP, "the data dir is not on this machine")
    try:
        st = data_dir.stat()
    except PermissionError:
        return Check("permissions", SKIP, f"cannot inspect {data_dir} as this user (run as root or the daemon's user)")
    except FileNotFoundError:
        return Check("permissions", SKIP, f"{data_dir} does not exist yet (the daemon creates it)")
    problems: list[str] = []
    hints: list[str] = []
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o002 or mode & 0o020:
        problems.append(f"{data_dir} is writable by others (mode {mode:04o})")
    elif mode & 0o007:
        problems.append(f"{data_dir} is open to every user (mode {mode:04o})")
    if problems:
        hints.append(f"chmod 0700 {data_dir}")
    owner = _daemon_uid(status)
    if owner is not None and st.st_uid != owner:
        problems.append(f"{data_dir} is owned by uid {st.st_uid}, the daemon runs as uid {owner}")
        hints.append(f"chown -R {owner} {data_dir}")
    for key in _key_files(effective, data_dir):
        try:
            kmode = stat.S_IMODE(key.stat().st_mode)
        except (FileNotFoundError, PermissionError):
            continue
        if kmode & 0o004:
            problems.append(f"{key} is world-readable (mode {kmode:04o})")
            hints.append(f"chmod 0600 {key}")
    if problems:
        return Check("permissions", WARN, "; ".join(problems), "; ".join(hints))
    owned = ", owned by the daemon's user" if owner is not None else ""
    return Check("permissions", OK, f"{data_dir} is {mode:04o}{owned}; key files are private")


def _daemon_uid(status: dict[str, Any] | None) -> int | None:
    """The uid the daemon runs as, when it runs on this machine (its /proc entry)."""
    pid = (status or {}).get("pid")
    if not isinstance(pid, int):
        return None
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _key_files(effective: dict[str, Any] | None, data_dir: Path) -> list[Path]:
    from pathlib import Path

    sec = (effective or {}).get("security", {})
    keys = [
        Path(sec.get("key_file") or data_dir / "server.key"),
        Path(sec.get("allow_file") or data_dir / "allow.json"),
    ]
    from clients.cli.context import default_key_file

    return [*keys, default_key_file()]


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
