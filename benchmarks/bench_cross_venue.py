"""Cross-venue benchmark (issue 15): a Binance-trained model applied to Kraken's own bars.

    python -m benchmarks cross_venue [--quick] [--every N] [--json out.json]
    python benchmarks/bench_cross_venue.py [--measure-start 2018-07-01] [--measure-end 2023-12-31]

The live daemon trades Kraken (BTC/USD, ETH/USD) with a model trained on Binance reference bars
(BTC/USDT, ETH/USDT). This script measures, on the hours both venues cover, how far the features and
the model's outputs differ between the venues:

1. Loads each venue's BTC and ETH bars (shared parquet files) into its OWN panel (venue ``binance``:
   BTC/USDT, ETH/USDT; venue ``kraken``: BTC/USD, ETH/USD), computes each venue's universe mask
   (the venue's quote) and builds the features of each panel with the same kernels and the engine
   config's ``[features]`` (configs/default.toml) - as the daemon does for Kraken.
2. Fits ONE tiny final model (configs/ci.toml's research table: tiny base models, the 24 h trade
   horizon; ``research.bundle.fit_final``, expanding window) on Binance bars from the first data bar
   (2018-01-01) up to ``--train-end`` (default 2018-06-30 23:00). Labels are computed on that slice
   only, so no training target reads a bar of the measurement span (no lookahead).
3. Aligns the two venues on the hours from ``--measure-start`` (default 2018-07-01) to
   ``--measure-end`` where BOTH have a valid bar and complete features for the pair (Kraken's
   partial last XBTUSD bar, 2023-01-07 09:00, is left out), keeping every ``--every``-th hour of the
   grid (default 1 = every hour).
4. Prints per pair and feature: median and 95th percentile of |Kraken - Binance| in the feature's own
   units, their correlation across hours, the same two quantiles divided by the feature's std across
   the aligned hours on Binance, and for discrete features the share of hours that differ.
5. Predicts the trade horizon's meta P(up) and expected return for every aligned hour on both venues
   with the SAME fitted meta-learner in one block per venue and pair (the walk-forward's test-block
   path: ``research.walkforward.row_block`` + ``predict_all``), checks a few hours against the
   one-bar ``ModelBundle.predict`` (what the daemon calls), and prints median / p95 |dP(up)|, the
   correlation, |d exp_return|, and the share of hours whose entry decision differs:
   P(up) >= ``[risk].p_up_entry`` (the risk kernel's test) alone, and with the static gates
   (universe member on that venue, expected return > ``[fees]`` round-trip cost), and the model's
   AUC against each venue's own 24 h up labels (skill is not the point: the stand-in is tiny).
6. Attribution (``--no-attribution`` skips it): Kraken's prediction again with ONE input taken from
   Binance (each feature in turn, then the closes the regime classifier reads); the share of the
   mean |dP(up)| that disappears says which inputs carry the venue difference.

``--quick`` measures 2018-07-01 .. 2018-09-30 only. The whole default run takes about 1.5 minutes
on a 2-core machine (fit ~25 s, predictions ~5 s, attribution ~50 s).

Everything is printed as markdown tables (for docs/MODEL_ASSUMPTIONS.md); ``--json`` writes the
figures. Deterministic (seeded fit, no sampling beyond the fixed ``--every`` grid).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

H = 3600
DATA_START = "2018-01-01"  # first Binance bar (both BTC/USDT and ETH/USDT)
STEMS = {
    "binance": ("binance_BTCUSDT_1h", "binance_ETHUSDT_1h"),
    "kraken": ("XBTUSD_1h", "ETHUSD_1h"),
}
# Kraken XBTUSD's last bar (2023-01-07 09:00 UTC) is a partial hour (PROVENANCE.md): never compared
KRAKEN_PARTIAL = (1673082000,)


def _iso(ts: int) -> str:
    return _dt.datetime.fromtimestamp(int(ts), _dt.UTC).strftime("%Y-%m-%d %H:%M")


def _q(a: np.ndarray, q: float) -> float:
    return float(np.quantile(a, q)) if a.size else float("nan")


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    ok = np.isfinite(y) & np.isfinite(p)
    y, p = y[ok], p[ok]
    return float(roc_auc_score(y, p)) if 0 < y.sum() < y.size else float("nan")


def _fmt(v: Any, nd: int = 4) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    if isinstance(v, int):
        return f"{v:,}"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e4 or a < 1e-3:
        return f"{v:.3g}"
    return f"{v:.{nd}f}"


def _pct(v: float, nd: int = 1) -> str:
    return "-" if not np.isfinite(v) else f"{100 * v:.{nd}f}%"


def feature_stats(fb, fk, ok: np.ndarray) -> dict[str, list[dict]]:
    """Per pair (column j, Binance pair name as key), one dict per feature."""
    out: dict[str, list[dict]] = {}
    for j, pair in enumerate(fb.pairs):
        rows = []
        m = ok[:, j]
        for k, name in enumerate(fb.names):
            b = fb.values[m, j, k]
            kr = fk.values[m, j, k]
            d = np.abs(kr - b)
            sd = float(np.std(b, ddof=1)) if b.size > 1 else float("nan")
            # flags, cluster ids, breadth shares: few distinct values -> also count hours that differ
            discrete = bool(np.unique(np.concatenate([b, kr])).size <= 12)
            rows.append(
                {
                    "feature": name,
                    "n": int(b.size),
                    "median_abs_diff": _q(d, 0.5),
                    "p95_abs_diff": _q(d, 0.95),
                    "mean_diff": float(np.mean(kr - b)) if b.size else float("nan"),
                    "corr": _corr(b, kr),
                    "binance_std": sd,
                    "median_abs_diff_std": _q(d, 0.5) / sd if sd > 0 else float("nan"),
                    "p95_abs_diff_std": _q(d, 0.95) / sd if sd > 0 else float("nan"),
                    "discrete": discrete,
                    "share_differ": float(np.mean(d > 0)) if (discrete and b.size) else None,
                }
            )
        out[pair] = rows
    return out


def block_predict(bundle, values: np.ndarray, close: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """(P(up), expected return) (n, m) of the trade horizon for bars lo..hi (NaN elsewhere) from
    feature values (n, m, k) and closes (n, m; NaN where no bar): every pair's contiguous rows
    lo - warm_bars .. hi through the meta-learner in one pass, as the walk-forward predicts a test
    block (research.walkforward.row_block + predict_all)."""
    from research.walkforward import row_block

    h = bundle.trade_horizon
    meta = bundle.metas[h]
    ci = [g for g in bundle.horizons if bundle.metas[g] is meta].index(h)  # its column when shared
    n, m = close.shape
    P = np.full((n, m), np.nan)
    E = np.full((n, m), np.nan)
    plo = max(lo - int(bundle.warm_bars), 0)
    X3 = np.where(np.isfinite(values), values, np.nan)
    Xp, cp, sp, bp = row_block(X3, close, plo, hi, list(range(m)))
    if hasattr(meta, "predict_all"):
        o = meta.predict_all(Xp, close=cp, segments=sp)
        p, e = np.asarray(o["p_up"])[:, ci], np.asarray(o["exp_return"])[:, ci]
    else:
        p = meta.predict_proba(Xp, close=cp, segments=sp)[:, 1]
        e = np.asarray(meta.predict_return(Xp, close=cp, segments=sp)).reshape(-1)
    keep = bp >= lo
    P[bp[keep], sp[keep]] = p[keep]
    E[bp[keep], sp[keep]] = e[keep]
    return P, E


def prediction_stats(pb, pk, eb, ek, ub, uk, yb, yk, *, thr: float, edge: float) -> dict:
    dP = np.abs(pk - pb)
    dE = np.abs(ek - eb)
    enter_b, enter_k = pb >= thr, pk >= thr
    full_b = enter_b & ub & (eb > edge)
    full_k = enter_k & uk & (ek > edge)
    either = enter_b | enter_k
    either_full = full_b | full_k
    return {
        "n": int(pb.size),
        "median_abs_dp": _q(dP, 0.5),
        "p95_abs_dp": _q(dP, 0.95),
        "max_abs_dp": float(dP.max()) if dP.size else float("nan"),
        "corr_p": _corr(pb, pk),
        "mean_p_binance": float(np.mean(pb)) if pb.size else float("nan"),
        "mean_p_kraken": float(np.mean(pk)) if pk.size else float("nan"),
        "median_abs_de": _q(dE, 0.5),
        "p95_abs_de": _q(dE, 0.95),
        "corr_e": _corr(eb, ek),
        "share_enter_binance": float(np.mean(enter_b)) if pb.size else float("nan"),
        "share_enter_kraken": float(np.mean(enter_k)) if pb.size else float("nan"),
        "share_decision_differs": float(np.mean(enter_b != enter_k)) if pb.size else float("nan"),
        "share_differs_given_either": float(np.mean((enter_b != enter_k)[either])) if either.any() else float("nan"),
        "share_full_enter_binance": float(np.mean(full_b)) if pb.size else float("nan"),
        "share_full_enter_kraken": float(np.mean(full_k)) if pb.size else float("nan"),
        "share_full_differs": float(np.mean(full_b != full_k)) if pb.size else float("nan"),
        "share_full_differs_given_either": float(np.mean((full_b != full_k)[either_full]))
        if either_full.any()
        else float("nan"),
        "share_universe_differs": float(np.mean(ub != uk)) if pb.size else float("nan"),
        "auc_binance": _auc(yb, pb),
        "auc_kraken": _auc(yk, pk),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="measure 2018-07-01 .. 2018-09-30 only")
    ap.add_argument("--train-end", default="2018-06-30", help="last training day (Binance), default 2018-06-30")
    ap.add_argument("--measure-start", default=None, help="first measured day (default: the day after --train-end)")
    ap.add_argument("--measure-end", default="2023-12-31", help="last measured day (Kraken ends 2023-01/03)")
    ap.add_argument("--every", type=int, default=1, help="keep every N-th hour of the grid (default 1: all)")
    ap.add_argument("--spot-checks", type=int, default=4, help="hours checked against ModelBundle.predict")
    ap.add_argument(
        "--no-attribution", dest="attribution", action="store_false", help="skip the one-input-swapped predictions"
    )
    ap.add_argument("--attribution-top", type=int, default=8, help="inputs printed in the attribution table")
    ap.add_argument("--research-config", default=str(ROOT / "configs" / "ci.toml"), help="tiny model's table")
    ap.add_argument("--json", default=None, help="write the figures here")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    args.argv = argv

    from engine.config import load_config
    from engine.errors import ConfigError, InputError
    from kq.data import parse_time

    def hour(value: str, end: bool = False) -> int:
        """The bar-open hour of a CLI time (a bare date as ``end``: its last hour)."""
        t = parse_time(value, end=end)
        if t is None:  # pragma: no cover - argparse always gives a string
            raise InputError(f"no time in {value!r}")
        return (int(t) // H) * H if end else -(-int(t) // H) * H

    try:
        if args.every < 1:
            raise InputError("--every must be >= 1")
        train_end = hour(args.train_end, end=True)
        m_start = hour(args.measure_start) if args.measure_start else train_end + H
        m_end = hour("2018-09-30" if args.quick else args.measure_end, end=True)
        if not (train_end < m_start <= m_end):
            raise InputError("need --train-end < --measure-start <= --measure-end")
        return run(args, load_config(), hour(DATA_START), train_end, m_start, m_end)
    except (InputError, ConfigError) as e:
        print(f"bench_cross_venue: error: {e}", file=sys.stderr)
        return 2


def run(args, cfg, data_start: int, train_end: int, m_start: int, m_end: int) -> int:
    from engine.config import LabelsConfig
    from engine.errors import InputError
    from engine.features.featureset import build_features
    from engine.features.labels import future_labels
    from engine.store.panel import load_shared_panel
    from engine.universe import universe_mask
    from research.bundle import fit_final
    from research.config import load_research_config

    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    _, rc = load_research_config(args.research_config)
    rc = rc.model_copy(
        update={"folds": rc.folds.model_copy(update={"expanding": True}), "pairs": None, "start": None, "end": None}
    )
    h = int(rc.trade_horizon)
    thr = float(cfg.risk.p_up_entry)
    edge = float(cfg.fees.round_trip_cost)

    # 1. one panel per venue, on the same hourly grid; features and universe per venue
    t = time.perf_counter()
    panels = {v: load_shared_panel(list(s), data_start, m_end) for v, s in STEMS.items()}
    pb, pk = panels["binance"], panels["kraken"]
    if not np.array_equal(pb.ts, pk.ts):  # pragma: no cover - same start/end give the same grid
        raise AssertionError("venue grids differ")
    timings["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    ub, uk = universe_mask(pb), universe_mask(pk)
    fb = build_features(pb, cfg.features, ub)
    fk = build_features(pk, cfg.features, uk)
    timings["features_s"] = time.perf_counter() - t
    print(
        f"panels: {pb.n_bars:,} bars, binance {pb.pairs} / kraken {pk.pairs}; features {len(fb.names)} "
        f"({timings['features_s']:.1f} s)",
        flush=True,
    )

    # 2. the tiny final model on Binance bars <= train_end only (labels computed on that slice)
    t = time.perf_counter()
    ptr = pb.slice(None, train_end)
    ftr = build_features(ptr, cfg.features, universe_mask(ptr))
    bundle = fit_final(ptr, cfg, rc, features=ftr)
    timings["fit_s"] = time.perf_counter() - t
    tw = bundle.train_windows[h]
    print(
        f"model: tiny {'/'.join(rc.base_models)} + meta, horizons {list(bundle.horizons)}, trained on binance "
        f"{', '.join(bundle.pairs)} targets {_iso(tw[0])} .. {_iso(tw[1])} ({bundle.n_train[h]:,} rows, "
        f"{timings['fit_s']:.0f} s)",
        flush=True,
    )

    # 3. aligned hours: both venues' bars valid, features complete, in the span, on the sampling grid
    n = pb.n_bars
    in_span = (pb.ts >= m_start) & (pb.ts <= m_end)
    grid = np.zeros(n, dtype=bool)
    first = int(np.searchsorted(pb.ts, m_start))
    grid[first :: args.every] = True
    complete_b = fb.valid & np.isfinite(fb.values).all(axis=2)
    complete_k = fk.valid & np.isfinite(fk.values).all(axis=2)
    ok = complete_b & complete_k & (in_span & grid)[:, None]
    ok[np.isin(pb.ts, KRAKEN_PARTIAL)] = False  # every pair: ETH's beta/breadth read BTC's bar too
    if not ok.any():
        raise InputError("no hour has complete features on both venues in the measured span")
    span_rows = {p: int((in_span & grid).sum()) for p in pb.pairs}
    sel = in_span & grid
    both_bars = {p: int((pb.valid[sel, j] & pk.valid[sel, j]).sum()) for j, p in enumerate(pb.pairs)}
    kept = {p: int(ok[:, j].sum()) for j, p in enumerate(pb.pairs)}
    last_ok = {p: _iso(int(pb.ts[np.flatnonzero(ok[:, j])[-1]])) for j, p in enumerate(pb.pairs) if ok[:, j].any()}

    # 4. features
    fstats = feature_stats(fb, fk, ok)

    # 5. predictions (one block per venue over the measured span), checked against predict()
    t = time.perf_counter()
    idx = np.flatnonzero(ok.any(axis=1))
    lo, hi = int(idx[0]), int(idx[-1])
    close_b = np.where(pb.valid, pb.close, np.nan)
    close_k = np.where(pk.valid, pk.close, np.nan)
    Pb, Eb = block_predict(bundle, fb.values, close_b, lo, hi)
    Pk, Ek = block_predict(bundle, fk.values, close_k, lo, hi)
    timings["predict_s"] = time.perf_counter() - t
    spot: list[dict] = []
    rows_ok = np.flatnonzero(ok.all(axis=1))
    picks = rows_ok[np.linspace(0, rows_ok.size - 1, args.spot_checks).astype(int)] if rows_ok.size else []
    worst = 0.0
    for i in picks:
        for venue, fs, panel, P in (("binance", fb, pb, Pb), ("kraken", fk, pk, Pk)):
            one = bundle.predict(fs, panel, at=int(panel.ts[i]))
            one = one[one["horizon"] == h]
            for pair, p in zip(one["pair"], one["p_up"]):
                d = abs(float(p) - float(P[i, panel.column(pair)]))
                worst = max(worst, d)
                spot.append({"venue": venue, "ts": int(panel.ts[i]), "pair": pair, "abs_diff": d})
    print(f"predictions: block path vs ModelBundle.predict at {len(picks)} hours: max |dP| = {worst:.2e}", flush=True)

    lab_b = future_labels(pb, LabelsConfig(horizons=(h,)))[f"future_up_{h}h"]
    lab_k = future_labels(pk, LabelsConfig(horizons=(h,)))[f"future_up_{h}h"]
    pstats: dict[str, dict] = {}
    sel_all: list[tuple] = []
    for j, pair in enumerate(pb.pairs):
        m = ok[:, j]
        args_j = (Pb[m, j], Pk[m, j], Eb[m, j], Ek[m, j], ub[m, j], uk[m, j], lab_b[m, j], lab_k[m, j])
        sel_all.append(args_j)
        pstats[pair] = prediction_stats(*args_j, thr=thr, edge=edge)
    pooled = tuple(np.concatenate([a[c] for a in sel_all]) for c in range(8))
    pstats["pooled"] = prediction_stats(*pooled, thr=thr, edge=edge)
    if not all(np.isfinite(v["median_abs_dp"]) for v in pstats.values()):  # pragma: no cover
        raise InputError("a prediction was NaN on an aligned hour")

    # 6. attribution: Kraken's prediction with ONE input taken from Binance (a feature, or the closes
    #    the regime classifier reads): the share of the mean |dP(up)| that disappears
    attrib: list[dict] = []
    if args.attribution:
        t = time.perf_counter()
        base = float(np.mean(np.abs(Pk - Pb)[ok]))
        for k, name in [*enumerate(fb.names), (-1, "close (regime input)")]:
            if k < 0:
                Ps, _ = block_predict(bundle, fk.values, close_b, lo, hi)
            else:
                X = fk.values.copy()
                X[:, :, k] = fb.values[:, :, k]
                Ps, _ = block_predict(bundle, X, close_k, lo, hi)
            d = float(np.nanmean(np.abs(Ps - Pb)[ok]))
            attrib.append({"input": name, "mean_abs_dp": d, "share_removed": 1.0 - d / base if base > 0 else None})
        attrib.sort(key=lambda r: -(r["share_removed"] or 0.0))
        timings["attribution_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_all

    # ---- report
    sampling = "every hour" if args.every == 1 else f"every {args.every}th hour of the grid"
    print()
    print(
        f"## Cross-venue figures (tiny model, {h} h horizon; measured {_iso(m_start)} .. {_iso(m_end)} UTC, {sampling})"
    )
    print()
    print(
        "| pair (binance / kraken) | grid hours | both venues have a bar | aligned (features complete) | last aligned |"
    )
    print("|---|---|---|---|---|")
    for j, p in enumerate(pb.pairs):
        print(f"| {p} / {pk.pairs[j]} | {span_rows[p]:,} | {both_bars[p]:,} | {kept[p]:,} | {last_ok.get(p, '-')} |")
    for p, rows in fstats.items():
        print()
        print(f"### Features, {p} vs {pk.pairs[pb.pairs.index(p)]} (|Kraken - Binance|; sigma = Binance std)")
        print()
        print("| feature | median abs | p95 abs | corr | median / sigma | p95 / sigma | hours differing |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            sd = "-" if r["share_differ"] is None else _pct(r["share_differ"])
            print(
                f"| {r['feature']} | {_fmt(r['median_abs_diff'])} | {_fmt(r['p95_abs_diff'])} | {_fmt(r['corr'], 3)} "
                f"| {_fmt(r['median_abs_diff_std'], 3)} | {_fmt(r['p95_abs_diff_std'], 3)} | {sd} |"
            )
    print()
    print(f"### Model outputs ({h} h meta P(up), expected simple return; entry: P(up) >= {thr})")
    print()
    print(
        "| pair | hours | median abs dP | p95 abs dP | corr P | mean P B / K | median abs dE | p95 abs dE "
        "| corr E | AUC B / K |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p, s in pstats.items():
        print(
            f"| {p} | {s['n']:,} | {_fmt(s['median_abs_dp'])} | {_fmt(s['p95_abs_dp'])} | {_fmt(s['corr_p'], 3)} "
            f"| {_fmt(s['mean_p_binance'], 3)} / {_fmt(s['mean_p_kraken'], 3)} "
            f"| {_fmt(s['median_abs_de'])} | {_fmt(s['p95_abs_de'])} | {_fmt(s['corr_e'], 3)} "
            f"| {_fmt(s['auc_binance'], 3)} / {_fmt(s['auc_kraken'], 3)} |"
        )
    print()
    print(
        "| pair | P >= entry: B / K | differs | differs when either enters "
        "| + gates: B / K | differs | differs when either enters | universe differs |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for p, s in pstats.items():
        print(
            f"| {p} | {_pct(s['share_enter_binance'])} / {_pct(s['share_enter_kraken'])} "
            f"| {_pct(s['share_decision_differs'], 2)} | {_pct(s['share_differs_given_either'])} "
            f"| {_pct(s['share_full_enter_binance'])} / {_pct(s['share_full_enter_kraken'])} "
            f"| {_pct(s['share_full_differs'], 2)} | {_pct(s['share_full_differs_given_either'])} "
            f"| {_pct(s['share_universe_differs'], 2)} |"
        )
    if attrib:
        base = float(np.mean(np.abs(Pk - Pb)[ok]))
        print()
        print(f"### Which input moves P(up): Kraken inputs with one taken from Binance (mean abs dP {base:.4f})")
        print()
        print("| input from Binance | mean abs dP | share of mean abs dP removed |")
        print("|---|---|---|")
        for r in attrib[: args.attribution_top]:
            print(f"| {r['input']} | {r['mean_abs_dp']:.4f} | {_pct(r['share_removed'] or float('nan'))} |")
    print()
    print(
        "+ gates: P(up) >= entry AND universe member on that venue AND expected return > round-trip cost "
        f"({edge:.4f}). Timings: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
    )

    if args.json:
        doc = {
            "command": " ".join(["python benchmarks/bench_cross_venue.py", *args.argv]),
            "created_utc": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
            "train": {
                "venue": "binance",
                "pairs": list(bundle.pairs),
                "data_start": _iso(data_start),
                "train_end": _iso(train_end),
                "targets": [_iso(tw[0]), _iso(tw[1])],
                "n_train": int(bundle.n_train[h]),
                "research_config": str(args.research_config),
                "base_models": list(rc.base_models),
                "tiny": bool(rc.tiny),
                "horizons": list(bundle.horizons),
                "trade_horizon": h,
            },
            "measure": {
                "start": _iso(m_start),
                "end": _iso(m_end),
                "every": int(args.every),
                "grid_hours": span_rows,
                "both_bars_hours": both_bars,
                "aligned_hours": kept,
                "last_aligned": last_ok,
                "pairs": {p: pk.pairs[j] for j, p in enumerate(pb.pairs)},
            },
            "p_up_entry": thr,
            "round_trip_cost": edge,
            "features": fstats,
            "predictions": pstats,
            "attribution": attrib,
            "spot_check": {"max_abs_dp": worst, "checks": spot},
            "timings_s": timings,
        }
        from research.report import json_clean

        Path(args.json).write_text(json.dumps(json_clean(doc), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
