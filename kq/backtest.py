"""``kq backtest``: run the risk state machine over stored bars and write trades, equity, events,
metrics and an HTML report."""

from __future__ import annotations

import typer

from engine.errors import InputError

SIGNAL_COLUMNS = ("ts", "pair", "p_up", "exp_return")


def read_signals(path: str, panel_pairs: tuple[str, ...] | None = None):
    """Read a signals Parquet file (ts, pair, p_up, exp_return) into a long frame with canonical pairs.

    ``ts`` is the bar open time (UTC seconds) of the bar whose CLOSE the signal was computed at: the
    decision is taken at ts + 3600 and executes in the next bar.
    """
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from engine.pairs import normalize_pair

    p = Path(path)
    if not p.exists():
        raise InputError(f"--signals {path}: no such file")
    try:
        df = pd.read_parquet(p)
    except Exception as e:  # pyarrow raises many types for a non-Parquet file
        raise InputError(f"--signals {path}: not a readable Parquet file ({type(e).__name__})") from None
    missing = [c for c in SIGNAL_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"--signals {path}: missing column(s) {', '.join(missing)} (need {', '.join(SIGNAL_COLUMNS)})")
    df = df[list(SIGNAL_COLUMNS)].copy()
    ts = df["ts"]
    if pd.api.types.is_datetime64_any_dtype(ts):
        ts = ts.dt.tz_localize(None) if getattr(ts.dt, "tz", None) is not None else ts
        df["ts"] = (ts.astype("datetime64[s]").astype(np.int64))
    elif not pd.api.types.is_integer_dtype(ts):
        raise InputError(f"--signals {path}: column ts must be integer UTC seconds or timestamps")
    df["ts"] = df["ts"].astype(np.int64)
    bad = df["ts"] % 3600 != 0
    if bad.any():
        i = int(np.argmax(bad.to_numpy()))
        raise InputError(f"--signals {path}: row {i}: ts {int(df['ts'].iloc[i])} is not on the hourly grid")
    try:
        df["pair"] = [normalize_pair(str(x)) for x in df["pair"]]
    except InputError as e:
        raise InputError(f"--signals {path}: {e}") from None
    for c in ("p_up", "exp_return"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(np.float64)
    pu = df["p_up"].to_numpy()
    out = ~np.isnan(pu) & ((pu < 0) | (pu > 1))
    if out.any():
        i = int(np.argmax(out))
        raise InputError(f"--signals {path}: row {i}: p_up {pu[i]} outside [0, 1]")
    dup = df.duplicated(["ts", "pair"])
    if dup.any():
        i = int(np.argmax(dup.to_numpy()))
        raise InputError(f"--signals {path}: row {i}: duplicate (ts, pair) {int(df['ts'].iloc[i])}, {df['pair'].iloc[i]}")
    if panel_pairs is not None:
        extra = sorted(set(df["pair"]) - set(panel_pairs))
        if extra:
            raise InputError(f"--signals {path}: pairs {', '.join(extra)} are not in --pairs")
    return df


def signals_to_arrays(df, ts, pairs):
    """Long signals -> (n, m) p_up and exp_return on the panel grid (NaN where no signal)."""
    import numpy as np

    n, m = len(ts), len(pairs)
    p_up = np.full((n, m), np.nan)
    er = np.full((n, m), np.nan)
    col = {p: j for j, p in enumerate(pairs)}
    t0 = int(ts[0]) if n else 0
    idx = (df["ts"].to_numpy(dtype=np.int64) - t0) // 3600
    keep = (idx >= 0) & (idx < n)
    j = np.array([col[p] for p in df["pair"]], dtype=np.int64)
    p_up[idx[keep], j[keep]] = df["p_up"].to_numpy()[keep]
    er[idx[keep], j[keep]] = df["exp_return"].to_numpy()[keep]
    return p_up, er


def write_outputs(res, out_dir, cfg, meta: dict) -> None:
    """Write trades/equity/events Parquet, metrics.json and report.html into ``out_dir`` atomically
    (a temporary folder renamed into place; an existing folder's files are replaced one by one)."""
    import json
    import os
    import shutil

    from engine.paths import check_out_dir

    out = check_out_dir(out_dir)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        trades = res.trades_frame()
        trades[["ts", "pair", "side", "quantity", "price", "notional", "fee", "reason", "fill", "pnl"]].to_parquet(
            tmp / "trades.parquet", index=False)
        eq = res.equity_frame()
        eq.to_parquet(tmp / "equity.parquet", index=False)
        res.events_frame().to_parquet(tmp / "events.parquet", index=False)
        metrics = res.metrics_dict()
        metrics["meta"] = meta
        metrics["config_sha256"] = cfg.content_hash()
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
        write_report(eq, metrics, tmp / "report.html")
        out.mkdir(exist_ok=True)
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_report(eq, metrics: dict, path) -> None:
    """Self-contained HTML (plotly.js embedded, no CDN): equity, drawdown, exposure, risk state."""
    import html

    import pandas as pd
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from engine.risk.enums import TradingState

    x = pd.to_datetime(eq["ts"], unit="s")
    code = eq["trading_state"].map({s.name: int(s) for s in TradingState})
    fig = make_subplots(rows=4, cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        subplot_titles=("equity", "drawdown from peak", "exposure (fraction of equity)",
                                        "trading state (0 active, 1-2 reducing, 3 halted, 4 kill switch)"))
    fig.add_trace(go.Scattergl(x=x, y=eq["equity"], name="equity", line=dict(width=1)), row=1, col=1)
    fig.add_trace(go.Scattergl(x=x, y=-eq["drawdown"], name="drawdown", fill="tozeroy", line=dict(width=1)),
                  row=2, col=1)
    fig.add_trace(go.Scattergl(x=x, y=eq["exposure"], name="exposure", line=dict(width=1)), row=3, col=1)
    fig.add_trace(go.Scattergl(x=x, y=code, name="state", mode="lines", line=dict(width=1, shape="hv")),
                  row=4, col=1)
    fig.update_layout(height=1000, showlegend=False, margin=dict(l=50, r=20, t=40, b=30))
    keys = ["total_return", "annual_return", "sharpe", "sortino", "calmar", "max_drawdown",
            "worst_month_drawdown", "turnover", "mean_exposure", "n_trades", "win_rate", "profit_factor",
            "fees_paid", "n_refusals", "n_kill_events"]

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    rows = "".join(f"<tr><td>{k}</td><td>{fmt(metrics.get(k))}</td></tr>" for k in keys)
    rows += "".join(f"<tr><td>bars {k}</td><td>{v}</td></tr>" for k, v in metrics["bars_in_state"].items())
    rows += "".join(f"<tr><td>refused: {k}</td><td>{v}</td></tr>" for k, v in metrics["refusals_by_reason"].items())
    meta = html.escape(", ".join(f"{k}: {v}" for k, v in metrics.get("meta", {}).items()))
    body = fig.to_html(full_html=False, include_plotlyjs=True)
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>krakenquant backtest</title>"
        "<style>body{font-family:sans-serif;margin:20px}td{padding:2px 12px}</style></head><body>"
        f"<h2>krakenquant backtest</h2><p>{meta}</p><table>{rows}</table>{body}</body></html>")


def _common_span(names, stored, t0, t1, venue):
    """Default the range to the hours every selected pair has data for.

    The risk state machine treats a missing bar of a pair it has seen as a data-integrity failure
    (kill switch), so a range past one pair's last bar would keep tripping it. An explicit range
    is kept as asked, with a warning on stderr naming the pairs whose data does not cover it.
    """
    from datetime import datetime, timezone

    from engine.pairs import normalize_pair

    infos = []
    for n in names:
        p = normalize_pair(n)
        if p not in stored:
            raise InputError(f"no bars stored for {p} on venue {venue!r} (see kq data check)")
        infos.append(stored[p])
    first = max(i.first_ts for i in infos)
    last = min(i.last_ts for i in infos)
    if first > last:
        def utc(ts: int) -> str:
            return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M")

        raise InputError("the selected pairs have no hours in common: "
                         + ", ".join(f"{i.pair} {utc(i.first_ts)}..{utc(i.last_ts)}" for i in infos))
    short = [i.pair for i in infos
             if (t0 is not None and t0 < i.first_ts) or (t1 is not None and t1 > i.last_ts)]
    if short:
        typer.echo(f"kq: warning: no data for {', '.join(short)} over part of the range; missing bars of a "
                   "pair already seen latch the data-integrity kill switch", err=True)
    return (first if t0 is None else t0), (last if t1 is None else t1)


def register(app: typer.Typer) -> None:
    @app.command("backtest")
    def backtest(
        out: str = typer.Option(..., "--out", help="output folder (trades/equity/events .parquet, metrics.json, report.html)"),
        config: str = typer.Option(None, "--config", help="config TOML (default configs/default.toml)"),
        pairs: str = typer.Option(None, "--pairs", help="comma-separated pairs (default: the signals' pairs, else all of the venue)"),
        venue: str = typer.Option(None, "--venue", help="venue (default: the config's data.venue)"),
        signals: str = typer.Option(None, "--signals", help="Parquet with ts, pair, p_up, exp_return (default: built-in MA demo signal)"),
        start: str = typer.Option(None, "--start", help="first bar: unix seconds or ISO date/datetime (UTC)"),
        end: str = typer.Option(None, "--end", help="last bar, inclusive"),
        store: str = typer.Option(None, "--store", help="market store file (default $KQ_STORE or data/market.duckdb)"),
    ) -> None:
        """Backtest signals through the risk state machine and the shared fill model."""
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        from engine.backtest.demo import ma_signal
        from engine.backtest.runner import make_inputs, run_backtest
        from engine.config import load_config
        from engine.risk.params import params_from_config
        from engine.store.market import MarketStore
        from kq.data import parse_pairs, parse_time

        from engine.paths import check_out_dir

        cfg = load_config(config)
        check_out_dir(out)  # before the run, so a bad --out never wastes one
        v = venue or cfg.data.venue
        t0, t1 = parse_time(start), parse_time(end, end=True)
        if t0 is not None and t1 is not None and t1 < t0:
            raise InputError("--end is before --start")
        names = parse_pairs(pairs)
        sig = read_signals(signals, tuple(names) if names else None) if signals else None
        if names is None and sig is not None:
            names = sorted(set(sig["pair"]))
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()) as prog:
            task = prog.add_task("loading bars", total=4)
            with MarketStore(store or cfg.data.store, read_only=True) as s:
                stored = {i.pair: i for i in s.list_pairs(v)}
                if names is None:
                    names = sorted(stored)
                    if not names:
                        raise InputError(f"no pairs stored for venue {v!r}")
                t0, t1 = _common_span(names, stored, t0, t1, v)
                panel = s.load_panel(names, v, t0, t1)
            if panel.n_bars < 2:
                raise InputError("fewer than 2 bars in the selected range")
            prog.update(task, advance=1, description=f"signals and inputs ({panel.n_bars:,} bars x {panel.n_pairs} pairs)")
            if sig is not None:
                from kq.backtest import signals_to_arrays

                p_up, er = signals_to_arrays(sig, panel.ts, panel.pairs)
                source = f"signals file {signals}"
            else:
                p_up, er = ma_signal(panel.close, 12, 48, 50.0)
                source = "built-in demo signal (SMA 12/48 crossover; not a model)"
            tradable = None
            if cfg.backtest.apply_universe:
                from engine.universe import universe_mask

                tradable = universe_mask(panel)
            inp = make_inputs(panel, p_up, er, cfg, tradable=tradable)
            prog.update(task, advance=1, description="running the risk state machine")
            res = run_backtest(inp, params_from_config(cfg))
            prog.update(task, advance=1, description=f"writing {out}")
            meta = {"venue": panel.venue, "pairs": ",".join(panel.pairs), "bars": panel.n_bars,
                    "start": int(panel.ts[0]), "end": int(panel.ts[-1]), "signals": source,
                    "config": config or "configs/default.toml"}
            write_outputs(res, out, cfg, meta)
            prog.update(task, advance=1, description="done")
        m = res.metrics[0]
        typer.echo(f"{source}; {panel.venue} {', '.join(panel.pairs)}, {panel.n_bars:,} bars: total return "
                   f"{m['total_return']:+.2%}, max drawdown {m['max_drawdown']:.2%}, {int(m['n_trades'])} trades, "
                   f"{int(m['n_refusals'])} refusals; wrote {out}/")
