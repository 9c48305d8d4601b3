"""Per-regime and per-profile breakdown of a backtest, and the selector-versus-default summary
``kq walkforward`` reports when ``[strategy] enabled`` (research/walkforward.py).

A round trip is attributed to the regime and the selected profile of its entry's decision bar (the
bar before the entry fill: orders decided at a close execute at the next bar). PnL is the sells'
``pnl`` (round-trip P&L net of both fees), summed per round trip.
"""

from __future__ import annotations

import numpy as np

from engine.strategy.enums import PROFILE_NAMES, REGIME_NAMES

__all__ = ["breakdown", "summary"]


def _round_trips(trades: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(decision bar, pair, pnl) of each closed round trip: each sell's pnl goes to the latest buy of
    its pair at or before it; a position sold in parts is one round trip."""
    last_buy: dict[int, int] = {}
    acc: dict[tuple[int, int], float] = {}
    for tr in trades:
        j = int(tr["pair"])
        if tr["side"] > 0:
            last_buy[j] = int(tr["bar"])
        elif j in last_buy:
            k = (last_buy[j], j)
            acc[k] = acc.get(k, 0.0) + float(tr["pnl"])
    keys = sorted(acc)
    bars = np.array([max(b - 1, 0) for b, _ in keys], dtype=np.int64)
    pairs = np.array([j for _, j in keys], dtype=np.int64)
    pnl = np.array([acc[k] for k in keys], dtype=np.float64)
    return bars, pairs, pnl


def _stats(mask_hours: int, pnl: np.ndarray) -> dict:
    n = int(pnl.size)
    return {
        "pair_hours": int(mask_hours),
        "trades": n,
        "hit_rate": float((pnl > 0).mean()) if n else None,
        "pnl_after_fees": float(pnl.sum()),
    }


def breakdown(trades: np.ndarray, regime: np.ndarray, profile: np.ndarray | None = None) -> dict:
    """{"per_regime": {name: stats}, "per_profile": {name: stats}} of one backtest's trades, with
    ``regime`` (n, m) int8 labels and, for a selector run, ``profile`` (n, m) the selected profile
    (pair_hours of a profile: the (bar, pair) cells where it was selected)."""
    bars, pairs, pnl = _round_trips(trades)
    rg = regime[bars, pairs] if bars.size else np.zeros(0, dtype=np.int8)
    out: dict = {"per_regime": {}}
    for r, name in enumerate(REGIME_NAMES + ("unknown",)):
        code = r if r < len(REGIME_NAMES) else -1
        out["per_regime"][name] = _stats(int((regime == code).sum()), pnl[rg == code])
    if profile is not None:
        pf = profile[bars, pairs] if bars.size else np.zeros(0, dtype=np.int8)
        out["per_profile"] = {
            name: _stats(int((profile == q).sum()), pnl[pf == q]) for q, name in enumerate(PROFILE_NAMES)
        }
    return out


def summary(res) -> dict:
    """Total return, hourly Sharpe (unannualised), round trips, hit rate and PnL after fees of a
    BacktestResult."""
    eq = res.equity["equity"].astype(np.float64)
    r = np.diff(eq) / eq[:-1] if eq.size > 1 else np.zeros(0)
    _, _, pnl = _round_trips(res.trades)
    sd = float(r.std(ddof=1)) if r.size > 1 else 0.0
    return {
        "total_return": float(eq[-1] / eq[0] - 1.0) if eq.size else 0.0,
        "sharpe_hourly": float(r.mean() / sd) if sd > 0 else 0.0,
        "max_drawdown": float(res.equity["drawdown"].max()) if eq.size else 0.0,
        "trades": int(pnl.size),
        "hit_rate": float((pnl > 0).mean()) if pnl.size else None,
        "pnl_after_fees": float(pnl.sum()),
    }
