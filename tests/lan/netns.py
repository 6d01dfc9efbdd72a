"""A private LAN for tests: network namespaces joined by veth pairs to a bridge in a namespace of its own.

Nothing touches the host's real interfaces or the root namespace's addresses: every interface, address and
the bridge live inside namespaces named ``enigma-test-<random>-…`` that ``teardown()`` deletes (deleting a
namespace deletes its interfaces). Node ``i`` gets ``10.213.<subnet>.<i+1>/24`` on its ``eth0``.
Processes start inside a namespace with ``ip netns exec``, which execs the command, so their pid is ours.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass, field


class NetnsUnavailable(RuntimeError):
    """Namespaces cannot be created here (not root, no ``ip``, or a kernel that refuses)."""


def _ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if res.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(args)}: {res.stderr.strip()}")


@dataclass
class Node:
    ns: str | None  # None: the loopback fallback, in our own namespace
    addr: str
    broadcast: str

    def exec_prefix(self) -> list[str]:
        return [] if self.ns is None else ["ip", "netns", "exec", self.ns]


def loopback_nodes(n: int) -> list[Node]:
    """The fallback where namespaces are unavailable: every node on 127.0.0.1 (free ports, no broadcast)."""
    return [Node(None, "127.0.0.1", "") for _ in range(n)]


@dataclass
class Lan:
    prefix: str
    subnet: int
    nodes: list[Node] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, n: int) -> Lan:
        if os.environ.get("ENIGMA_TEST_LAN") == "loopback":
            raise NetnsUnavailable("ENIGMA_TEST_LAN=loopback asks for the loopback fallback")
        if os.geteuid() != 0 or shutil.which("ip") is None:
            raise NetnsUnavailable("network namespaces need root and iproute2")
        tag = os.urandom(3).hex()
        lan = cls(prefix=f"enigma-test-{tag}", subnet=int(tag[:2], 16) % 250 + 1)
        try:
            br = f"{lan.prefix}-br"
            lan._add_ns(br)
            _ip("-n", br, "link", "add", "br0", "type", "bridge")
            _ip("-n", br, "link", "set", "br0", "up")
            for i in range(n):
                ns = f"{lan.prefix}-{i}"
                lan._add_ns(ns)
                _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}", "netns", br)
                _ip("-n", br, "link", "set", f"p{i}", "master", "br0")
                _ip("-n", br, "link", "set", f"p{i}", "up")
                addr = f"10.213.{lan.subnet}.{i + 1}"
                _ip("-n", ns, "addr", "add", f"{addr}/24", "broadcast", f"10.213.{lan.subnet}.255", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                lan.nodes.append(Node(ns, addr, f"10.213.{lan.subnet}.255"))
        except BaseException:
            lan.teardown()
            raise
        return lan

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)

    def teardown(self) -> None:
        for ns in reversed(self._namespaces):
            with contextlib.suppress(NetnsUnavailable, subprocess.TimeoutExpired):
                _ip("netns", "del", ns)
        self._namespaces.clear()
