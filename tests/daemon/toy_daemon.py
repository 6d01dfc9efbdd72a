"""A test build of enigmad: the built-in modules plus ``toy`` (``tests.daemon.toy``), registered the way a new
module is (one registry line)."""

from __future__ import annotations

import sys

MAIN = "tests.daemon.toy_daemon"  # for DaemonLauncher.start(main=…)

if __name__ == "__main__":
    from daemon import __main__ as enigmad
    from daemon.modules import REGISTRY

    REGISTRY["toy"] = "tests.daemon.toy.module:ToyModule"
    sys.exit(enigmad.main(sys.argv[1:]))
