"""Where numba keeps compiled kernels: one folder per version of the engine's source.

Numba's on-disk cache checks only the file that defines a kernel. When a kernel it calls, defined in
another file, changes (say ``apply_fill_nb`` in engine/risk/nb.py, called by the machine's kernels in
engine/risk/machine.py), the stale machine code still loads and runs: old rules on new data, with
no error. So the cache lives in a folder named after a digest of every engine source file: any
change to the engine starts a fresh cache, and an unchanged engine reuses its compiled kernels.
(research/ kernels only call engine kernels, and numba does see changes to their own file.)

``NUMBA_CACHE_DIR`` (the Makefile sets ``.numba_cache``) is the base folder; unset, it is
``~/.cache/krakenquant/numba``. Child processes inherit the resolved folder.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

ENGINE_ROOT = Path(__file__).resolve().parent
TAG_PREFIX = "src-"


def source_digest(root: Path = ENGINE_ROOT) -> str:
    """SHA-256 over every ``*.py`` below ``root``: relative path and bytes, in sorted order."""
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        if "__pycache__" in f.parts:
            continue
        h.update(f.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def cache_dir_for(base: str | None, digest: str) -> Path:
    tag = TAG_PREFIX + digest[:16]
    b = Path(base).expanduser() if base else Path.home() / ".cache" / "krakenquant" / "numba"
    return b if b.name == tag else b / tag


def configure() -> Path:
    """Point numba's cache at the folder of this engine source; returns it."""
    target = cache_dir_for(os.environ.get("NUMBA_CACHE_DIR"), source_digest())
    os.environ["NUMBA_CACHE_DIR"] = str(target)
    if "numba" in sys.modules:  # already imported: its config read the variable before we set it
        from numba.core import config

        config.CACHE_DIR = str(target)  # type: ignore[attr-defined]  # set at runtime by numba
    return target
