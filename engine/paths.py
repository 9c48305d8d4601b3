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
