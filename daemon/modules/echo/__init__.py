"""``echo``: answers with what it is sent, and streams a count — the probe for the bus and its streaming path."""
