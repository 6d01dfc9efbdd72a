"""Drive the real app in this process (a test runs it as a subprocess): ``python -m tests.app.drive_app SCENARIO
RPC EVENTS WIDTHxHEIGHT OUT_DIR PREFIX DATA_DIR``. Prints one JSON line with what it saw, and saves screenshots as
``OUT_DIR/PREFIX-<what>.png``.

Scenarios: ``chat`` types a question into the message field, taps Send, waits for the streamed reply and checks
that the widget tree shows it, then visits every screen; ``estop`` waits for a moving robot, checks that the
top bar's E-STOP is shown, taps it and waits for the robot to stop; ``pair`` pairs on the Connect screen with
the daemon key in ``$ENIGMA_TEST_SERVER_KEY``, prints ``PAIRED <device key>`` and waits until it is allowed;
``shell`` goes to every screen through the navigation (drawer, then sidebar after resizing the window to
1280×800, then drawer again at 360×780), measures the module cards, and watches a toast across a switch.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from tests.app.waiting import wait_until as until

QUESTION = "What is the capital of France?"


async def frames(n: int = 3) -> None:
    """Let Kivy lay out and draw ``n`` frames, so a screenshot shows the latest state."""
    from kivy.clock import Clock

    loop = asyncio.get_running_loop()
    for _ in range(n):
        fut = loop.create_future()
        Clock.schedule_once(lambda _dt, f=fut: f.done() or f.set_result(None), 0)
        await fut


def labels(widget: Any) -> list[str]:
    """Every non-empty label and button text in the widget tree, in tree order."""
    out = []
    for w in widget.walk(restrict=True):
        text = getattr(w, "text", None)
        if isinstance(text, str) and text.strip() and w.opacity > 0:
            out.append(text)
    return out


class Shooter:
    def __init__(self, out_dir: Path, prefix: str) -> None:
        self.out_dir, self.prefix = out_dir, prefix
        self.files: dict[str, str] = {}

    async def __call__(self, what: str) -> None:
        from kivy.core.window import Window

        await frames()
        taken = Window.screenshot(name=str(self.out_dir / f".{self.prefix}-{what}-.png"))
        self.files[what] = self._keep(taken, what)

    def _keep(self, taken: str, what: str) -> str:
        """Kivy numbers screenshot files; give each the stable name the report refers to."""
        target = self.out_dir / f"{self.prefix}-{what}.png"
        Path(taken).replace(target)
        return str(target)


async def chat(app: Any, shoot: Shooter) -> dict[str, Any]:
    await app.views.conn.wait_connected(60)
    await until(app.views.chat, lambda: app.views.chat.available, 30, "the chat module")
    ids = app.screen("chat").ids
    ids.entry.text = QUESTION
    streaming: list[str] = []

    def on_line(what: str, i: Any) -> None:
        if what == "line" and app.views.chat.lines[i].text and not streaming:
            streaming.append(app.views.chat.lines[i].text)
            asyncio.get_running_loop().create_task(shoot("chat-streaming"))

    app.views.chat.bind(on_line)
    ids.send.dispatch("on_release")
    await until(
        app.views.chat, lambda: len(app.views.chat.lines) == 2 and not app.views.chat.busy, 120, "the streamed reply"
    )
    reply = app.views.chat.lines[-1]
    await shoot("chat")
    seen = labels(app.root)
    result = {"reply": reply.text, "complete": reply.complete, "note": reply.note, "labels": seen}
    result["copied"] = await copy_reply(app)
    result["title"] = app.screen("chat").chat_title
    for name in ("modules", "status", "settings", "connect"):
        app.show(name)
        if name == "modules":
            result["toast_after_switch"] = app.toast
        await frames(4)
        await shoot(name)
        if name == "modules":
            result["confirm"] = await confirm_dialog(app, shoot, "ollama")
    app.show("chat")
    if not app.wide:
        app.screen("chat").show_sessions = True
        await shoot("sessions")
        app.screen("chat").show_sessions = False
    app.controller("settings").set_theme("light")
    await frames(4)
    await shoot("chat-light")
    result["theme"] = app.theme
    return result


async def copy_reply(app: Any) -> dict[str, str]:
    """Tap the reply's Copy button; report the toast and what the clipboard then holds."""
    from kivy.core.clipboard import Clipboard
    from kivy.uix.button import Button

    rv = app.screen("chat").ids.messages
    button = next(w for w in rv.walk(restrict=True) if isinstance(w, Button) and w.text == "Copy" and not w.disabled)
    button.dispatch("on_release")
    await frames(1)
    return {"toast": app.toast, "clipboard": Clipboard.paste()}


async def confirm_dialog(app: Any, shoot: Shooter, module: str) -> list[str]:
    """Tap a module's toggle: the dialog must say what would happen before anything is done."""
    from kivy.core.window import Window
    from kivy.uix.popup import Popup

    app.controller("modules").ask_toggle(module)
    await frames(4)
    await shoot("modules-confirm")
    popup = next(w for w in Window.children if isinstance(w, Popup))
    seen = labels(popup)
    popup.dismiss()
    await frames(2)
    return seen


async def estop(app: Any, shoot: Shooter) -> dict[str, Any]:
    await app.views.conn.wait_connected(60)
    await until(app.views.status, lambda: bool(app.views.status.moving), 30, "a moving robot")
    app.show("status")
    await until(app.views.status, lambda: "rover" in app.views.status.robots, 10, "the robot listed")
    await frames(4)
    bar = app.root.ids.estop
    shown = {"width": bar.width, "opacity": bar.opacity, "disabled": bar.disabled, "labels": labels(app.root)}
    await shoot("estop-moving")
    bar.dispatch("on_release")
    await until(app.views.status, lambda: not app.views.status.moving, 15, "the robot to stop")
    await frames(4)
    await shoot("estop-stopped")
    after = {"width": bar.width, "opacity": bar.opacity, "state": app.views.status.robots["rover"].get("state")}
    return {"shown": shown, "after": after, "labels": labels(app.root)}


async def pair(app: Any, shoot: Shooter, rpc: str, events: str) -> dict[str, Any]:
    """Pair on the Connect screen; print the device key for the test to allow, then wait to be let in."""
    for _ in range(100):  # the app opens the Connect screen as it starts, having no daemon to go to
        if app.root.ids.screens.current == "connect":
            break
        await frames(1)
    from clients.app.store import DiscoveredDaemon

    # what LAN discovery would hand over; listed under "Found on this network"
    seen_on_lan = DiscoveredDaemon("kitchen-pi", "tcp://10.0.0.9:7700", "tcp://10.0.0.9:7701", fingerprint="1f2e:3d4c")
    app.views.conn.set_discovered([seen_on_lan])
    ids = app.screen("connect").ids
    ids.address.text = f"{rpc} {events}"
    ids.name.text = "lab"
    ids.server_key.text = os.environ["ENIGMA_TEST_SERVER_KEY"]
    ids.pair.dispatch("on_release")
    await frames(4)
    await shoot("pairing")
    result: dict[str, Any] = {"labels": labels(app.root), "allow": app.screen("connect").allow_command}
    public, _fp = app.views.conn.device_identity()
    print(f"PAIRED {public}", flush=True)
    await app.views.conn.wait_connected(60)
    await frames(4)
    await shoot("paired")
    result["link"] = app.shell.link_text
    return result


def nav_state(app: Any) -> dict[str, Any]:
    """Where the navigation is and what of it can be seen."""
    shell = app.shell
    menu, sidebar = shell.ids.menu, shell.ids.sidebar
    return {
        "window": list(app.root.get_root_window().size),
        "in_sidebar": shell.nav in sidebar.children,  # ids are weak proxies: "is" would never match
        "in_drawer": shell.nav in shell.drawer.children,
        "sidebar_width": sidebar.width,
        "menu": {"width": menu.width, "opacity": menu.opacity, "disabled": menu.disabled},
        "drawer_open": shell.drawer_open,
        "entries": [e.text for e in shell.nav.entries.values()],
    }


async def visit_all(app: Any, through_drawer: bool) -> dict[str, Any]:
    """Tap each navigation entry (opening the drawer first when there is one); report what each tap showed."""
    seen: dict[str, Any] = {}
    for name, entry in app.shell.nav.entries.items():
        if through_drawer:
            app.shell.ids.menu.dispatch("on_release")
            await frames(2)
            assert app.shell.drawer_open, "the menu button did not open the drawer"
        entry.dispatch("on_release")
        await frames(2)
        current = [n for n, e in app.shell.nav.entries.items() if e.current]
        seen[name] = {
            "screen": app.root.ids.screens.current,
            "marked": current,
            "drawer_open": app.shell.drawer_open,
        }
    return seen


def rect(w: Any) -> list[float]:
    x, y = w.to_window(w.x, w.y)
    return [x, y, w.width, w.height]


async def module_cards(app: Any) -> dict[str, Any]:
    """Each module card's rect, and the rects of what it holds, in window coordinates."""
    from clients.app.ui.widgets import Card

    await until(app.views.modules, lambda: bool(app.views.modules.rows), 20, "the module list")
    app.shell.nav.entries["modules"].dispatch("on_release")
    await frames(4)
    cards = {}
    for name, item in app.controller("modules").items.items():
        card = next(w for w in item.walk(restrict=True) if isinstance(w, Card))
        cards[name] = {"card": rect(card), "parts": [rect(c) for c in card.children]}
    return cards


async def toast_across_switch(app: Any) -> dict[str, Any]:
    """Say something on the Connect screen (an address it refuses), then switch to Chat."""
    app.shell.nav.entries["connect"].dispatch("on_release")
    await frames(2)
    ids = app.screen("connect").ids
    ids.address.text = "pi.local:99999"
    connect = next(w for w in app.screen("connect").walk(restrict=True) if getattr(w, "text", "") == "Connect")
    connect.dispatch("on_release")
    await frames(2)
    said = {"toast": app.toast, "height": app.root.ids.toast.height}
    app.shell.nav.entries["chat"].dispatch("on_release")
    await frames(2)
    return {"said": said, "after": {"toast": app.toast, "height": app.root.ids.toast.height}}


async def shell(app: Any, shoot: Shooter) -> dict[str, Any]:
    from kivy.core.window import Window

    from clients.app.ui.screens import SCREENS

    await app.views.conn.wait_connected(60)
    result: dict[str, Any] = {"registered": [c.name for c in SCREENS]}
    result["narrow"] = nav_state(app)
    app.shell.ids.menu.dispatch("on_release")
    await frames(2)
    result["drawer"] = nav_state(app)
    await shoot("drawer")
    app.shell.drawer.dismiss(animation=False)
    result["visits_narrow"] = await visit_all(app, through_drawer=True)
    result["cards"] = await module_cards(app)
    await shoot("modules-cards")
    result["toast"] = await toast_across_switch(app)
    size = tuple(Window.size)
    Window.size = (1280, 800)
    await frames(4)
    result["wide"] = nav_state(app)
    result["visits_wide"] = await visit_all(app, through_drawer=False)
    Window.size = size
    await frames(4)
    result["narrow_again"] = nav_state(app)
    return result


def main() -> None:
    scenario, rpc, events, size_text, out_dir, prefix, data_dir = sys.argv[1:8]
    width, height = (int(x) for x in size_text.split("x"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from clients.app.main import make_app, run_app

    pairing = scenario == "pair"  # start on the Connect screen: the daemon is not known yet
    app = make_app((width, height), Path(data_dir), None if pairing else rpc, None if pairing else events)
    shoot = Shooter(out, prefix)
    result: dict[str, Any] = {}

    async def driver(app: Any) -> None:
        if pairing:
            result.update(await pair(app, shoot, rpc, events))
        else:
            result.update(await {"chat": chat, "estop": estop, "shell": shell}[scenario](app, shoot))

    asyncio.run(run_app(app, driver))
    result["screenshots"] = shoot.files
    result["window"] = [width, height]
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
