"""Compiled kernels are cached per version of the engine's source, so a change to a kernel in one
file can never leave a stale compiled caller from another file running (numba checks only the
caller's own file)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import engine
from engine._numba_cache import ENGINE_ROOT, TAG_PREFIX, cache_dir_for, source_digest


def test_cache_folder_is_named_after_the_engine_source():
    from numba.core import config

    tag = TAG_PREFIX + source_digest()[:16]
    assert Path(config.CACHE_DIR).name == tag
    assert engine.NUMBA_CACHE.name == tag
    assert os.environ["NUMBA_CACHE_DIR"] == str(engine.NUMBA_CACHE)


def test_any_engine_change_gives_a_new_folder(tmp_path):
    copy = tmp_path / "engine"
    shutil.copytree(ENGINE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    d0 = source_digest(copy)
    assert d0 == source_digest(ENGINE_ROOT)
    kernel = copy / "risk" / "nb.py"  # a callee of machine.py's and the backtester's kernels
    kernel.write_text(kernel.read_text().replace("def apply_fill_nb(", "def apply_fill_nb(  ", 1))
    assert source_digest(copy) != d0
    (copy / "risk" / "new_module.py").write_text("X = 1\n")
    assert len({d0, source_digest(copy)}) == 2


def test_base_folder_and_inheritance(tmp_path):
    d = "ab" * 32
    assert cache_dir_for(str(tmp_path), d) == tmp_path / (TAG_PREFIX + d[:16])
    # a child process that inherits the resolved folder does not nest it again
    assert cache_dir_for(str(tmp_path / (TAG_PREFIX + d[:16])), d) == tmp_path / (TAG_PREFIX + d[:16])
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run(
        [sys.executable, "-c", "import engine, numba.core.config as c; print(c.CACHE_DIR)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ENGINE_ROOT.parent,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / (TAG_PREFIX + source_digest()[:16]))
