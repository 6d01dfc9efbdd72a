"""``system``: facts about the machine the daemon runs on, on request and as a periodic event."""
