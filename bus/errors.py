"""One exception family for every error the bus can carry.

Each subclass has a fixed wire ``code``; ``to_body``/``from_body`` convert between an exception and the body
of an ``error`` envelope, so a handler raises ``NotFound("no such module: x")`` and a client catches the same
class on the other side of the wire. The transport maps exceptions to envelopes in exactly one place.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    UNKNOWN_METHOD = "unknown_method"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    BUSY = "busy"
    TOO_LARGE = "too_large"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class BusError(Exception):
    """Base of every error that crosses the bus; ``code`` is what travels on the wire."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": str(self.code), "message": self.message}
        if self.details:
            body["details"] = self.details
        return body

    @staticmethod
    def from_body(body: Any) -> BusError:
        """Rebuild the typed exception from an ``error`` body; tolerant of malformed bodies."""
        if not isinstance(body, dict):
            return InternalError(f"malformed error body: {body!r:.200}")
        code = body.get("code")
        message = body.get("message")
        details = body.get("details")
        cls = _BY_CODE.get(code, InternalError) if isinstance(code, str) else InternalError
        err = cls(
            message if isinstance(message, str) else str(message),
            details if isinstance(details, dict) else None,
        )
        return err

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class BadRequest(BusError):
    code = ErrorCode.BAD_REQUEST


class UnknownMethod(BusError):
    code = ErrorCode.UNKNOWN_METHOD


class Unauthorized(BusError):
    code = ErrorCode.UNAUTHORIZED


class Forbidden(BusError):
    code = ErrorCode.FORBIDDEN


class NotFound(BusError):
    code = ErrorCode.NOT_FOUND


class Conflict(BusError):
    code = ErrorCode.CONFLICT


class Busy(BusError):
    code = ErrorCode.BUSY


class TooLarge(BusError):
    code = ErrorCode.TOO_LARGE


class Timeout(BusError):
    code = ErrorCode.TIMEOUT


class Cancelled(BusError):
    code = ErrorCode.CANCELLED


class Unavailable(BusError):
    code = ErrorCode.UNAVAILABLE


class InternalError(BusError):
    code = ErrorCode.INTERNAL


_BY_CODE: dict[str, type[BusError]] = {
    str(cls.code): cls
    for cls in (
        BadRequest,
        UnknownMethod,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        Busy,
        TooLarge,
        Timeout,
        Cancelled,
        Unavailable,
        InternalError,
    )
}


def error_class(code: ErrorCode | str) -> type[BusError]:
    """The exception class for a wire code (``InternalError`` for codes this version does not know)."""
    return _BY_CODE.get(str(code), InternalError)
