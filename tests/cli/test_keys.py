"""``enigma keys``: creates a 0600 key pair once, shows it, and never replaces it without --force."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from bus.auth import fingerprint, load_keypair
from tests.cli.conftest import Run


def _key_file(env: dict[str, str]) -> Path:
    return Path(env["XDG_CONFIG_HOME"]) / "enigma" / "client.key"


def test_keys_creates_a_private_key_pair_and_prints_its_public_half(enigma: Run, cli_env: dict[str, str]) -> None:
    r = enigma("keys", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    path = _key_file(cli_env)
    kp = load_keypair(path)
    assert doc == {"public": kp.public, "fingerprint": fingerprint(kp.public), "path": str(path), "created": True}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert kp.secret not in r.stdout + r.stderr


def test_keys_human_output_names_key_fingerprint_and_next_step(enigma: Run, cli_env: dict[str, str]) -> None:
    r = enigma("keys")
    assert r.returncode == 0, r.stderr
    kp = load_keypair(_key_file(cli_env))
    assert f"public key   {kp.public}" in r.stdout
    assert f"fingerprint  {fingerprint(kp.public)}" in r.stdout
    assert f"enigmad keys allow {kp.public} --role user" in r.stdout


def test_keys_refuses_to_overwrite_without_force(enigma: Run, cli_env: dict[str, str]) -> None:
    assert enigma("keys").returncode == 0
    before = _key_file(cli_env).read_text()
    r = enigma("keys")
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.startswith(f"enigma: a client key already exists at {_key_file(cli_env)} (fingerprint ")
    assert "enigma keys --force" in r.stderr
    assert len(r.stderr.splitlines()) == 1
    assert _key_file(cli_env).read_text() == before


def test_keys_force_replaces_the_key_pair(enigma: Run, cli_env: dict[str, str]) -> None:
    assert enigma("keys").returncode == 0
    old = load_keypair(_key_file(cli_env)).public
    r = enigma("keys", "--force", "--json")
    assert r.returncode == 0, r.stderr
    new = load_keypair(_key_file(cli_env)).public
    assert new != old
    assert json.loads(r.stdout)["public"] == new


def test_keys_show_prints_the_existing_key_without_changing_it(enigma: Run, cli_env: dict[str, str]) -> None:
    created = json.loads(enigma("keys", "--json").stdout)
    r = enigma("keys", "--show", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == dict(created, created=False)


def test_keys_show_without_a_key_says_how_to_create_one(enigma: Run, cli_env: dict[str, str]) -> None:
    r = enigma("keys", "--show")
    assert r.returncode == 1
    assert r.stderr == f"enigma: no client key at {_key_file(cli_env)} — create one with: enigma keys\n"


def test_keys_honours_key_file_option(enigma: Run, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "me.key"
    r = enigma("keys", "--key-file", str(target), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["public"] == load_keypair(target).public


def test_keys_show_reports_a_corrupt_key_file(enigma: Run, cli_env: dict[str, str]) -> None:
    path = _key_file(cli_env)
    path.parent.mkdir(parents=True)
    path.write_text("not json")
    r = enigma("keys", "--show")
    assert r.returncode == 1
    assert r.stderr.startswith(f"enigma: cannot read key pair {path}")
    assert r.stderr.rstrip().endswith("replace it with: enigma keys --force")


def test_show_and_force_together_are_a_usage_error(enigma: Run) -> None:
    r = enigma("keys", "--show", "--force")
    assert r.returncode == 2
    assert "not allowed with argument" in r.stderr
