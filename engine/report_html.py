"""Pieces shared by the HTML reports (backtest, walk-forward, sweep, study): plotly.js written ONCE
beside a report, percentages, the headline table against buy-and-hold and the folded configuration.

Buy-and-hold of the same pairs over the same hours (:func:`buy_and_hold`)
--------------------------------------------------------------------------
Equal weight: the starting cash is split into one equal sleeve per pair. A sleeve buys its pair at
the close of the pair's FIRST VALID bar in the run's hours, paying the run's fee rate once on the
entry notional (so it holds ``(1 - fee) * cash / m / close_first`` units), and is valued at the
close of each later valid bar (an invalid bar keeps the last valid close); before its first valid
bar a sleeve is cash. It never sells, so no exit fee is charged. Its equity curve has one point per
bar of the run, and its return, CAGR, drawdown and Sharpe follow the backtester's definitions
(:mod:`engine.backtest.nb`: hourly returns including the first bar's against the starting cash,
8760 bars a year, drawdown from the running peak that starts at the starting cash). Trades are the
entries (one per pair with a valid bar), exposure is the invested value over equity, averaged over
the bars. This module imports nothing from ``research``.
"""

from __future__ import annotations

import html
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "BARS_PER_YEAR",
    "PLOTLY_FILE",
    "buy_and_hold",
    "config_details",
    "headline_table",
    "pct",
    "plotly_script",
    "run_line",
]

BARS_PER_YEAR = 8760.0  # engine.backtest.nb.BARS_PER_YEAR (not imported: that module compiles numba)
PLOTLY_FILE = "plotly.min.js"


def plotly_script(folder: str | Path) -> str:
    """Copy plotly.js (the installed package's ``plotly.min.js``) into ``folder`` once (an identical
    copy already there is kept) and return the ``<script>`` tag that loads it by a RELATIVE src, so
    the report opens from the file system with no network."""
    import plotly

    src = Path(plotly.__file__).parent / "package_data" / PLOTLY_FILE
    dst = Path(folder) / PLOTLY_FILE
    if not (dst.is_file() and dst.stat().st_size == src.stat().st_size):
        shutil.copyfile(src, dst)
    return f"<script src='{PLOTLY_FILE}'></script>"


def pct(v: Any, nd: int = 2, sign: bool = False) -> str:
    """A fraction as a percentage (``-0.0376`` -> ``-3.76%``); empty for None/NaN."""
    if v is None:
        return ""
    f = float(v)
    if not math.isfinite(f):
        return "n/a"
    return f"{f * 100:{'+' if sign else ''}.{nd}f}%"


def _num(v: Any, nd: int = 2) -> str:
    if v is None:
        return ""
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    f = float(v)
    return f"{f:,.{nd}f}" if math.isfinite(f) else "n/a"


def buy_and_hold(close: np.ndarray, valid: np.ndarray, init_cash: float, fee_rate: float) -> dict:
    """Equal-weight buy-and-hold of the columns of ``close`` (n bars, m pairs) under ``valid``, as
    defined in the module doc. Returns ``equity`` (n,), ``drawdown`` (n,) and the figures
    total_return, annual_return, max_drawdown, sharpe, n_trades, fees_paid, mean_exposure, final_equity."""
    c = np.asarray(close, dtype=np.float64)
    ok = np.asarray(valid, dtype=bool) & np.isfinite(c) & (c > 0)
    n, m = c.shape
    sleeve = init_cash / m if m else 0.0
    # last valid close carried forward (NaN before the first valid bar)
    idx = np.where(ok, np.arange(n)[:, None], -1)
    np.maximum.accumulate(idx, axis=0, out=idx)
    last = np.where(idx >= 0, c[np.clip(idx, 0, None), np.arange(m)], np.nan)
    started = idx >= 0
    first_i = np.argmax(ok, axis=0)
    has = ok.any(axis=0)
    first = np.where(has, c[first_i, np.arange(m)], np.nan)
    units = np.where(has, (1.0 - fee_rate) * sleeve / first, 0.0)
    held = np.where(started, units * last, 0.0)  # value of the holdings per sleeve
    invested = held.sum(axis=1)
    cash = (~started).sum(axis=1) * sleeve
    eq = invested + cash
    prev = np.concatenate(([init_cash], eq[:-1]))
    r = np.where(prev > 0, eq / prev - 1.0, 0.0)
    peak = np.maximum.accumulate(np.concatenate(([init_cash], eq)))[1:]
    dd = 1.0 - eq / peak
    final = float(eq[-1]) if n else init_cash
    sd = float(np.std(r, ddof=1)) if n > 1 else float("nan")
    return {
        "equity": eq,
        "drawdown": dd,
        "final_equity": final,
        "total_return": final / init_cash - 1.0,
        "annual_return": (final / init_cash) ** (BARS_PER_YEAR / n) - 1.0 if n and final > 0 else -1.0,
        "max_drawdown": float(dd.max()) if n else 0.0,
        "sharpe": float(r.mean()) / sd * math.sqrt(BARS_PER_YEAR) if sd > 0 else float("nan"),
        "n_trades": int(has.sum()),
        "fees_paid": float(has.sum() * sleeve * fee_rate),
        "mean_exposure": float(np.mean(np.where(eq > 0, invested / eq, 0.0))) if n else 0.0,
    }


#: (label, metrics key, kind): the headline rows, in order
HEADLINE = (
    ("total return", "total_return", "pct"),
    ("CAGR", "annual_return", "pct"),
    ("max drawdown", "max_drawdown", "pct"),
    ("Sharpe (hourly, annualised)", "sharpe", "num"),
    ("trades", "n_trades", "int"),
    ("fees paid (quote currency)", "fees_paid", "money"),
    ("exposure (mean, of equity)", "mean_exposure", "pct"),
)


def _cell(v: Any, kind: str) -> str:
    if kind == "pct":
        return pct(v, 2)
    if kind == "int":
        return _num(int(v)) if v is not None else ""
    return _num(v, 2)


def headline_table(metrics: dict, bh: dict | None, label: str = "strategy") -> str:
    """The headline table: each figure of ``metrics`` next to the same figure of buy-and-hold
    (``bh`` from :func:`buy_and_hold`; None: that column says so)."""
    head = f"<tr><th></th><th>{html.escape(label)}</th><th>buy-and-hold</th></tr>"
    rows = "".join(
        f"<tr><td class='k'>{lab}</td><td data-key='{key}'>{_cell(metrics.get(key), kind)}</td>"
        f"<td data-bh='{key}'>{_cell(bh.get(key), kind) if bh else 'not available'}</td></tr>"
        for lab, key, kind in HEADLINE
    )
    return f"<table class='headline'>{head}{rows}</table>"


BH_NOTE = (
    "Buy-and-hold: the same pairs over the same hours, equal weight; each pair's sleeve buys at the "
    "close of its first valid bar, paying the fee rate ({fee}) once, and is valued at the close of each "
    "later valid bar; no exit fee. Trades are its entries. Returns, CAGR (8760 bars a year), drawdown "
    "and Sharpe follow the backtester's definitions."
)


def config_details(meta: dict | None, config: dict | None) -> str:
    """The run's facts and configuration, pretty-printed in a collapsed ``<details>``."""
    parts = []
    if meta:
        parts.append("<h4>run</h4><pre>" + html.escape(json.dumps(meta, indent=2, default=str)) + "</pre>")
    if config:
        parts.append("<h4>configuration</h4><pre>" + html.escape(json.dumps(config, indent=2, default=str)) + "</pre>")
    return "<details class='config'><summary>configuration and run details</summary>" + "".join(parts) + "</details>"


STYLE = (
    "<style>body{font-family:sans-serif;margin:20px}td,th{padding:2px 12px;text-align:right}"
    "td.k{text-align:left}table.headline{border-collapse:collapse;margin-bottom:8px}"
    "table.headline td,table.headline th{border:1px solid #ccc}.note{color:#555;font-size:90%;max-width:60em}"
    "pre{background:#f6f6f6;padding:8px}</style>"
)


def run_line(meta: dict, bars) -> str:
    """One line: pairs, venue, span in UTC dates, bars."""
    out = []
    if meta.get("pairs"):
        out.append(str(meta["pairs"]).replace(",", ", "))
    if meta.get("venue"):
        out.append(f"on {meta['venue']}")
    if isinstance(meta.get("start"), int) and isinstance(meta.get("end"), int):
        a, b = (pd.to_datetime(meta[k], unit="s").strftime("%Y-%m-%d %H:%M") for k in ("start", "end"))
        out.append(f"{a} to {b} UTC")
    if bars:
        out.append(f"{int(bars):,} hourly bars")
    if meta.get("signals"):
        out.append(f"signals: {meta['signals']}")
    return "; ".join(out)


def equity_traces(fig: Any, x: Any, eq: Any, bh: dict | None, rows: tuple[int, int] = (1, 2)) -> None:
    """The strategy's equity (row ``rows[0]``) and drawdown in % (row ``rows[1]``) on a plotly
    subplot figure, with buy-and-hold's curves in grey beside them when ``bh`` is given."""
    import plotly.graph_objects as go

    r_eq, r_dd = rows
    fig.add_trace(go.Scattergl(x=x, y=eq["equity"], name="strategy", line=dict(width=1)), row=r_eq, col=1)
    fig.add_trace(
        go.Scattergl(x=x, y=-100.0 * eq["drawdown"], name="drawdown", fill="tozeroy", line=dict(width=1)),
        row=r_dd,
        col=1,
    )
    if bh is not None:
        grey = dict(width=1, color="grey")
        fig.add_trace(go.Scattergl(x=x, y=bh["equity"], name="buy-and-hold", line=grey), row=r_eq, col=1)
        fig.add_trace(
            go.Scattergl(x=x, y=-100.0 * bh["drawdown"], name="buy-and-hold drawdown", line=grey), row=r_dd, col=1
        )


def selector_tables(cmp: dict | None) -> str:
    """The strategy selector against the single default rule set, out of sample (issue 18;
    ``research.walkforward`` ``strategy_diagnostics.strategy``): the summary side by side, then per
    regime (both runs) and per selected profile (the selector run): pair hours, round trips, hit
    rate and PnL after fees. Empty when the run had ``[strategy]`` off."""
    if not cmp:
        return ""
    sel, dft = cmp.get("selector") or {}, cmp.get("default") or {}

    def money(v: Any) -> str:
        return "" if v is None else f"{float(v):,.2f}"

    rows = [
        ("total return", pct(sel.get("total_return")), pct(dft.get("total_return"))),
        ("max drawdown", pct(sel.get("max_drawdown")), pct(dft.get("max_drawdown"))),
        ("Sharpe (hourly)", _num(sel.get("sharpe_hourly"), 4), _num(dft.get("sharpe_hourly"), 4)),
        ("round trips", _num(sel.get("trades"), 0), _num(dft.get("trades"), 0)),
        ("hit rate", pct(sel.get("hit_rate"), 1), pct(dft.get("hit_rate"), 1)),
        ("PnL after fees", money(sel.get("pnl_after_fees")), money(dft.get("pnl_after_fees"))),
    ]
    out = "<table><tr><th></th><th>selector</th><th>single default rule set</th></tr>"
    out += "".join(f"<tr><td class='k'>{k}</td><td>{a}</td><td>{b}</td></tr>" for k, a, b in rows)
    out += "</table>"
    better = html.escape(str(cmp.get("better_out_of_sample", "")))
    out += f"<p class='note'>Better out of sample (hourly Sharpe): <b>{better}</b>. "
    out += html.escape(str(cmp.get("note", ""))) + "</p>"

    def block(title: str, a: dict, b: dict | None) -> str:
        head = (
            "<tr><th>" + title + "</th><th>pair hours</th><th>round trips</th><th>hit rate</th><th>PnL after fees</th>"
        )
        head += "<th>default: round trips</th><th>default: PnL after fees</th></tr>" if b is not None else "</tr>"
        body = ""
        for name, s in a.items():
            body += (
                f"<tr><td class='k'>{html.escape(name)}</td><td>{_num(s.get('pair_hours'), 0)}</td>"
                f"<td>{_num(s.get('trades'), 0)}</td><td>{pct(s.get('hit_rate'), 1)}</td>"
                f"<td>{money(s.get('pnl_after_fees'))}</td>"
            )
            if b is not None:
                o = b.get(name) or {}
                body += f"<td>{_num(o.get('trades'), 0)}</td><td>{money(o.get('pnl_after_fees'))}</td>"
            body += "</tr>"
        return f"<table>{head}{body}</table>"

    out += block("regime", sel.get("per_regime") or {}, dft.get("per_regime") or {})
    if sel.get("per_profile"):
        out += block("selected profile", sel["per_profile"], None)
    return out
