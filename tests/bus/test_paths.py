"""``bus.paths``: systemd's directories, then XDG's, then the platform's — and the colon-separated systemd form."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bus import paths

Lookup = Callable[..., Path]
# (function, systemd variable, XDG variable, the Linux default under $HOME)
KINDS = [
    (paths.config_dir, "CONFIGURATION_DIRECTORY", "XDG_CONFIG_HOME", ".config"),
    (paths.data_dir, "STATE_DIRECTORY", "XDG_DATA_HOME", ".local/share"),
    (paths.cache_dir, "CACHE_DIRECTORY", "XDG_CACHE_HOME", ".cache"),
]
IDS = ["config", "data", "cache"]


@pytest.mark.parametrize(("lookup", "systemd", "xdg", "home"), KINDS, ids=IDS)
def test_systemds_directory_wins_over_xdg(lookup: Lookup, systemd: str, xdg: str, home: str) -> None:
    env = {systemd: "/var/lib/x/enigma", xdg: "/home/u/xdg", "HOME": "/home/u"}
    assert lookup(env) == Path("/var/lib/x/enigma")


@pytest.mark.parametrize(("lookup", "systemd", "xdg", "home"), KINDS, ids=IDS)
def test_the_first_of_several_systemd_directories_is_ours(lookup: Lookup, systemd: str, xdg: str, home: str) -> None:
    assert lookup({systemd: "/var/cache/enigma:/var/cache/other"}) == Path("/var/cache/enigma")


@pytest.mark.parametrize(("lookup", "systemd", "xdg", "home"), KINDS, ids=IDS)
def test_xdg_variable_gets_enigma_appended(lookup: Lookup, systemd: str, xdg: str, home: str) -> None:
    assert lookup({xdg: "/srv/xdg"}) == Path("/srv/xdg/enigma")


@pytest.mark.parametrize(("lookup", "systemd", "xdg", "home"), KINDS, ids=IDS)
def test_empty_variables_count_as_unset_and_the_mappings_home_is_used(
    lookup: Lookup, systemd: str, xdg: str, home: str, tmp_path: Path
) -> None:
    assert lookup({systemd: "", xdg: " ", "HOME": str(tmp_path)}) == tmp_path / home / "enigma"


@pytest.mark.parametrize(("lookup", "systemd", "xdg", "home"), KINDS, ids=IDS)
def test_process_environment_is_the_default(
    lookup: Lookup, systemd: str, xdg: str, home: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _, s, x, _ in KINDS:
        monkeypatch.delenv(s, raising=False)
        monkeypatch.delenv(x, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert lookup() == tmp_path / home / "enigma"
    monkeypatch.setenv(xdg, str(tmp_path / "x"))
    assert lookup() == tmp_path / "x" / "enigma"
    monkeypatch.setenv(systemd, f"{tmp_path}/sys:{tmp_path}/other")
    assert lookup() == tmp_path / "sys"
