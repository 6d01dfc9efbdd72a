"""Method calls from MQTT devices through ``enigma/<node>/rpc/request``."""

from __future__ import annotations

import json

from bus.mqtt_bridge import MqttBridge
from daemon.hub import Hub
from tests.mqtt.broker import Mosquitto
from tests.mqtt.conftest import NODE, bridge_config
from tests.mqtt.helpers import call, collector, request_props

REQ = f"enigma/{NODE}/rpc/request"


async def test_reply_carries_body_ref_and_echoed_correlation_data(broker: Mosquitto, bridge: MqttBridge) -> None:
    envs, msgs = await call(broker, REQ, {"method": "test.echo", "body": {"x": 1}, "id": "r1"}, correlation=b"\x00c7")
    assert [(e["kind"], e["ref"], e["body"]) for e in envs] == [("reply", "r1", {"echo": {"x": 1}})]
    assert msgs[0].properties.CorrelationData == b"\x00c7"


async def test_caller_is_mqtt_with_default_device_role(broker: Mosquitto, bridge: MqttBridge) -> None:
    envs, _ = await call(broker, REQ, {"method": "sys.status"})
    assert envs[0]["body"] == {"node_id": NODE, "caller": "mqtt", "role": "device"}


async def test_stream_chunks_arrive_in_order_then_end(broker: Mosquitto, bridge: MqttBridge) -> None:
    envs, msgs = await call(broker, REQ, {"method": "test.count", "body": {"n": 50}, "id": "s1"})
    assert [e["kind"] for e in envs] == ["chunk"] * 50 + ["end"]
    assert [e["seq"] for e in envs[:-1]] == list(range(50))
    assert [e["body"]["i"] for e in envs[:-1]] == list(range(50))
    assert envs[-1]["body"] == {"count": 50}
    assert {m.properties.CorrelationData for m in msgs} == {b"corr-1"}


async def test_unknown_method_answers_unknown_method_error(broker: Mosquitto, bridge: MqttBridge) -> None:
    envs, _ = await call(broker, REQ, {"method": "no.such", "id": "u1"})
    assert envs == [
        {"v": 1, "kind": "error", "id": envs[0]["id"], "ref": "u1",
         "body": {"code": "unknown_method", "message": "unknown method 'no.such'"}},
    ]  # fmt: skip


async def test_handler_error_code_and_message_reach_device(broker: Mosquitto, bridge: MqttBridge) -> None:
    envs, _ = await call(broker, REQ, {"method": "test.missing", "body": {"name": "x"}})
    assert envs[0]["body"] == {"code": "not_found", "message": "no such thing: x"}


async def test_device_role_may_not_call_admin_method(broker: Mosquitto, bridge: MqttBridge) -> None:
    envs, _ = await call(broker, REQ, {"method": "test.admin"})
    assert envs[0]["kind"] == "error"
    assert envs[0]["body"]["code"] == "forbidden"
    assert envs[0]["body"]["message"] == "role 'device' may not call 'test.admin' (needs 'admin')"


async def test_username_topic_gets_the_role_configured_for_that_user(broker: Mosquitto, bridge: MqttBridge) -> None:
    envs, _ = await call(broker, REQ + "/alice", {"method": "test.admin"})
    assert envs[0]["kind"] == "reply"
    assert envs[0]["body"] == {"secret": 42}


async def test_unconfigured_username_gets_the_default_role(broker: Mosquitto, bridge: MqttBridge) -> None:
    envs, _ = await call(broker, REQ + "/mallory", {"method": "test.admin"})
    assert envs[0]["body"]["code"] == "forbidden"


async def test_invalid_json_answers_bad_request(broker: Mosquitto, bridge: MqttBridge) -> None:
    envs, _ = await call(broker, REQ, None, raw=b"{not json")
    assert envs[0]["body"]["code"] == "bad_request"
    assert envs[0]["body"]["message"].startswith("request is not valid JSON: ")


async def test_non_object_request_answers_bad_request(broker: Mosquitto, bridge: MqttBridge) -> None:
    envs, _ = await call(broker, REQ, [1, 2])
    assert envs[0]["body"] == {"code": "bad_request", "message": "request must be a JSON object, got list"}


async def test_missing_method_answers_bad_request(broker: Mosquitto, bridge: MqttBridge) -> None:
    envs, _ = await call(broker, REQ, {"body": {}})
    assert envs[0]["body"] == {
        "code": "bad_request",
        "message": "'method' must be a non-empty string of at most 128 characters",
    }


async def test_non_object_body_answers_bad_request(broker: Mosquitto, bridge: MqttBridge) -> None:
    envs, _ = await call(broker, REQ, {"method": "test.echo", "body": "text"})
    assert envs[0]["body"] == {"code": "bad_request", "message": "'body' must be a JSON object, got str"}


async def test_oversized_request_answers_too_large(broker: Mosquitto, bridge: MqttBridge) -> None:
    big = b'{"method":"test.echo","body":{"x":"' + b"a" * 300_000 + b'"}}'
    envs, _ = await call(broker, REQ, None, raw=big)
    assert envs[0]["body"]["code"] == "too_large"
    assert envs[0]["body"]["message"] == f"request of {len(big)} bytes exceeds the limit of {256 * 1024}"


async def test_reply_to_field_serves_devices_without_mqtt5_properties(broker: Mosquitto, bridge: MqttBridge) -> None:
    async with collector(broker, "dev/v311") as c:
        req = {"method": "test.echo", "body": {"a": 1}, "reply_to": "dev/v311"}
        await c.client.publish(REQ, json.dumps(req).encode(), qos=1)
        await c.wait_for(lambda: bool(c.on("dev/v311")))
        assert c.json_on("dev/v311")[0]["body"] == {"echo": {"a": 1}}


async def test_response_topic_inside_node_namespace_is_refused(broker: Mosquitto, bridge: MqttBridge) -> None:
    async with collector(broker, f"enigma/{NODE}/#") as c:
        props = request_props(f"enigma/{NODE}/status", b"x")
        await c.client.publish(REQ, json.dumps({"method": "test.echo"}).encode(), qos=1, properties=props)
        # requests are handled in order: once a later call is answered, the refused one was handled (and had
        # it been answered, that answer would have arrived first)
        envs, _ = await call(broker, REQ, {"method": "test.echo"})
        assert envs[0]["kind"] == "reply"
        assert bridge.stats()["rejected"] == 1
        assert not any("kind" in json.loads(m.payload) for m in c.messages)


async def test_cancel_ends_stream_with_cancelled_error(broker: Mosquitto, bridge: MqttBridge) -> None:
    async with collector(broker, "dev/cancel") as c:
        props = request_props("dev/cancel", b"k")
        await c.client.publish(REQ, json.dumps({"method": "test.forever", "id": "f1"}).encode(), 1, properties=props)
        await c.wait_for(lambda: len(c.on("dev/cancel")) == 1, what="the first chunk")
        await c.client.publish(REQ, json.dumps({"cancel": "f1"}).encode(), 1, properties=props)
        await c.wait_for(lambda: len(c.on("dev/cancel")) == 2, what="the cancelled error")
    envs = c.json_on("dev/cancel")
    assert envs[0]["kind"] == "chunk"
    assert envs[1]["kind"] == "error"
    assert envs[1]["ref"] == "f1"
    assert envs[1]["body"] == {"code": "cancelled", "message": "test.forever was cancelled"}
    assert bridge.stats()["calls"] == 0


async def test_close_ends_inflight_stream_with_cancelled(broker: Mosquitto, bridge: MqttBridge) -> None:
    async with collector(broker, "dev/closing") as c:
        props = request_props("dev/closing", None)
        await c.client.publish(REQ, json.dumps({"method": "test.forever", "id": "f2"}).encode(), 1, properties=props)
        await c.wait_for(lambda: len(c.on("dev/closing")) == 1, what="the first chunk")
        await bridge.close()
        await c.wait_for(lambda: len(c.on("dev/closing")) == 2, what="the cancelled error")
    assert c.json_on("dev/closing")[1]["body"]["code"] == "cancelled"


async def test_calls_beyond_the_limit_are_busy(broker: Mosquitto, hub: Hub) -> None:
    bridge = MqttBridge(hub, bridge_config(broker, max_calls=1))
    await bridge.start(wait=10)
    try:
        async with collector(broker, "dev/busy") as c:
            props = request_props("dev/busy", None)
            await c.client.publish(REQ, json.dumps({"method": "test.forever", "id": "a"}).encode(), 1, properties=props)
            await c.wait_for(lambda: len(c.on("dev/busy")) == 1, what="the first chunk")
            envs, _ = await call(broker, REQ, {"method": "test.echo", "id": "b"})
        assert envs[0]["body"] == {"code": "busy", "message": "too many calls in progress (limit 1)"}
    finally:
        await bridge.close()


async def test_reusing_the_id_of_a_call_in_progress_is_refused(broker: Mosquitto, bridge: MqttBridge) -> None:
    async with collector(broker, "dev/dup") as c:
        props = request_props("dev/dup", None)
        req = json.dumps({"method": "test.forever", "id": "same"}).encode()
        await c.client.publish(REQ, req, 1, properties=props)
        await c.wait_for(lambda: len(c.on("dev/dup")) == 1, what="the first chunk")
        await c.client.publish(REQ, req, 1, properties=props)
        await c.wait_for(lambda: len(c.on("dev/dup")) == 2, what="the refusal")
    assert c.json_on("dev/dup")[1]["body"] == {
        "code": "bad_request",
        "message": "a call with id 'same' is already in progress",
    }


async def test_request_without_response_topic_is_counted_and_dropped(broker: Mosquitto, bridge: MqttBridge) -> None:
    async with collector(broker) as c:
        await c.client.publish(REQ, json.dumps({"method": "test.echo"}).encode(), qos=1)
    envs, _ = await call(broker, REQ, {"method": "test.echo"})  # handled after the one before it
    assert envs[0]["kind"] == "reply"
    assert bridge.stats()["unanswerable"] == 1
