"""enigmad: the long-running daemon that owns the engine, the modules and the conversation store."""
