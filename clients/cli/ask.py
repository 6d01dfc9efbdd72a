"""``enigma ask "…"``: one question, one streamed answer, nothing else on stdout.

Built for pipes and scripts: the question comes from the arguments and/or stdin when stdin is not a terminal
(``git diff | enigma ask "review this"``), only the answer is printed (``--json`` prints JSON lines: one
``{"text"}`` per chunk, then ``{"end": …}`` with the usage). Answers are greedy (``--temperature 0``) unless
``--temperature`` or the persona says otherwise, so a script asking the same question gets the same answer.
Without ``--session`` nothing is stored: it calls ``llm.chat`` directly; with ``--session`` the exchange goes
into that conversation through ``chat.send`` (and the session's persona and the daemon's defaults apply).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from bus.sampling import OPTIONS, SAMPLING_KEYS
from clients.cli.exits import CliError, UsageError

if TYPE_CHECKING:
    from clients.cli.context import Context

STREAM_TIMEOUT = 120.0  # seconds to wait for the next chunk when --timeout is not given (a busy model queues)


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    """The sampling flags shared by ``ask`` and ``chat``, one per protocol option (``bus.sampling.OPTIONS``);
    unset ones are left to the persona and the daemon, which also checks the ranges."""
    g = p.add_argument_group("sampling")
    for o in OPTIONS:
        if o.kind == "strings":
            g.add_argument(o.flag, dest=o.name, action="append", metavar=o.metavar, help=f"{o.help} (repeatable)")
        else:
            g.add_argument(
                o.flag, dest=o.name, type=float if o.kind == "number" else int, metavar=o.metavar, help=o.help
            )


def sampling_from(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling options given on the command line."""
    return {k: getattr(args, k) for k in sorted(SAMPLING_KEYS) if getattr(args, k, None) is not None}


def stream_timeout(ctx: Context) -> float:
    return ctx.args.timeout if ctx.args.timeout is not None else STREAM_TIMEOUT


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "ask",
        parents=[common],
        help="ask one question and print the answer as it streams",
        description="Ask the daemon's language model one question. The question is TEXT, followed by stdin "
        "when stdin is piped. Only the answer is printed.",
    )
    p.add_argument("text", nargs="*", metavar="TEXT", help="the question (joined with spaces)")
    p.add_argument("--session", metavar="ID", help="add the exchange to this chat session (stored)")
    p.add_argument("--persona", metavar="NAME", help="answer with this persona's system prompt and defaults")
    p.add_argument("--system", metavar="TEXT", help="a system prompt for this question (instead of a persona's)")
    add_sampling_options(p)
    p.set_defaults(run=ask)


def read_question(words: list[str], stdin: Any = None) -> str:
    stdin = sys.stdin if stdin is None else stdin
    parts = [" ".join(words)] if words else []
    if stdin is not None and not stdin.isatty():
        piped = stdin.read()
        if piped.strip():
            parts.append(piped.strip())
    text = "\n\n".join(p for p in parts if p.strip())
    if not text:
        raise UsageError('nothing to ask: give the question as TEXT or on stdin (enigma ask "What is …?")')
    return text


def missing_module(exc: Exception) -> Exception:
    """An ``unknown_method`` for chat/LLM methods means the module is not loaded: say which one to load."""
    from bus.errors import UnknownMethod

    if isinstance(exc, UnknownMethod):
        for prefix, module in (("'llm.", "llm"), ("'chat.", "chat"), ("'session.", "chat"), ("'persona.", "chat")):
            if prefix in exc.message:
                return CliError(
                    f"{exc.message}: the {module} module is not loaded — load it with: enigma modules load {module}",
                    code="unknown_method",
                )
    return exc


async def ask(ctx: Context) -> None:
    try:
        await _ask(ctx)
    except Exception as exc:
        mapped = missing_module(exc)
        if mapped is exc:
            raise
        raise mapped from exc


async def _ask(ctx: Context) -> None:
    args = ctx.args
    text = read_question(args.text)
    sampling = sampling_from(args)
    async with ctx.client() as c:
        if args.session:
            if args.system:
                raise UsageError("--system cannot be combined with --session (the session's persona applies)")
            body: dict[str, Any] = {"session_id": args.session, "text": text, **sampling}
            if args.persona:
                body["persona"] = args.persona
            method = "chat.send"
        else:
            messages = []
            system = args.system
            if args.persona:
                persona = await c.call("persona.get", {"name": args.persona}, timeout=ctx.timeout)
                system = system or persona.get("system_prompt")
                sampling = {**persona.get("sampling", {}), **sampling}
            # One-shot answers are greedy unless asked otherwise: the same question gets the same answer.
            sampling.setdefault("temperature", 0.0)
            if system:
                messages.append({"role": "system", "content": system})
            messages.append({"role": "user", "content": text})
            body, method = {"messages": messages, **sampling}, "llm.chat"
        await print_stream(ctx, c, method, body)


async def print_stream(ctx: Context, c: Any, method: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """Print a text stream as it arrives (JSON lines with --json); returns the ``end`` body."""
    out = ctx.render.out
    json_mode = ctx.render.json_mode
    async with c.stream(method, body, timeout=stream_timeout(ctx)) as s:
        async for chunk in s:
            if json_mode:
                ctx.render.item({"text": chunk.get("text", "")}, "")
            else:
                out.write(chunk.get("text", ""))
                out.flush()
    if json_mode:
        ctx.render.item({"end": s.result}, "")
    else:
        out.write("\n")
        out.flush()
    return s.result
