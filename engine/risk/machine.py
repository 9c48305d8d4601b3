"""RiskMachine: the live-facing face of the one risk step (engine.risk.nb), restartable.

One machine is one portfolio. It owns the state, position and pending-order records
(engine.risk.enums), the parameter record and the pairs' Kraken rules, and it runs the same kernels
the backtester runs; no rule is written here.

Bars are identified by their absolute hour (``hour = bar open, unix seconds // 3600``), never by an
array row: the kernels index a one-row input window (row ``t`` = 0) and record and compare the hour
(``entry_bar``, ``kill_bar``, ``halt_bar``, order ``bar``, trade and event ``bar``), so a machine
restored from :meth:`RiskMachine.snapshot` decides exactly as one that never stopped, whatever
the row its new feeder starts at. Hours must come in order, every hour: a missing bar is fed as a
bar with ``valid`` False (the data kill switch handles it), never skipped.

At the close of bar ``hour`` (:meth:`RiskMachine.on_bar`):

1. ``kill_check_nb``: operator resets, then the kill-switch triggers on the bar's data.
2. ``fallback_orders_nb``: an order decided at an earlier close and still pending (not settled
   during the bar) is cancelled if its pair's bar is missing or invalid (R23) or if it is an entry
   under the latched halt or kill switch; otherwise a limit becomes a market order for its
   remainder (``fallback`` 1 in its record: a re-issue, not a new decision) and an order already at
   market is reported as it is, never re-issued. One owner: the executor (live_bridge/execution.py)
   runs the limit -> market fallback within the hour; the close only reports what it has not
   settled. The close then waits (``BarResult.complete`` False) until each pending order is settled
   by :meth:`on_fill` or :meth:`on_cancel`; then :meth:`finish_bar` runs 3 and 4, so every decision
   sees a settled book, as in the backtester.
3. ``mark_nb``: mark to the close, equity, drawdown tiers, halt latch.
4. ``decide_nb``: exits, then entries, as pending orders (returned in ``BarResult.orders``).

Fills from the exchange go through :meth:`on_fill` (``book_fill_nb``, which books with
``apply_fill_nb``, the backtester's booking: cash, the exchange's fee, position, stop and
take-profit, trade record). Fills book cumulatively: a partial fill leaves the order pending for
its remainder (``qty`` is what is left, ``filled`` what was filled); a partial sell reduces the
position and its entry cost pro rata and books that part's P&L; a sell leaving less than the pair's
ordermin closes the position (event DUST); a cancel keeps what was filled. :meth:`on_fill` checks
the side, the quantity (at most the remainder plus one lot step) and ``how``; a fill the machine did
not order (over-fill, fill with no order pending, external trade) is booked by
:meth:`on_unexpected_fill`, which latches the kill switch (API instability) so that the book matches
the exchange and nothing new is opened until an operator looks. A live fill is booked as the
exchange reports it: the backtester's re-clipping of an entry at its fill price (``execute_buy_nb``)
cannot be applied to an order already filled, so sizes are bounded at the decision only (with the
decision's slippage buffer reserved); the replay/parity work measures the difference.

``on_bar(..., simulate_fills=True)`` is the backtester's fill model instead: the orders of the last
close execute in this bar by ``execute_open_nb`` (at the open) and ``execute_close_nb`` (market
fallback at the close, after the kill check), i.e. one ``engine.risk.nb.step_bar_nb``. A loop of
those over the rows of backtest inputs equals ``engine.backtest.runner.run_backtest`` bit for bit
(trades, events and equity, bar ids shifted to hours; tests/test_risk_machine.py), including across
snapshot and restore at every bar.

Inputs of one bar (``bar_dt`` and ``prediction_dt`` records, one per pair) are built by the
functions the backtester uses, so the live side computes them from stored history:
``engine.backtest.runner.make_inputs`` over the stored panel up to and including the bar (ATR:
``default_atr``, Wilder; spread: ``default_spread``, Corwin-Schultz; clusters: ``default_clusters``;
entry block: ``engine.risk.schedule.entry_block_for_bars``), then :func:`bar_inputs` of its last
row. All are causal (row t uses rows <= t), so the last row equals the backtest's row for that hour
when the history starts where the backtest's did (Wilder's ATR and the cluster schedule depend on
the start; the ATR's dependence decays geometrically). The kill-switch baselines (spread EWMA,
previous ATR and close) live in the position records, so the machine needs no history for them:
``kill_check_nb`` updates them bar by bar, as ``kill_triggers_nb`` does in one pass for the
backtest.

:meth:`snapshot` returns bytes (magic, format version, length, SHA-256 digest, then every record and
the bar in progress); :meth:`restore` checks all of them and raises :class:`SnapshotError` naming
the problem (not a snapshot, other version, truncated, digest mismatch, other record layout or
size, a book that breaks its invariants), and checks the current configuration against it (params
and pairs must match, unless a parameter change is accepted explicitly; instruments are taken as
given). Bars whose prices break the stored-bar rule are treated as missing (``valid`` cleared).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

import numpy as np
from numba import njit

from engine.errors import InputError, IntegrityError
from engine.risk.enums import (
    BX_N,
    N_REASONS,
    OP_ALL,
    FillHow,
    KillReason,
    bar_dt,
    bar_exit_dt,
    equity_dt,
    event_dt,
    order_dt,
    params_dt,
    position_dt,
    prediction_dt,
    state_dt,
    trade_dt,
)
from engine.risk.nb import (
    C_EVENTS,
    C_OVERFLOW,
    C_RECORD,
    C_TRADES,
    N_ACC,
    N_CNT,
    book_fill_nb,
    decide_nb,
    fallback_orders_nb,
    init_state_nb,
    kill_check_nb,
    latch_external_kill_nb,
    mark_nb,
    step_bar_nb,
)
from engine.risk.params import bar_exits_problem
from engine.timeutil import HOUR

SNAPSHOT_MAGIC = b"KQRISKM\x00"
SNAPSHOT_VERSION = 6  # 2: order_dt filled/fallback, position_dt realized; 3: params_dt capital_ceiling;
# 4: state_dt paused/flatten; 5: instruments quote_decimals; 6: order_dt stop_mult/tp_mult, exits
_HEADER = struct.Struct("<8sIQ32s")  # magic, version, body length, SHA-256 of the body

# machine record: the last hour begun, and whether its close waits for fallback fills
machine_dt = np.dtype([("hour", np.int64), ("awaiting", np.int64)])


class SnapshotError(IntegrityError):
    """A RiskMachine snapshot that cannot be restored (the message says why)."""


@dataclass(frozen=True, eq=False)
class BarResult:
    hour: int
    orders: np.ndarray  # order_dt: the orders pending now (to send: new decisions, or fallbacks)
    order_pairs: np.ndarray  # int64: the pair index of each of ``orders``
    trades: np.ndarray  # trade_dt booked during this call (simulated fills only)
    events: np.ndarray  # event_dt emitted during this call
    equity: np.ndarray | None  # equity_dt row of the close (None while the close waits for fills)
    complete: bool  # False: fallback orders await on_fill/on_cancel, then finish_bar()


@dataclass(frozen=True, eq=False)
class FillResult:
    trades: np.ndarray  # trade_dt: the fill as booked
    events: np.ndarray  # event_dt: DUST, a settled remainder (CANCEL), KILL (unexpected fills)
    pending: bool  # the order still waits for the rest of its quantity (``remaining``)
    remaining: float  # quantity still to fill (0 when settled)


# ---- kernels: compositions of engine.risk.nb phases on a one-row window (row 0, bar id = hour)


@njit(cache=True)
def _begin_close_nb(
    hour, state, positions, pending, o, h, lo, c, valid, atr, spread, api, op, p, events, cnt, refusals
):
    kill_check_nb(0, hour, state, positions, o, h, lo, c, valid, atr, spread, api, op, p, events, cnt)
    return fallback_orders_nb(0, hour, state, pending, valid, events, cnt, refusals)


@njit(cache=True)
def _finish_close_nb(
    hour,
    state,
    positions,
    pending,
    c,
    valid,
    p_up,
    exp_ret,
    bx,
    atr,
    spread,
    cluster,
    tradable,
    entry_block,
    ordermin,
    costmin,
    lot_dec,
    price_dec,
    p,
    events,
    cnt,
    refusals,
    order_buf,
):
    mark_nb(0, hour, state, positions, c, valid, p, events, cnt)
    decide_nb(
        0,
        hour,
        state,
        positions,
        pending,
        c,
        valid,
        p_up,
        exp_ret,
        bx,
        atr,
        spread,
        cluster,
        tradable,
        entry_block,
        ordermin,
        costmin,
        lot_dec,
        price_dec,
        p,
        events,
        cnt,
        refusals,
        order_buf,
    )


def bar_inputs(inp, t: int):
    """One bar of backtest inputs (``engine.backtest.runner.BacktestInputs``, row ``t``) as the
    arguments of :meth:`RiskMachine.on_bar`: (hour, bars, predictions, tradable, entry_block,
    api_fault, operator, exits); ``exits`` (``bar_exit_dt`` per pair) is None when the inputs carry no
    per-bar exit parameters ([strategy] off)."""
    n, m = inp.shape
    if not -n <= t < n:
        raise InputError(f"row {t} outside the inputs' {n} bars")
    bars = np.zeros(m, dtype=bar_dt)
    for f, a in (
        ("open", inp.open),
        ("high", inp.high),
        ("low", inp.low),
        ("close", inp.close),
        ("volume", inp.volume),
        ("valid", inp.valid),
        ("atr", inp.atr),
        ("spread", inp.spread),
        ("cluster", inp.cluster),
    ):
        bars[f] = a[t]
    pred = np.zeros(m, dtype=prediction_dt)
    pred["p_up"] = inp.p_up[t]
    pred["exp_ret"] = inp.exp_ret[t]
    return (
        int(inp.ts[t]) // HOUR,
        bars,
        pred,
        inp.tradable[t].copy(),
        bool(inp.entry_block[t]),
        bool(inp.api_fault[t]),
        int(inp.operator[t]),
        bar_exit_row(inp, t),
    )


def bar_exit_row(inp, t: int) -> np.ndarray | None:
    """Row ``t`` of the inputs' per-bar exit parameters as ``bar_exit_dt`` records (one per pair);
    None when the inputs have none."""
    bx = inp.bar_exits
    if bx is None or bx.shape[0] == 0:
        return None
    return exit_records(bx[t])


def exit_records(row: np.ndarray) -> np.ndarray:
    """(m, BX_N) float64 per-bar exit parameters as ``bar_exit_dt`` records, one per pair."""
    a = np.asarray(row, dtype=np.float64)
    out = np.empty(a.shape[0], dtype=bar_exit_dt)
    exit_array(out)[:] = a
    return out


def exit_array(records: np.ndarray) -> np.ndarray:
    """``bar_exit_dt`` records (m,) as the (m, BX_N) float64 the kernels read (a view when contiguous)."""
    r = np.ascontiguousarray(records)
    return r.view(np.float64).reshape(r.shape[0], BX_N)


class RiskMachine:
    """One portfolio's risk step at each bar close, restartable; see the module docstring."""

    def __init__(self, pairs, params: np.ndarray, instruments=None):
        from engine.risk.params import instrument_arrays

        if not isinstance(params, np.ndarray) or params.dtype != params_dt or params.shape != (1,):
            raise InputError("params must be a params_dt array of shape (1,)")
        self.pairs = tuple(str(x) for x in pairs)
        m = len(self.pairs)
        if m == 0 or len(set(self.pairs)) != m:
            raise InputError("pairs must be a non-empty list of distinct pair names")
        self.params = params.copy()
        rules = instrument_arrays(self.pairs) if instruments is None else instruments
        try:
            if len(rules) != 5:
                raise IndexError
            self.ordermin, self.costmin, self.lot_dec, self.price_dec, self.quote_dec = (
                np.ascontiguousarray(rules[0], dtype=np.float64),
                np.ascontiguousarray(rules[1], dtype=np.float64),
                np.ascontiguousarray(rules[2], dtype=np.int64),
                np.ascontiguousarray(rules[3], dtype=np.int64),
                np.ascontiguousarray(rules[4], dtype=np.int64),
            )
        except (TypeError, ValueError, IndexError):
            raise InputError(
                "instruments: (ordermin, costmin, lot_decimals, pair_decimals, quote_decimals) arrays"
            ) from None
        for a in (self.ordermin, self.costmin, self.lot_dec, self.price_dec, self.quote_dec):
            if a.shape != (m,):
                raise InputError(f"instruments: each rule must hold one value per pair ({m}), got shape {a.shape}")
        self.state = np.zeros(1, dtype=state_dt)
        self.positions = np.zeros(m, dtype=position_dt)
        self.pending = np.zeros(m, dtype=order_dt)
        init_state_nb(self.state, self.positions, self.pending, float(self.params[0]["init_cash"]))
        self.acc = np.zeros(N_ACC)
        self.refusals = np.zeros(N_REASONS, dtype=np.int64)
        self.cnt = np.zeros(N_CNT, dtype=np.int64)  # cumulative: kill events, fills
        self.cnt[C_RECORD] = 1
        self.machine = np.zeros(1, dtype=machine_dt)
        self.machine[0]["hour"] = np.iinfo(np.int64).min
        self.bar = np.zeros(m, dtype=bar_dt)  # the bar in progress (kept while a close waits)
        self.pred = np.zeros(m, dtype=prediction_dt)
        self.exits = np.full(m, np.nan, dtype=bar_exit_dt)  # the bar's exit parameters (NaN: [risk]'s)
        self.tradable = np.ones(m, dtype=np.bool_)
        self.flags = np.zeros(1, dtype=[("entry_block", np.bool_), ("api_fault", np.bool_), ("operator", np.int64)])
        self._marks = np.empty(m)
        self._order_buf = np.empty(m, dtype=np.int64)

    # ---- the bar close

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    @property
    def last_hour(self) -> int | None:
        h = int(self.machine[0]["hour"])
        return None if h == np.iinfo(np.int64).min else h

    @property
    def awaiting_fills(self) -> bool:
        return bool(self.machine[0]["awaiting"])

    def _buffers(self):
        m = self.n_pairs
        self.cnt[C_TRADES] = 0
        self.cnt[C_EVENTS] = 0
        return np.zeros(2 * m + 1, dtype=trade_dt), np.zeros(4 * m + 8, dtype=event_dt)

    def _check_bar(self, hour, bars, predictions, tradable, operator):
        m = self.n_pairs
        if isinstance(hour, (bool, np.bool_)) or not isinstance(hour, (int, np.integer)):
            raise InputError(f"hour must be an int (unix seconds // 3600), got {hour!r}")
        hour = int(hour)
        last = self.last_hour
        if self.awaiting_fills:
            raise InputError(
                f"the close of hour {last} waits for fills of its fallback orders (on_fill/on_cancel, then finish_bar)"
            )
        if last is not None and hour != last + 1:
            raise InputError(
                f"hour {hour}: the last bar was hour {last}; feed every hour in order "
                "(a missing bar is a bar with valid False)"
            )
        for name, a, dt in (("bars", bars, bar_dt), ("predictions", predictions, prediction_dt)):
            if not isinstance(a, np.ndarray) or a.dtype != dt or a.shape != (m,):
                raise InputError(f"{name}: expected {m} records of engine.risk.enums.{dt_name(dt)}")
        trd = np.ones(m, dtype=np.bool_) if tradable is None else np.asarray(tradable)
        if trd.shape != (m,) or trd.dtype != np.bool_:
            raise InputError(f"tradable must be a bool array of {m} values (or None: all tradable)")
        op = int(operator)
        if op < 0 or op > OP_ALL:
            raise InputError(
                "operator must be a combination of OP_RESET_KILL, OP_RESET_HALT, OP_PAUSE, OP_RESUME and "
                f"OP_FLATTEN (0..{OP_ALL}), got {operator!r}"
            )
        return hour, trd, op

    @staticmethod
    def _sane(bars: np.ndarray) -> np.ndarray:
        """``bars`` with ``valid`` cleared where the bar breaks the rule stored bars pass
        (engine.store.readers.validate): finite OHLCV, prices > 0, high >= low, open and close in
        [low, high], volume >= 0. Such a bar is a missing bar to the kill switch and the decisions."""
        b = bars.copy()
        o, h, lo, c, v = b["open"], b["high"], b["low"], b["close"], b["volume"]
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(c) & np.isfinite(v)
            ok &= (o > 0) & (h > 0) & (lo > 0) & (c > 0) & (h >= lo) & (v >= 0)
            ok &= (o >= lo) & (o <= h) & (c >= lo) & (c <= h)
        b["valid"] &= ok
        return b

    def _row(self, f):
        return np.ascontiguousarray(self.bar[f])[None, :]

    def _bx(self) -> np.ndarray:
        """The bar's exit parameters as the kernels read them: (1, m, BX_N) float64 (NaN: [risk]'s)."""
        return exit_array(self.exits)[None].copy()

    def _check_exits(self, exits) -> np.ndarray:
        """``exits`` as ``bar_exit_dt`` records (None: all NaN); InputError when a value could loosen a
        rule (``engine.risk.params.bar_exits_problem``): a negative or non-finite multiple, a size
        scale outside [0, 1], a floor not above 0."""
        m = self.n_pairs
        out = np.full(m, np.nan, dtype=bar_exit_dt)
        if exits is None:
            return out
        if not isinstance(exits, np.ndarray) or exits.dtype != bar_exit_dt or exits.shape != (m,):
            raise InputError(f"exits: expected {m} records of engine.risk.enums.bar_exit_dt (or None)")
        bad = bar_exits_problem(exit_array(exits))
        if bad is not None:
            (j,), f, v = bad
            raise InputError(f"exits[{self.pairs[j]}].{f} = {v!r}: out of bounds (docs/RISK_RULES.md R26)")
        out[:] = exits
        return out

    def on_bar(
        self,
        hour,
        bars,
        predictions,
        tradable=None,
        entry_block=False,
        api_fault=False,
        operator=0,
        exits=None,
        *,
        simulate_fills: bool = False,
    ) -> BarResult:
        """The close of bar ``hour``: the orders and events decided at it (module docstring).

        ``bars``: ``bar_dt`` records (OHLCV, valid, ATR, spread estimate, cluster id) per pair;
        ``predictions``: ``prediction_dt`` (P(up), expected return); ``tradable``: universe members
        (None: all); ``entry_block``: entries decided now would execute in the entry-block window;
        ``api_fault``: the exchange API is unstable; ``operator``: OP_RESET_KILL | OP_RESET_HALT | OP_PAUSE |
        OP_RESUME | OP_FLATTEN; ``exits``: ``bar_exit_dt`` per pair, the strategy layer's exit
        parameters (R26; None: the [risk] parameters apply, as with every field NaN).
        ``simulate_fills``: fill the last close's orders in this bar by the backtester's fill model
        instead of waiting for :meth:`on_fill`."""
        hour, trd, op = self._check_bar(hour, bars, predictions, tradable, operator)
        ex = self._check_exits(exits)
        self.bar[:] = self._sane(bars)
        self.pred[:] = predictions
        self.exits[:] = ex
        self.tradable[:] = trd
        self.flags[0] = (bool(entry_block), bool(api_fault), op)
        self.machine[0]["hour"] = hour
        trades, events = self._buffers()
        st, pos, pend = self.state, self.positions, self.pending
        api = self.flags["api_fault"].copy()
        opa = self.flags["operator"].copy()
        blk = self.flags["entry_block"].copy()
        if simulate_fills:
            step_bar_nb(
                0,
                hour,
                st,
                pos,
                pend,
                self._row("open"),
                self._row("high"),
                self._row("low"),
                self._row("close"),
                self._row("volume"),
                self._row("valid"),
                np.ascontiguousarray(self.pred["p_up"])[None, :],
                np.ascontiguousarray(self.pred["exp_ret"])[None, :],
                self._bx(),
                self._row("atr"),
                self._row("spread"),
                self._row("cluster"),
                self.tradable[None, :].copy(),
                blk,
                api,
                opa,
                self.ordermin,
                self.costmin,
                self.lot_dec,
                self.price_dec,
                self.quote_dec,
                self.params[0],
                trades,
                events,
                self.cnt,
                self.acc,
                self.refusals,
                self._marks,
                self._order_buf,
            )
            return self._result(hour, trades, events)
        n_wait = _begin_close_nb(
            hour,
            st,
            pos,
            pend,
            self._row("open"),
            self._row("high"),
            self._row("low"),
            self._row("close"),
            self._row("valid"),
            self._row("atr"),
            self._row("spread"),
            api,
            opa,
            self.params[0],
            events,
            self.cnt,
            self.refusals,
        )
        if n_wait > 0:
            self.machine[0]["awaiting"] = 1
            return self._result(hour, trades, events, complete=False)
        return self._finish(hour, trades, events)

    def finish_bar(self) -> BarResult:
        """Marks and decisions of a close that waited for fallback fills (every order settled)."""
        if not self.awaiting_fills:
            raise InputError("no bar close is waiting for fills")
        if self.pending["active"].any():
            left = [self.pairs[j] for j in np.flatnonzero(self.pending["active"])]
            raise InputError(f"orders still pending for {', '.join(left)}: settle them with on_fill or on_cancel")
        self.machine[0]["awaiting"] = 0
        trades, events = self._buffers()
        return self._finish(int(self.machine[0]["hour"]), trades, events)

    def _finish(self, hour, trades, events):
        blk = self.flags["entry_block"].copy()
        _finish_close_nb(
            hour,
            self.state,
            self.positions,
            self.pending,
            self._row("close"),
            self._row("valid"),
            np.ascontiguousarray(self.pred["p_up"])[None, :],
            np.ascontiguousarray(self.pred["exp_ret"])[None, :],
            self._bx(),
            self._row("atr"),
            self._row("spread"),
            self._row("cluster"),
            self.tradable[None, :].copy(),
            blk,
            self.ordermin,
            self.costmin,
            self.lot_dec,
            self.price_dec,
            self.params[0],
            events,
            self.cnt,
            self.refusals,
            self._order_buf,
        )
        return self._result(hour, trades, events)

    def _result(self, hour, trades, events, complete=True):
        if self.cnt[C_OVERFLOW]:
            raise RuntimeError("RiskMachine record buffers overflowed (bug: capacities are upper bounds)")
        eq = None
        if complete:
            st = self.state[0]
            eq = np.zeros(1, dtype=equity_dt)
            e = float(st["equity"])
            eq[0] = (
                hour,
                e,
                st["cash"],
                st["exposure"] / e if e > 0.0 else 0.0,
                st["drawdown"],
                st["trading_state"],
                st["n_positions"],
                st["kill_reason"],
            )
        act = np.flatnonzero(self.pending["active"]).astype(np.int64)
        return BarResult(
            hour,
            self.pending[act].copy(),
            act,
            trades[: self.cnt[C_TRADES]].copy(),
            events[: self.cnt[C_EVENTS]].copy(),
            eq,
            complete,
        )

    # ---- exchange reports

    def _pair(self, pair) -> int:
        j = self.pairs.index(pair) if isinstance(pair, str) and pair in self.pairs else pair
        if isinstance(j, (bool, np.bool_)) or not isinstance(j, (int, np.integer)) or not 0 <= int(j) < self.n_pairs:
            raise InputError(f"unknown pair {pair!r}")
        return int(j)

    def _pending_for(self, pair):
        j = self._pair(pair)
        if self.pending[j]["active"] == 0:
            raise InputError(
                f"no order pending for {self.pairs[j]}: a fill or cancel must match a decided order "
                "(a fill the machine did not order is booked by on_unexpected_fill)"
            )
        return j

    def _fill_args(self, j, side, qty, price, fee, how):
        from engine.execution.nb import BUY, SELL

        name = self.pairs[j]
        sd = {"buy": BUY, "sell": SELL}.get(side, side) if isinstance(side, str) else side
        if isinstance(sd, (bool, np.bool_)) or not isinstance(sd, (int, np.integer)) or int(sd) not in (BUY, SELL):
            raise InputError(f"fill of {name}: side must be 'buy'/'sell' or BUY (1)/SELL (-1), got {side!r}")
        try:
            qty, price, fee = float(qty), float(price), float(fee)
        except (TypeError, ValueError):
            raise InputError(f"fill of {name}: quantity, price and fee must be numbers") from None
        if not (qty > 0.0 and np.isfinite(qty) and price > 0.0 and np.isfinite(price)):
            raise InputError(
                f"fill of {name}: quantity and price must be positive and finite, got {qty!r} at {price!r}"
            )
        if not (fee >= 0.0 and np.isfinite(fee)):
            raise InputError(f"fill of {name}: the fee must be finite and >= 0, got {fee!r}")
        if not isinstance(how, (int, np.integer)) or isinstance(how, (bool, np.bool_)) or int(how) not in set(FillHow):
            raise InputError(
                f"fill of {name}: how must be a FillHow ({', '.join(h.name for h in FillHow)}), got {how!r}"
            )
        if self.last_hour is None:
            raise InputError("no bar has been processed: nothing can have been ordered")
        return int(sd), qty, price, fee, int(how)

    def _book(self, j, side, qty, price, fee, how, kill: bool) -> FillResult:
        trades = np.zeros(1, dtype=trade_dt)
        events = np.zeros(4, dtype=event_dt)
        self.cnt[C_TRADES] = 0
        self.cnt[C_EVENTS] = 0
        # the bar the fill executes in: the bar after the last close, or that close's own bar for a
        # fallback order (as execute_open_nb / execute_close_nb record them)
        last = self.last_hour
        if last is None:  # _fill_args refuses this first
            raise InputError("no bar has been processed: nothing can have been ordered")
        bar = last if self.awaiting_fills else last + 1
        marks = np.full(self.n_pairs, np.nan)  # NaN: the others at their last close (apply_fill_nb)
        left = book_fill_nb(
            bar,
            j,
            side,
            qty,
            price,
            fee,
            how,
            self.state,
            self.positions,
            self.pending,
            marks,
            self.ordermin,
            self.params[0],
            trades,
            events,
            self.cnt,
            self.acc,
        )
        if kill:
            latch_external_kill_nb(self.state, bar, int(KillReason.API_INSTABILITY), j, qty, events, self.cnt)
        if self.cnt[C_OVERFLOW]:
            raise RuntimeError("RiskMachine record buffers overflowed (bug: capacities are upper bounds)")
        o = self.pending[j]
        return FillResult(
            trades[: self.cnt[C_TRADES]].copy(),
            events[: self.cnt[C_EVENTS]].copy(),
            bool(left),
            float(o["qty"]) if left else 0.0,
        )

    def on_fill(self, pair, side, qty, price, fee, how) -> FillResult:
        """Book one exchange fill (whole or partial) of the order pending for ``pair`` (name or
        index): ``qty`` base units at ``price``, the exchange's ``fee`` (quote currency), ``side``
        'buy'/'sell' (or BUY/SELL) which must be the order's, ``how`` a FillHow. Fills book
        cumulatively (``book_fill_nb``): the order stays pending for its remainder until that is
        below the pair's ordermin; a sell reduces the position pro rata (a remainder below ordermin
        is written off, event DUST). Refused (InputError, nothing booked): another side, a quantity
        above the remainder plus one lot step, a bad ``how``. A fill the machine did not order goes
        through :meth:`on_unexpected_fill`."""
        j = self._pending_for(pair)
        sd, qty, price, fee, how = self._fill_args(j, side, qty, price, fee, how)
        o = self.pending[j]
        if sd != int(o["side"]):
            raise InputError(
                f"fill of {self.pairs[j]}: a {'buy' if sd > 0 else 'sell'} against the pending "
                f"{'buy' if o['side'] > 0 else 'sell'} (book it with on_unexpected_fill if the exchange did it)"
            )
        if sd < 0 and self.positions[j]["qty"] <= 0.0:
            raise InputError(f"fill of {self.pairs[j]}: a sell with no position open")
        step = 10.0 ** -int(self.lot_dec[j])
        limit = float(o["qty"]) + step
        if qty > limit * (1.0 + 1e-12):
            raise InputError(
                f"fill of {self.pairs[j]}: quantity {qty!r} above the order's remaining {float(o['qty'])!r} "
                f"plus one lot step {step!r} (book an over-fill with on_unexpected_fill)"
            )
        return self._book(j, sd, qty, price, fee, how, kill=False)

    def on_unexpected_fill(self, pair, side, qty, price, fee, how) -> FillResult:
        """Book a fill the machine did not order (over-fill, fill with no order pending, e.g. one
        landing during a cancel, or an external trade) so that the book matches the exchange, and
        latch the kill switch (API instability: an exchange doing what was not asked stops new
        entries until an operator reactivates). A pending order of the same side is charged with it;
        a buy without one opens without a stop (no decision ATR)."""
        j = self._pair(pair)
        sd, qty, price, fee, how = self._fill_args(j, side, qty, price, fee, how)
        return self._book(j, sd, qty, price, fee, how, kill=True)

    def on_cancel(self, pair) -> None:
        """The exchange cancelled, rejected or expired the order pending for ``pair``: it is dropped;
        what was filled of it stays booked."""
        j = self._pending_for(pair)
        self.pending[j]["active"] = 0

    def set_capital_ceiling(self, value: float) -> None:
        """Change the capital ceiling (R3b, quote currency; ``inf`` = off) from the next call on: an
        operator's ledgered ``set_ceiling``, applied by the live cycle before a bar's ``on_bar``.
        The snapshot carries it. InputError for NaN, zero or a negative value."""
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise InputError(f"capital ceiling {value!r}: not a number") from None
        if not v > 0.0:  # NaN, zero, negative
            raise InputError(f"capital ceiling {value!r}: must be positive (inf = off)")
        self.params[0]["capital_ceiling"] = v

    # ---- persistence

    def _arrays(self):
        ins = np.zeros(self.n_pairs, dtype=_instrument_dt)
        ins["ordermin"], ins["costmin"], ins["lot_decimals"], ins["pair_decimals"], ins["quote_decimals"] = (
            self.ordermin,
            self.costmin,
            self.lot_dec,
            self.price_dec,
            self.quote_dec,
        )
        return {
            "params": self.params,
            "instruments": ins,
            "state": self.state,
            "positions": self.positions,
            "pending": self.pending,
            "acc": self.acc,
            "refusals": self.refusals,
            "cnt": self.cnt,
            "machine": self.machine,
            "bar": self.bar,
            "pred": self.pred,
            "exits": self.exits,
            "tradable": self.tradable,
            "flags": self.flags,
        }

    def snapshot(self) -> bytes:
        """Everything the machine holds, as bytes (see :meth:`restore`)."""
        return pack_snapshot(self._arrays(), self.pairs)

    @classmethod
    def restore(
        cls,
        blob: bytes,
        params: np.ndarray | None = None,
        pairs=None,
        instruments=None,
        *,
        accept_param_change: bool = False,
    ) -> RiskMachine:
        """A machine from :meth:`snapshot` bytes; :class:`SnapshotError` if they are not a complete,
        intact snapshot of this format version and record layout, or break the book's invariants.

        The current configuration is checked against the snapshot: ``params`` (params_dt, shape (1,))
        must equal the snapshot's, or SnapshotError names the differing fields, unless
        ``accept_param_change`` (then the given params rule from now on: e.g. a tightened limit);
        ``pairs`` must equal the snapshot's always (positions are kept by column: another universe
        would put them on other pairs). ``instruments`` (ordermin, costmin, lot_decimals,
        pair_decimals, quote_decimals arrays; not state) are taken as given; without them, the
        snapshot's."""
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise SnapshotError("RiskMachine snapshot: expected bytes")
        blob = bytes(blob)
        if len(blob) < _HEADER.size:
            raise SnapshotError(f"RiskMachine snapshot truncated: {len(blob)} bytes, shorter than its header")
        magic, version, n, digest = _HEADER.unpack_from(blob)
        if magic != SNAPSHOT_MAGIC:
            raise SnapshotError("not a RiskMachine snapshot (bad magic)")
        if version not in (SNAPSHOT_VERSION, 5):
            raise SnapshotError(f"RiskMachine snapshot version {version}; this build reads version {SNAPSHOT_VERSION}")
        body = blob[_HEADER.size :]
        if len(body) != n:
            raise SnapshotError(f"RiskMachine snapshot truncated or padded: body {len(body)} bytes, header says {n}")
        if hashlib.sha256(body).digest() != digest:
            raise SnapshotError("RiskMachine snapshot digest mismatch: the bytes are corrupted")
        got, snap_pairs = _parse_body(body)
        ins = got.get("instruments")
        if ins is None or ins.dtype != _instrument_dt or ins.ndim != 1:
            raise SnapshotError("RiskMachine snapshot written by another build: record 'instruments' differs")
        sp = got.get("params")
        if sp is None or sp.dtype != params_dt or sp.shape != (1,):
            raise SnapshotError("RiskMachine snapshot written by another build: record 'params' differs")
        if pairs is not None and tuple(str(x) for x in pairs) != tuple(snap_pairs):
            raise SnapshotError(
                f"RiskMachine snapshot holds pairs {list(snap_pairs)}, the configuration {[str(x) for x in pairs]}: "
                "positions are kept by column, so the universe must not change across a restore"
            )
        use = sp
        if params is not None:
            if not isinstance(params, np.ndarray) or params.dtype != params_dt or params.shape != (1,):
                raise InputError("params must be a params_dt array of shape (1,)")
            diff = [f for f in params_dt.names or () if params[0][f].tobytes() != sp[0][f].tobytes()]
            if diff and not accept_param_change:
                raise SnapshotError(
                    "RiskMachine snapshot parameters differ from the configuration in "
                    + ", ".join(f"{f} ({sp[0][f].item()!r} -> {params[0][f].item()!r})" for f in diff)
                    + ": pass accept_param_change=True to restore under the new ones"
                )
            use = params
        rules = (ins["ordermin"], ins["costmin"], ins["lot_decimals"], ins["pair_decimals"], ins["quote_decimals"])
        if instruments is not None:
            rules = instruments
        if instruments is not None:
            self = cls(snap_pairs, use, rules)  # a bad argument: InputError
        else:
            try:
                self = cls(snap_pairs, use, rules)
            except InputError as e:
                raise SnapshotError(f"RiskMachine snapshot unreadable: {e}") from None
        if version == 5:  # the build before per-bar exits: migrate (a daemon holding positions restarts)
            got = _from_v5(got, use)
        for name, a in self._arrays().items():
            if name in ("params", "instruments"):
                continue
            b = got.get(name)
            if b is None or b.dtype != a.dtype or b.shape != a.shape:
                raise SnapshotError(f"RiskMachine snapshot written by another build: record {name!r} differs")
            a[...] = b
        if params is not None and accept_param_change:  # a pending entry never keeps a stop wider than the new
            new = float(use[0]["stop_atr_mult"])
            o = self.pending
            buy = (o["active"] == 1) & (o["side"] == 1)
            if new > 0.0:
                wider = buy & ~((o["stop_mult"] > 0.0) & (o["stop_mult"] <= new))
                o["stop_mult"][wider] = new
        self._check_invariants()
        return self

    def _check_invariants(self) -> None:
        st, pos, pend = self.state[0], self.positions, self.pending
        q = pos["qty"]
        bad = None
        if not (np.isfinite(q).all() and (q >= 0.0).all()):
            bad = "a position quantity is negative or not finite"
        elif int(st["n_positions"]) != int(np.count_nonzero(q)):
            bad = f"n_positions {int(st['n_positions'])} but {int(np.count_nonzero(q))} positions open"
        elif not np.isfinite([st["cash"], st["equity"], st["peak"]]).all():
            bad = "cash, equity or peak not finite"
        elif not np.isin(pend["active"], (0, 1)).all() or not np.isin(pend["fallback"], (0, 1)).all():
            bad = "an order's active or fallback flag is neither 0 nor 1"
        elif (pend["active"] == 1).any() and not (
            np.isin(pend["side"][pend["active"] == 1], (1, -1)).all()
            and (pend["qty"][pend["active"] == 1] >= 0.0).all()
        ):
            bad = "a pending order has no side or a negative quantity"
        elif int(self.machine[0]["awaiting"]) not in (0, 1):
            bad = "the awaiting flag is neither 0 nor 1"
        elif int(st["trading_state"]) not in range(5) or int(st["kill_reason"]) not in range(5):
            bad = "trading state or kill reason out of range"
        if bad is not None:
            raise SnapshotError(f"RiskMachine snapshot breaks the book's invariants: {bad}")


_instrument_dt = np.dtype(
    [
        ("ordermin", np.float64),
        ("costmin", np.float64),
        ("lot_decimals", np.int64),
        ("pair_decimals", np.int64),
        ("quote_decimals", np.int64),
    ]
)


def pack_snapshot(arrays: dict[str, np.ndarray], pairs, version: int = SNAPSHOT_VERSION) -> bytes:
    """Snapshot bytes of named record arrays (:meth:`RiskMachine.snapshot`'s format): header (magic,
    ``version``, body length, SHA-256 of the body), then a JSON table of the records and their bytes."""
    meta: dict[str, list] = {"pairs": [str(x) for x in pairs], "arrays": []}
    chunks = []
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        meta["arrays"].append([name, np.lib.format.dtype_to_descr(a.dtype), list(a.shape), a.nbytes])
        chunks.append(a.tobytes())
    mj = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    body = struct.pack("<I", len(mj)) + mj + b"".join(chunks)
    return _HEADER.pack(SNAPSHOT_MAGIC, int(version), len(body), hashlib.sha256(body).digest()) + body


def _from_v5(got: dict, params: np.ndarray) -> dict:
    """Records of a version-5 snapshot (no ``order_dt`` stop_mult/tp_mult, no ``exits``) in this
    build's layout: a pending order gets the [risk] multiples in force (what its fill read in that
    build), the bar's exits are NaN (none). Anything else unreadable stays unreadable."""
    out = dict(got)
    pend = got.get("pending")
    old = [n for n in order_dt.names or () if n not in ("stop_mult", "tp_mult")]
    if pend is not None and pend.dtype.names is not None and list(pend.dtype.names) == old:
        new = np.zeros(pend.shape, dtype=order_dt)
        for n in old:
            new[n] = pend[n]
        new["stop_mult"] = float(params[0]["stop_atr_mult"])
        new["tp_mult"] = float(params[0]["tp_atr_mult"])
        out["pending"] = new
    if "exits" not in out and pend is not None:
        out["exits"] = np.full(pend.shape, np.nan, dtype=bar_exit_dt)
    return out


def _parse_body(body: bytes):
    """(records by name, pairs) of a snapshot body whose digest checked; SnapshotError on anything
    another build or a hand-made blob could put there (no KeyError/ValueError escapes)."""
    try:
        (ml,) = struct.unpack_from("<I", body)
        if 4 + ml > len(body):
            raise SnapshotError("RiskMachine snapshot unreadable: header longer than the body")
        meta = json.loads(body[4 : 4 + ml])
        if not isinstance(meta, dict) or not isinstance(meta.get("arrays"), list):
            raise SnapshotError("RiskMachine snapshot unreadable: no record table")
        pairs = meta.get("pairs")
        if not isinstance(pairs, list) or not pairs or not all(isinstance(x, str) for x in pairs):
            raise SnapshotError("RiskMachine snapshot unreadable: pairs are not a list of names")
        pos = 4 + ml
        got = {}
        for entry in meta["arrays"]:
            if not isinstance(entry, list) or len(entry) != 4:
                raise SnapshotError("RiskMachine snapshot unreadable: malformed record entry")
            name, descr, shape, nbytes = entry
            if not isinstance(name, str) or name in got:
                raise SnapshotError(f"RiskMachine snapshot unreadable: record name {name!r} repeated or invalid")
            if not isinstance(shape, list) or not all(
                isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in shape
            ):
                raise SnapshotError(f"RiskMachine snapshot unreadable: record {name!r} has a bad shape")
            dt = np.lib.format.descr_to_dtype(_tuples(descr))
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if not isinstance(nbytes, int) or nbytes != count * dt.itemsize:
                raise SnapshotError(
                    f"RiskMachine snapshot unreadable: record {name!r} says {nbytes!r} bytes, "
                    f"its layout and shape make {count * dt.itemsize}"
                )
            if pos + nbytes > len(body):
                raise SnapshotError(f"RiskMachine snapshot unreadable: record {name!r} runs past the body")
            got[name] = np.frombuffer(body, dtype=dt, count=count, offset=pos).reshape(shape).copy()
            pos += nbytes
        if pos != len(body):
            raise SnapshotError(f"RiskMachine snapshot unreadable: {len(body) - pos} bytes after the records")
    except SnapshotError:
        raise
    except Exception as e:
        raise SnapshotError(f"RiskMachine snapshot unreadable: {type(e).__name__}: {e}") from None
    return got, pairs


def dt_name(dt) -> str:
    return {bar_dt: "bar_dt", prediction_dt: "prediction_dt"}.get(dt, str(dt))


def _tuples(descr):
    """A JSON-decoded dtype descr (lists) back to the tuples numpy expects."""
    if isinstance(descr, list):
        return [tuple(_tuples(x) if isinstance(x, list) else x for x in d) for d in descr]
    return descr
