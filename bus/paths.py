"""Where Enigma keeps its files on this host: the one definition of its config, data and cache directories.

Why here: ``bus`` is the one layer that both the daemon and every thin client import (a client needs the config
directory for its key pair, the daemon all three), and it loads no torch. The engine is a library that knows
nothing of where a deployment keeps things: it takes its directories as parameters, and the daemon passes the
ones defined here.

Each directory is looked up in this order, first match wins:

1. systemd's ``CONFIGURATION_DIRECTORY`` / ``STATE_DIRECTORY`` / ``CACHE_DIRECTORY``, set when the unit has
   ``ConfigurationDirectory=`` … ``CacheDirectory=``. systemd joins several configured directories with ``:``;
   the first is ours (the unit lists ``enigma`` first). They already name Enigma's own directory.
2. The XDG base directory variables (``XDG_CONFIG_HOME``, ``XDG_DATA_HOME``, ``XDG_CACHE_HOME``) plus
   ``enigma``, on every platform: the systemd units and the docs speak of them.
3. The platform's convention for a user's application directories, from ``platformdirs``: ``~/.config/enigma``,
   ``~/.local/share/enigma`` and ``~/.cache/enigma`` on Linux; the matching places on macOS, Windows and Android
   (where the phone app runs).

An empty variable counts as unset, as systemd and the XDG specification treat it. ``env`` defaults to the
process environment; a mapping that names another ``HOME`` gets step 3's directories under that home.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import platformdirs

APP = "enigma"


def _systemd_dir(env: Mapping[str, str], name: str) -> Path | None:
    """The first of systemd's ``:``-separated directories in ``$name``, or None when it is unset or empty."""
    first = env.get(name, "").split(":")[0].strip()
    return Path(first) if first else None


def _platform_dir(env: Mapping[str, str], user_path: Callable[..., Path]) -> Path:
    """platformdirs' directory for us, which it names under the process's home; moved under ``env``'s ``HOME``."""
    path = user_path(APP, appauthor=False)
    home = env.get("HOME", "").strip()
    if not home:
        return path
    try:
        return Path(home) / path.relative_to(Path.home())
    except (ValueError, RuntimeError):  # not under the home (Windows' AppData elsewhere), or no home at all
        return path


def _xdg_dir(env: Mapping[str, str], name: str) -> Path | None:
    base = env.get(name, "").strip()
    return Path(base) / APP if base else None


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    """The config directory: ``enigmad.toml`` and a client's key pair live here."""
    env = os.environ if env is None else env
    return (
        _systemd_dir(env, "CONFIGURATION_DIRECTORY")
        or _xdg_dir(env, "XDG_CONFIG_HOME")
        or _platform_dir(env, platformdirs.user_config_path)
    )


def data_dir(env: Mapping[str, str] | None = None) -> Path:
    """The data (state) directory: the conversation store, models, keys and peers."""
    env = os.environ if env is None else env
    return (
        _systemd_dir(env, "STATE_DIRECTORY")
        or _xdg_dir(env, "XDG_DATA_HOME")
        or _platform_dir(env, platformdirs.user_data_path)
    )


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """The cache directory: built kernels and compiled decode steps, which a start rebuilds when they are gone."""
    env = os.environ if env is None else env
    return (
        _systemd_dir(env, "CACHE_DIRECTORY")
        or _xdg_dir(env, "XDG_CACHE_HOME")
        or _platform_dir(env, platformdirs.user_cache_path)
    )
