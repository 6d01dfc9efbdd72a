"""enigmad's configuration: a typed schema filled from TOML, then ``ENIGMA_*`` variables, then flags.

Precedence, lowest first: built-in defaults → the TOML file (``--config``, ``$ENIGMA_CONFIG`` or ``enigmad.toml``
in the config directory of ``bus.paths`` when it exists) → environment → command-line flags. Every value
remembers where it came from, so a validation error names the key *and* its source ("in /etc/enigma/x.toml",
"from $ENIGMA_RPC", "from --rpc").

Environment variables:

- Short aliases: ``ENIGMA_RPC``, ``ENIGMA_EVENTS``, ``ENIGMA_DATA_DIR``, ``ENIGMA_NODE_ID``, ``ENIGMA_LOG_LEVEL``
  set the matching ``[daemon]`` key (the clients read ``ENIGMA_RPC``/``ENIGMA_EVENTS`` too, so one export
  points both sides at the same endpoints).
- Any key by path, with ``__`` between levels: ``ENIGMA_DAEMON__SHUTDOWN_TIMEOUT=5``,
  ``ENIGMA_SECURITY__CURVE=true``, ``ENIGMA_MODULES__AUTOLOAD=echo,system``, ``ENIGMA_MODULES__LLM__MODEL=/m.gguf``.
  Values are converted to the key's type (booleans: 1/0, true/false, yes/no, on/off; lists: comma-separated).
  In free-form ``[modules.<name>]`` sections a value that parses as a TOML literal (``8``, ``true``, ``[1,2]``)
  takes that type, anything else is a string.
- ``ENIGMA_DEFAULT_AUTOLOAD=a,b`` replaces the built-in default module list (``llm,chat``) without counting as
  a setting: a configured ``modules.autoload`` still wins. For packagers and test harnesses.
- Other ``ENIGMA_*`` variables without ``__`` are not config keys (clients use some) and are ignored.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from bus import paths
from bus.defaults import DEFAULT_EVENTS, DEFAULT_RPC

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
ENV_PREFIX = "ENIGMA_"
ENV_ALIASES = {
    "ENIGMA_RPC": "daemon.rpc",
    "ENIGMA_EVENTS": "daemon.events",
    "ENIGMA_DATA_DIR": "daemon.data_dir",
    "ENIGMA_NODE_ID": "daemon.node_id",
    "ENIGMA_LOG_LEVEL": "daemon.log_level",
}
_ENDPOINT = re.compile(
    r"^(?:tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.*-]+):(?P<port>\d{1,5})|ipc://.+|inproc://.+)$"
)
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_MODULE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class ConfigError(Exception):
    """A configuration value that cannot be used; the message names the key and where it came from."""


@dataclass
class DaemonConfig:
    rpc: str = DEFAULT_RPC
    events: str = DEFAULT_EVENTS
    data_dir: str = ""  # empty: bus.paths.data_dir() ($XDG_DATA_HOME/enigma, else ~/.local/share/enigma)
    node_id: str = ""  # empty: derived once from the host name and kept in the store
    log_level: str = "info"
    log_levels: dict[str, str] = field(default_factory=dict)  # per area: {"hub" = "debug", "manager" = "warning"}
    shutdown_timeout: float = 10.0  # seconds for a graceful stop before in-flight work is cancelled
    heartbeat: float = 2.0  # seconds between sys.heartbeat events
    # > 0: run the loop in asyncio debug mode and log every callback that holds it longer (seconds). Costly.
    slow_callback: float = 0.0
    backup_max_bytes: int = 4 * 1024**3  # the largest backup archive `enigma backup restore` may upload


@dataclass
class SecurityConfig:
    curve: bool = False  # encrypt and authenticate with CURVE; required for non-loopback endpoints
    key_file: str = ""  # empty: <data_dir>/server.key
    allow_file: str = ""  # empty: <data_dir>/allow.json


# With no autoload setting at all the daemon serves the default model: "works with no file" means ready to chat.
DEFAULT_AUTOLOAD = ("llm", "chat")


@dataclass
class ModulesConfig:
    autoload: list[str] = field(default_factory=lambda: list(DEFAULT_AUTOLOAD))
    # [modules.<name>] tables, free-form, read by the module itself through Config.section().
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    modules: ModulesConfig = field(default_factory=ModulesConfig)
    path: Path | None = None  # the TOML file read, if any
    origins: dict[str, str] = field(default_factory=dict)  # "daemon.rpc" → "in /x.toml" / "from --rpc"

    # -- derived values ------------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return Path(self.daemon.data_dir)

    @property
    def key_file(self) -> Path:
        return Path(self.security.key_file) if self.security.key_file else self.data_dir / "server.key"

    @property
    def allow_file(self) -> Path:
        return Path(self.security.allow_file) if self.security.allow_file else self.data_dir / "allow.json"

    def section(self, name: str) -> dict[str, Any]:
        """A free-form section by dotted name: ``section("modules.llm")`` is the ``[modules.llm]`` table."""
        if name.startswith("modules."):
            return dict(self.modules.sections.get(name.removeprefix("modules."), {}))
        raise KeyError(f"no free-form config section {name!r}")

    def origin(self, key: str) -> str:
        return self.origins.get(key, "(default)")

    def source(self, key: str) -> str:
        """Where ``key`` was set, or the table holding it (a TOML table given whole), or ``""`` for a default:
        ``source("modules.llm.sampling.top_k")`` → ``"in /etc/enigma/enigmad.toml"``."""
        parts = key.replace("[", ".[").split(".")
        while parts:
            found = self.origins.get(".".join(parts).replace(".[", "["))
            if found is not None:
                return found
            parts.pop()
        return ""

    def check_modules(self, known: set[str] | dict[str, Any]) -> None:
        """Refuse autoload entries that name no known module (called once the registry is at hand).

        The built-in default is not checked: a daemon built with a smaller registry simply has less to load
        (``autoload_for``)."""
        if "modules.autoload" not in self.origins:
            return
        for name in self.modules.autoload:
            if name not in known:
                raise ConfigError(
                    f"modules.autoload: unknown module {name!r} {self.origin('modules.autoload')} "
                    f"(known: {', '.join(sorted(known))})"
                )

    def autoload_for(self, known: set[str] | dict[str, Any]) -> list[str]:
        """The modules to load at start: the configured list, or the defaults this registry has."""
        if "modules.autoload" in self.origins:
            return list(self.modules.autoload)
        return [name for name in self.modules.autoload if name in known]

    def to_dict(self) -> dict[str, Any]:
        """The effective configuration as plain data (for ``--check-config`` and ``sys.status``)."""
        modules: dict[str, Any] = {"autoload": list(self.modules.autoload)}
        modules.update({k: dict(v) for k, v in self.modules.sections.items()})
        return {
            "daemon": {f.name: getattr(self.daemon, f.name) for f in fields(DaemonConfig)},
            "security": {f.name: getattr(self.security, f.name) for f in fields(SecurityConfig)},
            "modules": modules,
        }


# -- loading -------------------------------------------------------------------------------------------------
def default_config_path(env: dict[str, str] | None = None) -> Path:
    """``enigmad.toml`` in the config directory (``bus.paths``)."""
    return paths.config_dir(env) / "enigmad.toml"


def default_data_dir(env: dict[str, str] | None = None) -> Path:
    """The data directory (``bus.paths``) when ``daemon.data_dir`` is not set."""
    return paths.data_dir(env)


def load_config(
    path: str | Path | None = None,
    *,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Build and validate the config. ``overrides`` maps dotted keys to flag values (``{"daemon.rpc": …}``).

    An explicit ``path`` (or ``$ENIGMA_CONFIG``) must exist; the default XDG path is optional.
    """
    env = dict(os.environ) if env is None else env
    raw: dict[str, Any] = {}
    origins: dict[str, str] = {}
    explicit = path if path is not None else env.get("ENIGMA_CONFIG") or None
    cfg_path = Path(explicit).expanduser() if explicit else default_config_path(env)
    if explicit and not cfg_path.is_file():
        raise ConfigError(f"config file {cfg_path} does not exist")
    used_path: Path | None = None
    if cfg_path.is_file():
        used_path = cfg_path.resolve()
        try:
            data = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{cfg_path}: not valid TOML: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{cfg_path}: cannot read: {exc}") from None
        _merge(raw, origins, data, f"in {used_path}", ())
    for key, dotted, value in _env_items(env):
        _set(raw, origins, dotted, value, f"from ${key}")
    for dotted, value in (overrides or {}).items():
        if value is not None:
            flag = "--" + dotted.split(".")[-1].replace("_", "-")
            _set(raw, origins, dotted, value, f"from {flag}")
    cfg = _build(raw, origins)
    cfg.path = used_path
    _finish(cfg, env)
    return cfg


def _merge(raw: dict[str, Any], origins: dict[str, str], data: dict[str, Any], source: str, prefix: tuple) -> None:
    for key, value in data.items():
        path = (*prefix, key)
        if isinstance(value, dict) and _is_table(path):
            target = raw.setdefault(key, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{'.'.join(path)}: expected a table {source}")
            _merge(target, origins, value, source, path)
        else:
            raw[key] = value
            origins[".".join(path)] = source


def _is_table(path: tuple) -> bool:
    """Which dotted paths are tables in the schema (so env/flag values merge into them, not replace them)."""
    if len(path) == 1:
        return True
    return (path[0] == "modules" and len(path) == 2 and path[1] != "autoload") or path == ("daemon", "log_levels")


def _set(raw: dict[str, Any], origins: dict[str, str], dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {'.'.join(parts[:-1])} is not a table {source}")
        node = child
    node[parts[-1]] = value
    origins[dotted] = source


def _env_items(env: dict[str, str]) -> list[tuple[str, str, Any]]:
    items: list[tuple[str, str, Any]] = []
    for key in sorted(env):
        if key in ENV_ALIASES:
            items.append((key, ENV_ALIASES[key], env[key]))
        elif key.startswith(ENV_PREFIX) and "__" in key:
            parts = [p.lower() for p in key.removeprefix(ENV_PREFIX).split("__")]
            if any(not p for p in parts):
                raise ConfigError(f"${key}: empty key segment (use ENIGMA_SECTION__KEY)")
            value: Any = env[key]
            if parts[0] == "modules" and len(parts) >= 3:
                value = _toml_literal(value)
            items.append((key, ".".join(parts), value))
    return items


def _toml_literal(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# -- typed building and validation ---------------------------------------------------------------------------
_SECTIONS: dict[str, type] = {"daemon": DaemonConfig, "security": SecurityConfig}


def _build(raw: dict[str, Any], origins: dict[str, str]) -> Config:
    cfg = Config(origins=origins)
    for name, value in raw.items():
        if name in _SECTIONS:
            setattr(cfg, name, _build_section(_SECTIONS[name], name, value, origins))
        elif name == "modules":
            cfg.modules = _build_modules(value, origins)
        else:
            where = _origin_under(origins, name)
            raise ConfigError(f"unknown section or key {name!r} {where} (known: daemon, security, modules)")
    return cfg


def _origin_under(origins: dict[str, str], prefix: str) -> str:
    for key, src in origins.items():
        if key == prefix or key.startswith(prefix + "."):
            return src
    return "(default)"


def _build_section(cls: type, name: str, data: Any, origins: dict[str, str]) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a table {origins.get(name, '')}".rstrip())
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{name}.{key}"
        if key not in known:
            raise ConfigError(
                f"unknown key {dotted!r} {_origin_under(origins, dotted)} (known: {', '.join(sorted(known))})"
            )
        kwargs[key] = _coerce(value, hints[key], dotted, _origin_under(origins, dotted))
    for f in fields(cls):
        if f.name not in kwargs and f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{name}.{f.name} is required")
    return cls(**kwargs)


def _build_modules(data: Any, origins: dict[str, str]) -> ModulesConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"modules: expected a table {origins.get('modules', '')}".rstrip())
    mods = ModulesConfig()
    for key, value in data.items():
        dotted = f"modules.{key}"
        where = _origin_under(origins, dotted)
        if key == "autoload":
            mods.autoload = _coerce(value, list[str], dotted, where)
            for entry in mods.autoload:
                if not _MODULE_NAME.match(entry):
                    raise ConfigError(f"modules.autoload: {entry!r} is not a module name {where}")
        elif isinstance(value, dict):
            if not _MODULE_NAME.match(key):
                raise ConfigError(f"[modules.{key}]: {key!r} is not a module name {where}")
            mods.sections[key] = value
        else:
            raise ConfigError(
                f"unknown key {dotted!r} {where}: [modules] holds 'autoload' and [modules.<name>] tables only"
            )
    return mods


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(value: Any, typ: Any, key: str, where: str) -> Any:
    """Check ``value`` against ``typ``; strings from the environment or flags are converted first."""
    origin = get_origin(typ)
    if origin is list:
        (item,) = get_args(typ)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {_tname(value)} {where}")
        return [_coerce(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        _, vtyp = get_args(typ)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {_tname(value)} {where}")
        return {str(k): _coerce(v, vtyp, f"{key}.{k}", where) for k, v in value.items()}
    if typ is bool:
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        elif isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, str):
            return value
        if isinstance(value, Path):
            return str(value)
    else:  # pragma: no cover - the schema only uses the types above
        raise TypeError(f"unsupported config type {typ!r}")
    raise ConfigError(f"{key}: expected {_TYPE_NAMES[typ]}, got {_tname(value)} {where}")


def _tname(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    return {bool: "a boolean", int: "an integer", float: "a number", list: "a list", dict: "a table"}.get(
        type(value), type(value).__name__
    )


def _finish(cfg: Config, env: dict[str, str]) -> None:
    """Semantic checks and defaults that depend on other values."""
    if "modules.autoload" not in cfg.origins and "ENIGMA_DEFAULT_AUTOLOAD" in env:
        # Replaces the built-in default only (packagers, test harnesses); a configured list still wins.
        cfg.modules.autoload = [n.strip() for n in env["ENIGMA_DEFAULT_AUTOLOAD"].split(",") if n.strip()]
    d = cfg.daemon
    for key in ("rpc", "events"):
        value = getattr(d, key)
        m = _ENDPOINT.match(value)
        if not m or (m.group("port") is not None and int(m.group("port")) > 65535):
            raise ConfigError(
                f"daemon.{key}: {value!r} is not a ZeroMQ endpoint like tcp://127.0.0.1:7700 or ipc:///run/x.sock "
                f"{cfg.origin('daemon.' + key)}"
            )
    if d.rpc == d.events and not d.rpc.endswith(":0"):
        raise ConfigError(f"daemon.events: same endpoint as daemon.rpc ({d.rpc}) {cfg.origin('daemon.events')}")
    for key, level in [("log_level", d.log_level), *((f"log_levels.{a}", lv) for a, lv in d.log_levels.items())]:
        if level.lower() not in LOG_LEVELS:
            raise ConfigError(
                f"daemon.{key}: {level!r} is not a log level ({', '.join(LOG_LEVELS)}) "
                f"{cfg.origin('daemon.' + key.split('.')[0])}"
            )
    d.log_level = d.log_level.lower()
    d.log_levels = {a: lv.lower() for a, lv in d.log_levels.items()}
    if d.node_id and not _NODE_ID.match(d.node_id):
        raise ConfigError(
            f"daemon.node_id: {d.node_id!r} must be 1-64 letters, digits, '-' or '_' {cfg.origin('daemon.node_id')}"
        )
    for key in ("shutdown_timeout", "heartbeat"):
        if getattr(d, key) <= 0:
            raise ConfigError(f"daemon.{key}: must be greater than 0 {cfg.origin('daemon.' + key)}")
    if d.backup_max_bytes <= 0:
        raise ConfigError(f"daemon.backup_max_bytes: must be greater than 0 {cfg.origin('daemon.backup_max_bytes')}")
    if d.slow_callback < 0:
        raise ConfigError(f"daemon.slow_callback: must be 0 (off) or more {cfg.origin('daemon.slow_callback')}")
    d.data_dir = str(Path(d.data_dir).expanduser().absolute()) if d.data_dir else str(default_data_dir(env))
    for key in ("key_file", "allow_file"):
        value = getattr(cfg.security, key)
        if value:
            setattr(cfg.security, key, str(Path(value).expanduser().absolute()))


def derive_node_id() -> str:
    """A fresh node id: the host name made safe for MQTT topics, plus a random suffix to tell twins apart."""
    host = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname()).strip("-").lower()[:40] or "node"
    return f"{host}-{os.urandom(3).hex()}"
