"""``enigma-app``: start the Enigma app on a desktop (on Android, buildozer runs ``main.py`` at the top).

Kivy reads its window settings when ``kivy.core.window`` is first imported, so they are set here before the
UI package is imported. ``--rpc``/``--events`` (or ``ENIGMA_RPC``/``ENIGMA_EVENTS``) connect to that daemon at
once; otherwise the app reconnects to the daemon used last, or opens the Connect screen.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clients.app.ui.app import Driver, EnigmaApp

PHONE = (360, 780)
DESKTOP = (1024, 720)


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d{2,5})x(\d{2,5})", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"size must look like 360x780, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="enigma-app", description="The Enigma app: chat, modules, status and robots.")
    p.add_argument("--rpc", default=os.environ.get("ENIGMA_RPC"), help="daemon address or request endpoint")
    p.add_argument("--events", default=os.environ.get("ENIGMA_EVENTS"), help="event endpoint (default: rpc port+1)")
    p.add_argument("--data-dir", type=Path, help="where the app keeps its files (default: the platform's)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size", type=parse_size, help="window size, e.g. 1280x800")
    size.add_argument("--phone", action="store_const", const=PHONE, dest="size", help="a 360x780 portrait window")
    return p


def configure_kivy(size: tuple[int, int] | None) -> None:
    """Window settings that must be in place before Kivy creates its window."""
    os.environ.setdefault("KIVY_NO_ARGS", "1")
    from kivy.config import Config

    width, height = size or DESKTOP
    Config.set("graphics", "width", str(width))
    Config.set("graphics", "height", str(height))
    Config.set("graphics", "resizable", "1")
    Config.set("graphics", "minimum_width", "320")
    Config.set("graphics", "minimum_height", "480")
    Config.set("input", "mouse", "mouse,disable_multitouch")
    Config.set("kivy", "exit_on_escape", "0")


def make_app(
    size: tuple[int, int] | None = None,
    data_dir: Path | None = None,
    rpc: str | None = None,
    events: str | None = None,
) -> EnigmaApp:
    configure_kivy(size)
    from clients.app.ui.app import EnigmaApp

    return EnigmaApp(data_dir=data_dir, rpc=rpc, events=events)


async def run_app(app: EnigmaApp, driver: Driver | None = None) -> None:
    from clients.app.ui.app import run

    await run(app, driver)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    app = make_app(args.size, args.data_dir, args.rpc, args.events)
    asyncio.run(run_app(app))
    return 0
