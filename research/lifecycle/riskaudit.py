"""Independent audit of a backtest's outputs against the risk rules of the config that ran it (gate 4).

The backtester enforces the rules in ``engine/risk/nb.py``; this module does NOT call it. It
re-derives the book from ``trades.parquet`` alone (cash and the long position of every pair, fill by
fill, in the recorded order) and checks it, with ``equity.parquet`` and ``events.parquet``, against
the rules in docs/RISK_RULES.md:

* ``records``: the three files have the documented columns; equity rows are one per hour; every
  trade lies on an equity row; quantities, prices and notionals are positive and consistent.
* ``cash``: cash never negative, after every fill (re-derived) and at every close (recorded); the
  re-derived cash equals the recorded one at every close (relative 1e-9 of initial cash).
* ``long_only``: a sell closes exactly the whole open long position; never a sell while flat (short),
  never a buy on top of an open position.
* ``max_positions``: open positions after every entry <= the cap of the trading state at the decision
  (``risk.max_positions``; ``risk.tier2_max_positions`` in REDUCING_2); the recorded count equals
  the re-derived one at every close.
* ``exposure``: at the close of a bar with an entry, exposure (fraction of equity) <= the cap of the
  state at the decision (``risk.max_exposure``, x ``risk.tier2_exposure_mult`` in REDUCING_2)
  x (1 + tolerance); and each entry alone <= the cluster cap x equity at the decision x (1 + tolerance)
  (a single position always sits in one cluster). The tolerance covers prices moving between the
  fill and the close (``lifecycle.exposure_tolerance``).
* ``halt_kill``: no entry executes in a bar whose decision bar closed HALTED or KILL_SWITCH, nor a
  close-phase (``market_close``) entry in a bar where the kill switch latched.
* ``training_window``: no entry executes in a bar that opens inside ``risk.training_window_utc``.

Each breach is a :class:`Breach` (rule, bar time, measured value, limit, one-line message).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["AuditResult", "Breach", "audit_backtest", "recompute_strategy"]

TRADE_COLUMNS = ("ts", "pair", "side", "quantity", "price", "notional", "fee", "reason", "fill")
EQUITY_COLUMNS = ("ts", "equity", "cash", "exposure", "drawdown", "trading_state", "n_positions")
EVENT_COLUMNS = ("ts", "pair", "event", "reason")
BARS_PER_YEAR = 8760.0
_REL = 1e-9  # relative tolerance for re-derived book values (float summation order is the same)


@dataclass(frozen=True)
class Breach:
    rule: str
    ts: int | None
    measured: float | None
    limit: float | None
    message: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AuditResult:
    breaches: tuple[Breach, ...]
    checked: dict  # rule -> number of observations checked
    n_breaches_by_rule: dict

    @property
    def ok(self) -> bool:
        return not self.breaches


def _read(folder: Path, name: str, cols: tuple[str, ...]) -> tuple[pd.DataFrame | None, str | None]:
    """One backtest record read through :func:`engine.backtest.io.read_table` (the columns this audit
    needs, enum columns decoded by name); a problem comes back as text (a breach), not raised."""
    from engine.backtest.io import EQUITY_SCHEMA, EVENT_SCHEMA, TRADE_SCHEMA, read_table
    from engine.errors import IntegrityError

    schema = {"trades": TRADE_SCHEMA, "equity": EQUITY_SCHEMA, "events": EVENT_SCHEMA}[name]
    try:
        return read_table(folder, name, {c: schema[c] for c in cols}), None
    except IntegrityError as e:
        return None, str(e)


def recompute_strategy(equity: pd.DataFrame, trades: pd.DataFrame, init_cash: float) -> dict:
    """Sharpe, max drawdown and turnover re-derived from the equity curve and the fills, with the
    backtester's definitions (engine/backtest/nb.py ``_finish_metrics_nb``): hourly returns against
    the previous close (the first against the initial cash), sample std, x sqrt(8760); drawdown from
    the running peak starting at the initial cash; turnover = traded notional / mean equity, per year
    and per day (/ 365)."""
    eq = equity["equity"].to_numpy(dtype=np.float64)
    n = len(eq)
    if n == 0:
        return {"sharpe": None, "max_drawdown": None, "turnover": None, "daily_turnover": None, "bars": 0}
    prev = np.concatenate([[init_cash], eq[:-1]])
    r = np.where(prev > 0.0, eq / np.where(prev > 0.0, prev, 1.0) - 1.0, 0.0)
    sd = float(np.std(r, ddof=1)) if n > 1 else float("nan")
    sharpe = float(np.mean(r) / sd * np.sqrt(BARS_PER_YEAR)) if sd > 0.0 else None
    peak = np.maximum.accumulate(np.concatenate([[init_cash], eq]))[1:]
    mdd = float(np.max(1.0 - eq / peak))
    traded = float(trades["notional"].to_numpy(dtype=np.float64).sum()) if len(trades) else 0.0
    turnover = traded / float(np.mean(eq)) * (BARS_PER_YEAR / n)
    return {
        "sharpe": sharpe,
        "max_drawdown": max(mdd, 0.0),
        "turnover": turnover,
        "daily_turnover": turnover / (BARS_PER_YEAR / 24.0),
        "bars": n,
    }


def _caps(state: str, risk) -> tuple[float, int]:
    cap, maxpos = float(risk.max_exposure), int(risk.max_positions)
    if state == "REDUCING_2":
        cap *= float(risk.tier2_exposure_mult)
        maxpos = min(maxpos, int(risk.tier2_max_positions))
    return cap, maxpos


def audit_backtest(
    folder: str | Path, cfg, *, exposure_tolerance: float | None = None, max_breaches_per_rule: int = 20
) -> AuditResult:
    """Audit ``folder`` (trades/equity/events Parquet of one backtest) against ``cfg`` (the engine
    Config the backtest ran with). Never raises for bad content: every problem is a breach."""
    folder = Path(folder)
    tol = float(cfg.lifecycle.exposure_tolerance if exposure_tolerance is None else exposure_tolerance)
    risk = cfg.risk
    init_cash = float(cfg.backtest.init_cash)
    breaches: list[Breach] = []
    counts: dict[str, int] = {}
    checked: dict[str, int] = {}

    def breach(rule, ts, measured, limit, msg):
        counts[rule] = counts.get(rule, 0) + 1
        if counts[rule] <= max_breaches_per_rule:
            breaches.append(
                Breach(
                    rule,
                    None if ts is None else int(ts),
                    None if measured is None else float(measured),
                    None if limit is None else float(limit),
                    msg,
                )
            )

    def done():
        return AuditResult(tuple(breaches), checked, dict(counts))

    trades, e1 = _read(folder, "trades", TRADE_COLUMNS)
    equity, e2 = _read(folder, "equity", EQUITY_COLUMNS)
    events, e3 = _read(folder, "events", EVENT_COLUMNS)
    for e in (e1, e2, e3):
        if e:
            breach("records", None, None, None, f"backtest record {e}")
    if e1 or e2 or e3:
        return done()
    # _read returns a frame whenever it returns no error
    assert trades is not None and equity is not None and events is not None

    # ---- records
    ets = equity["ts"].to_numpy(dtype=np.int64)
    n = len(ets)
    checked["records"] = n + len(trades)
    if n == 0:
        breach("records", None, None, None, "equity.parquet has no rows")
        return done()
    steps = np.diff(ets)
    if (steps != 3600).any():
        i = int(np.argmax(steps != 3600))
        breach("records", ets[i + 1], None, None, f"equity rows are not one per hour (gap after {ets[i]})")
        return done()
    row_of = {int(t): i for i, t in enumerate(ets)}
    tts = trades["ts"].to_numpy(dtype=np.int64)
    if len(tts) and (np.diff(tts) < 0).any():
        breach("records", None, None, None, "trades.parquet is not in time order")
        return done()
    bad_row = [int(t) for t in tts if int(t) not in row_of]
    if bad_row:
        breach("records", bad_row[0], None, None, f"{len(bad_row)} trade(s) at times with no equity row")
        return done()
    qty = trades["quantity"].to_numpy(dtype=np.float64)
    px = trades["price"].to_numpy(dtype=np.float64)
    notional = trades["notional"].to_numpy(dtype=np.float64)
    fee = trades["fee"].to_numpy(dtype=np.float64)
    side = trades["side"].astype(str).to_numpy()
    pair = trades["pair"].astype(str).to_numpy()
    fill = trades["fill"].astype(str).to_numpy()
    okv = (
        np.isfinite(qty)
        & np.isfinite(px)
        & np.isfinite(notional)
        & np.isfinite(fee)
        & (qty > 0)
        & (px > 0)
        & (fee >= 0)
        & np.isin(side, ("buy", "sell"))
    )
    okv &= np.abs(notional - qty * px) <= 1e-9 * np.maximum(np.abs(notional), 1.0)
    for k in np.flatnonzero(~okv)[:max_breaches_per_rule]:
        breach(
            "records",
            tts[k],
            notional[k],
            None,
            f"trade {int(k)} ({pair[k]} {side[k]}): quantity/price/notional/fee invalid or inconsistent",
        )

    # ---- replay the fills: cash, positions, per-bar state
    state = equity["trading_state"].astype(str).to_numpy()
    rec_cash = equity["cash"].to_numpy(dtype=np.float64)
    rec_npos = equity["n_positions"].to_numpy(dtype=np.int64)
    rec_expo = equity["exposure"].to_numpy(dtype=np.float64)
    rec_eq = equity["equity"].to_numpy(dtype=np.float64)
    kill_bars = set(events.loc[events["event"].astype(str) == "KILL", "ts"].astype(np.int64).tolist())
    window = tuple(getattr(risk, "training_window_utc", ()) or ())
    in_window = None
    if window:
        from engine.risk.schedule import in_training_window

        def in_window(t):
            return in_training_window(int(t), window)

    cash = init_cash
    held: dict[str, float] = {}
    k = 0
    n_tr = len(trades)
    cash_tol = _REL * max(init_cash, 1.0)
    for i in range(n):
        t = int(ets[i])
        entry_bar = False
        while k < n_tr and tts[k] == t:
            p, s = pair[k], side[k]
            if s == "buy":
                checked["halt_kill"] = checked.get("halt_kill", 0) + 1
                if i == 0:
                    breach("halt_kill", t, None, None, f"entry {p} in the first bar: no decision bar before it")
                    prev_state = "ACTIVE"
                else:
                    prev_state = state[i - 1]
                if prev_state in ("HALTED", "KILL_SWITCH"):
                    breach(
                        "halt_kill", t, None, None, f"entry {p} executed after a decision bar that closed {prev_state}"
                    )
                if fill[k] == "market_close" and t in kill_bars:
                    breach("halt_kill", t, None, None, f"close-phase entry {p} in a bar where the kill switch latched")
                if in_window is not None:
                    checked["training_window"] = checked.get("training_window", 0) + 1
                    if in_window(t):
                        breach(
                            "training_window",
                            t,
                            None,
                            None,
                            f"entry {p} executed in a bar opening inside the training window "
                            f"{window[0]}-{window[1]} UTC",
                        )
                if held.get(p, 0.0) > 0.0:
                    breach("long_only", t, held[p], 0.0, f"buy {p} on top of an open position")
                cash -= notional[k] + fee[k]
                held[p] = held.get(p, 0.0) + qty[k]
                cap, maxpos = _caps(prev_state, risk)
                nopen = sum(1 for v in held.values() if v > 0.0)
                checked["max_positions"] = checked.get("max_positions", 0) + 1
                if nopen > maxpos:
                    breach(
                        "max_positions",
                        t,
                        nopen,
                        maxpos,
                        f"{nopen} positions open after entry {p}, cap {maxpos} ({prev_state})",
                    )
                eq_dec = rec_eq[i - 1] if i > 0 else init_cash
                ccap = float(risk.max_cluster_exposure)
                checked["exposure"] = checked.get("exposure", 0) + 1
                if notional[k] > ccap * eq_dec * (1.0 + tol):
                    breach(
                        "exposure",
                        t,
                        notional[k] / eq_dec,
                        ccap,
                        f"entry {p} alone is {notional[k] / eq_dec:.2%} of equity, above the cluster cap "
                        f"{ccap:.2%} (+{tol:.0%} tolerance)",
                    )
                entry_bar = True
            else:
                h = held.get(p, 0.0)
                checked["long_only"] = checked.get("long_only", 0) + 1
                if h <= 0.0:
                    breach("long_only", t, -qty[k], 0.0, f"sell {p} while flat: a short position")
                elif abs(qty[k] - h) > 1e-9 * h:
                    breach(
                        "long_only",
                        t,
                        h - qty[k],
                        0.0,
                        f"sell {p} of {qty[k]:.10g} does not close the whole position {h:.10g}",
                    )
                cash += notional[k] - fee[k]
                held[p] = 0.0
            checked["cash"] = checked.get("cash", 0) + 1
            if cash < -cash_tol:
                breach("cash", t, cash, 0.0, f"cash {cash:.2f} negative after {s} {p}")
            k += 1
        # ---- at the close of bar i
        nopen = sum(1 for v in held.values() if v > 0.0)
        if rec_cash[i] < -cash_tol:
            breach("cash", t, rec_cash[i], 0.0, f"recorded cash {rec_cash[i]:.2f} negative")
        if abs(rec_cash[i] - cash) > cash_tol:
            breach(
                "cash",
                t,
                rec_cash[i],
                cash,
                f"recorded cash {rec_cash[i]:.6f} differs from the cash re-derived from the fills {cash:.6f}",
            )
            cash = float(rec_cash[i])  # report each divergence once, not every bar after it
        if rec_npos[i] != nopen:
            breach(
                "max_positions", t, rec_npos[i], nopen, f"recorded {rec_npos[i]} open positions, the fills give {nopen}"
            )
        if rec_npos[i] > int(risk.max_positions):
            breach(
                "max_positions",
                t,
                rec_npos[i],
                risk.max_positions,
                f"{rec_npos[i]} positions open, cap {risk.max_positions}",
            )
        if entry_bar:
            cap, _ = _caps(state[i - 1] if i > 0 else "ACTIVE", risk)
            if not (rec_expo[i] <= cap * (1.0 + tol)):
                breach(
                    "exposure",
                    t,
                    rec_expo[i],
                    cap,
                    f"exposure {rec_expo[i]:.2%} at the close of an entry bar, cap {cap:.2%} (+{tol:.0%} tolerance)",
                )
    if k < n_tr:
        breach("records", tts[k], None, None, "trades after the last equity row")
    return done()
