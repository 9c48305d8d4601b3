"""A backtest's files: the signals it reads and the outputs it writes, in ONE place.

Signals in
----------
A Parquet file of ``SIGNAL_COLUMNS`` (ts, pair, p_up, exp_return): :func:`read_signals` checks it
and :func:`signals_to_arrays` puts it on the panel grid (``kq backtest --signals``, the walk-forward's
backtest of its own predictions).

Outputs
-------
An output folder holds ``trades.parquet``, ``equity.parquet``, ``events.parquet``, ``metrics.json``
and ``report.html`` (with ``plotly.min.js`` beside it, loaded by a relative src). Their columns
are :data:`TRADE_SCHEMA`, :data:`EQUITY_SCHEMA`,
:data:`EVENT_SCHEMA` (name -> type; an IntEnum type means the column holds that enum's member NAMES,
except ``kill_reason``, stored as the :class:`~engine.risk.enums.KillReason` code) and the metrics
document has :data:`METRICS_KEYS` plus ``meta`` and ``config_sha256``.

With ``[strategy] enabled`` (the regime selector, :mod:`engine.strategy`) the event log also holds
one row per selector decision (:func:`engine.strategy.selection_records`: each bar and pair whose
P(up) passed the entry threshold): event ``STRATEGY``, reason ``strategy_<profile>_entry`` /
``strategy_<profile>_no_entry`` (:func:`engine.strategy.reason_code`, the daemon ledger's codes),
value the P(up), placed before the kernel's events of the same bar; and ``selection.parquet``
(:data:`SELECTION_SCHEMA`) holds the same rows with the regime and the exit parameters. With the
layer off neither exists and the files are what they were before the layer.

* :func:`write_outputs` writes a folder through the one atomic-folder helper
  (:func:`engine.paths.atomic_folder`: temporary sibling, fsync, rename): ``kq backtest``;
  :func:`write_files` writes the same files into a folder the caller makes atomic (the walk-forward
  writer's ``backtest/``).
* :func:`read_outputs` reads a folder back as :class:`BacktestOutputs`, with every enum column
  decoded by name into a categorical of that enum's names (fixed categories, value order), so an
  unknown reason or state is an :class:`~engine.errors.IntegrityError`, never a silent string.
  The lifecycle's gates and audits and the coming dashboard read through it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import InputError, IntegrityError
from engine.risk.enums import EventCode, KillReason, Reason, TradingState, metrics_dt
from engine.strategy import PROFILE_NAMES, REASON_CODES, REGIME_NAMES, STRATEGY_EVENT, reason_code
from engine.timeutil import HOUR

__all__ = [
    "CURVE_POINTS",
    "EQUITY_COLUMNS",
    "EQUITY_SCHEMA",
    "EVENT_COLUMNS",
    "EVENT_SCHEMA",
    "METRICS_KEYS",
    "OUTPUT_FILES",
    "SELECTION_COLUMNS",
    "SELECTION_SCHEMA",
    "SIGNAL_COLUMNS",
    "TRADE_COLUMNS",
    "TRADE_SCHEMA",
    "BacktestOutputs",
    "benchmark_doc",
    "benchmark_for",
    "curve_index",
    "enum_codes",
    "read_outputs",
    "read_signals",
    "read_table",
    "selection_frame",
    "signals_to_arrays",
    "with_selection_events",
    "write_files",
    "write_outputs",
    "write_report",
]

# ------------------------------------------------------------------------------------------------
# schemas

SIGNAL_COLUMNS = ("ts", "pair", "p_up", "exp_return")

#: trades.parquet: one row per fill, in execution order
TRADE_SCHEMA: dict[str, Any] = {
    "ts": "int64",  # bar open time (UTC seconds) of the execution bar
    "pair": "str",
    "side": "str",  # buy | sell
    "quantity": "float64",
    "price": "float64",
    "notional": "float64",
    "fee": "float64",
    "reason": Reason,  # ENTRY, EXIT_STOP, ...
    "fill": "str",  # market_open | limit | market_close
    "pnl": "float64",  # sells: round-trip P&L net of both fees; buys: 0
}
#: equity.parquet: one row per bar
EQUITY_SCHEMA: dict[str, Any] = {
    "ts": "int64",
    "equity": "float64",
    "cash": "float64",
    "exposure": "float64",  # fraction of equity
    "drawdown": "float64",
    "trading_state": TradingState,
    "n_positions": "int64",
    "kill_reason": KillReason,  # stored as the code (0 = not latched)
}
#: events.parquet: refusals, orders, cancels, tier changes, kill switch, resets; with [strategy]
#: enabled also the selector's rows (event STRATEGY, reason a strategy_* code: :data:`_EXTRA_NAMES`)
EVENT_SCHEMA: dict[str, Any] = {
    "ts": "int64",
    "pair": "str",  # "" for portfolio-level events
    "event": EventCode,
    "reason": Reason,
    "value": "float64",
}
#: selection.parquet ([strategy] enabled): one row per selector decision, in (bar, pair) order
SELECTION_SCHEMA: dict[str, Any] = {
    "ts": "int64",  # the decision bar's open time
    "pair": "str",
    "reason": "str",  # strategy_<profile>_entry | strategy_<profile>_no_entry (engine.strategy.reason_code)
    "regime": "str",  # range | trending | high_vol | crash | unknown (after hysteresis)
    "profile": "str",  # the selected profile (engine.strategy.PROFILE_NAMES) or none
    "candidate": "bool",  # True: the entry went on to the risk step; False: parked
    "p_up": "float64",  # the meta-learner's P(up) before the gate
    "stop_atr_mult": "float64",
    "take_profit_atr_mult": "float64",
    "size_scale": "float64",
}
TRADE_COLUMNS = tuple(TRADE_SCHEMA)
EQUITY_COLUMNS = tuple(EQUITY_SCHEMA)
EVENT_COLUMNS = tuple(EVENT_SCHEMA)
SELECTION_COLUMNS = tuple(SELECTION_SCHEMA)
#: metrics.json: the backtester's metrics record, the bars per trading state and the refusal counts
METRICS_KEYS = tuple(metrics_dt.names or ()) + ("bars_in_state", "refusals_by_reason")
#: the files of an output folder (report.html and plotly.min.js are for people; read_outputs does not read them)
#: benchmark.json (buy-and-hold of the same pairs over the same hours, :func:`benchmark_doc`) is
#: written only when the caller passes the market panel (``kq backtest`` and the walk-forward do);
#: selection.parquet only when the run has the selector's rows ([strategy] enabled)
OUTPUT_FILES = (
    "trades.parquet",
    "equity.parquet",
    "events.parquet",
    "selection.parquet",
    "metrics.json",
    "benchmark.json",
    "report.html",
    "plotly.min.js",
)
#: the most points of a downsampled curve (benchmark.json's, and the API's strategy curve)
CURVE_POINTS = 2000
_CODED = {"kill_reason"}  # enum columns stored as codes rather than names
# names an enum column of a file holds beyond its enum's: the selector's rows of the event log
_EXTRA_NAMES: dict[tuple[str, str], tuple[str, ...]] = {
    ("events.parquet", "event"): (STRATEGY_EVENT,),
    ("events.parquet", "reason"): REASON_CODES,
}


# ------------------------------------------------------------------------------------------------
# signals in


def read_signals(path: str, panel_pairs: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Read a signals Parquet file (ts, pair, p_up, exp_return) into a long frame with canonical pairs.

    ``ts`` is the bar open time (UTC seconds) of the bar whose CLOSE the signal was computed at: the
    decision is taken at ts + 3600 and executes in the next bar.
    """
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
        df["ts"] = ts.astype("datetime64[s]").astype(np.int64)
    elif not pd.api.types.is_integer_dtype(ts):
        raise InputError(f"--signals {path}: column ts must be integer UTC seconds or timestamps")
    df["ts"] = df["ts"].astype(np.int64)
    bad = df["ts"] % HOUR != 0
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
        raise InputError(
            f"--signals {path}: row {i}: duplicate (ts, pair) {int(df['ts'].iloc[i])}, {df['pair'].iloc[i]}"
        )
    if panel_pairs is not None:
        extra = sorted(set(df["pair"]) - set(panel_pairs))
        if extra:
            raise InputError(f"--signals {path}: pairs {', '.join(extra)} are not in --pairs")
    return df


def signals_to_arrays(sig: pd.DataFrame, ts: np.ndarray, pairs: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Long signals -> (n, m) p_up and exp_return on the hourly grid ``ts`` (NaN where none; signals
    outside the grid are dropped), the layout :func:`engine.backtest.runner.make_inputs` takes."""
    n, m = len(ts), len(pairs)
    p_up = np.full((n, m), np.nan)
    er = np.full((n, m), np.nan)
    col = {p: j for j, p in enumerate(pairs)}
    t0 = int(ts[0]) if n else 0
    idx = (sig["ts"].to_numpy(dtype=np.int64) - t0) // HOUR
    keep = (idx >= 0) & (idx < n)
    j = np.array([col[p] for p in sig["pair"]], dtype=np.int64)
    p_up[idx[keep], j[keep]] = sig["p_up"].to_numpy()[keep]
    er[idx[keep], j[keep]] = sig["exp_return"].to_numpy()[keep]
    return p_up, er


# ------------------------------------------------------------------------------------------------
# outputs


def selection_frame(result) -> pd.DataFrame:
    """selection.parquet's frame (:data:`SELECTION_SCHEMA`) of ``result.selection`` (selection_dt
    rows, :func:`engine.strategy.selection_records`); empty when the run has none."""
    s = result.selection if result.selection is not None else np.zeros(0, dtype=_selection_dt())
    pairs = np.asarray(tuple(result.pairs), dtype=object)
    regimes, profiles = REGIME_NAMES + ("unknown",), PROFILE_NAMES + ("none",)
    return pd.DataFrame(
        {
            "ts": np.asarray(result.ts, dtype=np.int64)[s["bar"]],
            "pair": pairs[s["pair"]],
            "reason": [reason_code(int(q), bool(c)) for q, c in zip(s["profile"], s["candidate"], strict=True)],
            "regime": [regimes[int(r)] for r in s["regime"]],  # -1 (unknown) is the last name
            "profile": [profiles[int(q)] for q in s["profile"]],  # -1 (none) is the last name
            "candidate": s["candidate"].astype(bool),
            "p_up": s["p_up"].astype(np.float64),
            "stop_atr_mult": s["stop_atr_mult"].astype(np.float64),
            "take_profit_atr_mult": s["take_profit_atr_mult"].astype(np.float64),
            "size_scale": s["size_scale"].astype(np.float64),
        },
        columns=list(SELECTION_COLUMNS),
    )


def _selection_dt():
    from engine.strategy.enums import selection_dt

    return selection_dt


def with_selection_events(events: pd.DataFrame, result) -> pd.DataFrame:
    """The event log ``events`` (the kernel's rows of ``result.events``, :data:`EVENT_COLUMNS`) with
    one ``STRATEGY`` row per row of ``result.selection`` (reason the ledger's code naming the
    profile, value the P(up)): bar by bar, the selector's rows (in pair order) come before the
    kernel's events of that bar, as the daemon ledgers them before its risk step."""
    s = result.selection
    if s is None or not len(s):
        return events
    sf = selection_frame(result)
    rows = pd.DataFrame(
        {
            "ts": sf["ts"],
            "pair": sf["pair"],
            "event": STRATEGY_EVENT,
            "reason": sf["reason"],
            "value": sf["p_up"],
        }
    )
    key = np.concatenate([2 * s["bar"], 2 * np.asarray(result.events["bar"], dtype=np.int64) + 1])
    out = pd.concat([rows, events[list(EVENT_COLUMNS)]], ignore_index=True)
    return out.iloc[np.argsort(key, kind="stable")].reset_index(drop=True)


def write_files(folder: str | Path, result, cfg=None, meta: dict | None = None, market=None) -> dict:
    """Write the output files of ``result`` (an :class:`engine.backtest.runner.BacktestResult`) into
    the existing ``folder``, not atomically (the caller's :func:`engine.paths.atomic_folder` is);
    returns the metrics document. ``cfg`` (a Config) adds ``config_sha256`` and the report's folded
    configuration; ``market`` (a Panel holding the run's hours and pairs) adds buy-and-hold to the
    report (:func:`benchmark_for`)."""
    d = Path(folder)
    trades = result.trades_frame()
    trades[list(TRADE_COLUMNS)].to_parquet(d / "trades.parquet", index=False)
    eq = result.equity_frame()
    eq[list(EQUITY_COLUMNS)].to_parquet(d / "equity.parquet", index=False)
    result.events_frame()[list(EVENT_COLUMNS)].to_parquet(d / "events.parquet", index=False)
    if getattr(result, "selection", None) is not None:
        selection_frame(result).to_parquet(d / "selection.parquet", index=False)
    metrics = result.metrics_dict()
    metrics["meta"] = dict(meta or {})
    if cfg is not None:
        metrics["config_sha256"] = cfg.content_hash()
    (d / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str, allow_nan=False) + "\n")
    bh = benchmark_for(result, market, cfg) if market is not None else None
    if bh is not None:
        doc = benchmark_doc(eq["ts"].to_numpy(), bh, _fee_rate(cfg))
        (d / "benchmark.json").write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    config = cfg.model_dump(mode="json") if cfg is not None else None
    write_report(eq, metrics, d / "report.html", bh=bh, config=config, fee_rate=_fee_rate(cfg))
    return metrics


def write_outputs(out_dir: str | Path, result, cfg=None, meta: dict | None = None, market=None) -> dict:
    """Write trades/equity/events Parquet, metrics.json and report.html (+ plotly.min.js) into
    ``out_dir`` atomically (:func:`engine.paths.atomic_folder`: a failure leaves ``out_dir`` as it
    was); returns the metrics document. ``market``: see :func:`write_files`."""
    from engine.paths import atomic_folder

    with atomic_folder(out_dir) as tmp:
        return write_files(tmp, result, cfg, meta, market)


def _fee_rate(cfg) -> float:
    from engine.config import FeesConfig

    return float(cfg.fees.fee_rate if cfg is not None else FeesConfig().fee_rate)


def _init_cash(cfg) -> float:
    from engine.backtest.config import BacktestConfig

    return float(cfg.backtest.init_cash if cfg is not None else BacktestConfig().init_cash)


def benchmark_for(result, market, cfg=None) -> dict:
    """Buy-and-hold (:func:`engine.report_html.buy_and_hold`) of ``result``'s pairs over its hours,
    from ``market``'s close prices and valid bars (``market`` may span more hours than the run; the
    run's hours must be a contiguous run of its bars and its pairs the same, else ValueError)."""
    from engine.report_html import buy_and_hold

    ts = np.asarray(result.ts, dtype=np.int64)
    mts = np.asarray(market.ts, dtype=np.int64)
    lo = int(np.searchsorted(mts, ts[0])) if len(ts) else 0
    if tuple(market.pairs) != tuple(result.pairs) or not np.array_equal(mts[lo : lo + len(ts)], ts):
        raise ValueError("buy-and-hold: the market's bars or pairs are not the backtest's")
    sl = slice(lo, lo + len(ts))
    return buy_and_hold(market.close[sl], market.valid[sl], _init_cash(cfg), _fee_rate(cfg))


def curve_index(n: int, cap: int = CURVE_POINTS) -> np.ndarray:
    """Rows of an ``n``-row curve kept when it is downsampled to about ``cap`` points: every
    ``ceil(n / cap)``-th row from the first, and the last row always (the API's equity chart and
    benchmark.json use the same rows, so the two curves share their timestamps)."""
    step = max(1, -(-n // cap))
    idx = np.arange(0, n, step, dtype=np.int64)
    if n and (n - 1) % step:
        idx = np.append(idx, n - 1)
    return idx


def benchmark_doc(ts: np.ndarray, bh: dict, fee_rate: float) -> dict:
    """benchmark.json: buy-and-hold's figures (``bh`` from :func:`benchmark_for`, the same dict the
    report draws) and its curve at the run's equity hours ``ts``, downsampled by :func:`curve_index`
    to rows [ts, equity, drawdown]. A figure that is not finite (Sharpe of a flat curve) is null."""
    from engine.report_html import BH_NOTE, pct

    def f(v: Any) -> float | None:
        v = float(v)
        return v if np.isfinite(v) else None

    ts = np.asarray(ts, dtype=np.int64)
    eq, dd = np.asarray(bh["equity"]), np.asarray(bh["drawdown"])
    if len(eq) != len(ts):
        raise ValueError("buy-and-hold: its curve is not the run's hours")
    idx = curve_index(len(ts))
    return {
        "definition": BH_NOTE.format(fee=pct(fee_rate, 2)),
        "metrics": {
            "total_return": f(bh["total_return"]),
            "annual_return": f(bh["annual_return"]),
            "max_drawdown": f(bh["max_drawdown"]),
            "sharpe": f(bh["sharpe"]),
            "trades": int(bh["n_trades"]),
            "fees": f(bh["fees_paid"]),
            "final_equity": f(bh["final_equity"]),
        },
        "curve": [[int(ts[i]), f(eq[i]), f(dd[i])] for i in idx],
    }


def write_report(
    eq: pd.DataFrame,
    metrics: dict,
    path: str | Path,
    bh: dict | None = None,
    config: dict | None = None,
    fee_rate: float | None = None,
) -> None:
    """report.html for people, with plotly.js loaded from ``plotly.min.js`` written beside it
    (:func:`engine.report_html.plotly_script`): the headline figures against buy-and-hold ``bh``,
    equity (buy-and-hold overlaid), drawdown and exposure in %, risk state, the details, and the
    run and configuration folded away at the bottom. Every fraction is shown as a percentage."""
    import html

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
    )

    path = Path(path)
    x = pd.to_datetime(eq["ts"], unit="s")
    code = eq["trading_state"].map({s.name: int(s) for s in TradingState})
    fig = make_subplots(
        rows=4,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.04,
        subplot_titles=(
            "equity (quote currency)",
            "drawdown from peak (%)",
            "exposure (% of equity)",
            "trading state (0 active, 1-2 reducing, 3 halted, 4 kill switch)",
        ),
    )
    equity_traces(fig, x, eq, bh)
    fig.add_trace(
        go.Scattergl(x=x, y=100.0 * eq["exposure"], name="exposure", line=dict(width=1), showlegend=False), row=3, col=1
    )
    fig.add_trace(
        go.Scattergl(x=x, y=code, name="state", mode="lines", line=dict(width=1, shape="hv"), showlegend=False),
        row=4,
        col=1,
    )
    fig.update_layout(height=1000, showlegend=bh is not None, margin=dict(l=50, r=20, t=40, b=30))
    detail = [
        ("Sortino", _plain(metrics.get("sortino"))),
        ("Calmar", _plain(metrics.get("calmar"))),
        ("worst month's drawdown", pct(metrics.get("worst_month_drawdown"))),
        ("turnover (x mean equity a year)", _plain(metrics.get("turnover"))),
        ("win rate", pct(metrics.get("win_rate"), 1)),
        ("profit factor", _plain(metrics.get("profit_factor"))),
        ("final equity", _plain(metrics.get("final_equity"))),
        ("refusals", str(metrics.get("n_refusals"))),
        ("kill-switch events", str(metrics.get("n_kill_events"))),
    ]
    rows = "".join(f"<tr><td class='k'>{k}</td><td>{v}</td></tr>" for k, v in detail)
    rows += "".join(f"<tr><td class='k'>bars {k}</td><td>{v:,}</td></tr>" for k, v in metrics["bars_in_state"].items())
    rows += "".join(
        f"<tr><td class='k'>refused: {k}</td><td>{v:,}</td></tr>" for k, v in metrics["refusals_by_reason"].items()
    )
    meta = metrics.get("meta", {}) or {}
    sub = run_line(meta, metrics.get("bars"))
    note = BH_NOTE.format(fee=pct(fee_rate, 2)) if bh is not None else "Buy-and-hold: no prices were given."
    body = fig.to_html(full_html=False, include_plotlyjs=False)
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>krakenquant backtest</title>"
        + plotly_script(path.parent)
        + STYLE
        + f"</head><body><h2>krakenquant backtest</h2><p>{html.escape(sub)}</p>"
        + headline_table(metrics, bh)
        + f"<p class='note'>{html.escape(note)}</p>{body}<h3>details</h3><table>{rows}</table>"
        + config_details(meta, config)
        + "</body></html>"
    )


def _plain(v) -> str:
    if v is None:
        return ""
    f = float(v)
    return f"{f:,.2f}" if np.isfinite(f) else "n/a"


# ------------------------------------------------------------------------------------------------
# reading back


@dataclass(frozen=True, eq=False)
class BacktestOutputs:
    """One output folder, read back: the three tables (enum columns decoded by name, see the module
    doc) and the metrics document."""

    folder: Path
    trades: pd.DataFrame
    equity: pd.DataFrame
    events: pd.DataFrame
    metrics: dict
    selection: pd.DataFrame | None = None  # selection.parquet ([strategy] enabled), else None


def _enum_dtype(enum: type[IntEnum], extra: tuple[str, ...] = ()) -> pd.CategoricalDtype:
    return pd.CategoricalDtype([m.name for m in sorted(enum, key=int)] + list(extra), ordered=False)


def enum_codes(col: pd.Series, enum: type[IntEnum]) -> np.ndarray:
    """int64 codes of a column of ``enum`` member names (as :func:`read_outputs` returns them); the
    event log's ``STRATEGY`` rows have no code (select ``event != "STRATEGY"`` first)."""
    lut = {m.name: int(m) for m in enum}
    return np.fromiter((lut[str(v)] for v in col), dtype=np.int64, count=len(col))


def _decode(df: pd.DataFrame, name: str, col: str, enum: type[IntEnum]) -> pd.Series:
    s = df[col]
    if col in _CODED:
        known = {int(m): m.name for m in enum}
        v = s.to_numpy()
        if not pd.api.types.is_integer_dtype(s):
            raise IntegrityError(f"{name}: column {col} must hold integer {enum.__name__} codes")
        bad = ~np.isin(v, np.fromiter(known, dtype=np.int64))
        if bad.any():
            i = int(np.argmax(bad))
            raise IntegrityError(f"{name}: row {i}: {col} {int(v[i])} is not a {enum.__name__} code")
        s = pd.Series([known[int(x)] for x in v], index=s.index, dtype=object)
    extra = _EXTRA_NAMES.get((name, col), ())
    names = {m.name for m in enum} | set(extra)
    bad = ~s.astype(str).isin(names).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise IntegrityError(f"{name}: row {i}: {col} {s.iloc[i]!r} is not a {enum.__name__} name")
    return s.astype(str).astype(_enum_dtype(enum, extra))


def read_table(folder: str | Path, name: str, schema: dict[str, Any]) -> pd.DataFrame:
    """``folder/name.parquet`` with the ``schema`` columns (extra columns kept, enum columns decoded
    by name). A missing or damaged file, a missing column or an unknown code is an
    :class:`~engine.errors.IntegrityError` naming the file (``"trades.parquet is missing"``)."""
    f = f"{name}.parquet"
    p = Path(folder) / f
    if not p.is_file():
        raise IntegrityError(f"{f} is missing")
    try:
        df = pd.read_parquet(p)
    except Exception as e:  # pyarrow raises many types for a damaged file
        raise IntegrityError(f"{f} is not a readable Parquet file ({type(e).__name__})") from None
    miss = [c for c in schema if c not in df.columns]
    if miss:
        raise IntegrityError(f"{f} lacks column(s) {', '.join(miss)}")
    for col, kind in schema.items():
        if isinstance(kind, type) and issubclass(kind, IntEnum):
            df[col] = _decode(df, f, col, kind)
    return df


def read_outputs(folder: str | Path) -> BacktestOutputs:
    """Read a backtest output folder (:func:`write_outputs`) back. The enum columns (``reason``,
    ``event``, ``trading_state``, ``kill_reason``) come back as categoricals of the enum's names;
    ``enum_codes`` turns one back into codes. A folder that is not there is an InputError; a
    missing or damaged file, column, name or metrics key is an IntegrityError naming it."""
    d = Path(folder)
    if not d.is_dir():
        raise InputError(f"{d}: no backtest output folder")
    try:
        trades = read_table(d, "trades", TRADE_SCHEMA)
        equity = read_table(d, "equity", EQUITY_SCHEMA)
        events = read_table(d, "events", EVENT_SCHEMA)
        selection = read_table(d, "selection", SELECTION_SCHEMA) if (d / "selection.parquet").exists() else None
    except IntegrityError as e:
        raise IntegrityError(f"{d}: {e}") from None
    mp = d / "metrics.json"
    try:
        metrics = json.loads(mp.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise IntegrityError(f"{mp}: missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IntegrityError(f"{mp}: not valid JSON ({e})") from None
    if not isinstance(metrics, dict):
        raise IntegrityError(f"{mp}: not a metrics document")
    miss = [k for k in METRICS_KEYS if k not in metrics]
    if miss:
        raise IntegrityError(f"{mp}: lacks key(s) {', '.join(miss)}")
    for key, enum in (("bars_in_state", TradingState), ("refusals_by_reason", Reason)):
        v = metrics[key]
        bad = [k for k in v if k not in enum.__members__] if isinstance(v, dict) else [key]
        if bad:
            raise IntegrityError(f"{mp}: {key}: {bad[0]!r} is not a {enum.__name__} name")
    return BacktestOutputs(folder=d, trades=trades, equity=equity, events=events, metrics=metrics, selection=selection)
