"""The chat screen: the conversation streamed token by token, the sessions list and the persona picker."""

from __future__ import annotations

from typing import Any

from kivy.clock import Clock
from kivy.properties import BooleanProperty, ListProperty, NumericProperty, StringProperty
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.recycleview.views import RecycleDataViewBehavior

from clients.app.ui import dialogs
from clients.app.ui.screens.base import Context, EnigmaScreen, ScreenController
from clients.app.viewmodels import ChatLine
from clients.app.viewmodels.connection import LinkView

NO_PERSONA = "No persona"


class MessageItem(RecycleDataViewBehavior, BoxLayout):
    """One chat message; recycled by the conversation's RecycleView, so it holds no state of its own."""

    index = NumericProperty(0)
    role = StringProperty("assistant")
    text = StringProperty("")
    note = StringProperty("")
    streaming = BooleanProperty(False)

    def refresh_view_attrs(self, rv: Any, index: int, data: dict[str, Any]) -> Any:
        self.index = index
        return super().refresh_view_attrs(rv, index, data)


class SessionItem(BoxLayout):
    session_id = StringProperty("")
    title = StringProperty("")
    current = BooleanProperty(False)


class ChatScreen(EnigmaScreen):
    show_sessions = BooleanProperty(False)  # a phone shows the sessions list instead of the conversation
    chat_title = StringProperty("New conversation")
    chat_busy = BooleanProperty(False)
    chat_lines = BooleanProperty(False)
    chat_hint = StringProperty("Not connected: pick a daemon on the Connect screen.")
    persona_text = StringProperty(NO_PERSONA)
    persona_names = ListProperty([NO_PERSONA])
    sessions_text = StringProperty("No conversations yet")


class ChatController(ScreenController):
    name = "chat"
    title = "Chat"
    screen_class = ChatScreen

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.chat = ctx.views.chat
        self.conn = ctx.views.conn
        self.listen(
            self.chat,
            {
                "lines": self._lines,
                "line": self._line,
                "busy": self._busy,
                "title": self._title,
                "sessions": self._sessions,
                "personas": self._personas,
                "persona": self._persona,
            },
        )
        self.listen(self.conn, {"state": self._link, "daemon": self._link})

    # -- what the view models say ---------------------------------------------------------------------------
    @staticmethod
    def _line_data(line: ChatLine) -> dict[str, Any]:
        return {"text": line.text or " ", "role": line.role, "note": line.note, "streaming": line.streaming}

    def _lines(self, _lines: Any) -> None:
        self.screen.ids.messages.data = [self._line_data(x) for x in self.chat.lines]
        self.screen.chat_lines = bool(self.chat.lines)
        self.screen.chat_title = self.chat.title
        self._scroll_to_end()

    def _line(self, index: int) -> None:
        self.screen.ids.messages.data[index] = self._line_data(self.chat.lines[index])
        self._scroll_to_end()

    def _busy(self, busy: Any) -> None:
        self.screen.chat_busy = bool(busy)

    def _title(self, title: str) -> None:
        self.screen.chat_title = title

    def _sessions(self, _sessions: Any) -> None:
        current = self.chat.session_id
        self.screen.ids.sessions.data = [
            {"session_id": s["id"], "title": s.get("title") or "Untitled", "current": s["id"] == current}
            for s in self.chat.sessions
        ]
        n = len(self.chat.sessions)
        self.screen.sessions_text = f"{n} conversation{'s' if n != 1 else ''}" if n else "No conversations yet"
        if not self.chat.available:
            self.screen.chat_hint = "Chat is off on this daemon: turn on the chat module in Modules."
        elif not self.chat.lines:
            self.screen.chat_hint = "Ask anything. Replies stream in as they are written."

    def _personas(self, _personas: Any) -> None:
        self.screen.persona_names = [NO_PERSONA] + [p["name"] for p in self.chat.personas]

    def _persona(self, persona: str | None) -> None:
        self.screen.persona_text = persona or NO_PERSONA

    def _link(self, _detail: Any) -> None:
        if self.conn.state != LinkView.CONNECTED and not self.chat.lines:
            self.screen.chat_hint = f"{self.conn.state.capitalize()}: {self.conn.detail}"

    def _scroll_to_end(self) -> None:
        """Show the newest message: the bottom when the conversation overflows, else the top."""
        rv = self.screen.ids.messages

        def scroll(_dt: float) -> None:
            rv.scroll_y = 0 if rv.children and rv.children[0].height > rv.height else 1

        Clock.schedule_once(scroll, 0)

    # -- taps -----------------------------------------------------------------------------------------------
    def send_message(self) -> None:
        entry = self.screen.ids.entry
        text = entry.text.strip()
        if not text or self.chat.busy:
            return
        entry.text = ""
        self.ctx.go(self.chat.send(text))

    def stop_reply(self) -> None:
        self.ctx.go(self.chat.stop())

    def regenerate(self) -> None:
        self.ctx.go(self.chat.regenerate())

    def new_conversation(self) -> None:
        self.chat.new_conversation()
        self.screen.show_sessions = False

    def open_session(self, session_id: str) -> None:
        self.screen.show_sessions = False
        self.ctx.go(self.chat.open_session(session_id))

    def delete_session(self, session_id: str) -> None:
        self.ctx.go(self.chat.delete_session(session_id))

    def pick_persona(self, text: str) -> None:
        name = None if text == NO_PERSONA else text
        if name != self.chat.persona:
            self.chat.select_persona(name)

    def copy(self, index: int) -> None:
        from kivy.core.clipboard import Clipboard

        try:
            Clipboard.copy(self.chat.copy_text(index))
        except Exception as exc:  # no clipboard provider (e.g. a headless window)
            self.ctx.say(f"cannot copy: {exc}")
            return
        self.ctx.say("Copied")

    def rename_dialog(self) -> None:
        session_id = self.chat.session_id
        if session_id is None:
            return

        def save(title: str) -> None:
            self.ctx.go(self.chat.rename_session(session_id, title or "Untitled"))

        dialogs.rename(self.chat.title, save)

    kv = """
#:import dp kivy.metrics.dp
#:import controller_of clients.app.ui.screens.base.controller_of

<PersonaOption@SpinnerOption>:
    background_normal: ""
    background_color: app.c_raised
    color: app.c_fg
    font_size: app.font_size
    height: dp(40)


<MessageItem>:
    orientation: "vertical"
    size_hint_y: None
    height: self.minimum_height
    padding: dp(10), dp(4)
    spacing: dp(2)
    Label:
        id: bubble
        text: root.text
        markup: False
        color: app.c_fg
        font_size: app.font_size
        size_hint: None, None
        width: min(root.width * 0.86, dp(680))
        pos_hint: {"right": 1} if root.role == "user" else {"x": 0}
        text_size: self.width - dp(24), None
        padding: dp(12), dp(9)
        height: self.texture_size[1]
        halign: "left"
        canvas.before:
            Color:
                rgba: app.c_user if root.role == "user" else app.c_bot
            RoundedRectangle:
                pos: self.pos
                size: self.size
                radius: [dp(14)]
    BoxLayout:
        size_hint: None, None
        width: min(root.width * 0.86, dp(680))
        pos_hint: {"right": 1} if root.role == "user" else {"x": 0}
        height: dp(22) if root.role == "assistant" else 0
        opacity: 1 if root.role == "assistant" else 0
        padding: dp(6), 0
        spacing: dp(6)
        Label:
            text: "writing…" if root.streaming else root.note
            color: app.c_muted
            font_size: app.font_size * 0.75
            text_size: self.size
            halign: "left"
            valign: "middle"
        Button:
            text: "Copy"
            size_hint_x: None
            width: dp(52)
            background_normal: ""
            background_down: ""
            background_color: 0, 0, 0, 0
            color: app.c_accent
            font_size: app.font_size * 0.75
            disabled: root.streaming or root.role != "assistant"
            on_release: controller_of(self).copy(root.index)

<SessionItem>:
    size_hint_y: None
    height: dp(52)
    spacing: dp(4)
    padding: dp(6), dp(3)
    Button:
        background_normal: ""
        background_down: ""
        background_color: app.c_raised if root.current else app.c_surface
        on_release: controller_of(self).open_session(root.session_id)
        Label:
            pos: self.parent.pos
            size: self.parent.size
            text: root.title
            color: app.c_fg
            font_size: app.font_size * 0.9
            text_size: self.width - dp(16), self.height
            halign: "left"
            valign: "middle"
            shorten: True
            shorten_from: "right"
    Button:
        text: "Del"
        size_hint_x: None
        width: dp(44)
        background_normal: ""
        background_color: 0, 0, 0, 0
        color: app.c_danger
        font_size: app.font_size * 0.8
        on_release: controller_of(self).delete_session(root.session_id)

<ChatScreen>:
    BoxLayout:
        orientation: "vertical"
        BoxLayout:
            size_hint_y: None
            height: dp(50)
            padding: dp(8), dp(5)
            spacing: dp(6)
            Flat:
                text: "Sessions"
                size_hint_x: None
                width: 0 if app.wide else dp(84)
                opacity: 0 if app.wide else 1
                disabled: app.wide
                on_release: root.show_sessions = not root.show_sessions
            Button:
                id: title
                text: root.chat_title
                background_normal: ""
                background_down: ""
                background_color: 0, 0, 0, 0
                bold: True
                color: app.c_fg
                font_size: app.font_size
                text_size: self.size
                halign: "left"
                valign: "middle"
                shorten: True
                shorten_from: "right"
                on_release: root.controller.rename_dialog()
            Spinner:
                id: persona
                text: root.persona_text
                values: root.persona_names
                option_cls: "PersonaOption"
                size_hint: None, None
                width: dp(104)
                height: dp(40)
                background_normal: ""
                background_color: app.c_raised
                color: app.c_fg
                font_size: app.font_size * 0.85
                shorten: True
                text_size: self.width - dp(8), None
                halign: "center"
                on_text: root.controller.pick_persona(self.text)
            Accent:
                text: "New"
                size_hint_x: None
                width: dp(56)
                on_release: root.controller.new_conversation()
        BoxLayout:
            spacing: dp(6)
            BoxLayout:
                id: session_panel
                orientation: "vertical"
                size_hint_x: None
                width: (dp(260) if app.wide else (root.width if root.show_sessions else 0))
                opacity: 1 if (app.wide or root.show_sessions) else 0
                disabled: not (app.wide or root.show_sessions)
                canvas.before:
                    Color:
                        rgba: app.c_surface
                    Rectangle:
                        pos: self.pos
                        size: self.size
                Muted:
                    text: "  " + root.sessions_text
                    height: dp(28)
                RecycleView:
                    id: sessions
                    viewclass: "SessionItem"
                    bar_width: dp(4)
                    RecycleBoxLayout:
                        orientation: "vertical"
                        default_size: None, dp(52)
                        default_size_hint: 1, None
                        size_hint_y: None
                        height: self.minimum_height
            BoxLayout:
                orientation: "vertical"
                size_hint_x: 1
                opacity: 0 if (root.show_sessions and not app.wide) else 1
                Label:
                    id: empty
                    text: root.chat_hint
                    color: app.c_muted
                    font_size: app.font_size
                    size_hint_y: None if root.chat_lines else 1
                    height: 0 if root.chat_lines else self.texture_size[1]
                    opacity: 0 if root.chat_lines else 1
                    text_size: self.width - dp(40), None
                    halign: "center"
                RecycleView:
                    id: messages
                    viewclass: "MessageItem"
                    bar_width: dp(4)
                    size_hint_y: 1 if root.chat_lines else None
                    height: 0
                    RecycleBoxLayout:
                        orientation: "vertical"
                        default_size: None, dp(60)
                        default_size_hint: 1, None
                        size_hint_y: None
                        height: self.minimum_height
                        padding: 0, dp(8)
                        spacing: dp(4)
        BoxLayout:
            size_hint_y: None
            height: dp(56)
            padding: dp(8)
            spacing: dp(6)
            Flat:
                id: regenerate
                text: "Again"
                size_hint_x: None
                width: dp(64)
                disabled: root.chat_busy or not root.chat_lines
                on_release: root.controller.regenerate()
            Field:
                id: entry
                hint_text: "Message"
                on_text_validate: root.controller.send_message()
                text_validate_unfocus: False
            FlatBase:
                id: send
                bold: True
                color: 1, 1, 1, 1
                text: "Stop" if root.chat_busy else "Send"
                background_color: app.c_danger if root.chat_busy else app.c_accent
                size_hint_x: None
                width: dp(68)
                on_release: root.controller.stop_reply() if root.chat_busy else root.controller.send_message()
"""
