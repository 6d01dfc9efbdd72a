"""The app's shell, rendered offscreen: navigation that fits the window, every screen reachable from it, module
cards that do not overlap on a phone, and a toast that stays on its own screen.

One run of the app (``drive_app shell`` against a daemon with the default modules) records what it saw; each
test checks one behaviour of that record.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.app.test_ui import PHONE, drive
from tests.conftest import DaemonLauncher

pytest.importorskip("kivy")

SCREENS = ["chat", "modules", "status", "settings", "connect"]
TITLES = ["Chat", "Modules", "Status", "Settings", "Connect"]


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("app-shell")
    launcher = DaemonLauncher(base)
    try:
        daemon = launcher.start()
        yield asyncio.run(drive("shell", daemon, PHONE, "phone-shell", base))
    finally:
        launcher.stop_all()


def overlap(a: list[float], b: list[float]) -> float:
    """The area two rects ``[x, y, width, height]`` share."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(w, 0) * max(h, 0)


def inside(inner: list[float], outer: list[float]) -> bool:
    x, y, w, h = inner
    return outer[0] <= x and outer[1] <= y and x + w <= outer[0] + outer[2] and y + h <= outer[1] + outer[3]


def test_every_registered_screen_has_a_navigation_entry(seen: dict[str, Any]) -> None:
    assert seen["registered"] == SCREENS
    assert seen["narrow"]["entries"] == TITLES


def test_phone_window_has_a_drawer_and_no_sidebar(seen: dict[str, Any]) -> None:
    narrow = seen["narrow"]
    assert narrow["window"] == [360, 780]
    assert narrow["in_drawer"]
    assert not narrow["in_sidebar"]
    assert narrow["sidebar_width"] == 0
    assert not narrow["drawer_open"]
    assert narrow["menu"]["opacity"] == 1
    assert narrow["menu"]["width"] > 0
    assert not narrow["menu"]["disabled"]
    assert seen["drawer"]["drawer_open"], "the Menu button did not open the drawer"


def test_every_screen_is_reachable_from_the_drawer(seen: dict[str, Any]) -> None:
    for name in SCREENS:
        assert seen["visits_narrow"][name] == {"screen": name, "marked": [name], "drawer_open": False}


def test_desktop_window_has_a_sidebar_and_no_menu(seen: dict[str, Any]) -> None:
    wide = seen["wide"]
    assert wide["window"] == [1280, 800]
    assert wide["in_sidebar"]
    assert not wide["in_drawer"]
    assert wide["sidebar_width"] > 0
    assert not wide["drawer_open"]
    assert wide["menu"] == {"width": 0, "opacity": 0, "disabled": True}
    assert wide["entries"] == TITLES


def test_every_screen_is_reachable_from_the_sidebar(seen: dict[str, Any]) -> None:
    for name in SCREENS:
        assert seen["visits_wide"][name] == {"screen": name, "marked": [name], "drawer_open": False}


def test_narrowing_the_window_goes_back_to_the_drawer(seen: dict[str, Any]) -> None:
    again = seen["narrow_again"]
    assert again["window"] == [360, 780]
    assert again["in_drawer"]
    assert not again["in_sidebar"]
    assert again["sidebar_width"] == 0
    assert again["menu"]["opacity"] == 1


def test_module_cards_do_not_overlap_on_a_phone(seen: dict[str, Any]) -> None:
    cards = seen["cards"]
    assert {"llamacpp", "llm"} <= set(cards)
    for (a, ra), (b, rb) in itertools.combinations(cards.items(), 2):
        assert overlap(ra["card"], rb["card"]) == 0, f"the {a} and {b} cards overlap: {ra['card']} {rb['card']}"


def test_module_cards_hold_all_they_show(seen: dict[str, Any]) -> None:
    for name, r in seen["cards"].items():
        assert r["card"][2] <= 360
        for part in r["parts"]:
            assert inside(part, r["card"]), f"the {name} card {r['card']} does not hold {part}"


def test_toast_is_gone_after_switching_screens(seen: dict[str, Any]) -> None:
    said = seen["toast"]["said"]
    assert said["toast"] == "port '99999' in 'pi.local:99999' must be a number from 1 to 65534"
    assert said["height"] > 0
    assert seen["toast"]["after"] == {"toast": "", "height": 0}


def test_drawer_screenshots_are_saved(seen: dict[str, Any]) -> None:
    assert {"drawer", "modules-cards"} <= set(seen["screenshots"])
    assert all(Path(f).exists() for f in seen["screenshots"].values())
