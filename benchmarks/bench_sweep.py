"""``kq sweep`` throughput and memory: random parameter sweeps over the 10-pair Binance panel.

    python -m benchmarks sweep [--sets 1000,10000] [--signals DIR_OR_FILE] [--chunk-size 256]
    python benchmarks/bench_sweep.py ...

Each sweep size runs in its own subprocess (so its peak RSS is its own): the 10 shared
``binance_*USDT_1h`` files from 2020-09-22 06:00 (all ten listed) to their end, 768 bars of warm-up
for ATR, spread and clusters, every rule of configs/default.toml on. The signal: ``--signals``, a
``kq walkforward`` out folder (its meta-learner signals.parquet) or a signals Parquet file, cut to
the panel; without it, a stand-in with the meta-learner's shape: seeded random persistent signals
per pair (``bench_sizing_study.random_persistent_signals``: P(up) 0.8 or 0.3, mean stay 48 h,
expected return 1-3 %), which trade more often than a model's and so cost at least as much.

The grid (random mode, seed 7): position_size 0.01-0.10, max_positions 2-10, p_up_entry 0.55-0.75
step 0.05, stop 1-4 ATR, take-profit 2-8 ATR, dd_halt 0.2 or 0.3, halt reset after a week.
Printed per size: expansion (validation) time, sweep time and sets per second, write time
(results.parquet, sweep.json with the best set's deflated Sharpe, report.html), peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FILES = [f"binance_{s}USDT_1h" for s in ["BTC", "ETH", "SOL", "XRP", "ADA", "LTC", "DOT", "LINK", "AVAX", "DOGE"]]
START = 1600761600  # 2020-09-22 06:00 UTC: all ten pairs listed
WARMUP = 768

GRID = {
    "mode": "random",
    "seed": 7,
    "objective": "sharpe",
    "heatmap": ["risk.position_size", "risk.max_positions"],
    "params": {
        "risk.position_size": {"low": 0.01, "high": 0.10},
        "risk.max_positions": {"low": 2, "high": 10},
        "risk.p_up_entry": {"low": 0.55, "high": 0.75, "step": 0.05},
        "risk.stop_atr_mult": {"low": 1.0, "high": 4.0},
        "risk.take_profit_atr_mult": {"low": 2.0, "high": 8.0},
        "risk.dd_halt": [0.2, 0.3],
        "backtest.halt_reset_bars": [168],
    },
}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def one(n_sets: int, signals: str | None, chunk_size: int) -> dict:
    import numpy as np
    import pandas as pd

    from engine.config import config_from_dict, read_toml
    from engine.paths import configs_dir
    from engine.store.panel import load_shared_panel
    from research.sweep import (
        best_set,
        deflated_sharpe_of_best,
        expand,
        inputs_from_panel,
        parse_grid,
        results_frame,
        run_grid,
        write_sweep,
    )

    raw = read_toml(configs_dir() / "default.toml")
    cfg = config_from_dict(raw)
    t = time.perf_counter()
    panel = load_shared_panel(FILES, start=START - WARMUP * 3600)
    if signals:
        from engine.backtest.io import read_signals

        p = Path(signals)
        sig = read_signals(str(p / "signals.parquet" if p.is_dir() else p))
        t0, t1 = max(START, int(sig["ts"].min())), int(sig["ts"].max())
        what = f"signals {signals}"
    else:
        from benchmarks.bench_sizing_study import random_persistent_signals

        sub = panel.slice(START)
        p_up, er = random_persistent_signals(sub.close.shape, 7)
        p_up = np.where(sub.valid, p_up, np.nan)
        n, m = p_up.shape
        sig = pd.DataFrame(
            {
                "ts": np.repeat(sub.ts, m),
                "pair": np.tile(np.asarray(sub.pairs, dtype=object), n),
                "p_up": p_up.ravel(),
                "exp_return": er.ravel(),
            }
        )
        t0, t1 = START, int(sub.ts[-1])
        what = "stand-in: random persistent signals (seed 7)"
    si = inputs_from_panel(panel, cfg, t0, t1, sig, what)
    load_s = time.perf_counter() - t
    spec = parse_grid(GRID | {"n": n_sets}, "bench")
    t = time.perf_counter()
    ex = expand(spec, raw)
    expand_s = time.perf_counter() - t
    # compile outside the timing (the numba cache makes this quick after the first run)
    run_grid(si.inp, spec, type(ex)(ex.keys, ex.values[:2], ex.params[:2]), chunk_size=2)
    t = time.perf_counter()
    res = run_grid(si.inp, spec, ex, chunk_size=chunk_size)
    run_s = time.perf_counter() - t
    t = time.perf_counter()
    df = results_frame(res)
    b = best_set(df, spec.objective, spec.direction)
    dsr = None
    if b is not None:
        dsr = deflated_sharpe_of_best(si.inp, ex.params[b : b + 1], res.metrics["sharpe"], len(df))
    with tempfile.TemporaryDirectory() as d:
        doc = write_sweep(Path(d) / "out", res, si, {"config": "configs/default.toml"}, dsr=dsr)
        sizes = {f.name: f.stat().st_size for f in (Path(d) / "out").iterdir()}
    write_s = time.perf_counter() - t
    return {
        "sets": n_sets,
        "signal": what,
        "bars": int(si.inp.ts.shape[0]),
        "pairs": len(si.inp.pairs),
        "load_s": round(load_s, 2),
        "expand_s": round(expand_s, 2),
        "sweep_s": round(run_s, 2),
        "sets_per_s": round(n_sets / run_s, 1),
        "bar_pair_steps_per_s": round(n_sets * si.inp.close.size / run_s),
        "write_s": round(write_s, 2),
        "peak_rss_mb": round(_peak_mb(), 1),
        "file_bytes": sizes,
        "median_trades": float(np.median(df["n_trades"])),
        "best_sharpe": (doc["best"] or {}).get("metrics", {}).get("sharpe"),
        "best_dsr": ((doc["best"] or {}).get("deflated_sharpe") or {}).get("dsr"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="1000,10000", help="comma-separated sweep sizes, each in its own process")
    ap.add_argument("--signals", default=None, help="kq walkforward out folder or signals Parquet file")
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    a = ap.parse_args(argv)
    if a.one is not None:
        print(json.dumps(one(a.one, a.signals, a.chunk_size)))
        return 0
    import numba

    rows = []
    for n in (int(x) for x in a.sets.split(",")):
        cmd = [sys.executable, "-m", "benchmarks.bench_sweep", "--one", str(n), "--chunk-size", str(a.chunk_size)]
        if a.signals:
            cmd += ["--signals", a.signals]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if p.returncode != 0:
            print(p.stderr[-4000:], file=sys.stderr)
            return 1
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    r0 = rows[0]
    print(
        f"kq sweep benchmark: {r0['pairs']} pairs x {r0['bars']:,} bars, {r0['signal']}; "
        f"numba threads {numba.get_num_threads()}, chunk {a.chunk_size}"
    )
    head = ("sets", "expand s", "sweep s", "sets/s", "write s", "peak RSS MB", "med trades")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (7, 9, 8, 8, 8, 12, 11), strict=True)))
    for r in rows:
        print(
            f"{r['sets']:>7,} {r['expand_s']:>9.2f} {r['sweep_s']:>8.2f} {r['sets_per_s']:>8.1f} {r['write_s']:>8.2f} "
            f"{r['peak_rss_mb']:>12,.0f} {r['median_trades']:>11,.0f}"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
