"""The game overlay: shows the assistant's latest answers and spoken lines over the game, and tells the daemon
which game is running (``game.state`` events) so it can pick a game-specific persona. Talks MQTT only."""
