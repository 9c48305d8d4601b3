"""Where things live: the repository, the embedded stores and the shared real data.

``KQ_SHARED`` overrides the location of the shared folder (default: ``../shared`` next to the
repository root). ``KQ_STORE`` overrides the market store path (default ``data/market.duckdb``).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """The shared folder (real market data, Kraken spec). May not exist on a fresh machine."""
    env = os.environ.get("KQ_SHARED")
    return Path(env).expanduser().resolve() if env else (REPO_ROOT.parent / "shared").resolve()


def shared_ohlcv_dir() -> Path:
    return shared_dir() / "data" / "ohlcv"


def data_dir() -> Path:
    return REPO_ROOT / "data"


def default_store_path() -> Path:
    env = os.environ.get("KQ_STORE")
    return Path(env).expanduser() if env else data_dir() / "market.duckdb"


def configs_dir() -> Path:
    return REPO_ROOT / "configs"


def check_out_dir(out: str | Path, option: str = "--out") -> Path:
    """An output folder a command may write: absent or a folder, inside an existing parent.

    Commands call it before any work, so a bad path fails at once; the writers call it again.
    """
    from engine.errors import InputError

    p = Path(out)
    if p.exists() and not p.is_dir():
        raise InputError(f"{option} {out}: exists and is not a folder")
    if not p.parent.exists():
        raise InputError(f"{option} {out}: parent folder {p.parent} does not exist")
    return p
