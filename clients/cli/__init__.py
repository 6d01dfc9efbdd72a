"""The ``enigma`` command-line client: one module per command group, registered in ``clients.cli.main``."""
