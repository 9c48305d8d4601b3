"""Sizing study: ATR-risk sizing (``sizing = "risk"``, the default before 2026-12-07) against
vol-target sizing (``sizing = "vol_target"``, the default since), everything else from
configs/default.toml, on the 10-pair Binance panel (shared ``binance_*USDT_1h`` files).

    python -m benchmarks sizing_study [--wf-dir DIR] [--seed 7] [--start 2018-01-01] [--end 2024-12-31]
        [--halt-reset-bars 168] [--json FILE]
    python benchmarks/bench_sizing_study.py ...

(a) random persistent signals (seeded): per pair a two-state Markov chain, "on" (P(up) 0.8) or
    "off" (P(up) 0.3, below the exit threshold), mean stay 48 hours in each, expected return
    uniform in [1%, 3%] (above the 0.9% hurdle), over the whole panel (every pair tradable once it
    has data: the universe filter is left out so that all 10 pairs can be held);
(b) with ``--wf-dir``: the walk-forward meta-learner's out-of-sample signals at the trade horizon
    from ``DIR/predictions.parquet`` (written by ``kq walkforward``), backtested over their span as
    the walk-forward does (ATR, spread and clusters computed on 768 hours of warm-up before it).

For each: the entry sizes (buy fill notional / equity after the fill: p10, median, p90, max), the
median entry per drawdown state at the decision, the most positions held, the share of bars with
5+ positions, the refusal counts by reason, bars per trading state, total return and maximum
drawdown. Both runs take every other number from configs/default.toml, except that the drawdown halt
is lifted after ``--halt-reset-bars`` (168: an operator's weekly review; default.toml never lifts it)
so that the drawdown tiers keep cycling through the whole panel. Deterministic (same data, seed and
config -> same figures). Figures are in docs/DECISIONS.md (2026-12-07, vol-target sizing).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAIRS = ("BTC", "ETH", "SOL", "XRP", "ADA", "LTC", "DOT", "LINK", "DOGE", "AVAX")
FILES = [f"binance_{b}USDT_1h" for b in PAIRS]
WARMUP_BARS = 768


def _ts(s: str, end: bool = False) -> int:
    import pandas as pd

    t = int(pd.Timestamp(s, tz="UTC").timestamp())
    return t + 86400 - 3600 if end and len(s) == 10 else t


def random_persistent_signals(shape: tuple[int, int], seed: int, stay: float = 48.0):
    """(p_up, exp_ret): per pair a two-state chain switching with probability 1/stay per bar."""
    rng = np.random.default_rng(seed)
    n, m = shape
    switch = rng.random((n, m)) < 1.0 / stay
    on0 = rng.random(m) < 0.5
    on = (np.cumsum(switch, axis=0) + on0[None, :]) % 2 == 1
    p_up = np.where(on, 0.8, 0.3)
    exp_ret = rng.uniform(0.01, 0.03, (n, m))
    return p_up, exp_ret


def pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if len(a) else float("nan")


def summarize(res) -> dict:
    """Entry sizes, positions held, refusals and outcome of one BacktestResult."""
    from engine.risk.enums import Reason, TradingState

    tr, eq = res.trades, res.equity
    buys = tr[tr["side"] > 0]
    size = buys["notional"] / buys["equity_after"]
    # trading state at the decision: the close of the bar before the fill
    st_dec = eq["trading_state"][np.maximum(buys["bar"] - 1, 0)]
    by_state = {}
    for s in (TradingState.ACTIVE, TradingState.REDUCING_1, TradingState.REDUCING_2):
        a = size[st_dec == int(s)]
        by_state[s.name] = {"n": len(a), "median": pct(a, 50)}
    npos = eq["n_positions"]
    m = res.metrics_dict()
    return {
        "entries": len(buys),
        "size_p10": pct(size, 10),
        "size_median": pct(size, 50),
        "size_p90": pct(size, 90),
        "size_max": float(size.max()) if len(size) else float("nan"),
        "size_median_by_state": by_state,
        "max_positions": int(npos.max()),
        "bars_5plus_positions": float(np.mean(npos >= 5)),
        "bars_10_positions": int(np.sum(npos >= 10)),
        "mean_exposure": m["mean_exposure"],
        "max_exposure": float(eq["exposure"].max()),
        "refusals": {
            Reason(i).name: int(c) for i, c in enumerate(res.refusals) if c and i in Reason._value2member_map_
        },
        "bars_in_state": m["bars_in_state"],
        "total_return": m["total_return"],
        "max_drawdown": m["max_drawdown"],
        "sharpe": m["sharpe"],
        "n_trades": m["n_trades"],
        "fees_paid": m["fees_paid"],
        "bars": m["bars"],
    }


def compare(inp, cfg, halt_reset_bars: int) -> dict:
    from engine.backtest.runner import run_backtest
    from engine.risk.enums import SIZING_RISK
    from engine.risk.params import params_from_config

    before = params_from_config(cfg, sizing=SIZING_RISK, halt_reset_bars=halt_reset_bars)
    after = params_from_config(cfg, halt_reset_bars=halt_reset_bars)
    return {
        "before (risk)": summarize(run_backtest(inp, before)),
        "after (vol_target)": summarize(run_backtest(inp, after)),
    }


def random_case(cfg, start: int, end: int, seed: int):
    from engine.backtest.runner import make_inputs
    from engine.store.panel import load_shared_panel

    panel = load_shared_panel(FILES, start=start, end=end)
    p_up, er = random_persistent_signals(panel.close.shape, seed)
    p_up = np.where(panel.valid, p_up, np.nan)
    return panel, make_inputs(panel, p_up, er, cfg)


def meta_case(cfg, wf_dir: Path, horizon: int):
    import pandas as pd

    from engine.backtest.io import signals_to_arrays
    from engine.backtest.runner import default_atr, default_clusters, default_spread, make_inputs
    from engine.store.panel import load_shared_panel
    from research.walkforward import strategy_signals

    preds = pd.read_parquet(wf_dir / "predictions.parquet")
    sig = strategy_signals(preds, horizon)
    t0, t1 = int(sig["ts"].min()), int(sig["ts"].max())
    pairs = sorted(set(sig["pair"]))
    full = load_shared_panel(FILES, start=t0 - WARMUP_BARS * 3600, end=t1)
    lo = int(np.searchsorted(full.ts, t0))
    atr = default_atr(full.high, full.low, full.close, cfg.features.atr_window)[lo:]
    spread = np.asarray(default_spread(full.high, full.low, full.close, full.valid, cfg.backtest.spread_window))[lo:]
    cluster = default_clusters(full.ts, full.close, full.valid, cfg.features)[lo:]
    sub = full.slice(t0, t1)
    p_up, er = signals_to_arrays(sig, sub.ts, sub.pairs)
    return sub, pairs, make_inputs(sub, p_up, er, cfg, atr=atr, spread=spread, cluster=cluster)


def _fmt_pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f}%"


def print_table(title: str, out: dict) -> None:
    print(f"\n### {title}")
    cols = list(out)
    rows = [
        ("entries (buy fills)", lambda s: f"{s['entries']:,}"),
        (
            "entry size p10 / median / p90 / max (of equity)",
            lambda s: " / ".join(_fmt_pct(s[k]) for k in ("size_p10", "size_median", "size_p90", "size_max")),
        ),
        (
            "median entry: ACTIVE / REDUCING_1 / REDUCING_2",
            lambda s: " / ".join(
                _fmt_pct(s["size_median_by_state"][k]["median"]) for k in ("ACTIVE", "REDUCING_1", "REDUCING_2")
            ),
        ),
        ("max positions held", lambda s: str(s["max_positions"])),
        (
            "bars with >= 5 positions / with 10",
            lambda s: f"{_fmt_pct(s['bars_5plus_positions'])} / {s['bars_10_positions']:,}",
        ),
        ("mean / max exposure", lambda s: f"{_fmt_pct(s['mean_exposure'])} / {_fmt_pct(s['max_exposure'])}"),
        ("total return / max drawdown", lambda s: f"{_fmt_pct(s['total_return'])} / {_fmt_pct(s['max_drawdown'])}"),
        (
            "bars ACTIVE / REDUCING_1 / REDUCING_2 / HALTED / KILL_SWITCH",
            lambda s: " / ".join(
                f"{s['bars_in_state'][k]:,}" for k in ("ACTIVE", "REDUCING_1", "REDUCING_2", "HALTED", "KILL_SWITCH")
            ),
        ),
    ]
    print("| | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, f in rows:
        print(f"| {name} | " + " | ".join(f(out[c]) for c in cols) + " |")
    reasons = sorted(set().union(*(out[c]["refusals"] for c in cols)))
    for r in reasons:
        print(f"| refusals {r} | " + " | ".join(f"{out[c]['refusals'].get(r, 0):,}" for c in cols) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wf-dir", default=None, help="kq walkforward output folder (predictions.parquet)")
    ap.add_argument("--seed", type=int, default=7, help="seed of the random signals")
    ap.add_argument("--start", default="2018-01-01", help="random signals: first bar (ISO date)")
    ap.add_argument("--end", default="2024-12-31", help="random signals: last day (ISO date, inclusive)")
    ap.add_argument("--horizon", type=int, default=24, help="meta signals: the trade horizon")
    ap.add_argument(
        "--halt-reset-bars",
        type=int,
        default=168,
        help="emulated operator reset of the drawdown halt after this many bars (0 = never, "
        "the config's default: random signals pay fees and would stay halted for years)",
    )
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    a = ap.parse_args(argv)

    from engine.config import load_config

    cfg = load_config()
    report = {}
    t = time.perf_counter()
    panel, inp = random_case(cfg, _ts(a.start), _ts(a.end, end=True), a.seed)
    report["random"] = compare(inp, cfg, a.halt_reset_bars)
    span = f"{_day(panel.ts[0])} to {_day(panel.ts[-1])}"
    print_table(
        f"(a) random persistent signals, seed {a.seed}, {len(panel.pairs)} pairs, {span}, "
        f"{panel.n_bars:,} bars ({time.perf_counter() - t:.1f} s)",
        report["random"],
    )
    if a.wf_dir:
        t = time.perf_counter()
        sub, pairs, inp = meta_case(cfg, Path(a.wf_dir), a.horizon)
        report["meta"] = compare(inp, cfg, a.halt_reset_bars)
        print_table(
            f"(b) walk-forward meta-learner signals ({a.wf_dir}), {a.horizon}h, predicted pairs "
            f"{', '.join(pairs)}, {_day(sub.ts[0])} to {_day(sub.ts[-1])}, {sub.n_bars:,} bars "
            f"({time.perf_counter() - t:.1f} s)",
            report["meta"],
        )
    else:
        print("\n(b) skipped: pass --wf-dir DIR, the output folder of `kq walkforward` (predictions.parquet)")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2, sort_keys=True))
    return 0


def _day(ts) -> str:
    import pandas as pd

    return pd.Timestamp(int(ts), unit="s", tz="UTC").strftime("%Y-%m-%d %H:00")


if __name__ == "__main__":
    raise SystemExit(main())
