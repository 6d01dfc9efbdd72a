"""``mqtt``: bridges the hub onto an MQTT broker (``bus.mqtt_bridge``), configured by ``[modules.mqtt]``."""
