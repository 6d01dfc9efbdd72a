"""The import rules of DESIGN.md, enforced: thin clients never load torch, the engine never knows the bus, a
module is one package that imports no other module's package and not the running daemon (``daemon.app``), and
the core request handlers never reach into the daemon either."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "bus": {"engine", "daemon", "clients", "torch"},
    "clients": {"engine", "daemon", "torch"},
    "engine": {"bus", "daemon", "clients"},
}


def _imported(path: Path) -> set[str]:
    """Every module ``path`` imports, by full dotted name (``from a.b import c`` counts as ``a.b`` and ``a.b.c``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _imported_roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in _imported(path)}


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_never_imports_forbidden_layers(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imported_roots(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert offenders == []


def test_importing_bus_and_clients_loads_no_torch() -> None:
    code = (
        "import sys, bus, clients, bus.envelope, bus.errors, bus.service\n"
        "print(sorted(m for m in ('torch', 'engine', 'daemon', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


MODULES = ROOT / "daemon" / "modules"


@pytest.mark.parametrize("module", sorted(p.name for p in MODULES.iterdir() if (p / "module.py").is_file()))
def test_a_module_imports_no_other_module_and_not_the_daemon(module: str) -> None:
    own = f"daemon.modules.{module}"
    offenders = []
    for path in sorted((MODULES / module).rglob("*.py")):
        for name in sorted(_imported(path)):
            other_module = _under(name, "daemon.modules") and name != "daemon.modules" and not _under(name, own)
            if other_module or _under(name, "daemon.app"):
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []


def test_every_module_package_is_in_the_registry() -> None:
    from daemon.modules import REGISTRY

    packages = {p.name for p in MODULES.iterdir() if (p / "module.py").is_file()}
    registered = {spec.split(":")[0].split(".")[2] for spec in REGISTRY.values()}
    assert packages == registered


def test_handlers_never_reach_into_the_daemon() -> None:
    offenders = []
    for path in sorted((ROOT / "daemon" / "handlers").rglob("*.py")):
        bad = [n for n in _imported(path) if _under(n, "daemon.app") or _under(n, "daemon.modules")]
        source = path.read_text()
        if ".daemon" in source.replace("daemon.", ""):
            bad.append("an attribute named daemon (the running daemon)")
        if bad:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert offenders == []


def test_the_rules_catch_what_they_forbid(tmp_path: Path) -> None:
    """The checks above find a cross-module and a daemon import (a rule that cannot fail guards nothing)."""
    bad = tmp_path / "bad.py"
    bad.write_text("from daemon.modules.llm.options import X\nimport daemon.app\nfrom daemon import app\n")
    found = _imported(bad)
    assert {"daemon.modules.llm.options", "daemon.app"} <= found
    assert _under("daemon.app", "daemon.app")
    assert not _under("daemon.appendix", "daemon.app")
