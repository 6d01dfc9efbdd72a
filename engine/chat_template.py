"""Chat templates: the Jinja programs a model ships to turn a list of messages into its prompt text.

Templates come from model files, i.e. from strangers, so they run in Jinja's immutable sandbox. The
environment matches what Hugging Face transformers gives templates (``trim_blocks``, ``lstrip_blocks``,
loop controls, a ``tojson`` that keeps non-ASCII, ``raise_exception``, ``strftime_now``) because templates are
written against that environment; rendering the same messages must give the same text as
``apply_chat_template`` or the model sees a prompt it was not trained on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from engine.errors import TokenizerError

# The ChatML layout (Qwen, SmolLM, many fine-tunes) — used when a model ships no template at all.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # Jinja's own tojson escapes HTML characters (<, >, &), which changes the prompt text.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise TokenizerError(f"the model's chat template does not parse: {exc.message} (line {exc.lineno})") from exc


def render_chat_template(
    template: str | None,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str | None = None,
    eos_token: str | None = None,
    **extra: Any,
) -> str:
    """Render ``messages`` with ``template`` (ChatML when ``None``); template errors become ``TokenizerError``."""
    import jinja2

    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise TokenizerError(f"message {i} is not a mapping with a 'role'")
    compiled = _compile(template or CHATML_TEMPLATE)
    try:
        return compiled.render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token or "",
            eos_token=eos_token or "",
            **extra,
        )
    except jinja2.exceptions.TemplateError as exc:
        raise TokenizerError(f"the chat template rejected the conversation: {exc}") from exc
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise TokenizerError(f"the chat template failed on the conversation: {exc}") from exc
