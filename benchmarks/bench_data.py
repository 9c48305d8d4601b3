"""Data benchmark (issue 2): import every shared file into a fresh store; load the 10-pair Binance panel.

Figures: seconds and rows/s for the import (parse + validate + raw layer + bars + integrity log),
the no-op re-import, and the 10-pair Binance panel 2020-09-22 06:00 .. 2025-11-15 23:00 from the
store; the reference is reading the same panel straight from the parquet files
(``load_shared_panel``). Best of N repeats is reported for the loads.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

BINANCE10 = ["BTC", "ETH", "SOL", "XRP", "ADA", "LTC", "DOT", "LINK", "AVAX", "DOGE"]
START, END = 1600754400, 1763247600  # 2020-09-22 06:00 .. 2025-11-15 23:00 UTC


def best(fn, n=5):
    times, out = [], None
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> int:
    import numpy as np

    from engine.paths import shared_ohlcv_dir
    from engine.store.market import MarketStore
    from engine.store.panel import FIELDS, load_shared_panel

    shared = shared_ohlcv_dir()
    files = sorted(shared.glob("*.parquet"))
    if not files:
        print(f"bench_data: no shared data at {shared} (set KQ_SHARED)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.duckdb"
        t = time.perf_counter()
        with MarketStore(path) as s:
            rep = s.import_files(files)
        t_import = time.perf_counter() - t
        rows = rep.rows
        print(
            f"import {len(files)} shared files into a fresh store: {t_import:.2f} s, {rows:,} rows, "
            f"{rows / t_import:,.0f} rows/s ({path.stat().st_size / 2**20:.1f} MiB on disk)"
        )
        with MarketStore(path) as s:
            t = time.perf_counter()
            again = s.import_files(files)
            t_noop = time.perf_counter() - t
        print(f"re-import (no-op, {again.unchanged} files already imported): {t_noop:.3f} s")
        with MarketStore(path, read_only=True) as s:
            t_load, panel = best(lambda: s.load_panel([f"{b}/USDT" for b in BINANCE10], "binance", START, END))
            t_check, _ = best(lambda: s.check(), 3)
        t_ref, ref = best(lambda: load_shared_panel([f"binance_{b}USDT_1h" for b in BINANCE10], START, END))
        cells = panel.n_bars * panel.n_pairs
        same = np.array_equal(panel.valid, ref.valid) and all(
            getattr(panel, f).tobytes() == getattr(ref, f).tobytes() for f in FIELDS
        )
        print(
            f"load 10-pair Binance panel {panel.n_bars:,} bars x {panel.n_pairs} pairs "
            f"({int(panel.valid.sum()):,} valid bars) from the store: {t_load * 1e3:.1f} ms "
            f"({int(panel.valid.sum()) / t_load:,.0f} bars/s)"
        )
        print(
            f"reference, same panel straight from parquet (load_shared_panel): {t_ref * 1e3:.1f} ms "
            f"-> store/parquet ratio {t_load / t_ref:.2f}; bit-identical: {same}"
        )
        print(f"kq data check report (integrity recomputed live over {rows:,} bars): {t_check * 1e3:.0f} ms")
        print(f"({cells:,} panel cells; timings on a shared machine are noisy)")
        return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
