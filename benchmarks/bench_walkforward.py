"""Walk-forward benchmark: configs/research.toml (10 Binance pairs, 1/4/24 h, research-sized models)
through research.walkforward.run_walkforward on the shared parquet files (no store needed).

    python benchmarks/bench_walkforward.py [--config configs/research.toml] [--max-folds 1] [--horizons 24]

Prints, per fold and horizon, the meta-learner fit time (five base models x (inner folds + 1 refit))
split by base model, the prediction time, the feature/backtest stages, peak resident memory, and an
extrapolation of the measured per-fold time to every fold of the config. Goal (issue 5): the full
10-pair, 5-year walk-forward with all seven model kinds in under 30 minutes on this 2-core machine.
The machine may be shared with other jobs: timings are noisy (nets vary by about +-25%).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STEMS = {"binance": "binance_{}{}_1h"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "research.toml"))
    ap.add_argument("--max-folds", type=int, default=1, help="folds to run (0 = all); the rest is extrapolated")
    ap.add_argument("--horizons", default=None, help="comma-separated horizons overriding the config's")
    args = ap.parse_args()

    from engine.pairs import split_pair
    from engine.store.panel import load_shared_panel
    from kq.data import parse_time
    from research.config import load_research_config
    from research.walkforward import run_walkforward

    cfg, rc = load_research_config(args.config)
    if args.horizons:
        hs = tuple(int(h) for h in args.horizons.split(","))
        rc = rc.model_copy(update={"horizons": hs, "trade_horizon": hs[-1]})
    if cfg.data.venue != "binance" or not rc.pairs:
        print("bench_walkforward: the config must name binance pairs in [research].pairs", file=sys.stderr)
        return 2
    stems = [STEMS["binance"].format(*split_pair(p)) for p in rc.pairs]
    t0 = parse_time(str(rc.start)) if rc.start else None
    t1 = parse_time(str(rc.end), end=True) if rc.end else None
    t = time.perf_counter()
    panel = load_shared_panel(stems, None if t0 is None else t0 - rc.warmup_bars * 3600, t1)
    t_load = time.perf_counter() - t
    print(f"panel: {panel.n_bars:,} bars x {panel.n_pairs} pairs, loaded in {t_load:.1f} s")

    def prog(ev, **kw):
        if ev == "plan":
            print(f"plan: {kw['n_folds']} folds x horizons {kw['horizons']}; models {', '.join(kw['models'])}; "
                  f"{kw['inner_folds']} inner folds", flush=True)

    t = time.perf_counter()
    res = run_walkforward(panel, cfg, rc, start_ts=t0, progress=prog,
                          max_folds=None if args.max_folds == 0 else args.max_folds)
    wall = time.perf_counter() - t
    total_folds = res.stage_seconds["n_folds_total"]
    print(f"{'fold':>4} {'h':>3} {'rows':>8} {'fit s':>7} {'pred s':>7}  base-model fit seconds (inner + refit)")
    per_fold = {}
    for r in res.timings:
        per_fold[r["fold"]] = per_fold.get(r["fold"], 0.0) + r["fit_s"] + r["predict_s"]
        parts = ", ".join(f"{k} {v:.1f}" for k, v in r["base_fit_s"].items())
        print(f"{r['fold']:>4} {r['horizon']:>3} {r['n_train_rows']:>8,} {r['fit_s']:>7.1f} {r['predict_s']:>7.1f}  {parts}")
    print("stages:", res.stage_seconds)
    for r in res.model_metrics:
        if r["fold"] == "all":
            print(f"  {r['model']:>13} {r['horizon']:>3}h  AUC {r['auc']:.3f}  n {r['n']:,}")
    mean_fold = sum(per_fold.values()) / max(len(per_fold), 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"wall {wall:.1f} s for {len(per_fold)} of {total_folds} folds; mean {mean_fold:.1f} s per fold "
          f"-> all folds about {mean_fold * total_folds / 60:.1f} min (goal < 30 min); peak RSS {peak:,.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
