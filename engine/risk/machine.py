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
2. ``fallback_orders_nb``: an order decided at an earlier close and still pending (not filled during
   the bar) falls back to market (exits always; entries unless the halt or the kill switch is
   latched: then cancelled), the rule of ``execute_close_nb``. Such orders are returned for sending
   and the close waits (``BarResult.complete`` False) until each is settled by :meth:`on_fill` or
   :meth:`on_cancel`; then :meth:`finish_bar` runs 3 and 4, so every decision sees a settled book,
   as in the backtester.
3. ``mark_nb``: mark to the close, equity, drawdown tiers, halt latch.
4. ``decide_nb``: exits, then entries, as pending orders (returned in ``BarResult.orders``).

Fills from the exchange go through :meth:`on_fill` (``apply_fill_nb``, the backtester's booking of a
fill: cash, fee, position, stop and take-profit, trade record). A live fill is booked as the
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
the problem (not a snapshot, other version, truncated, digest mismatch, other record layout).
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
    N_REASONS,
    bar_dt,
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
    apply_fill_nb,
    decide_nb,
    fallback_orders_nb,
    init_state_nb,
    kill_check_nb,
    mark_nb,
    step_bar_nb,
)
from engine.timeutil import HOUR

SNAPSHOT_MAGIC = b"KQRISKM\x00"
SNAPSHOT_VERSION = 1
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


# ---- kernels: compositions of engine.risk.nb phases on a one-row window (row 0, bar id = hour)


@njit(cache=True)
def _begin_close_nb(
    hour, state, positions, pending, o, h, lo, c, valid, atr, spread, api, op, p, events, cnt, refusals
):
    kill_check_nb(0, hour, state, positions, o, h, lo, c, valid, atr, spread, api, op, p, events, cnt)
    return fallback_orders_nb(hour, state, pending, events, cnt, refusals)


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
    api_fault, operator)."""
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
    )


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
        self.ordermin, self.costmin, self.lot_dec, self.price_dec = (
            np.ascontiguousarray(rules[0], dtype=np.float64),
            np.ascontiguousarray(rules[1], dtype=np.float64),
            np.ascontiguousarray(rules[2], dtype=np.int64),
            np.ascontiguousarray(rules[3], dtype=np.int64),
        )
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
        if op < 0 or op > 3:
            raise InputError(f"operator must be a combination of OP_RESET_KILL and OP_RESET_HALT, got {operator!r}")
        return hour, trd, op

    def _row(self, f):
        return np.ascontiguousarray(self.bar[f])[None, :]

    def on_bar(
        self,
        hour,
        bars,
        predictions,
        tradable=None,
        entry_block=False,
        api_fault=False,
        operator=0,
        *,
        simulate_fills: bool = False,
    ) -> BarResult:
        """The close of bar ``hour``: the orders and events decided at it (module docstring).

        ``bars``: ``bar_dt`` records (OHLCV, valid, ATR, spread estimate, cluster id) per pair;
        ``predictions``: ``prediction_dt`` (P(up), expected return); ``tradable``: universe members
        (None: all); ``entry_block``: entries decided now would execute in the entry-block window;
        ``api_fault``: the exchange API is unstable; ``operator``: OP_RESET_KILL | OP_RESET_HALT.
        ``simulate_fills``: fill the last close's orders in this bar by the backtester's fill model
        instead of waiting for :meth:`on_fill`."""
        hour, trd, op = self._check_bar(hour, bars, predictions, tradable, operator)
        self.bar[:] = bars
        self.pred[:] = predictions
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

    def _pending_for(self, pair):
        j = self.pairs.index(pair) if isinstance(pair, str) and pair in self.pairs else pair
        if isinstance(j, (bool, np.bool_)) or not isinstance(j, (int, np.integer)) or not 0 <= int(j) < self.n_pairs:
            raise InputError(f"unknown pair {pair!r}")
        j = int(j)
        if self.pending[j]["active"] == 0:
            raise InputError(f"no order pending for {self.pairs[j]}: a fill or cancel must match a decided order")
        return j

    def on_fill(self, pair, qty: float, price: float, how: int) -> np.ndarray:
        """Book the exchange's complete fill of the order pending for ``pair`` (name or index):
        ``qty`` base units at ``price`` (``how``: FillHow) through ``apply_fill_nb``; the order is
        then settled. Sells must close the whole position. Returns the trade record."""
        from engine.execution.nb import BUY

        j = self._pending_for(pair)
        o = self.pending[j]
        qty, price = float(qty), float(price)
        if not (qty > 0.0 and np.isfinite(qty) and price > 0.0 and np.isfinite(price)):
            raise InputError(f"fill of {self.pairs[j]}: quantity and price must be positive and finite")
        if o["side"] != BUY and qty != self.positions[j]["qty"]:
            raise InputError(
                f"fill of {self.pairs[j]}: a sell closes the whole position "
                f"({self.positions[j]['qty']!r}), got {qty!r} (report partial fills as one)"
            )
        if o["side"] == BUY and self.positions[j]["qty"] != 0.0:
            raise InputError(f"fill of {self.pairs[j]}: the position is already open")
        marks = np.full(self.n_pairs, np.nan)  # NaN: the others at their last close (apply_fill_nb)
        trades = np.zeros(1, dtype=trade_dt)
        self.cnt[C_TRADES] = 0
        # the bar the fill executes in: the bar after the last close, or that close's own bar for a
        # fallback order (as execute_open_nb / execute_close_nb record them)
        last = self.last_hour
        if last is None:
            raise InputError("no bar has been processed: nothing can have been ordered")
        apply_fill_nb(
            last if self.awaiting_fills else last + 1,
            j,
            int(o["side"]),
            qty,
            price,
            int(o["reason"]),
            int(how),
            float(o["atr"]),
            self.state,
            self.positions,
            marks,
            self.params[0],
            trades,
            self.cnt,
            self.acc,
        )
        self.pending[j]["active"] = 0
        return trades[: self.cnt[C_TRADES]].copy()

    def on_cancel(self, pair) -> None:
        """The exchange cancelled or rejected the order pending for ``pair``: it is dropped."""
        j = self._pending_for(pair)
        self.pending[j]["active"] = 0

    # ---- persistence

    def _arrays(self):
        ins = np.zeros(
            self.n_pairs,
            dtype=[
                ("ordermin", np.float64),
                ("costmin", np.float64),
                ("lot_decimals", np.int64),
                ("pair_decimals", np.int64),
            ],
        )
        ins["ordermin"], ins["costmin"], ins["lot_decimals"], ins["pair_decimals"] = (
            self.ordermin,
            self.costmin,
            self.lot_dec,
            self.price_dec,
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
            "tradable": self.tradable,
            "flags": self.flags,
        }

    def snapshot(self) -> bytes:
        """Everything the machine holds, as bytes (see :meth:`restore`)."""
        arrays = self._arrays()
        meta: dict[str, list] = {"pairs": list(self.pairs), "arrays": []}
        chunks = []
        for name, a in arrays.items():
            a = np.ascontiguousarray(a)
            meta["arrays"].append([name, np.lib.format.dtype_to_descr(a.dtype), list(a.shape), a.nbytes])
            chunks.append(a.tobytes())
        mj = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
        body = struct.pack("<I", len(mj)) + mj + b"".join(chunks)
        return _HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, len(body), hashlib.sha256(body).digest()) + body

    @classmethod
    def restore(cls, blob: bytes) -> RiskMachine:
        """A machine from :meth:`snapshot` bytes; :class:`SnapshotError` if they are not a complete,
        intact snapshot of this format version and record layout."""
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise SnapshotError("RiskMachine snapshot: expected bytes")
        blob = bytes(blob)
        if len(blob) < _HEADER.size:
            raise SnapshotError(f"RiskMachine snapshot truncated: {len(blob)} bytes, shorter than its header")
        magic, version, n, digest = _HEADER.unpack_from(blob)
        if magic != SNAPSHOT_MAGIC:
            raise SnapshotError("not a RiskMachine snapshot (bad magic)")
        if version != SNAPSHOT_VERSION:
            raise SnapshotError(f"RiskMachine snapshot version {version}; this build reads version {SNAPSHOT_VERSION}")
        body = blob[_HEADER.size :]
        if len(body) != n:
            raise SnapshotError(f"RiskMachine snapshot truncated or padded: body {len(body)} bytes, header says {n}")
        if hashlib.sha256(body).digest() != digest:
            raise SnapshotError("RiskMachine snapshot digest mismatch: the bytes are corrupted")
        try:
            (ml,) = struct.unpack_from("<I", body)
            meta = json.loads(body[4 : 4 + ml])
            pos = 4 + ml
            got = {}
            for name, descr, shape, nbytes in meta["arrays"]:
                dt = np.lib.format.descr_to_dtype(_tuples(descr))
                got[name] = np.frombuffer(body, dtype=dt, count=int(np.prod(shape)), offset=pos).reshape(shape).copy()
                pos += nbytes
            pairs = meta["pairs"]
        except (ValueError, KeyError, TypeError, struct.error) as e:
            raise SnapshotError(f"RiskMachine snapshot unreadable: {e}") from None
        ins = got.get("instruments")
        if ins is None or "params" not in got or got["params"].dtype != params_dt:
            raise SnapshotError("RiskMachine snapshot written by another build: the parameter record differs")
        self = cls(pairs, got["params"], (ins["ordermin"], ins["costmin"], ins["lot_decimals"], ins["pair_decimals"]))
        for name, a in self._arrays().items():
            if name in ("params", "instruments"):
                continue
            b = got.get(name)
            if b is None or b.dtype != a.dtype or b.shape != a.shape:
                raise SnapshotError(f"RiskMachine snapshot written by another build: record {name!r} differs")
            a[...] = b
        return self


def dt_name(dt) -> str:
    return {bar_dt: "bar_dt", prediction_dt: "prediction_dt"}.get(dt, str(dt))


def _tuples(descr):
    """A JSON-decoded dtype descr (lists) back to the tuples numpy expects."""
    if isinstance(descr, list):
        return [tuple(_tuples(x) if isinstance(x, list) else x for x in d) for d in descr]
    return descr
