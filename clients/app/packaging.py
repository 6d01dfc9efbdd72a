"""Stage the app's sources for an Android build: ``python -m clients.app.packaging build/android``.

Buildozer packages one directory whose ``main.py`` starts the app. The repository also holds the daemon and
the engine, which must not go to a phone (torch alone is gigabytes), so this copies only what the app imports
— ``bus``, ``clients/sdk`` and ``clients/app`` — into a fresh directory and writes that ``main.py``. The
top-level ``buildozer.spec`` points ``source.dir`` at ``build/android``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bus", "clients/sdk", "clients/app")
FILES = ("clients/__init__.py",)
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "android-src")
MAIN = '''"""Android entry point written by clients.app.packaging: start the Enigma app."""

from clients.app.main import main

main([])
'''


def stage(target: Path, root: Path = ROOT) -> list[str]:
    """Fill ``target`` (emptied first) with the app's sources and ``main.py``; returns the top-level names."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for pkg in PACKAGES:
        shutil.copytree(root / pkg, target / pkg, ignore=IGNORE)
    for name in FILES:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target / name)
    (target / "main.py").write_text(MAIN, encoding="utf-8")
    return sorted(p.name for p in target.iterdir())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clients.app.packaging", description=__doc__.splitlines()[0])
    p.add_argument("target", type=Path, nargs="?", default=ROOT / "build" / "android")
    args = p.parse_args(argv)
    names = stage(args.target)
    print(f"staged {', '.join(names)} in {args.target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
