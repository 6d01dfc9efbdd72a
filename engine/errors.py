"""One exception family for everything the engine can refuse or fail at.

The engine knows nothing of the bus, yet its errors must reach a user as a clear message with the right wire
code. So each class carries a ``code`` spelled like the bus error codes (``bad_request``, ``not_found`` …) and
the daemon maps ``EngineError`` to its bus twin in one place by that string. Loaders raise these instead of
letting a deep numpy/torch/struct traceback escape: a user who points the engine at a broken file learns what
is wrong with the file, not where inside a parser it tripped.
"""

from __future__ import annotations

from typing import Any, ClassVar


class EngineError(Exception):
    """Base of every engine error; ``code`` is the bus error code it travels as."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class UnsupportedModel(EngineError):
    """The file is readable but describes something this engine does not run (architecture, layout)."""

    code: ClassVar[str] = "bad_request"


class UnsupportedQuantType(UnsupportedModel):
    """A tensor is stored in a quantization type this engine cannot dequantize."""


class ModelFileError(EngineError):
    """The file is truncated, corrupt, or not a model file at all."""

    code: ClassVar[str] = "bad_request"


class MissingTensor(ModelFileError):
    """The file lacks a weight the architecture needs (or holds it with the wrong shape)."""


class TokenizerError(EngineError):
    """The tokenizer (or the chat template) cannot be built or cannot render the input."""

    code: ClassVar[str] = "bad_request"


class ModelNotFound(EngineError):
    """No file, directory or stored model by that name."""

    code: ClassVar[str] = "not_found"


class ModelExists(EngineError):
    """The model store already holds a model under that name."""

    code: ClassVar[str] = "conflict"


class ProtectedModel(EngineError):
    """The operation would change a model the store does not own (the packaged default)."""

    code: ClassVar[str] = "forbidden"


class InvalidArgument(EngineError):
    """A caller passed a value the engine cannot use (a malformed model name, a negative length …)."""

    code: ClassVar[str] = "bad_request"
