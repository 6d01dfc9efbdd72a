"""Robot clients: one process per robot that speaks MQTT to the broker (see ``clients.robot.node``)."""
