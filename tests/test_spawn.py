"""The daemons and brokers the fixtures start die with pytest, even when pytest is killed and runs no teardown."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT

# A stand-in for a pytest process: it starts a broker from its main thread and a daemon from a thread that ends
# at once (as asyncio.to_thread does), checks that the daemon outlived that thread, reports both pids and waits.
PARENT = textwrap.dedent(
    """
    import json, sys, threading
    from pathlib import Path
    from clients.sdk import SyncClient
    from tests.conftest import DaemonLauncher
    from tests.mqtt.broker import Mosquitto

    base = Path(sys.argv[1])
    broker = Mosquitto(base / "broker")
    broker.start()
    started = []
    worker = threading.Thread(target=lambda: started.append(DaemonLauncher(base).start()))
    worker.start()
    worker.join()
    daemon = started[0]
    client = SyncClient(daemon.rpc, daemon.events, timeout=10.0)
    assert client.call("sys.ping")["pong"] is True
    client.close()
    print(json.dumps({"enigmad": daemon.proc.pid, "mosquitto": broker.proc.pid}), flush=True)
    sys.stdin.read()
    """
)


def _exits_within(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` (not our child) exits within ``timeout``: its pidfd becomes readable when it does."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs Linux pidfds")
def test_a_killed_pytest_takes_its_daemon_and_broker_with_it(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    pids: dict[str, int] = {}
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line, f"the stand-in pytest exited with {parent.wait(10)} before starting both"
        pids = json.loads(line)
        assert _exits_within(pids["enigmad"], 0) is False  # alive after the thread that started it ended
        parent.kill()
        parent.wait(10)
        assert _exits_within(pids["enigmad"], 15), "enigmad outlived the pytest that started it"
        assert _exits_within(pids["mosquitto"], 15), "mosquitto outlived the pytest that started it"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        for pid in pids.values():  # only if an assertion above failed: leave nothing running
            if not _exits_within(pid, 0):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if parent.stdin is not None:
            parent.stdin.close()
        if parent.stdout is not None:
            parent.stdout.close()
