"""The dependency direction holds: research -> engine <- live_bridge; engine imports neither."""

import ast
from pathlib import Path

from engine.paths import REPO_ROOT


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _package_files(pkg: str) -> list[Path]:
    return sorted((REPO_ROOT / pkg).rglob("*.py"))


def test_engine_imports_neither_research_nor_live_bridge_nor_cli():
    offenders = {
        str(p.relative_to(REPO_ROOT)): sorted(_imports(p) & {"research", "live_bridge", "kq"})
        for p in _package_files("engine")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_research_does_not_import_live_bridge():
    offenders = {
        str(p.relative_to(REPO_ROOT)): sorted(_imports(p) & {"live_bridge", "kq"}) for p in _package_files("research")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_engine_never_touches_network_or_mlflow():
    banned = {"requests", "httpx", "mlflow", "kraken", "fastapi", "uvicorn", "socket", "urllib"}
    offenders = {str(p.relative_to(REPO_ROOT)): sorted(_imports(p) & banned) for p in _package_files("engine")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_three_layers_and_the_cli_are_installed_packages():
    import engine
    import kq
    import live_bridge
    import research

    for mod in (engine, research, live_bridge, kq):
        assert Path(mod.__file__).resolve().is_relative_to(REPO_ROOT)
