"""``kq sweep`` throughput and memory: random parameter sweeps over the 10-pair Binance panel.

    python -m benchmarks sweep [--sets 1000,10000] [--source meta|standin] [--predictions DIR_OR_FILE]
                               [--span panel|signals] [--ref-sets 10] [--chunk-size 256]
    python benchmarks/bench_sweep.py ...

Goal (issue 19): a 1,000-set sweep over the 10-pair panel with cached meta-learner signals, its
sets per second and peak memory; under 1 GB peak RSS at 10,000 sets.

The panel: the 10 shared ``binance_*USDT_1h`` files from 2020-09-22 06:00 (all ten listed) to their
end (45,136 bars), 768 bars of warm-up for ATR, spread and clusters, every rule of
configs/default.toml on. The sets run through ``kq sweep``'s own path (``research.sweep``:
``inputs_from_panel`` -> ``expand`` -> ``run_grid`` in chunks -> ``write_sweep``).

The signal (``--source``):

* ``meta`` (default, the headline): the walk-forward meta-learner's out-of-sample signals (its
  signals.parquet), as ``kq sweep --signals`` reads them. ``--predictions`` names a ``kq
  walkforward`` out folder, its signals.parquet or its predictions.parquet (the meta model at
  ``--horizon``). Without it the benchmark runs ONE walk-forward over the same panel
  (:data:`SIGNAL_OVERRIDES`: configs/default.toml with tiny models of all five kinds, 24 h horizon,
  rolling 90-day training windows, one-year test blocks, so the out-of-sample span covers all but
  the first ~91 days) and caches its outputs (a ``kq walkforward`` out folder) under
  ``data/bench_cache/`` (gitignored), keyed by the sha256 of the configuration, the panel's
  arrays and :data:`CACHE_VERSION`; a re-run reuses it (``--rebuild`` forces a new one). The time
  to produce the signals is printed apart from the sweep's. Bars outside the out-of-sample span,
  and pairs outside the universe (DOGE), have no prediction (NaN P(up): no entry); the count of
  bar-steps that carry a signal is printed.
* ``standin``: seeded random persistent signals per pair with the meta-learner's shape
  (``bench_sizing_study.random_persistent_signals``: P(up) 0.8 or 0.3, mean stay 48 h, expected
  return 1-3 %) on every valid bar, which trade more often than a model's.

``--span panel`` (default): every mode runs over the same 45,136 bars, so the figures compare;
``--span signals`` cuts the bars to the signals' first..last bar, as ``kq sweep`` does.

The grid (random mode, seed 7): position_size 0.01-0.10, max_positions 2-10, p_up_entry 0.55-0.75
step 0.05, stop 1-4 ATR, take-profit 2-8 ATR, dd_halt 0.2 or 0.3, halt reset after a week.
Each sweep size runs in its own subprocess (its peak RSS is its own; the signals are produced
before, in the parent), after a 2-set run that fills the numba cache (a cold compile of the kernels
costs seconds and, measured here, about 2.7 GB of RSS, which would otherwise land in the first
size's figures). Printed per size: expansion (validation) time, sweep time and sets per second,
write time (results.parquet, sweep.json with the best set's deflated Sharpe, report.html), peak
RSS. The reference: ``--ref-sets`` sets of the first size (spread evenly over it; default
1,000, so all of a 1,000-set sweep) run one at a time through ``engine.backtest.runner.run_backtest``
(no records, one thread) on the same inputs in the same process, its sets/s printed with the
sweep's ratio to it. The last line is a ``key=value`` summary.
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

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ["BTC", "ETH", "SOL", "XRP", "ADA", "LTC", "DOT", "LINK", "AVAX", "DOGE"]
FILES = [f"binance_{s}USDT_1h" for s in PAIRS]
START = 1600761600  # 2020-09-22 06:00 UTC: all ten pairs listed
WARMUP = 768
GOAL_RSS_MB, GOAL_SETS = 1024.0, 10_000  # issue 19: under 1 GB peak RSS at 10,000 sets
CACHE_DIR = ROOT / "data" / "bench_cache"
CACHE_VERSION = 1  # bump when the way the cached signals are produced changes

#: the walk-forward that produces the meta-learner signals: overrides of configs/default.toml
SIGNAL_OVERRIDES: dict = {
    "data.venue": "binance",
    "research": {
        "pairs": [f"{s}/USDT" for s in PAIRS],
        "start": START,
        "horizons": [24],
        "trade_horizon": 24,
        "tiny": True,  # research.models.base.TINY_PARAMS
        "folds": {
            "train_bars": 2160,  # 90 days, rolling
            "test_bars": 8760,  # one year: five folds, the last one cut at the panel's end
            "purge_bars": 24,
            "embargo_bars": 24,
            "expanding": False,
            "inner_folds": 2,
        },
        "models": {"meta": {"n_jobs": 2}},
        "tracking": {"enabled": False},
    },
}

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


def load_panel():
    from engine.store.panel import load_shared_panel

    return load_shared_panel(FILES, start=START - WARMUP * 3600)


# ------------------------------------------------------------------------------------------------
# the meta-learner signals: one walk-forward over the panel, cached


def signal_spec(overrides: dict | None = None):
    """The walk-forward's :class:`research.pipeline.RunSpec`: configs/default.toml + ``overrides``
    (default :data:`SIGNAL_OVERRIDES`)."""
    from engine.config import read_toml
    from engine.paths import configs_dir
    from research.pipeline import spec_from_dict

    return spec_from_dict(
        read_toml(configs_dir() / "default.toml"), "configs/default.toml", overrides or SIGNAL_OVERRIDES
    )


def panel_sha256(panel) -> str:
    """sha256 of the panel's pairs, venue and arrays (what the walk-forward reads)."""
    import hashlib

    import numpy as np

    h = hashlib.sha256(json.dumps([panel.venue, list(panel.pairs)]).encode())
    for f in ("ts", "open", "high", "low", "close", "volume", "trades", "vwap", "valid"):
        a = np.ascontiguousarray(getattr(panel, f))
        h.update(f"{f}{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cache_key(spec, data_sha256: str) -> str:
    """The cache key of the signals of ``spec`` over data ``data_sha256``: sha256 of the engine
    config's content hash, the research table, the walk-forward start, the data and
    :data:`CACHE_VERSION`."""
    from engine.hashing import sha256_json
    from research.config import research_to_json

    return sha256_json(
        {
            "version": CACHE_VERSION,
            "config": spec.config.content_hash(),
            "research": research_to_json(spec.research),
            "start": START,
            "warmup": WARMUP,
            "data": data_sha256,
        }
    )


def meta_signals(panel, rebuild: bool = False, cache_dir: Path = CACHE_DIR, log=print) -> tuple[Path, dict]:
    """(walk-forward out folder, its bench_signals.json) of the meta-learner signals over ``panel``:
    the cached folder when its key matches, else one walk-forward run now and written there."""
    spec = signal_spec()
    t = time.perf_counter()
    data_sha = panel_sha256(panel)
    key = cache_key(spec, data_sha)
    out = cache_dir / f"sweep_signals_{key[:16]}"
    info_f = out / "bench_signals.json"
    if info_f.is_file() and not rebuild:
        info = json.loads(info_f.read_text())
        if info.get("key") == key and (out / "signals.parquet").is_file():
            info["cached"] = True
            return out, info
    from research.report import write_walkforward
    from research.walkforward import run_walkforward

    cfg, rc = spec.config, spec.research
    log(f"producing meta-learner signals (one walk-forward, cached in {_rel(out)}/) ...", flush=True)

    def prog(ev, **kw):
        if ev == "plan":
            log(f"  plan: {kw['n_folds']} folds, models {', '.join(kw['models'])}", flush=True)
        elif ev == "fold_done":
            log(f"  fold {kw['fold']} done at {time.perf_counter() - t:.0f} s", flush=True)

    res = run_walkforward(panel, cfg, rc, start_ts=START, progress=prog)
    wf_s = time.perf_counter() - t
    meta = {
        "venue": panel.venue,
        "pairs": ",".join(panel.pairs),
        "bars_loaded": panel.n_bars,
        "start": START,
        "end": int(panel.ts[-1]),
        "config": "configs/default.toml + benchmarks/bench_sweep.py SIGNAL_OVERRIDES",
        "config_sha256": cfg.content_hash(),
        "research": json.loads(json.dumps(spec.raw.get("research", {}), default=str)),
        "seed": cfg.seed,
        "data_sha256": data_sha,
        "wall_seconds": round(wf_s, 2),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_walkforward(res, out, cfg, meta, market=panel)
    meta_auc = [r["auc"] for r in res.model_metrics if r["model"] == "meta" and r["fold"] == "all"]
    info = {
        "key": key,
        "produced_s": round(time.perf_counter() - t, 1),
        "walkforward_s": round(wf_s, 1),
        "n_folds": len(res.folds),
        "oos_start": int(res.signals["ts"].min()),
        "oos_end": int(res.signals["ts"].max()),
        "meta_auc": meta_auc[0] if meta_auc else None,
        "produced_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    info_f.write_text(json.dumps(info, indent=2) + "\n")
    info["cached"] = False
    return out, info


def read_meta_signals(path: str, horizon: int):
    """The signals frame of a walk-forward output: a folder (its signals.parquet, as ``kq sweep``
    reads it), a signals Parquet file, or a predictions.parquet (the meta model at ``horizon``)."""
    import pandas as pd

    from engine.backtest.io import read_signals
    from engine.errors import InputError

    p = Path(path)
    if p.is_dir():
        p = p / "signals.parquet"
    if not p.is_file():
        raise InputError(f"--predictions {path}: no such file, or a folder without signals.parquet")
    try:
        import pyarrow.parquet as pq

        cols = set(pq.read_schema(p).names)
    except Exception:  # not Parquet: read_signals names the problem
        cols = set()
    if {"model", "horizon"} <= cols:
        from research.walkforward import strategy_signals

        with tempfile.TemporaryDirectory() as d:  # through read_signals, as kq sweep reads a file
            f = Path(d) / "signals.parquet"
            strategy_signals(pd.read_parquet(p), horizon).to_parquet(f, index=False)
            return read_signals(str(f))
    return read_signals(str(p))


# ------------------------------------------------------------------------------------------------
# one sweep size (its own process)


def one(n_sets: int, signals: str | None, chunk_size: int, span: str, horizon: int, ref_sets: int) -> dict:
    import numpy as np
    import pandas as pd

    from engine.config import config_from_dict, read_toml
    from engine.paths import configs_dir
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
    panel = load_panel()
    t0, t1 = START, int(panel.ts[-1])
    if signals:
        sig = read_meta_signals(signals, horizon)
        sig = sig[sig["pair"].isin(panel.pairs)]
        if span == "signals":
            t0, t1 = max(START, int(sig["ts"].min())), min(t1, int(sig["ts"].max()))
        what = f"meta-learner signals {signals}"
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
        what = "stand-in: random persistent signals (seed 7)"
    si = inputs_from_panel(panel, cfg, t0, t1, sig, what)
    load_s = time.perf_counter() - t
    steps = int(si.inp.close.size)
    with_signal = int(np.isfinite(si.inp.p_up).sum())
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
    peak = _peak_mb()  # before the reference, so its buffers never count
    ref = None
    if ref_sets > 0:
        from engine.backtest.runner import run_backtest

        # sets spread evenly over the sweep (all of them when ref_sets >= the sweep's size)
        pick = np.unique(np.linspace(0, len(ex.params) - 1, min(ref_sets, len(ex.params))).astype(np.int64))
        run_backtest(si.inp, ex.params[:1], record=False)  # compiled outside the timing
        t = time.perf_counter()
        for i in pick:
            run_backtest(si.inp, ex.params[i : i + 1], record=False)
        ref_s = time.perf_counter() - t
        ref = {"sets": len(pick), "seconds": round(ref_s, 3), "sets_per_s": round(len(pick) / ref_s, 2)}
    return {
        "sets": n_sets,
        "signal": what,
        "span": span,
        "bars": int(si.inp.ts.shape[0]),
        "pairs": len(si.inp.pairs),
        "bar_steps": steps,
        "bar_steps_with_signal": with_signal,
        "load_s": round(load_s, 2),
        "expand_s": round(expand_s, 2),
        "sweep_s": round(run_s, 2),
        "sets_per_s": round(n_sets / run_s, 1),
        "bar_pair_steps_per_s": round(n_sets * steps / run_s),
        "write_s": round(write_s, 2),
        "peak_rss_mb": round(peak, 1),
        "file_bytes": sizes,
        "median_trades": float(np.median(df["n_trades"])),
        "best_sharpe": (doc["best"] or {}).get("metrics", {}).get("sharpe"),
        "best_dsr": ((doc["best"] or {}).get("deflated_sharpe") or {}).get("dsr"),
        "reference": ref,
    }


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def _utc(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(int(ts)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--sets", default="1000", help="comma-separated sweep sizes, each in its own process")
    ap.add_argument(
        "--source", choices=("meta", "standin"), default="meta", help="meta-learner signals or the random stand-in"
    )
    ap.add_argument(
        "--predictions",
        "--signals",
        dest="predictions",
        default=None,
        help="kq walkforward out folder, its signals.parquet or predictions.parquet (default: the cached run)",
    )
    ap.add_argument("--horizon", type=int, default=24, help="meta horizon read from a predictions.parquet")
    ap.add_argument("--span", choices=("panel", "signals"), default="panel", help="bars swept (see the doc)")
    ap.add_argument("--rebuild", action="store_true", help="produce the meta-learner signals again")
    ap.add_argument("--ref-sets", type=int, default=1000, help="sets run one at a time as the reference (0: none)")
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    a = ap.parse_args(argv)
    if a.one is not None:
        print(json.dumps(one(a.one, a.predictions, a.chunk_size, a.span, a.horizon, a.ref_sets)))
        return 0
    try:
        sizes = [int(x) for x in a.sets.split(",")]
        if not sizes or min(sizes) < 1:
            raise ValueError
    except ValueError:
        print(f"bench_sweep: error: --sets {a.sets!r}: comma-separated whole numbers >= 1", file=sys.stderr)
        return 2
    if a.predictions and a.source != "meta":
        print("bench_sweep: error: --predictions is for --source meta", file=sys.stderr)
        return 2
    if a.predictions and not Path(a.predictions).exists():
        print(f"bench_sweep: error: --predictions {a.predictions}: no such file or folder", file=sys.stderr)
        return 2
    import numba

    sig_line, sig_kv = "", {}
    signals = a.predictions
    if a.source == "meta" and signals is None:
        folder, info = meta_signals(load_panel(), a.rebuild)
        signals = _rel(folder)
        how = (
            f"reused the cache (produced {info.get('produced_at')} in {info['produced_s']:.1f} s)"
            if info["cached"]
            else f"produced now in {info['produced_s']:.1f} s (walk-forward {info['walkforward_s']:.1f} s)"
        )
        auc = info.get("meta_auc")
        sig_line = (
            f"signals: {info['n_folds']} folds, out of sample {_utc(info['oos_start'])} to {_utc(info['oos_end'])}, "
            f"meta AUC {'n/a' if auc is None else f'{auc:.3f}'}; {how}"
        )
        sig_kv = {"signal_s": info["produced_s"], "signal_cached": int(info["cached"])}
    elif a.source == "meta":
        sig_line = f"signals: {signals} (given; not timed)"

    def child(n: int, ref_sets: int) -> dict | None:
        cmd = [sys.executable, "-m", "benchmarks.bench_sweep", "--one", str(n), "--chunk-size", str(a.chunk_size)]
        cmd += ["--span", a.span, "--horizon", str(a.horizon), "--ref-sets", str(ref_sets)]
        if signals:
            cmd += ["--predictions", signals]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if p.returncode != 0:
            print(p.stderr[-4000:], file=sys.stderr)
            return None
        return json.loads(p.stdout.strip().splitlines()[-1])

    # a 2-set run first fills the numba cache (the sweep kernel and run_backtest with and without
    # records), so no measured process pays LLVM's compile time and memory (a cold compile of the
    # kernels peaked at about 2.7 GB RSS here); kq sweep with a warm cache does not either
    t = time.perf_counter()
    if child(2, 1) is None:
        return 1
    warm_s = time.perf_counter() - t
    rows = []
    for i, n in enumerate(sizes):
        r = child(n, a.ref_sets if i == 0 else 0)
        if r is None:
            return 1
        rows.append(r)
    r0 = rows[0]
    print(
        f"kq sweep benchmark: {r0['pairs']} pairs x {r0['bars']:,} bars, {r0['signal']}; "
        f"numba threads {numba.get_num_threads()}, chunk {a.chunk_size}; cache warm-up run {warm_s:.1f} s"
    )
    if sig_line:
        print(sig_line)
    share = r0["bar_steps_with_signal"] / max(r0["bar_steps"], 1)
    print(f"bar-steps with a signal: {r0['bar_steps_with_signal']:,} of {r0['bar_steps']:,} ({share:.1%})")
    head = ("sets", "expand s", "sweep s", "sets/s", "write s", "peak RSS MB", "med trades")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (7, 9, 8, 8, 8, 12, 11), strict=True)))
    for r in rows:
        print(
            f"{r['sets']:>7,} {r['expand_s']:>9.2f} {r['sweep_s']:>8.2f} {r['sets_per_s']:>8.1f} {r['write_s']:>8.2f} "
            f"{r['peak_rss_mb']:>12,.0f} {r['median_trades']:>11,.0f}"
        )
    ref = r0.get("reference")
    kv: dict = {"source": a.source, "span": a.span, "bars": r0["bars"], "pairs": r0["pairs"], **sig_kv}
    kv["bar_steps_with_signal"] = r0["bar_steps_with_signal"]
    kv["bar_steps"] = r0["bar_steps"]
    if ref:
        ratio = r0["sets_per_s"] / ref["sets_per_s"]
        print(
            f"reference: {ref['sets']} sets one at a time through run_backtest (no records): "
            f"{ref['sets_per_s']:.2f} sets/s; the {r0['sets']:,}-set sweep is {ratio:.1f}x that"
        )
        kv |= {"ref_sets_per_s": ref["sets_per_s"], "ratio_vs_ref": round(ratio, 2)}
    kv |= {
        "sets": ",".join(str(r["sets"]) for r in rows),
        "sets_per_s": ",".join(f"{r['sets_per_s']}" for r in rows),
        "peak_rss_mb": ",".join(f"{r['peak_rss_mb']:.0f}" for r in rows),
    }
    big = [r for r in rows if r["sets"] >= GOAL_SETS]
    if big:  # the memory goal: > 1 meets it
        kv |= {"goal_rss_mb": f"{GOAL_RSS_MB:.0f}", "rss_ratio_vs_goal": round(GOAL_RSS_MB / big[0]["peak_rss_mb"], 2)}
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "summary": kv, "signals": sig_line}, indent=2))
    print(" ".join(f"{k}={v}" for k, v in kv.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
