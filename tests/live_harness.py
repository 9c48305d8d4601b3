"""Shared pieces of the daemon tests: a tiny REAL model (fitted once on Binance bars before the
test window, cached on disk), a market store holding Kraken's real bars, the simulator replaying
them, and a paper daemon built against it.

The window: Kraken BTC/USD and ETH/USD from 2022-06-01 00:00 UTC (``P0``); the store holds the
1,100 hours before it (the features need 768); the model is trained on Binance BTC/USDT and
ETH/USDT March-May 2022, strictly before ``P0``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

H = 3600
P0 = 1_654_041_600  # 2022-06-01 00:00 UTC
FIRST = P0 - 1100 * H
FILES = {"BTC/USD": "XBTUSD_1h", "ETH/USD": "ETHUSD_1h"}
PAIRS = list(FILES)
TRAIN_START = 1_646_092_800  # 2022-03-01
SETTLE = 30  # seconds after the close at which the tests run a cycle


def _code_digest() -> str:
    """Digest of the code a fitted model depends on (engine + research sources)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for pkg in ("engine", "research"):
        for p in sorted((root / pkg).rglob("*.py")):
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def tiny_model_dir(horizon: int = 24) -> Path:
    """A saved tiny bundle (one horizon, 24 h by default; tests/test_shadow.py's candidate is the
    12 h one) fitted on Binance BTC/USDT + ETH/USDT, 2022-03..05; cached under ``KQ_TEST_CACHE``
    (default ``.test_cache/`` in the repo) per code digest, built once under a file lock (parallel
    test workers wait for the first)."""
    root = Path(os.environ.get("KQ_TEST_CACHE") or Path(__file__).resolve().parents[1] / ".test_cache")
    root.mkdir(parents=True, exist_ok=True)
    name = "tiny-model" if horizon == 24 else f"tiny-shadow-{horizon}h"
    out = root / f"{name}-{_code_digest()}"
    with open(root / ".lock", "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        if (out / "manifest.json").is_file():
            return out
        from engine.config import load_config
        from engine.features.featureset import build_features
        from engine.store.panel import load_shared_panel
        from engine.universe import universe_mask
        from research.bundle import fit_final, save_bundle
        from research.config import research_from_dict

        cfg = load_config()
        rc = research_from_dict(
            {
                "tiny": True,
                "horizons": [horizon],
                "trade_horizon": horizon,
                "folds": {"train_bars": 1440, "test_bars": 240, "purge_bars": 24, "embargo_bars": 24, "inner_folds": 2},
            },
            cfg,
        )
        panel = load_shared_panel(["binance_BTCUSDT_1h", "binance_ETHUSDT_1h"], TRAIN_START - 768 * H, P0 - H)
        fs = build_features(panel, cfg.features, universe_mask(panel))
        bundle = fit_final(panel, cfg, rc, features=fs, start_ts=TRAIN_START)
        tmp = root / f".{out.name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        save_bundle(bundle, tmp)
        tmp.rename(out)
        return out


def BundleModel(path: Path, model_id: str = "tiny/1"):
    """A saved bundle with the face of ``live_bridge.models.ApprovedModel``; the approval checks
    themselves are tested in tests/test_lifecycle_*.py, the daemon tests inject the model."""
    from live_bridge.simulator.testing import UnapprovedModel

    return UnapprovedModel(path, model_id)


def shared_frames(hours_after: int = 400) -> dict[str, pd.DataFrame]:
    from tests.conftest import require_shared

    d = require_shared()
    out = {}
    for pair, stem in FILES.items():
        df = pd.read_parquet(d / f"{stem}.parquet", columns=["ts", "open", "high", "low", "close", "volume", "trades"])
        out[pair] = df[(df.ts >= FIRST) & (df.ts < P0 + hours_after * H)].reset_index(drop=True)
    return out


def kraken_store(path: Path, frames: dict[str, pd.DataFrame], upto: int = P0 - H):
    """A market store holding the shared Kraken bars FIRST..upto (inclusive) as venue kraken."""
    from engine.store.market import MarketStore

    s = MarketStore(path)
    for pair, df in frames.items():
        s.import_bars(df[(df.ts >= FIRST) & (df.ts <= upto)], "kraken", pair, f"shared-{pair}")
    s.close()
    return path


def sim_panel(hours_after: int = 400):
    from engine.store.panel import load_shared_panel

    return load_shared_panel(list(FILES.values()), start=FIRST, end=P0 + hours_after * H)


def Mono():
    from live_bridge.simulator.testing import VirtualClock

    return VirtualClock()


def paper_dict(url: str, tmp: Path, **over: Any) -> dict:
    from engine.paths import configs_dir

    d: dict[str, Any] = {
        "mode": "paper",
        "engine_config": str(configs_dir() / "default.toml"),
        "exchange": {"url": url, "tier": "pro"},
        "universe": {"pairs": PAIRS},
        "cycle": {"settle_delay_s": 0, "clock": "exchange", "behind_retries": 0, "poll_s": 0.05},
        "execution": {
            "limit_timeout_s": 0.2,
            "poll_interval_s": 0.1,
            "lookup_interval_s": 0.05,
            "lookup_margin_s": 0.5,
        },
        "paths": {
            "store": str(tmp / "m.duckdb"),
            "state_dir": str(tmp / "state"),
            "ledger": f"sqlite:///{tmp / 'ledger.sqlite'}",
        },
    }
    for k, v in over.items():
        if isinstance(v, dict):
            d.setdefault(k, {}).update(v)
        else:
            d[k] = v
    return d


def make_daemon(url: str, tmp: Path, model: Any, **over: Any):
    from live_bridge.config import live_config_from_dict
    from live_bridge.daemon import Daemon
    from live_bridge.kraken import RateBudget
    from live_bridge.simulator.testing import KEY, SECRET

    live = live_config_from_dict(paper_dict(url, tmp, **over))
    mono = Mono()
    return Daemon.from_config(
        live,
        environ={"KRAKEN_API_KEY": KEY, "KRAKEN_API_SECRET": SECRET},
        model=model,
        budget=RateBudget("pro", clock=mono.now, sleep=mono.sleep),
    )


def run_hours(sim: Any, daemon: Any, n: int, first: int = P0) -> list:
    """Advance the simulator to each of the next ``n`` closes (+ SETTLE s) and run the due hours."""
    out = []
    for i in range(n):
        sim.ex.advance(to=float(first + (i + 1) * H + SETTLE))
        out.extend(daemon.run_once())
    return out
