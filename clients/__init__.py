"""Thin, stateless clients of the Enigma bus: the SDK, the CLI, the app, robots and overlays.

Nothing here imports torch, the engine or the daemon; a phone installs this with pyzmq and msgpack alone.
"""
