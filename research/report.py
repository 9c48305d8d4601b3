"""Outputs of a walk-forward run: folds.json, predictions.parquet, regime.parquet, signals.parquet,
metrics.json, report.html and the backtester's own outputs under ``backtest/``.

Everything is written into a temporary folder next to ``out`` and moved into place only when all
files exist (:func:`engine.paths.atomic_folder`), so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.paths import atomic_folder

__all__ = ["build_metrics", "write_report", "write_walkforward"]


def json_clean(v: Any) -> Any:
    """``v`` with numpy scalars as Python numbers, non-finite floats as None, keys as str (JSON-safe)."""
    if isinstance(v, dict):
        return {str(k): json_clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_clean(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if np.isfinite(f) else None
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def build_metrics(res, meta: dict) -> dict:
    """The metrics.json document (see research.walkforward for every field's meaning)."""
    bt = res.backtest.metrics_dict() if res.backtest is not None else None
    return json_clean(
        {
            "meta": meta,
            "suspected_leak": res.suspected_leak,
            "leak_flags": res.leak_flags,
            "models": res.model_metrics,
            "strategy": bt,
            "overfitting": {
                "deflated_sharpe": res.strategy_stats.get("deflated_sharpe"),
                "pbo": res.strategy_stats.get("pbo"),
            },
            "strategy_diagnostics": {
                k: v for k, v in res.strategy_stats.items() if k not in ("deflated_sharpe", "pbo")
            },
            "timings": res.timings,
            "stage_seconds": res.stage_seconds,
        }
    )


def write_walkforward(res, out_dir: str | Path, cfg, meta: dict, market=None) -> dict:
    """Write every output atomically (:func:`engine.paths.atomic_folder`); returns the metrics
    document. The backtester's own outputs of the meta-learner's signals go into ``OUT/backtest/``
    (:func:`engine.backtest.io.write_files`) when the run has a backtest (an earlier run's
    ``backtest/`` is removed in any case). ``market`` (the run's Panel) adds buy-and-hold of the
    same pairs over the backtest's hours to both reports."""
    from engine.backtest.io import benchmark_for, write_files

    with atomic_folder(out_dir, drop=("backtest",)) as tmp:
        (tmp / "folds.json").write_text(json.dumps(json_clean(res.folds), indent=2) + "\n")
        res.predictions.to_parquet(tmp / "predictions.parquet", index=False)
        res.regime.to_parquet(tmp / "regime.parquet", index=False)
        res.signals.to_parquet(tmp / "signals.parquet", index=False)
        metrics = build_metrics(res, meta)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
        if res.backtest is not None:
            (tmp / "backtest").mkdir()
            write_files(tmp / "backtest", res.backtest, cfg, dict(meta, signals="walk-forward meta-learner"), market)
        bh = benchmark_for(res.backtest, market, cfg) if (market is not None and res.backtest is not None) else None
        config = cfg.model_dump(mode="json")
        write_report(res, metrics, tmp / "report.html", bh=bh, config=config, fee=cfg.fees.fee_rate)
    return metrics


def write_report(
    res, metrics: dict, path: Path, bh: dict | None = None, config: dict | None = None, fee: float | None = None
) -> None:
    """report.html with plotly.js loaded from ``plotly.min.js`` beside it: the strategy's headline
    figures against buy-and-hold ``bh`` (:func:`engine.report_html.buy_and_hold`), per-fold model
    quality, equity (buy-and-hold overlaid) and drawdown in %, regime timeline, overfitting
    statistics, the leak flags, and the run and configuration folded away at the bottom."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from engine.report_html import (
        BH_NOTE,
        STYLE,
        config_details,
        equity_traces,
        headline_table,
        pct,
        plotly_script,
        run_line,
        selector_tables,
    )

    rows = [r for r in res.model_metrics if r["fold"] != "all"]
    q = pd.DataFrame(rows)
    figs = []
    if len(q):
        hs = sorted(q["horizon"].unique())
        f1 = make_subplots(rows=1, cols=len(hs), subplot_titles=[f"out-of-sample AUC, {h}h" for h in hs])
        for c, h in enumerate(hs, start=1):
            for mo in sorted(q["model"].unique(), key=lambda s: (s != "meta", s)):
                s = q[(q["horizon"] == h) & (q["model"] == mo)]
                f1.add_trace(
                    go.Bar(
                        x=[f"fold {f}" for f in s["fold"]], y=s["auc"], name=f"{mo}", legendgroup=mo, showlegend=c == 1
                    ),
                    row=1,
                    col=c,
                )
            f1.add_hline(y=0.5, line_dash="dot", row=1, col=c)
        f1.update_layout(height=380, barmode="group", margin=dict(l=50, r=20, t=40, b=30))
        f1.update_yaxes(range=[0.4, 0.7])
        figs.append(f1)
    if res.backtest is not None:
        eq = res.backtest.equity_frame()
        x = pd.to_datetime(eq["ts"], unit="s")
        f2 = make_subplots(
            rows=2, cols=1, shared_xaxes=True, subplot_titles=("equity (meta signals)", "drawdown from peak (%)")
        )
        equity_traces(f2, x, eq, bh)
        for fd in res.folds:
            f2.add_vline(x=pd.to_datetime(fd["test_start"], unit="s"), line_dash="dot", line_color="grey")
        f2.update_layout(height=600, showlegend=bh is not None, margin=dict(l=50, r=20, t=40, b=30))
        figs.append(f2)
    if len(res.regime):
        rg = res.regime
        f3 = go.Figure()
        for p in sorted(rg["pair"].unique()):
            s = rg[rg["pair"] == p]
            f3.add_trace(
                go.Scattergl(
                    x=pd.to_datetime(s["ts"], unit="s"),
                    y=s["regime_code"],
                    name=p,
                    mode="lines",
                    line=dict(width=1, shape="hv"),
                )
            )
        f3.update_layout(
            title="regime per pair (-1 unknown, 0 range, 1 trending, 2 high_vol, 3 crash)",
            height=350,
            margin=dict(l=50, r=20, t=40, b=30),
        )
        figs.append(f3)
    body = "".join(f.to_html(full_html=False, include_plotlyjs=False) for f in figs)

    def fmt(v):
        return "" if v is None else (f"{v:.4f}" if isinstance(v, float) else html.escape(str(v)))

    cols = ["model", "horizon", "fold", "n", "auc", "log_loss", "brier", "hit_rate", "base_rate", "suspected_leak"]
    table = "<tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"
    for r in res.model_metrics:
        style = " style='background:#fbb'" if r.get("suspected_leak") else ""
        table += (
            f"<tr{style}>"
            + "".join(f"<td>{pct(r.get(c), 1) if c in ('hit_rate', 'base_rate') else fmt(r.get(c))}</td>" for c in cols)
            + "</tr>"
        )
    strat = metrics.get("strategy") or {}
    if strat:
        note = BH_NOTE.format(fee=pct(fee)) if bh else "Buy-and-hold: no prices were given."
        headline = headline_table(strat, bh, "meta-learner signals") + f"<p class='note'>{html.escape(note)}</p>"
    else:
        headline = "<p>No backtest in this run.</p>"
    st = (
        f"<tr><td class='k'>Sortino</td><td>{fmt(strat.get('sortino'))}</td></tr>"
        f"<tr><td class='k'>win rate</td><td>{pct(strat.get('win_rate'), 1)}</td></tr>"
        f"<tr><td class='k'>refusals</td><td>{fmt(strat.get('n_refusals'))}</td></tr>"
        f"<tr><td class='k'>kill-switch events</td><td>{fmt(strat.get('n_kill_events'))}</td></tr>"
    )
    ov = metrics.get("overfitting", {})
    dsr = ov.get("deflated_sharpe") or {}
    pbo = ov.get("pbo") or {}
    st += f"<tr><td>deflated Sharpe (DSR)</td><td>{fmt(dsr.get('dsr'))} ({fmt(dsr.get('n_trials'))} trial(s))</td></tr>"
    st += f"<tr><td>PBO (CSCV over model strategies)</td><td>{fmt(pbo.get('pbo'))}</td></tr>"
    sel_html = selector_tables((metrics.get("strategy_diagnostics") or {}).get("strategy"))
    leak = ""
    if res.leak_flags:
        items = "".join(
            f"<li>{html.escape(f['model'])} {f['horizon']}h: AUC {f['auc']:.3f} &gt; {f['threshold']}</li>"
            for f in res.leak_flags
        )
        leak = (
            "<div style='border:2px solid red;padding:8px'><b>SUSPECTED LEAK</b>: out-of-sample AUC above "
            f"the sanity bound. Investigate before trusting any figure.<ul>{items}</ul></div>"
        )
    folds = "".join(
        f"<tr><td>{fd['fold']}</td><td>{pd.to_datetime(fd['train_start'], unit='s')}</td>"
        f"<td>{pd.to_datetime(fd['train_end'], unit='s')}</td><td>{pd.to_datetime(fd['test_start'], unit='s')}</td>"
        f"<td>{pd.to_datetime(fd['test_end'], unit='s')}</td><td>{fd['purge_bars']}</td>"
        f"<td>{fd['embargo_bars']}</td></tr>"
        for fd in res.folds
    )
    names = sorted({k for t in res.timings for k in t.get("base_fit_s", {})})
    timing = (
        "<tr><th>fold</th><th>horizon</th><th>train rows</th><th>fit s</th><th>predict s</th>"
        + "".join(f"<th>{html.escape(k)} s</th>" for k in names)
        + "</tr>"
    )
    for t in res.timings:
        timing += (
            f"<tr><td>{t['fold']}</td><td>{t['horizon']}</td><td>{t['n_train_rows']}</td>"
            f"<td>{t['fit_s']:.1f}</td><td>{t['predict_s']:.1f}</td>"
            + "".join(f"<td>{t['base_fit_s'].get(k, 0.0):.1f}</td>" for k in names)
            + "</tr>"
        )
    meta = metrics.get("meta", {}) or {}
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>krakenquant walk-forward</title>"
        + plotly_script(path.parent)
        + STYLE
        + f"</head><body><h2>krakenquant walk-forward</h2><p>{html.escape(run_line(meta, None))}</p>{leak}"
        f"<h3>strategy (meta-learner signals, out of sample)</h3>{headline}"
        "<h3>folds (UTC bar-open times, inclusive)</h3><table><tr><th>fold</th><th>train start</th>"
        f"<th>train end</th><th>test start</th><th>test end</th><th>purge</th><th>embargo</th></tr>{folds}</table>"
        f"<h3>strategy details and overfitting</h3><table>{st}</table>"
        + (
            f"<h3>strategy selector against the single default rule set (out of sample)</h3>{sel_html}"
            if sel_html
            else ""
        )
        + f"<h3>model quality (out of sample)</h3><table>{table}</table>{body}"
        "<h3>time per fold and horizon (base-model columns: inner folds + refit)</h3>"
        f"<table>{timing}</table>" + config_details(meta, config) + "</body></html>"
    )
