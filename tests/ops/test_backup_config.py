"""``daemon.backup_max_bytes``: the bound on what a client may upload for a restore."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import ConfigError, load_config


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg"), **extra}


def test_backup_bound_defaults_to_4_gib(tmp_path: Path) -> None:
    assert load_config(env=_env(tmp_path)).daemon.backup_max_bytes == 4 * 1024**3


def test_backup_bound_of_zero_is_refused_naming_its_source(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"daemon\.backup_max_bytes: must be greater than 0 from \$ENIGMA_DAEMON__BACKUP_MAX_BYTES"
    ):
        load_config(env=_env(tmp_path, ENIGMA_DAEMON__BACKUP_MAX_BYTES="0"))
