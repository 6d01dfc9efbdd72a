"""A real mosquitto broker for tests: free loopback port, config and persistence in tmp_path, restartable.

Readiness is the port accepting connections (polled in a bounded loop), never a sleep. ``restart()`` stops the
broker with SIGTERM (mosquitto then writes its persistence file) and starts it again on the same port with the
same file, which is what the no-loss test needs. The broker dies with pytest (``tests/spawn.py``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests import spawn

MOSQUITTO = "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Mosquitto:
    def __init__(self, workdir: Path, port: int | None = None, extra: str = "") -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        # Started as root, mosquitto drops to the "mosquitto" user, who cannot write the persistence file in a
        # private tmp dir, and would then lose in-flight messages at a restart: stay who we are.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            "persistence_file mosquitto.db\n"
            "autosave_interval 3600\n"
            "max_inflight_messages 0\n"
            "max_queued_messages 100000\n"
            "log_type error\nlog_type warning\n"
            f"log_dest file {self.log}\n"
            f"{user}{extra}"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.proc = spawn.popen(
            "mosquitto", [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout}s")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(0.01)  # the poll interval; also notices an early exit at once

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (persistence saved), then SIGKILL if it does not exit in time."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()

    @property
    def db(self) -> Path:
        return self.workdir / "mosquitto.db"

    def restart(self) -> None:
        """Stop (persistence written: checked, so a restart test cannot pass without it) and start again."""
        self.stop()
        if not self.db.exists():
            raise RuntimeError(f"mosquitto wrote no persistence file {self.db}; see {self.log}")
        self.start()
