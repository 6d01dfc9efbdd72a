"""``enigma chat``: an interactive conversation, stored by the daemon, with slash commands.

On a terminal, lines are read with prompt_toolkit (editing, and history kept in the config dir); from a pipe
they are read plainly, one message per line, so the command is scriptable and testable. Ctrl-C while an answer
streams cancels that answer (the daemon keeps the part already said, marked incomplete) and returns to the
prompt; Ctrl-C at the prompt clears the line; Ctrl-D or ``/quit`` leaves.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from clients.cli.ask import add_sampling_options, sampling_from, stream_timeout

if TYPE_CHECKING:
    from clients.cli.context import Context

HELP = """\
/new [TITLE]        start a new session (same persona)
/sessions           list recent sessions
/switch ID          continue another session
/persona [NAME]     show the persona, or use NAME from now on (/persona - for none)
/regenerate         answer the last message again
/history            show this session's messages
/quit               leave (Ctrl-D too)"""


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "chat",
        parents=[common],
        help="chat interactively (stored sessions, slash commands; /help lists them)",
        description="Chat with the daemon's language model. Each line you type is a message; the answer "
        "streams back. Type /help for the slash commands. Ctrl-C cancels an answer, Ctrl-D leaves.",
    )
    p.add_argument("--session", metavar="ID", help="continue this session (default: start a new one)")
    p.add_argument("--persona", metavar="NAME", help="the persona for a new session")
    add_sampling_options(p)
    p.set_defaults(run=chat)


class LineReader:
    """Lines from a terminal (prompt_toolkit) or a pipe; raises EOFError at the end."""

    def __init__(self, ctx: Context) -> None:
        self.tty = sys.stdin.isatty() and sys.stdout.isatty()
        self._session: Any = None
        if self.tty:
            from prompt_toolkit import PromptSession
            from prompt_toolkit.history import FileHistory

            from clients.cli.context import config_dir

            config_dir().mkdir(parents=True, exist_ok=True)
            self._session = PromptSession(history=FileHistory(str(config_dir() / "chat_history")))

    async def read(self, prompt: str) -> str:
        if self._session is not None:
            return str(await self._session.prompt_async(prompt))
        import asyncio

        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            raise EOFError
        return line.rstrip("\n")


class ChatLoop:
    def __init__(self, ctx: Context, client: Any, reader: LineReader) -> None:
        self.ctx = ctx
        self.c = client
        self.reader = reader
        self.session: dict[str, Any] | None = None
        self.persona: str | None = ctx.args.persona
        self.sampling = sampling_from(ctx.args)

    def say(self, text: str) -> None:
        """Command output and notices: to stdout, so a piped transcript shows them in order."""
        self.ctx.render.out.write(text + "\n")
        self.ctx.render.out.flush()

    async def call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.c.call(method, body, timeout=self.ctx.timeout)
        return result

    async def start(self) -> None:
        if self.ctx.args.session:
            self.session = await self.call("session.get", {"id": self.ctx.args.session})
            self.persona = self.persona or self.session.get("persona")
        else:
            await self.new_session("")
        if self.reader.tty:
            self.say(f"session {self.session_id}{self._persona_note()} — /help for commands, Ctrl-D to leave")

    @property
    def session_id(self) -> str:
        assert self.session is not None
        return str(self.session["id"])

    def _persona_note(self) -> str:
        return f" (persona {self.persona})" if self.persona else ""

    async def new_session(self, title: str) -> None:
        body: dict[str, Any] = {"title": title}
        if self.persona:
            body["persona"] = self.persona
        self.session = await self.call("session.new", body)

    async def run(self) -> None:
        await self.start()
        while True:
            try:
                line = await self.reader.read("you> ")
            except KeyboardInterrupt:
                continue
            except EOFError:
                return
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if await self.command(line) is False:
                    return
                continue
            body = {"session_id": self.session_id, "text": line, **self.sampling}
            if self.persona:
                body["persona"] = self.persona
            await self.answer("chat.send", body)

    async def command(self, line: str) -> bool:
        """Run a slash command; False means leave."""
        from bus.errors import BusError
        from clients.cli.ask import missing_module

        name, _, arg = line.partition(" ")
        arg = arg.strip()
        try:
            if name in ("/quit", "/exit", "/q"):
                return False
            if name == "/help":
                self.say(HELP)
            elif name == "/new":
                await self.new_session(arg)
                self.say(f"new session {self.session_id}{self._persona_note()}")
            elif name == "/sessions":
                sessions = (await self.call("session.list", {"limit": 20}))["sessions"]
                for s in sessions:
                    mark = "*" if s["id"] == self.session_id else " "
                    self.say(f"{mark} {s['id']}  {s['messages']:>4} msgs  {s['title'] or '-'}")
            elif name == "/switch":
                self.session = await self.call("session.get", {"id": arg})
                self.persona = self.session.get("persona")
                self.say(f"switched to session {self.session_id}{self._persona_note()}")
            elif name == "/persona":
                await self.persona_command(arg)
            elif name == "/regenerate":
                await self.answer("chat.regenerate", {"session_id": self.session_id, **self.sampling})
            elif name == "/history":
                for m in (await self.call("session.history", {"id": self.session_id}))["messages"]:
                    flag = "" if m["complete"] else " [incomplete]"
                    self.say(f"{m['role']}: {m['text']}{flag}")
            else:
                self.say(f"unknown command {name}; /help lists them")
        except BusError as exc:
            self.say(
                f"error: {missing_module(exc)}"
                if exc.code == "unknown_method"
                else f"error: {exc.message} ({exc.code})"
            )
        return True

    async def persona_command(self, arg: str) -> None:
        if not arg:
            names = [p["name"] for p in (await self.call("persona.list", {}))["personas"]]
            self.say(f"persona: {self.persona or '(none)'}; available: {', '.join(names) or '(none)'}")
        elif arg == "-":
            self.persona = None
            self.say("no persona for new sessions")
        else:
            await self.call("persona.get", {"name": arg})
            self.persona = arg
            self.say(f"persona {arg} (applies from the next message)")

    async def answer(self, method: str, body: dict[str, Any]) -> None:
        """Stream an answer; Ctrl-C cancels it (the daemon stores the part said, marked incomplete)."""
        import asyncio
        import signal

        from bus.errors import BusError, Cancelled
        from clients.cli.ask import missing_module

        out = self.ctx.render.out
        loop = asyncio.get_running_loop()
        interrupted = asyncio.Event()
        handler_set = False
        try:
            loop.add_signal_handler(signal.SIGINT, interrupted.set)
            handler_set = True
        except (NotImplementedError, RuntimeError):  # not the main thread, or a platform without signals
            pass
        try:
            async with self.c.stream(method, body, timeout=stream_timeout(self.ctx)) as s:
                watcher = asyncio.create_task(self._cancel_on(interrupted, s))
                try:
                    async for chunk in s:
                        out.write(chunk.get("text", ""))
                        out.flush()
                finally:
                    watcher.cancel()
            out.write("\n")
        except Cancelled:
            out.write(" [cancelled]\n")
        except BusError as exc:
            shown = missing_module(exc) if exc.code == "unknown_method" else f"{exc.message} ({exc.code})"
            out.write(f"\nerror: {shown}\n")
        finally:
            if handler_set:
                loop.remove_signal_handler(signal.SIGINT)
            out.flush()

    @staticmethod
    async def _cancel_on(interrupted: Any, stream: Any) -> None:
        await interrupted.wait()
        await stream.cancel()


async def chat(ctx: Context) -> None:
    from clients.cli.ask import missing_module

    reader = LineReader(ctx)
    try:
        async with ctx.client() as c:
            await ChatLoop(ctx, c, reader).run()
    except Exception as exc:
        mapped = missing_module(exc)
        if mapped is exc:
            raise
        raise mapped from exc
