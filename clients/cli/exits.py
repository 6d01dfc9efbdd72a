"""Exit codes and the translation of any failure into one line that says what failed and what to do.

Scripts branch on the exit code, people read the line; both come from ``describe`` so they cannot disagree.

====  =====================================================================================
code  meaning
====  =====================================================================================
0     success
1     the daemon answered with an error (unknown module, forbidden, bad request …), or a
      local operation failed (key file exists, unreadable key …)
2     usage error: unknown command or option, missing or malformed argument
3     enigmad cannot be reached at the endpoint (not running, wrong address, wrong key)
4     enigmad was reached but did not answer within ``--timeout``
130   interrupted (Ctrl-C)
====  =====================================================================================
"""

from __future__ import annotations

from typing import Any

OK = 0
FAILED = 1
USAGE = 2
UNREACHABLE = 3
TIMEOUT = 4
INTERRUPTED = 130


class CliError(Exception):
    """A failure the CLI itself detected, already phrased for the user."""

    def __init__(self, message: str, *, code: str = "failed", exit_code: int = FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.exit_code = exit_code


class UsageError(CliError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="usage", exit_code=USAGE)


class Unreachable(CliError):
    """No daemon answered: the message names the endpoint and how to start or reach one."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="unreachable", exit_code=UNREACHABLE)


def unreachable_message(rpc: str, *, remote: bool, curve: bool) -> str:
    """The hint depends on what most likely went wrong: no daemon, a remote one without keys, or our key refused."""
    if curve:
        return (
            f"cannot reach enigmad at {rpc} — is it running, is --curve-server-key its key (enigmad keys show), "
            "and is your key allowed? (on the daemon host: enigmad keys allow YOUR-PUBLIC-KEY --role user)"
        )
    if remote:
        return (
            f"cannot reach enigmad at {rpc} — a daemon off this host needs CURVE: "
            "pass --curve-server-key KEY (see: enigmad keys show) after allowing your key (see: enigma keys)"
        )
    return f"cannot reach enigmad at {rpc} — is it running? (start it with: enigmad)"


def describe(exc: BaseException) -> tuple[str, str, int, dict[str, Any] | None]:
    """``(message, code, exit_code, details)`` for any exception that reached the top of the CLI."""
    if isinstance(exc, CliError):
        return exc.message, exc.code, exc.exit_code, None
    from bus.errors import BusError, ErrorCode

    if isinstance(exc, BusError):
        if exc.code == ErrorCode.TIMEOUT:
            return f"{exc.message} (timeout) — give it longer with --timeout SECONDS", "timeout", TIMEOUT, None
        return f"{exc.message} ({exc.code})", str(exc.code), FAILED, exc.details or None
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{':' + where if where else ''}", "os_error", FAILED, None
    return f"unexpected {type(exc).__name__}: {exc} (run again with --verbose for the trace)", "internal", FAILED, None
