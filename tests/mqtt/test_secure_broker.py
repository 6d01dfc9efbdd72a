"""The LAN setup from docs/mqtt.md: mosquitto with passwords and TLS, and the bridge connecting to it."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from bus.errors import Unavailable
from bus.mqtt_bridge import BridgeConfig, MqttBridge
from daemon.hub import Hub
from tests.mqtt.broker import Mosquitto


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """mosquitto with a TLS listener (certificate for 127.0.0.1 signed by a test CA) and a password file."""
    pki = tmp_path / "pki"
    pki.mkdir()
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-days", "2", "-subj", "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.crt", cwd=pki)
    openssl("req", *ec, "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr", cwd=pki)
    (pki / "san.ext").write_text("subjectAltName = IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.crt", cwd=pki)  # fmt: skip
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "enigmad", "s3cret"], check=True, capture_output=True)
    b = Mosquitto(tmp_path / "broker")
    text = b.conf.read_text().replace("allow_anonymous true\n", "allow_anonymous false\n")
    b.conf.write_text(
        text + f"password_file {passwd}\ncafile {pki}/ca.crt\ncertfile {pki}/server.crt\nkeyfile {pki}/server.key\n"
    )
    b.ca_file = str(pki / "ca.crt")  # type: ignore[attr-defined]
    b.start()
    try:
        yield b
    finally:
        b.stop()


def config(broker: Mosquitto, **conf: object) -> BridgeConfig:
    return BridgeConfig.from_mapping("secure", {"broker": f"mqtts://127.0.0.1:{broker.port}", **conf})


async def test_bridge_connects_over_tls_with_password(secure_broker: Mosquitto) -> None:
    conf = config(secure_broker, ca_file=secure_broker.ca_file, username="enigmad", password="s3cret")  # type: ignore[attr-defined]
    bridge = MqttBridge(Hub(), conf)
    await bridge.start(wait=10)
    try:
        assert bridge.link.connected.is_set()
    finally:
        await bridge.close()


async def test_wrong_password_is_reported_as_unavailable_with_reason(secure_broker: Mosquitto) -> None:
    conf = config(secure_broker, ca_file=secure_broker.ca_file, username="enigmad", password="wrong")  # type: ignore[attr-defined]
    bridge = MqttBridge(Hub(), conf)
    with pytest.raises(Unavailable, match=r"within 1s: .*Not authorized"):
        await bridge.start(wait=1)
    await bridge.close(timeout=1)


async def test_untrusted_certificate_is_refused(secure_broker: Mosquitto) -> None:
    bridge = MqttBridge(Hub(), config(secure_broker, username="enigmad", password="s3cret"))
    with pytest.raises(Unavailable, match=r"within 1s: .*CERTIFICATE_VERIFY_FAILED"):
        await bridge.start(wait=1)
    await bridge.close(timeout=1)


DOC = Path(__file__).resolve().parents[2] / "docs" / "mqtt.md"


def doc_acl() -> str:
    """The ACL file exactly as docs/mqtt.md shows it, so the page and this test cannot drift apart."""
    text = DOC.read_text()
    start = text.index("`/etc/mosquitto/acl`:\n\n```conf\n") + len("`/etc/mosquitto/acl`:\n\n```conf\n")
    return text[start : text.index("```", start)]


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    passwd = tmp_path / "passwd"
    for i, user in enumerate(("enigmad", "ops", "alice")):
        flags = ["-c"] if i == 0 else []
        subprocess.run(["mosquitto_passwd", *flags, "-b", str(passwd), user, f"{user}-pw"], check=True)
    acl = tmp_path / "acl"
    acl.write_text(doc_acl())
    b = Mosquitto(tmp_path / "broker")
    text = b.conf.read_text().replace("allow_anonymous true\n", "allow_anonymous false\n")
    b.conf.write_text(text + f"password_file {passwd}\nacl_file {acl}\n")
    b.start()
    try:
        yield b
    finally:
        b.stop()


async def test_documented_acl_gives_each_user_its_own_role_only(acl_broker: Mosquitto) -> None:
    from tests.mqtt.conftest import make_hub
    from tests.mqtt.helpers import request_props

    conf = BridgeConfig.from_mapping(
        "lan",
        {
            "broker": acl_broker.url,
            "username": "enigmad",
            "password": "enigmad-pw",
            "roles": {"alice": "admin", "ops": "user"},
        },
    )
    bridge = MqttBridge(make_hub(), conf)
    await bridge.start(wait=10)
    got: list[dict[str, object]] = []
    try:
        async with aiomqtt.Client(
            "127.0.0.1", acl_broker.port, username="ops", password="ops-pw", protocol=aiomqtt.ProtocolVersion.V5
        ) as ops:
            await ops.subscribe("replies/ops/#", 1)
            props = request_props("replies/ops/1", b"c")
            spoof = json.dumps({"method": "test.admin", "id": "spoof"}).encode()
            await ops.publish("enigma/lan/rpc/request/alice", spoof, qos=1, properties=props)  # not ops' topic
            await ops.publish(
                "enigma/lan/rpc/request/ops", b'{"method": "test.admin", "id": "own"}', 1, properties=props
            )
            async with asyncio.timeout(10):
                async for m in ops.messages:
                    got.append(json.loads(m.payload))
                    break
    finally:
        await bridge.close()
    # the broker dropped the request ops sent as alice (admin); ops' own one ran with ops' role, user
    assert [(e["ref"], e["body"]["message"]) for e in got] == [
        ("own", "role 'user' may not call 'test.admin' (needs 'admin')")
    ]
    assert bridge.stats()["requests"] == 1
