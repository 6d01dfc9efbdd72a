"""Home Assistant MQTT discovery: the daemon and each robot appear as devices with useful entities.

Home Assistant reads retained JSON configs under ``homeassistant/<component>/<object_id>/<entity>/config`` and
builds entities that read our existing topics; nothing new is published for it besides these configs. Off by
default (``ha_discovery = true`` in ``[modules.mqtt]`` for the daemon, in ``[modules.robots]`` for robots).

- Daemon ``enigma_<node>``: a connectivity ``binary_sensor`` from the retained status, and a ``sensor`` with the
  assistant's last answer (from ``chat.message`` events; HA keeps the previous value for user messages).
- Robot ``enigma_robot_<id>``: connectivity, motion state, battery (%), and ``button``s for stop, home and e-stop
  that publish to the robot's ``cmd``/``estop`` topics.
"""

from __future__ import annotations

from typing import Any

from bus.mqtt_topics import (
    HA_ROOT,
    ROBOT_CMD,
    ROBOT_ESTOP,
    ROBOT_STATE,
    ROBOT_STATUS,
    ROBOT_TELEMETRY,
    dumps,
    event_topic,
    level,
    robot_topic,
    status_topic,
)
from bus.topics import CHAT_MESSAGE

LAST_ANSWER_TEMPLATE = "{{ value_json.body.text[:250] if value_json.body.role == 'assistant' else this.state }}"


def _config(component: str, object_id: str, entity: str, config: dict[str, Any]) -> tuple[str, bytes]:
    return f"{HA_ROOT}/{component}/{object_id}/{entity}/config", dumps(config)


def _connectivity(oid: str, status: str, device: dict[str, Any]) -> tuple[str, bytes]:
    """The online/offline sensor both kinds of device get, read from their retained ``status`` topic."""
    return _config(
        "binary_sensor",
        oid,
        "status",
        {
            "name": "Status",
            "unique_id": f"{oid}_status",
            "state_topic": status,
            "value_template": "{{ value_json.state }}",
            "payload_on": "online",
            "payload_off": "offline",
            "device_class": "connectivity",
            "device": device,
        },
    )


def node_discovery(node_id: str) -> list[tuple[str, bytes]]:
    """(topic, retained payload) pairs that describe the daemon ``node_id`` to Home Assistant."""
    oid = f"enigma_{level(node_id)}"
    device = {"identifiers": [oid], "name": f"Enigma {node_id}", "manufacturer": "Enigma", "model": "enigmad"}
    status = status_topic(node_id)
    availability = {"topic": status, "value_template": "{{ value_json.state }}"}
    return [
        _connectivity(oid, status, device),
        _config(
            "sensor",
            oid,
            "last_answer",
            {
                "name": "Last answer",
                "unique_id": f"{oid}_last_answer",
                "state_topic": event_topic(node_id, CHAT_MESSAGE),
                "value_template": LAST_ANSWER_TEMPLATE,
                "icon": "mdi:robot-outline",
                "availability": [availability],
                "device": device,
            },
        ),
    ]


def robot_discovery(robot_id: str) -> list[tuple[str, bytes]]:
    """(topic, retained payload) pairs that describe robot ``robot_id`` to Home Assistant."""
    oid = f"enigma_robot_{level(robot_id)}"
    device = {"identifiers": [oid], "name": f"Robot {robot_id}", "manufacturer": "Enigma", "model": "enigma robot"}
    availability = [{"topic": robot_topic(robot_id, ROBOT_STATUS), "value_template": "{{ value_json.state }}"}]
    common = {"device": device, "availability": availability}
    cmd = robot_topic(robot_id, ROBOT_CMD)

    def button(entity: str, name: str, topic: str, payload: str, icon: str) -> tuple[str, bytes]:
        return _config(
            "button",
            oid,
            entity,
            {
                "name": name,
                "unique_id": f"{oid}_{entity}",
                "command_topic": topic,
                "payload_press": payload,
                "icon": icon,
                **common,
            },
        )

    return [
        _connectivity(oid, robot_topic(robot_id, ROBOT_STATUS), device),
        _config(
            "sensor",
            oid,
            "state",
            {
                "name": "Motion",
                "unique_id": f"{oid}_state",
                "state_topic": robot_topic(robot_id, ROBOT_STATE),
                "value_template": "{{ value_json.state }}",
                "icon": "mdi:robot-mower",
                **common,
            },
        ),
        _config(
            "sensor",
            oid,
            "battery",
            {
                "name": "Battery",
                "unique_id": f"{oid}_battery",
                "state_topic": robot_topic(robot_id, ROBOT_TELEMETRY),
                "value_template": "{{ (value_json.battery * 100) | round(0) }}",
                "unit_of_measurement": "%",
                "device_class": "battery",
                "state_class": "measurement",
                **common,
            },
        ),
        button("stop", "Stop", cmd, '{"action": "stop"}', "mdi:stop"),
        button("home", "Home", cmd, '{"action": "home"}', "mdi:home"),
        button(
            "estop",
            "Emergency stop",
            robot_topic(robot_id, ROBOT_ESTOP),
            '{"by": "home-assistant"}',
            "mdi:alert-octagon",
        ),
    ]


def attach_discovery(bridge: Any) -> None:
    """Have ``bridge`` (an ``MqttBridge``) publish the daemon's discovery configs, retained, on every connect."""
    configs = node_discovery(bridge.config.node_id)

    def publish() -> None:
        for topic, payload in configs:
            bridge.link.publish_nowait(topic, payload, 1, True)

    bridge.on_connect(publish)
