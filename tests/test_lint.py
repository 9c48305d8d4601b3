"""Lint, format and type checks: `make test` runs them before pytest (Makefile `lint`); these tests
show that each check, with the project's own settings (pyproject.toml), fails on a planted error,
so a clean run means something."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(args, cwd=ROOT):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def _plant(tmp_path: Path, name: str, text: str) -> Path:
    """A file inside the project's config scope (ruff and mypy read ROOT/pyproject.toml)."""
    pkg = tmp_path / "engine_planted"
    pkg.mkdir(exist_ok=True)
    f = pkg / name
    f.write_text(text)
    return f


def test_makefile_runs_lint_before_pytest():
    mk = (ROOT / "Makefile").read_text()
    test_rule = mk.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "lint" in test_rule.splitlines()[0], "make test must depend on lint"
    lint_rule = mk.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    for tool in ("ruff check", "ruff format --check", "mypy", "hadolint"):
        assert tool in lint_rule, f"make lint does not run {tool}"


def test_ruff_check_fails_on_planted_error(tmp_path):
    clean = _plant(tmp_path, "clean.py", "def f(x: int) -> int:\n    return x + 1\n")
    bad = _plant(tmp_path, "bad.py", "import os\n\n\ndef f(x: int) -> int:\n    return y + 1\n")
    cfg = ["--config", str(ROOT / "pyproject.toml")]
    assert _run([str(BIN / "ruff"), "check", *cfg, str(clean)]).returncode == 0
    r = _run([str(BIN / "ruff"), "check", *cfg, str(bad)])
    assert r.returncode != 0 and "F401" in r.stdout and "F821" in r.stdout, r.stdout


def test_ruff_format_check_fails_on_planted_error(tmp_path):
    bad = _plant(tmp_path, "fmt.py", "x = {  'a':1 }\n")
    r = _run([str(BIN / "ruff"), "format", "--check", "--config", str(ROOT / "pyproject.toml"), str(bad)])
    assert r.returncode != 0


def test_mypy_fails_on_planted_error(tmp_path):
    clean = _plant(tmp_path, "typed_ok.py", "def f(x: int) -> int:\n    return x + 1\n")
    bad = _plant(tmp_path, "typed_bad.py", "def f(x: int) -> int:\n    return x + 'one'\n")
    cfg = ["--config-file", str(ROOT / "pyproject.toml"), "--no-incremental", "--cache-dir", str(tmp_path / "c")]
    assert _run([str(BIN / "mypy"), *cfg, str(clean)]).returncode == 0
    r = _run([str(BIN / "mypy"), *cfg, str(bad)])
    assert r.returncode != 0 and "operator" in r.stdout, r.stdout
