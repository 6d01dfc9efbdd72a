"""The Android staging step: only the thin client goes to the phone, and it starts from ``main.py``."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

from clients.app.packaging import stage
from tests.conftest import ROOT


def test_stage_copies_only_the_app_and_what_it_imports(tmp_path: Path) -> None:
    target = tmp_path / "android"
    assert stage(target) == ["bus", "clients", "main.py"]
    assert sorted(p.name for p in (target / "clients").iterdir()) == ["__init__.py", "app", "sdk"]
    assert (target / "clients" / "app" / "ui" / "enigma.kv").exists()
    assert not list(target.rglob("__pycache__"))


def test_staged_app_imports_without_the_daemon_engine_or_torch(tmp_path: Path) -> None:
    target = tmp_path / "android"
    stage(target)
    code = (
        "import sys, clients.app.main, clients.app.viewmodels, clients.app.packaging\n"
        "print(sorted(m for m in ('torch', 'engine', 'daemon', 'kivy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=target,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(target)},
    )
    assert out.stdout.strip() == "[]"


def test_buildozer_spec_points_at_the_staged_sources() -> None:
    spec = configparser.ConfigParser()
    spec.read(ROOT / "buildozer.spec")
    app = spec["app"]
    assert app["source.dir"] == "build/android"
    assert {r.split("==")[0] for r in app["requirements"].split(",")} == {"python3", "kivy", "pyzmq", "msgpack"}
    assert app["orientation"] == "portrait"


def test_desktop_entry_point_parses_its_options() -> None:
    from clients.app.main import PHONE, parser

    args = parser().parse_args(["--phone", "--rpc", "pi.local", "--data-dir", "/tmp/x"])
    assert (args.size, args.rpc, args.data_dir) == (PHONE, "pi.local", Path("/tmp/x"))
    assert parser().parse_args(["--size", "1280x800"]).size == (1280, 800)


def test_bad_window_size_is_refused_with_an_example() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "clients.app", "--size", "big"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert "size must look like 360x780, got 'big'" in r.stderr
