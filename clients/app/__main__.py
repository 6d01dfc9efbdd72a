"""``python -m clients.app`` — the same as the ``enigma-app`` command."""

from clients.app.main import main

if __name__ == "__main__":
    raise SystemExit(main())
