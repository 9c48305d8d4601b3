"""The daemon's hourly cycle (``Cycle.run_hour`` through ``Daemon.run_once``) on a 10-pair universe
against the local simulator, per stage, and the ledger's growth per hour.

    python -m benchmarks live_cycle [--hours 48] [--start 2024-06-01]

Bars: the 10 Binance USDT hourly files in the shared folder, relabelled as Kraken USD pairs (BTC/USD
... DOGE/USD) for both the simulator and the market store (the features do not depend on pair
names). The store holds the 1,100 hours before ``--start``; the simulator replays the same bars and
the data step tops the store up through its OHLC endpoint each hour. Model: the tests' tiny real
bundle (tests/live_harness.py; built once, cached). Config: the test harness's paper config (tier
pro, limit orders rest 0.2 s before the market fallback: execution time includes that wait per
limit order), a 100,000 USD paper account, the SQLite ledger in a temporary folder.

Figures: per-stage median and p95 wall time over the hours (``HourReport.timings``:
data_features_model, risk, execution, reconcile, ledger, total), ledger rows and bytes per hour (the
SQLite file after a WAL checkpoint, outside the timed stages), and the reference: the same hour's
``RiskMachine.on_bar`` alone (machine restored from the hour's ledgered "before" snapshot, called with
the hour's ledgered inputs; best of 3 per hour), so ``total / on_bar`` says how much of the cycle is
the risk step. The first hour (imports, JIT from the numba cache, first store reads) is reported
apart and left out of the medians. Run on demand; figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

H = 3600
COINS = ["BTC", "ETH", "SOL", "XRP", "ADA", "LTC", "DOT", "LINK", "AVAX", "DOGE"]
PAIRS = [f"{c}/USD" for c in COINS]
STAGES = ("data_features_model", "risk", "execution", "reconcile", "ledger", "total")
HISTORY = 1100  # hours stored before the first cycle (the features need 768)
SETTLE = 30


def frames(start: int, hours: int):
    """{BTC/USD: frame, ...}: the Binance USDT bars relabelled, FIRST .. start + hours + 2 h."""
    from engine.paths import shared_ohlcv_dir
    from engine.store.panel import read_shared_parquet

    d = shared_ohlcv_dir()
    out = {}
    lo, hi = start - HISTORY * H, start + (hours + 2) * H
    for c, pair in zip(COINS, PAIRS, strict=True):
        p = d / f"binance_{c}USDT_1h.parquet"
        if not p.is_file():
            raise SystemExit(f"bench_live_cycle: {p} not found (set KQ_SHARED)")
        df = read_shared_parquet(p)
        out[pair] = df[(df.ts >= lo) & (df.ts <= hi)].reset_index(drop=True)
    return out


def pct(xs, q):
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if xs else float("nan")


def ledger_bytes(path: Path) -> int:
    """The SQLite file's size after moving the WAL into it (another connection; the daemon is idle)."""
    with sqlite3.connect(path) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


def on_bar_alone(daemon, hour: int, repeat: int = 3) -> float:
    """Best of ``repeat``: RiskMachine.on_bar of ``hour`` on a machine restored from the hour's
    ledgered "before" snapshot, with the hour's ledgered inputs."""
    from engine.risk.machine import RiskMachine
    from live_bridge.cycle import recorded_inputs
    from live_bridge.ledger import Kind

    cyc = daemon.cycle
    snap = [e for e in daemon.ledger.entries(hour, Kind.RISK_SNAPSHOT) if e.code == "before"][-1]
    args, _ = recorded_inputs(daemon.ledger, hour, cyc.pairs)
    params, inst = cyc._params(cyc.init_cash), cyc._instruments()
    best = float("inf")
    for _ in range(repeat):
        m = RiskMachine.restore(snap.blob, params, cyc.pairs, inst)
        t = time.perf_counter()
        m.on_bar(*args)
        best = min(best, time.perf_counter() - t)
    return best


def split_build(daemon, hour: int, repeat: int = 3) -> dict[str, float]:
    """Parts of the "data_features_model" stage measured apart on ``hour`` (best of ``repeat``): the
    data step's OHLC calls (one per pair, answered by the simulator), the store read of the window,
    the feature kernels, the model."""
    from engine.features.featureset import build_features
    from engine.universe import load_universe, universe_mask

    cyc = daemon.cycle
    out: dict[str, float] = {}

    def best(name, fn):
        ts = []
        for _ in range(repeat):
            t = time.perf_counter()
            v = fn()
            ts.append(time.perf_counter() - t)
        out[name] = min(ts)
        return v

    from live_bridge.data import fetch_ohlc

    best(
        f"{len(cyc.pairs)} OHLC calls",
        lambda: [fetch_ohlc(daemon.adapter, p, since=(hour - 1) * H) for p in cyc.pairs],
    )
    panel = best("store window read", lambda: cyc._panel(hour))
    umask = best("universe mask", lambda: universe_mask(panel, load_universe()))
    feats = best("feature kernels", lambda: build_features(panel, cyc.cfg.features, umask))
    best("model predict", lambda: daemon.model.predict(feats, panel, at=hour * H))
    from engine.backtest.runner import make_inputs
    from live_bridge.data import warmup_status

    need = int(cyc.cfg.features.warmup_bars)
    best("warm-up check", lambda: warmup_status(cyc.store, cyc.pairs, (hour + 1) * H, need=need))
    nan = np.full(panel.close.shape, np.nan)
    best("risk inputs", lambda: make_inputs(panel, nan, nan, cyc.cfg, tradable=umask))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=int, default=48, help="hourly cycles to run (default 48)")
    ap.add_argument("--start", default="2024-06-01", help="first bar (ISO date or unix seconds)")
    args = ap.parse_args()
    if not 2 <= args.hours <= 2000:
        print("bench_live_cycle: --hours must be 2..2000", file=sys.stderr)
        return 2

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))  # tests.live_harness: the tiny model and the paper config
    from engine.store.market import MarketStore
    from engine.store.panel import panel_from_frames
    from kq.data import parse_time
    from live_bridge.simulator.testing import start_sim
    from tests.live_harness import BundleModel, make_daemon, tiny_model_dir

    t0 = parse_time(args.start)
    if t0 is None:
        print("bench_live_cycle: --start is required", file=sys.stderr)
        return 2
    p0 = int(t0) // H * H
    fr = frames(p0, args.hours)
    model = BundleModel(tiny_model_dir())
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with MarketStore(tmp / "m.duckdb") as s:
            for pair, df in fr.items():
                s.import_bars(df[df.ts <= p0 - H], "kraken", pair, f"bench-{pair}")
        sim = start_sim(panel_from_frames(fr, "kraken"), start=p0)
        try:
            daemon = make_daemon(sim.url, tmp, model, universe={"pairs": PAIRS})
            led_path = tmp / "ledger.sqlite"
            daemon.start()
            rows0, bytes0 = daemon.ledger.count(), ledger_bytes(led_path)
            reports, rows, sizes = [], [], []
            for i in range(args.hours):
                sim.ex.advance(to=float(p0 + (i + 1) * H + SETTLE))
                for r in daemon.run_once():
                    reports.append(r)
                n, b = daemon.ledger.count(), ledger_bytes(led_path)
                rows.append(n - rows0)
                sizes.append(b - bytes0)
                rows0, bytes0 = n, b
            done = [r for r in reports if r.status == "completed"]
            ref = [on_bar_alone(daemon, r.hour) for r in done]
            parts = split_build(daemon, done[-1].hour) if done else {}
            # the data step alone, once, on the bar after the last cycle's (10 OHLC calls + store writes)
            from live_bridge.data import update_bars

            nxt = p0 + (args.hours + 1) * H
            sim.ex.advance(to=float(nxt + SETTLE))
            t = time.perf_counter()
            step = update_bars(daemon.store, daemon.adapter, PAIRS, nxt)
            parts["data step (update_bars, one run)"] = time.perf_counter() - t
            assert sum(getattr(r, "new_bars", 0) for r in step.results.values()) == len(PAIRS), step.results
            daemon.close()
        finally:
            sim.stop()

    if len(done) != args.hours:
        print(f"bench_live_cycle: {len(done)} of {args.hours} hours completed", file=sys.stderr)
        return 1
    first, rest = done[0], done[1:]
    orders, fills = sum(r.orders for r in done), sum(r.fills for r in done)
    latched = [r for r in done if r.latch]
    print(
        f"hourly cycle, {len(PAIRS)} pairs (Binance USDT bars as Kraken USD pairs), simulator on loopback, "
        f"SQLite ledger; {args.hours} hours from {time.strftime('%Y-%m-%d %H:00', time.gmtime(p0))} UTC; "
        f"{orders} orders, {fills} fills, {len(latched)} hours asking for the kill switch; "
        f"end state {done[-1].state} equity {done[-1].equity:,.2f}"
    )
    print(f"first hour (cold: imports, numba cache, first reads): total {first.timings['total'] * 1e3:,.0f} ms")
    print(f"hours 2..{args.hours}, ms:   {'median':>8} {'p95':>8}")
    for k in STAGES:
        xs = [r.timings.get(k, float("nan")) * 1e3 for r in rest]
        print(f"  {k:<22} {pct(xs, 50):8.1f} {pct(xs, 95):8.1f}")
    print(
        "  of data_features_model, measured apart (last hour's window, best of 3; the data step once on the "
        "next bar), ms: " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in parts.items())
    )
    ex = [r for r in done if r.orders]
    if ex:
        ms = [r.timings["execution"] * 1e3 for r in ex]
        print(
            f"  execution in the {len(ex)} hour(s) with orders ({sum(r.orders for r in ex)} orders): "
            f"median {pct(ms, 50):.0f} ms, max {max(ms):.0f} ms (includes the 0.2 s a limit order rests)"
        )
    ref_ms = [x * 1e3 for x in ref[1:]]
    tot = [r.timings["total"] * 1e3 for r in rest]
    print(
        f"reference: RiskMachine.on_bar alone (same hours, same inputs): median {pct(ref_ms, 50):.3f} ms, "
        f"p95 {pct(ref_ms, 95):.3f} ms; ratio cycle total / on_bar (medians) = {pct(tot, 50) / pct(ref_ms, 50):,.0f}x"
    )
    r1, s1 = rows[1:], sizes[1:]
    print(
        f"ledger growth per hour: rows median {pct(r1, 50):.0f} (min {min(r1)}, max {max(r1)}); "
        f"bytes median {pct(s1, 50) / 1024:.1f} KiB (mean {np.mean(s1) / 1024:.1f} KiB); "
        f"first hour {rows[0]} rows, {sizes[0] / 1024:.1f} KiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
