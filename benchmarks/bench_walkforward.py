"""Walk-forward benchmark: configs/research.toml (10 Binance pairs, 1/4/24 h, research-sized models)
through research.walkforward.run_walkforward on the shared parquet files (no store needed).

    python -m benchmarks walkforward --full          # every fold of the config (the issue's goal)
    python benchmarks/bench_walkforward.py [--config configs/research.toml] [--max-folds 1] [--horizons 24]
                                           [--n-jobs 2]

Prints, per fold, its wall time and the seconds spent fitting each base model (inner folds +
refit, summed over the horizons; with ``n_jobs`` > 1 fits overlap, so the sum can exceed the wall
time), the prediction time, the feature/metrics/backtest stages, the out-of-sample AUC per model
and horizon, peak resident memory, and ``ratio_vs_goal=`` = 1800 s / the measured wall time of the
whole run (panel load, features, every fold, metrics, backtests). With ``--max-folds N`` (default
1) the remaining folds are extrapolated from the mean fold (``est_full_s=``, ``ratio_vs_goal_est=``).
Goal (issue 5): the full 10-pair, 5-year walk-forward with all seven model kinds in under 30
minutes on the 2-core machine. A shared machine makes timings noisy (nets vary by about +-25%).
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
GOAL_S = 1800.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "research.toml"))
    ap.add_argument("--full", action="store_true", help="run every fold (same as --max-folds 0)")
    ap.add_argument("--max-folds", type=int, default=1, help="folds to run (0 = all); the rest is extrapolated")
    ap.add_argument("--horizons", default=None, help="comma-separated horizons overriding the config's")
    ap.add_argument("--n-jobs", type=int, default=None, help="override [research.models.meta].n_jobs")
    args = ap.parse_args(argv)
    t_all = time.perf_counter()

    from engine.pairs import split_pair
    from engine.store.panel import load_shared_panel
    from kq.data import parse_time
    from research.config import load_research_config
    from research.walkforward import run_walkforward

    cfg, rc = load_research_config(args.config)
    if args.horizons:
        hs = tuple(int(h) for h in args.horizons.split(","))
        rc = rc.model_copy(update={"horizons": hs, "trade_horizon": hs[-1]})
    if args.n_jobs:
        meta = rc.models.meta.model_copy(update={"n_jobs": int(args.n_jobs)})
        rc = rc.model_copy(update={"models": rc.models.model_copy(update={"meta": meta})})
    if cfg.data.venue != "binance" or not rc.pairs:
        print("bench_walkforward: the config must name binance pairs in [research].pairs", file=sys.stderr)
        return 2
    max_folds = None if (args.full or args.max_folds == 0) else args.max_folds
    stems = [STEMS["binance"].format(*split_pair(p)) for p in rc.pairs]
    t0 = parse_time(str(rc.start)) if rc.start else None
    t1 = parse_time(str(rc.end), end=True) if rc.end else None
    t = time.perf_counter()
    panel = load_shared_panel(stems, None if t0 is None else t0 - rc.warmup_bars * 3600, t1)
    t_load = time.perf_counter() - t
    print(f"panel: {panel.n_bars:,} bars x {panel.n_pairs} pairs, loaded in {t_load:.1f} s")
    print(
        f"meta: n_jobs {rc.models.meta.n_jobs}, share_horizons {rc.models.meta.share_horizons}, "
        f"inner_folds {rc.folds.inner_folds}"
    )

    fold_t: dict[int, list[float]] = {}

    def prog(ev, **kw):
        now = time.perf_counter()
        if ev == "plan":
            print(
                f"plan: {kw['n_folds']} folds x horizons {kw['horizons']}; models {', '.join(kw['models'])}; "
                f"{kw['inner_folds']} inner folds",
                flush=True,
            )
        elif ev == "step":
            fold_t.setdefault(kw["fold"], [now, now])
        elif ev == "fold_done":
            fold_t[kw["fold"]][1] = now

    t = time.perf_counter()
    res = run_walkforward(panel, cfg, rc, start_ts=t0, progress=prog, max_folds=max_folds)
    wall = time.perf_counter() - t
    total_folds = res.stage_seconds["n_folds_total"]
    names = sorted({k for r in res.timings for k in r["base_fit_s"]})
    print(f"{'fold':>4} {'wall s':>7} {'fit s':>7} {'pred s':>7} {'rows':>8}  " + " ".join(f"{k:>13}" for k in names))
    per_fold = {}
    for r in res.timings:
        k = r["fold"]
        per_fold[k] = fold_t[k][1] - fold_t[k][0] if k in fold_t else r["fit_s"] + r["predict_s"]
        print(
            f"{k:>4} {per_fold[k]:>7.1f} {r['fit_s']:>7.1f} {r['predict_s']:>7.1f} {r['n_train_rows']:>8,}  "
            + " ".join(f"{r['base_fit_s'].get(m, 0.0):>13.1f}" for m in names)
        )
    tot = {m: sum(r["base_fit_s"].get(m, 0.0) for r in res.timings) for m in names}
    print("per model, all folds (s): " + ", ".join(f"{m} {v:.1f}" for m, v in tot.items()))
    print("stages:", res.stage_seconds)
    for r in res.model_metrics:
        if r["fold"] == "all":
            auc = "n/a" if r["auc"] is None else f"{r['auc']:.4f}"
            print(f"  {r['model']:>13} {r['horizon']:>3}h  AUC {auc}  n {r['n']:,}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    run_s = time.perf_counter() - t_all
    mean_fold = sum(per_fold.values()) / max(len(per_fold), 1)
    print(
        f"wall {wall:.1f} s in run_walkforward for {len(per_fold)} of {total_folds} folds; "
        f"mean {mean_fold:.1f} s per fold; peak RSS {peak:,.0f} MB"
    )
    if len(per_fold) >= total_folds:
        print(f"total_s={run_s:.1f} ratio_vs_goal={GOAL_S / run_s:.3f} (goal {GOAL_S:.0f} s; > 1 meets it)")
    else:
        # the remaining folds at the mean fold time; the backtests cover the out-of-sample span, so
        # they scale with the number of folds too (later folds hold a few more rows: a lower bound)
        more = total_folds - len(per_fold)
        bt = float(res.stage_seconds.get("backtests_s", 0.0))
        est = run_s + mean_fold * more + bt * more / max(len(per_fold), 1)
        print(
            f"est_full_s={est:.1f} ratio_vs_goal_est={GOAL_S / est:.3f} (extrapolated from {len(per_fold)} "
            f"fold(s); run --full for the measured ratio_vs_goal)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
