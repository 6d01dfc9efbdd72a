"""A module's settings: one JSON schema per module, checked by the module manager before the module is built.

Every module declares ``config_schema`` (``daemon.module.Module``): the keys its ``[modules.<name>]`` table may
hold, their types, limits and defaults. The manager checks the table against it on every load, so a module
never parses its own config and every module reports a mistake the same way — the dotted key, what it must
be, what it got, and where the value came from (the TOML file or the ``ENIGMA_*`` variable that set it)::

    modules.peers.prefer must be 'local' or 'peers', got 'nearest' in /etc/enigma/enigmad.toml
    modules.mqtt: unknown key 'brokr' from $ENIGMA_MODULES__MQTT__BROKR (known: broker, …)

The checked table comes back with the schema's defaults filled in, so ``self.ctx.config["key"]`` needs no
fallback in the module: a default is written once, in the schema, where ``module.list`` readers can see it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any, Final

from bus.errors import BadRequest

# Origin of a dotted key ("modules.llm.model") → "in /etc/enigma/enigmad.toml", "from $ENIGMA_…" or "".
Origin = Callable[[str], str]

FREE_FORM: Final[dict[str, Any]] = {"type": "object"}  # the default: any table, unchecked
NO_SETTINGS: Final[dict[str, Any]] = {"type": "object", "additionalProperties": False}

_TYPE_WORDS: Final = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a table",
    "null": "empty",
}
# Which failure to report when one value breaks several rules: the one that lists what would be accepted.
_PRIORITY: Final = {"enum": 0, "const": 0, "type": 1}


class SettingsError(BadRequest):
    """A module setting that cannot be used; the message names the dotted key and where its value came from."""


def _no_origin(_key: str) -> str:
    return ""


def check_schema(schema: dict[str, Any]) -> None:
    """Raise ``jsonschema.SchemaError`` for a schema that is not valid JSON Schema (a bug in the module)."""
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema)


def validate(section: str, schema: dict[str, Any], data: dict[str, Any], origin: Origin = _no_origin) -> dict[str, Any]:
    """Check ``data`` (the ``section`` table, e.g. ``modules.llm``) against ``schema``; return a copy with the
    schema's defaults filled in. Raises ``SettingsError`` naming the first bad key and its origin."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = list(validator.iter_errors(data))
    if errors:
        first = errors[0]
        same = [e for e in errors if list(e.absolute_path) == list(first.absolute_path)]
        worst = min(same, key=lambda e: _PRIORITY.get(str(e.validator), 2))
        raise SettingsError(describe(section, worst, origin))
    return with_defaults(schema, data)


def with_defaults(schema: dict[str, Any], data: Any) -> Any:
    """``data`` with every missing property that has a ``default`` filled in, tables within tables too."""
    if schema.get("type") != "object" or not isinstance(data, dict):
        return copy.deepcopy(data)
    out = {k: copy.deepcopy(v) for k, v in data.items()}
    for key, sub in schema.get("properties", {}).items():
        if key in out:
            out[key] = with_defaults(sub, out[key])
        elif "default" in sub:
            out[key] = with_defaults(sub, copy.deepcopy(sub["default"]))
    return out


def defaults(schema: dict[str, Any]) -> dict[str, Any]:
    """The table a module gets when its section is empty."""
    result: dict[str, Any] = with_defaults(schema, {})
    return result


def describe(section: str, error: Any, origin: Origin = _no_origin) -> str:
    """One sentence for a ``jsonschema.ValidationError``: the dotted key, the rule, the value, the origin."""
    path = list(error.absolute_path)
    key = _dotted(section, path)
    value = error.instance
    rule = error.validator
    arg = error.validator_value
    where = origin(key)
    if rule == "additionalProperties" and isinstance(value, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in value if k not in allowed)
        unknown = _dotted(key, [extra[0]]) if extra else key
        known = ", ".join(sorted(allowed)) or "none"
        return _with(f"{key}: unknown key {extra[0] if extra else '?'!r}", origin(unknown), f"(known: {known})")
    if rule == "required":
        missing = [k for k in arg if not isinstance(value, dict) or k not in value]
        return _with(f"{key}: {_dotted(key, missing[:1])} is required", where)
    if rule == "type":
        text = f"{key} must be {_or(_TYPE_WORDS.get(t, t) for t in _listed(arg))}, got {_show(value)}"
    elif rule == "enum":
        text = f"{key} must be {_or(repr(v) for v in arg)}, got {_show(value)}"
    elif rule == "const":
        text = f"{key} must be {arg!r}, got {_show(value)}"
    elif rule in _BOUNDS:
        text = f"{key} must be {_BOUNDS[rule]} {arg}, got {_show(value)}"
    elif rule in _LENGTHS:
        text = f"{key} must have {_LENGTHS[rule]} {arg} {'character' if isinstance(value, str) else 'item'}"
        text += f"{'' if arg == 1 else 's'}, got {_show(value)}"
    elif rule == "format":
        text = f"{key} must be {_FORMATS.get(str(arg), f'a {arg}')}, got {_show(value)}"
    elif rule == "pattern":
        text = f"{key} must match {arg}, got {_show(value)}"
    else:
        text = f"{key}: {error.message}"
    return _with(text, where)


_BOUNDS: Final = {
    "minimum": "at least",
    "maximum": "at most",
    "exclusiveMinimum": "greater than",
    "exclusiveMaximum": "less than",
}
_LENGTHS: Final = {"minLength": "at least", "maxLength": "at most", "minItems": "at least", "maxItems": "at most"}
_FORMATS: Final = {"ipv4": "an IPv4 address", "ipv6": "an IPv6 address", "uri": "a URI"}


def _dotted(prefix: str, path: Iterable[Any]) -> str:
    out = prefix
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _listed(arg: Any) -> list[str]:
    return list(arg) if isinstance(arg, list) else [str(arg)]


def _or(words: Iterable[str]) -> str:
    items = list(words)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return repr(value)


def _with(text: str, where: str, tail: str = "") -> str:
    return " ".join(part for part in (text, where, tail) if part)
