"""The per-bar risk state machine (numba). Capital rules are enforced here and nowhere else.

One bar ``t`` of a portfolio, in this order (``step_nb``; docs/RISK_RULES.md and the "Fills"
section of docs/MODEL_ASSUMPTIONS.md state the rules in words):

1. ``execute_open_nb``  - orders decided at the close of bar t-1 execute in bar t: market orders at
   bar t's open (+ slippage; with precision on, on the pair's tick against the taker); limit-first
   orders fill at their limit if bar t trades through it. Sells before buys, then pairs in column
   order (the pairs with an order found as bits, ``side_bits_nb``: no branch per pair). Entries are
   clipped at the fill to the cash, the exposure cap and the cluster cap, rounded DOWN to
   lot_decimals and refused below ordermin/costmin. Every fee is ``fill_fee_nb`` (with
   precision on, rounded UP to the quote currency's decimals, as the exchange simulator books it).
2. ``kill_check_nb``    - operator resets, pause/resume/flatten bits, then the kill-switch triggers
   on bar t's data (API fault flag, missing/invalid bar of a pair already seen, spread anomaly,
   volatility spike). Latches.
3. ``execute_close_nb`` - limit orders bar t did not trade through fall back to market at bar t's
   close (+ slippage). Exits always; entries only if neither the halt nor the kill switch is latched.
4. ``mark_nb``          - mark to bar t's close, equity, peak, drawdown, drawdown tiers (halt latches).
5. ``decide_nb``        - exits (stop, take-profit, signal reversal, time; every position at an
   operator flatten, which decides no entry), then entries (threshold, data, universe, halt/kill,
   operator pause, entry-block window, edge, max positions, exposure cap, cluster cap, cash,
   precision, ordermin/costmin)
   -> pending orders for bar t+1, and an event with a reason code for every refusal.

Rows and bar ids: ``t`` is the row of the input arrays a phase reads; ``bar`` is the id a phase
records (trades, events, orders) and keeps in the state (``entry_bar``, ``kill_bar``, ``halt_bar``,
``bar``) for the time rules (time exit, timed resets), which compare ids. The backtester passes its
row as the id (its records index ``ts``; its rows are consecutive hours). The live-facing
:class:`engine.risk.machine.RiskMachine` passes the absolute hour (unix seconds // 3600) with a
one-row input window (``t`` = 0), so a restored machine continues exactly where it stopped. It
books exchange fills, whole or partial, with :func:`book_fill_nb` (through :func:`apply_fill_nb`,
with the exchange's fee), runs ``kill_check_nb``, ``fallback_orders_nb`` (orders still pending at
the close: cancel, market fallback of a limit, or reported as they are),
``mark_nb`` and ``decide_nb`` at each close, or ``step_bar_nb`` with the backtester's fill model.
State lives in numpy records (engine.risk.enums) so it persists and restores exactly.

Each rule lives in one small kernel taking only records and scalars (``kill_pair_nb``,
``mark_state_nb``, ``exit_reason_nb``, ``entry_static_gate_nb``/``entry_room_nb``/``entry_gate_nb``,
``entry_size_nb``, ``exit_order_nb``/``entry_order_nb``, ``kill_reset_due_nb``/``halt_reset_due_nb``, ``latch_kill_nb``,
``cap_base_nb``: the equity the caps and sizes scale with, capped by the capital ceiling).
The phases above and the backtester's fused bar loop (engine.backtest.nb.simulate_core_nb) both call
them, so a rule is written once; the fused loop exists because numba reference-counts every array
argument of every call (hundreds of ns per bar). For the same reason a fill (``apply_fill_nb``,
``execute_buy_nb``) is inlined into the phases: an out-of-line call also pushes seven words per
array argument; only the market price (scalars), refusals and trade records are called.
tests/test_backtest_speedpath.py checks the fused loop against a plain ``step_nb`` loop bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import trailing_zeros

from engine.execution.nb import (
    BUY,
    SELL,
    fee_nb,
    limit_touched_nb,
    market_fill_price_nb,
    neg_pow10_nb,
    pow10_nb,
    slippage_frac_nb,
    taker_tick_nb,
)
from engine.risk.enums import (
    BX_FLOOR,
    BX_SIZE,
    BX_STOP,
    BX_TP,
    EVENT,
    HOW,
    KILL,
    KIND,
    OP_FLATTEN,
    OP_PAUSE,
    OP_RESET_HALT,
    OP_RESET_KILL,
    OP_RESUME,
    REASON,
    SIZING_FIXED_FRACTION,
    SIZING_RISK,
    STATE,
    order_dt,
    position_dt,
    state_dt,
)

# cnt (int64 array) slots: records written / overflow flag / recording on / kill events.
C_TRADES, C_EVENTS, C_OVERFLOW, C_RECORD, C_KILLS, C_FILLS = 0, 1, 2, 3, 4, 5
N_CNT = 6
# acc (float64 array) slots: round-trip statistics.
A_GROSS_PROFIT, A_GROSS_LOSS, A_WINS, A_CLOSED = 0, 1, 2, 3
N_ACC = 4

_TINY = 1e-12


@njit(cache=True)
def round_down_nb(x: float, decimals: int) -> float:
    """Round a non-negative quantity DOWN to ``decimals`` places (never up: never more than
    affordable). A value already on the lot stays on it: ``x * 10**decimals`` within a near-tie of
    a whole number is that number, so re-rounding a rounded quantity (0.14574352 * 1e8 =
    14574351.999999998) never drops a lot. The rounding is the simulator's shared one,
    :func:`engine.execution.nb.taker_tick_nb`, whose SELL side rounds down (its BUY side up).
    A snap that would land above ``x`` (``x`` a near-tie below a lot, e.g. a cash or cap clip) is
    not taken: the result never exceeds ``x``."""
    q = taker_tick_nb(SELL, x, decimals)
    if q > x:
        s = pow10_nb(decimals)
        return np.floor(x * s) / s
    return q


@njit(cache=True)
def round_price_nb(x: float, decimals: int, up: bool) -> float:
    """A limit price on the tick (buy down, sell up), near-ties snapped as :func:`round_down_nb`."""
    return taker_tick_nb(BUY if up else SELL, x, decimals)


@njit(cache=True, inline="always")
def fill_fee_nb(notional: float, p, qdec: int) -> float:
    """The backtester's fee of one fill (``engine.execution.nb.fee_nb``): rounded UP to the quote
    currency's ``qdec`` decimals when ``p.enforce_precision`` is on (as the exchange books it),
    unrounded otherwise."""
    return fee_nb(notional, p.fee_rate, qdec if p.enforce_precision != 0 else -1)


@njit(cache=True, inline="always")
def fee_slack_nb(p, qdec: int) -> float:
    """What rounding may add to one fill's fee: one unit of the quote's last decimal when fees are
    rounded (``fill_fee_nb``), else 0. The clips at the fill reserve it."""
    return neg_pow10_nb(qdec) if (p.enforce_precision != 0 and qdec >= 0) else 0.0


@njit(cache=True)
def init_state_nb(state, positions, pending, init_cash: float) -> None:
    """Fresh portfolio: all cash, no positions, nothing pending, ACTIVE."""
    st = state[0]
    st.bar = -1
    st.cash = init_cash
    st.equity = init_cash
    st.exposure = 0.0
    st.peak = init_cash
    st.drawdown = 0.0
    st.tier = 0
    st.halted = 0
    st.halt_bar = -1
    st.kill_reason = 0
    st.kill_bar = -1
    st.trading_state = STATE.ACTIVE
    st.n_positions = 0
    st.fees_paid = 0.0
    st.traded_notional = 0.0
    st.paused = 0
    st.flatten = 0
    for j in range(positions.shape[0]):
        p = positions[j]
        p.qty = 0.0
        p.entry_price = np.nan
        p.entry_cost = 0.0
        p.entry_bar = -1
        p.stop = np.nan
        p.take_profit = np.nan
        p.mark = np.nan
        p.seen = 0
        p.spread_base = np.nan
        p.n_spread = 0
        p.atr_prev = np.nan
        p.prev_close = np.nan
        p.cluster = -1
        pending[j].active = 0


@njit(cache=True)
def emit_event_nb(events, cnt, bar: int, pair: int, code: int, reason: int, value: float) -> None:
    if cnt[C_RECORD] == 0:
        return
    k = cnt[C_EVENTS]
    if k < events.shape[0]:
        e = events[k]
        e.bar = bar
        e.pair = pair
        e.code = code
        e.reason = reason
        e.value = value
        cnt[C_EVENTS] = k + 1
    else:
        cnt[C_OVERFLOW] = 1


@njit(cache=True)
def refuse_nb(events, cnt, refusals, bar: int, pair: int, code: int, reason: int, value: float) -> None:
    refusals[reason] += 1
    emit_event_nb(events, cnt, bar, pair, code, reason, value)


@njit(cache=True, inline="always")
def effective_state_nb(st) -> int:
    if st.halted != 0:
        return STATE.HALTED
    if st.kill_reason != 0:
        return STATE.KILL_SWITCH
    return st.tier


@njit(cache=True, inline="always")
def caps_nb(st, p):
    """(exposure cap, max positions, risk multiplier) for the current drawdown tier."""
    cap = p.max_exposure
    maxpos = p.max_positions
    rmult = 1.0
    if st.tier >= 1:
        rmult = p.tier1_risk_mult
    if st.tier >= 2:
        cap = p.max_exposure * p.tier2_exposure_mult
        if p.tier2_max_positions < maxpos:
            maxpos = p.tier2_max_positions
    return cap, maxpos, rmult


@njit(cache=True, inline="always")
def cap_base_nb(eq: float, p) -> float:
    """The equity every equity-scaled cap and size reads (R3b): ``min(eq, p.capital_ceiling)``, the
    capital ceiling (quote currency; inf = off: ``eq`` itself, so results are unchanged). Used by
    ``entries_nb`` (the sizing base of ``entry_size_nb`` and the exposure and cluster rooms of
    ``entry_gate_nb``) and ``execute_buy_nb`` (the clips at the fill). A NaN ``eq`` stays NaN."""
    cc = p.capital_ceiling
    return cc if cc < eq else eq


@njit(cache=True, inline="always")
def book_cluster_nb(st, positions, marks, cluster_row, j: int):
    """(equity, exposure, cluster exposure) at ``marks`` (NaN marks fall back to each pair's last
    close) before pair ``j``'s fill: the cluster exposure sums the open positions of the other pairs
    whose current cluster id (``cluster_row``) is ``j``'s (``j``'s id < 0: a cluster of its own, 0).

    One pass over the pairs, without branches: a pair not counted adds +0.0, which leaves a sum
    started at +0.0 unchanged bit for bit (such a sum is never -0.0), so both sums are the
    column-order sums over the counted pairs alone."""
    c = cluster_row[j]
    own = c >= 0
    expo = 0.0
    ce = 0.0
    for i in range(positions.shape[0]):
        pos = positions[i]
        q = pos.qty
        mk = marks[i]
        last = pos.mark
        v = q * (mk if mk == mk else last)
        held = q != 0.0
        expo += v if held else 0.0
        ce += v if (held & own & (i != j) & (cluster_row[i] == c)) else 0.0
    return st.cash + expo, expo, ce


@njit(cache=True, inline="always")
def apply_fill_nb(
    bar: int,
    j: int,
    side: int,
    qty: float,
    price: float,
    fee: float,
    reason: int,
    how: int,
    atr: float,
    smult: float,
    tmult: float,
    dust: float,
    state,
    positions,
    marks,
    p,
    trades,
    cnt,
    acc,
) -> None:
    """Book one fill: cash, position, ``fee`` (the backtester passes ``fill_fee_nb``; the live machine
    the exchange's), stops, trade record. A buy sets the stop ``smult`` and the take-profit ``tmult``
    ATRs (``atr``) from the entry price (0: none): the order's own multiples (``order_dt``
    ``stop_mult``/``tp_mult``, set when it was decided).

    Fills book cumulatively (the live machine's partial fills; the backtester fills every order
    whole, so only the first branch of each side runs there): a buy into an open position adds to
    it at the quantity-weighted entry price (stops re-set from it); a sell of less than the position
    reduces ``qty`` and ``entry_cost`` pro rata and books that part's P&L (``realized`` carries it to
    the round-trip statistics), unless the remainder is below ``dust`` (the pair's ordermin: it
    cannot be sold) - then the position closes and its remaining cost is in this trade's P&L. A sell
    with no position on the book (an external fill, booked to match the exchange) only adds its
    proceeds to cash.

    Inlined (a fill passes no arrays to a call): the trade record, with records on, is written out of
    line (``record_fill_nb``)."""
    st = state[0]
    pos = positions[j]
    notional = qty * price
    pnl = 0.0
    if side == BUY:
        st.cash -= notional + fee
        if pos.qty == 0.0:
            pos.qty = qty
            pos.entry_price = price
            pos.entry_cost = notional + fee
            pos.entry_bar = bar
            pos.realized = 0.0
            st.n_positions += 1
        else:
            q = pos.qty + qty
            pos.entry_price = (pos.entry_price * pos.qty + notional) / q
            pos.qty = q
            pos.entry_cost += notional + fee
        ep = pos.entry_price
        pos.stop = ep - smult * atr if smult > 0.0 else np.nan
        pos.take_profit = ep + tmult * atr if tmult > 0.0 else np.nan
    elif pos.qty <= 0.0:
        pnl = notional - fee
        st.cash += pnl
    elif qty >= pos.qty or pos.qty - qty < dust:
        proceeds = notional - fee
        st.cash += proceeds
        pnl = proceeds - pos.entry_cost
        total = pnl + pos.realized
        pos.qty = 0.0
        pos.entry_price = np.nan
        pos.entry_cost = 0.0
        pos.entry_bar = -1
        pos.stop = np.nan
        pos.take_profit = np.nan
        pos.realized = 0.0
        st.n_positions -= 1
        acc[A_CLOSED] += 1.0
        if total > 0.0:
            acc[A_WINS] += 1.0
            acc[A_GROSS_PROFIT] += total
        else:
            acc[A_GROSS_LOSS] -= total
    else:
        proceeds = notional - fee
        st.cash += proceeds
        part = pos.entry_cost * (qty / pos.qty)
        pnl = proceeds - part
        pos.qty -= qty
        pos.entry_cost -= part
        pos.realized += pnl
    st.fees_paid += fee
    st.traded_notional += notional
    cnt[C_FILLS] += 1
    if cnt[C_RECORD] != 0:
        record_fill_nb(bar, j, side, qty, price, notional, fee, reason, how, pnl, state, positions, marks, trades, cnt)


@njit(cache=True)
def record_fill_nb(
    bar: int,
    j: int,
    side: int,
    qty: float,
    price: float,
    notional: float,
    fee: float,
    reason: int,
    how: int,
    pnl: float,
    state,
    positions,
    marks,
    trades,
    cnt,
) -> None:
    """The trade record of a fill ``apply_fill_nb`` booked (records on; full: the overflow flag)."""
    st = state[0]
    k = cnt[C_TRADES]
    if k >= trades.shape[0]:
        cnt[C_OVERFLOW] = 1
        return
    # equity/exposure after the fill: the new position at its fill price, others at the phase marks
    expo = 0.0
    for i in range(positions.shape[0]):
        q = positions[i].qty
        if q != 0.0:
            if i == j:
                expo += q * price
            else:
                mk = marks[i]
                if not (mk == mk):  # noqa: SIM201 NaN test kept verbatim in the kernel
                    mk = positions[i].mark
                expo += q * mk
    eq = st.cash + expo
    r = trades[k]
    r.bar = bar
    r.pair = j
    r.side = side
    r.qty = qty
    r.price = price
    r.notional = notional
    r.fee = fee
    r.reason = reason
    r.how = how
    r.cash_after = st.cash
    r.equity_after = eq
    r.exposure_after = expo / eq if eq > 0.0 else np.inf
    r.pnl = pnl
    cnt[C_TRADES] = k + 1


@njit(cache=True, inline="always")
def execute_buy_nb(
    bar: int,
    j: int,
    o,
    price: float,
    how: int,
    state,
    positions,
    marks,
    cluster_row,
    om: float,
    cm: float,
    lot: int,
    qdec: int,
    p,
    trades,
    events,
    cnt,
    acc,
    refusals,
) -> None:
    """Fill an entry at ``price``, clipped to cash and the (tier) exposure and cluster caps at the fill.
    With precision on, the fee is rounded up to the quote's decimals (``fill_fee_nb``); each clip
    reserves the most that rounding adds (``fee_slack_nb``), so no rounded fee breaks a cap.
    ``om``, ``cm``, ``lot``, ``qdec``: pair ``j``'s ordermin, costmin, lot and quote decimals.
    Inlined, as ``apply_fill_nb``: a fill calls out of line only for what takes no array (the market
    price) or is rare (a refusal, a trade record); each array argument of a call costs seven words."""
    st = state[0]
    f = p.fee_rate
    u = fee_slack_nb(p, qdec)
    if p.sizing == SIZING_FIXED_FRACTION:
        qty = (o.frac * st.cash) / (1.0 + f) / price
    else:
        qty = o.qty
    bind = 0
    # cash: qty * price * (1 + fee) + u <= cash
    qmax = (st.cash - u) / (price * (1.0 + f)) * (1.0 - _TINY)
    if qty > qmax:
        qty = qmax
        bind = REASON.REFUSE_CASH
    eq0, expo0, ce = book_cluster_nb(st, positions, marks, cluster_row, j)
    cap, maxpos, rmult = caps_nb(st, p)
    # the capital ceiling (R3b): below the equity, the caps are fractions of it, not of the equity
    base = cap_base_nb(eq0, p)
    ceil = base < eq0
    # exposure after <= cap * min(equity after, ceiling), the new position valued at its fill price
    room = cap * (eq0 - u) - expo0
    qmax = room / (price * (1.0 + cap * f)) * (1.0 - _TINY)
    if ceil:
        q2 = (cap * base - expo0) / price * (1.0 - _TINY)
        if q2 < qmax:
            qmax = q2
    if qty > qmax:
        qty = qmax
        bind = REASON.REFUSE_EXPOSURE
    # the cluster cap (a pair of no cluster: ce = 0, x - 0.0 is x bit for bit)
    mce = p.max_cluster_exposure
    room = mce * (eq0 - u) - ce
    qmax = room / (price * (1.0 + mce * f)) * (1.0 - _TINY)
    if ceil:
        q2 = (mce * base - ce) / price * (1.0 - _TINY)
        if q2 < qmax:
            qmax = q2
    if qty > qmax:
        qty = qmax
        bind = REASON.REFUSE_CLUSTER
    if p.enforce_precision != 0:
        if qty > 0.0:
            qty = round_down_nb(qty, lot)
        if qty < om or qty <= 0.0:
            refuse_nb(events, cnt, refusals, bar, j, EVENT.CANCEL, bind if bind != 0 else REASON.REFUSE_ORDERMIN, qty)
            return
        if qty * price < cm:
            refuse_nb(
                events, cnt, refusals, bar, j, EVENT.CANCEL, bind if bind != 0 else REASON.REFUSE_COSTMIN, qty * price
            )
            return
    elif not (qty > 0.0):
        refuse_nb(events, cnt, refusals, bar, j, EVENT.CANCEL, bind if bind != 0 else REASON.REFUSE_ORDERMIN, qty)
        return
    apply_fill_nb(
        bar,
        j,
        BUY,
        qty,
        price,
        fill_fee_nb(qty * price, p, qdec),
        o.reason,
        how,
        o.atr,
        o.stop_mult,
        o.tp_mult,
        0.0,
        state,
        positions,
        marks,
        p,
        trades,
        cnt,
        acc,
    )


@njit(cache=True, inline="always")
def side_bits_nb(pending, c0: int):
    """(sells, buys): the pairs ``c0`` to ``c0 + 63`` with an active sell, buy order, as bits (bit b:
    pair ``c0 + b``), read without a branch per pair: the phases then visit only those, in column
    order (``lowest_bit_nb``), instead of testing every pair (a mispredicted branch per order)."""
    one = np.uint64(1)
    sells = np.uint64(0)
    buys = np.uint64(0)
    hi = min(c0 + 64, pending.shape[0])
    for k in range(hi - c0):  # from the last pair down, shifting: a recurrence the compiler keeps
        o = pending[np.uint64(hi - 1 - k)]  # scalar (vectorised, it gathered 4 orders at a time: slower)
        a = o.active != 0
        sells = (sells << one) | np.uint64(a & (o.side == SELL))
        buys = (buys << one) | np.uint64(a & (o.side == BUY))
    return sells, buys


@njit(cache=True, inline="always")
def lowest_bit_nb(bits):
    """The index (int64) of the lowest set bit of a nonzero ``bits`` (uint64)."""
    return np.int64(trailing_zeros(bits))  # type: ignore[call-arg]  # a numba intrinsic: typed in njit


@njit(cache=True)
def _market_price_nb(o, ref: float, qv: float, p, pdec: int) -> float:
    """A market order's fill price: ``ref`` moved against the taker by the slippage model (``qv``: the
    bar's quote volume, volume * close), on the pair's tick (``pdec`` price decimals) against the
    taker when ``p.enforce_precision`` is on."""
    vol_frac = o.atr / o.ref_price if (o.atr == o.atr and o.ref_price > 0.0) else np.nan
    spread = o.spread if p.spread_slip != 0 else 0.0
    slip = slippage_frac_nb(spread, vol_frac, o.qty * ref, qv, p.impact_coef, p.min_slip)
    px = market_fill_price_nb(o.side, ref, slip)
    if p.enforce_precision != 0:
        return taker_tick_nb(o.side, px, pdec)
    return px


@njit(cache=True, inline="always")
def _set_marks_nb(t: int, marks, row, valid) -> None:
    """The phase's marks: ``row[t]`` (open or close) where bar t is valid, else NaN (the pair's last
    close then stands in: ``book_cluster_nb``, ``apply_fill_nb``)."""
    for j in range(marks.shape[0]):
        marks[j] = row[t, j] if valid[t, j] else np.nan


@njit(cache=True, inline="always")
def _fill_order_nb(
    bar: int,
    j: int,
    o,
    price: float,
    how: int,
    state,
    positions,
    marks,
    cluster_row,
    ordermin,
    costmin,
    lot_dec,
    quote_dec,
    p,
    trades,
    events,
    cnt,
    acc,
    refusals,
) -> None:
    """Order ``o`` of pair ``j`` (already made inactive) fills at ``price``: an exit sells the whole
    position (none held: nothing), an entry goes through ``execute_buy_nb``'s clips."""
    if o.side == SELL:
        q = positions[j].qty
        if q > 0.0:
            apply_fill_nb(
                bar,
                j,
                SELL,
                q,
                price,
                fill_fee_nb(q * price, p, quote_dec[j]),
                o.reason,
                how,
                o.atr,
                o.stop_mult,
                o.tp_mult,
                0.0,
                state,
                positions,
                marks,
                p,
                trades,
                cnt,
                acc,
            )
    else:
        execute_buy_nb(
            bar,
            j,
            o,
            price,
            how,
            state,
            positions,
            marks,
            cluster_row,
            ordermin[j],
            costmin[j],
            lot_dec[j],
            quote_dec[j],
            p,
            trades,
            events,
            cnt,
            acc,
            refusals,
        )


@njit(cache=True, inline="always")
def _open_order_nb(
    t: int,
    bar: int,
    j: int,
    o,
    state,
    positions,
    open_,
    high,
    low,
    close,
    volume,
    valid,
    cluster,
    ordermin,
    costmin,
    lot_dec,
    price_dec,
    quote_dec,
    p,
    trades,
    events,
    cnt,
    acc,
    refusals,
    marks,
    marked: bool,
):
    """Phase 1 for one active order ``o`` of pair ``j``: cancelled without a valid bar, filled at the
    open (market) or at its limit (traded through), else left for the close. The marks are set
    (``_set_marks_nb``) before the first fill that reads them (an entry's clips; with records, every
    fill's row). Returns (still pending, marks set)."""
    if not valid[t, j]:
        o.active = 0
        refuse_nb(events, cnt, refusals, bar, j, EVENT.CANCEL, REASON.REFUSE_NO_BAR, o.qty)
        return False, marked
    if o.kind == KIND.MARKET:
        price = _market_price_nb(o, open_[t, j], volume[t, j] * close[t, j], p, price_dec[j])
        how = HOW.MARKET_OPEN
    elif limit_touched_nb(o.side, o.limit_price, low[t, j], high[t, j]):
        price = o.limit_price
        how = HOW.LIMIT
    else:
        return True, marked  # waits for the close fallback
    o.active = 0
    if not marked and (o.side != SELL or cnt[C_RECORD] != 0):
        _set_marks_nb(t, marks, open_, valid)
        marked = True
    _fill_order_nb(
        bar,
        j,
        o,
        price,
        how,
        state,
        positions,
        marks,
        cluster[t],
        ordermin,
        costmin,
        lot_dec,
        quote_dec,
        p,
        trades,
        events,
        cnt,
        acc,
        refusals,
    )
    return False, marked


@njit(cache=True, inline="always")
def execute_open_nb(
    t: int,
    bar: int,
    state,
    positions,
    pending,
    open_,
    high,
    low,
    close,
    volume,
    valid,
    cluster,
    ordermin,
    costmin,
    lot_dec,
    price_dec,
    quote_dec,
    p,
    trades,
    events,
    cnt,
    acc,
    refusals,
    marks,
) -> int:
    """Phase 1 of bar t: market orders at the open, limit orders bar t trades through at their limit;
    sells first, then buys, each in column order (each side's pairs found as bits, ``side_bits_nb``,
    64 pairs at a time). ``marks`` is scratch: the open marks, set only when a fill reads them.
    Returns the number of orders left for the close fallback (0: it has nothing to do)."""
    m = pending.shape[0]
    left = 0
    marked = False
    sells = buys = np.uint64(0)
    for side_pass in range(2):  # sells first, then buys
        for c0 in range(0, m, 64):
            if side_pass == 0 or m > 64:  # one word: the buys' bits hold through the sells
                sells, buys = side_bits_nb(pending, c0)
            bits = sells if side_pass == 0 else buys
            while bits != 0:
                j = c0 + lowest_bit_nb(bits)
                bits &= bits - np.uint64(1)
                wait, marked = _open_order_nb(
                    t,
                    bar,
                    j,
                    pending[j],
                    state,
                    positions,
                    open_,
                    high,
                    low,
                    close,
                    volume,
                    valid,
                    cluster,
                    ordermin,
                    costmin,
                    lot_dec,
                    price_dec,
                    quote_dec,
                    p,
                    trades,
                    events,
                    cnt,
                    acc,
                    refusals,
                    marks,
                    marked,
                )
                left += wait
    return left


@njit(cache=True, inline="always")
def fallback_refusal_nb(st) -> int:
    """Why an ENTRY still pending at its execution bar's close may not fall back to market (R6, R21,
    R22a): cancelled while the halt, the kill switch or the operator pause is latched; 0: it may.
    Exits always fall back (R16)."""
    if st.halted != 0:
        return REASON.REFUSE_HALTED
    if st.kill_reason != 0:
        return REASON.REFUSE_KILL_SWITCH
    if st.paused != 0:
        return REASON.REFUSE_PAUSED
    return 0


@njit(cache=True)
def fallback_orders_nb(t: int, bar: int, state, pending, valid, events, cnt, refusals) -> int:
    """The live form of phase 3 (the machine's close when fills come from an exchange): every order
    still pending at this close is resolved by the rule of ``execute_close_nb`` without being filled
    here: cancelled if the bar of its pair is missing or invalid (REFUSE_NO_BAR, the rule of
    ``execute_open_nb``) or if ``fallback_refusal_nb`` refuses it (event CANCEL); otherwise a limit
    becomes a market order to send now (``fallback`` 1, event ORDER), and an order already at market
    (sent as such, or re-issued at an earlier close) stays pending as it is: it is reported, never
    re-issued. The executor owns the limit -> market fallback within the hour (live_bridge/
    execution.py); this one only reaches orders the executor has not settled by the close. Returns
    the number of orders left pending."""
    st = state[0]
    n = 0
    for j in range(pending.shape[0]):
        o = pending[j]
        if o.active == 0:
            continue
        if not valid[t, j]:
            o.active = 0
            refuse_nb(events, cnt, refusals, bar, j, EVENT.CANCEL, REASON.REFUSE_NO_BAR, o.qty)
            continue
        r = fallback_refusal_nb(st) if o.side == BUY else 0
        if r != 0:
            o.active = 0
            refuse_nb(events, cnt, refusals, bar, j, EVENT.CANCEL, r, o.qty)
            continue
        if o.kind != KIND.MARKET:
            o.kind = KIND.MARKET
            o.limit_price = np.nan
            o.fallback = 1
            emit_event_nb(events, cnt, bar, j, EVENT.ORDER, o.reason, o.qty)
        n += 1
    return n


@njit(cache=True)
def book_fill_nb(
    bar: int,
    j: int,
    side: int,
    qty: float,
    price: float,
    fee: float,
    how: int,
    state,
    positions,
    pending,
    marks,
    ordermin,
    p,
    trades,
    events,
    cnt,
    acc,
) -> int:
    """Book one exchange fill (whole or partial) of pair ``j`` against its pending order (the live
    machine's fill booking; ``apply_fill_nb`` does the position and cash).

    The pending order of the same side, if any, is charged with it: ``filled`` grows, ``qty`` (what
    is left to fill) shrinks, and the order stays active for the remainder (a fallback sends only
    that); it is settled when the remainder is below the pair's ``ordermin`` (it cannot be sent:
    a CANCEL event with REFUSE_ORDERMIN names a non-zero remainder). A sell whose remaining
    position is below ``ordermin`` closes the position (event DUST, value = the quantity written
    off). Without a matching order (an external fill: the caller latches the kill switch) the
    order's reason and ATR are NONE and NaN (no stop for a buy). Returns 1 if an order of this side
    is still pending after the fill, else 0."""
    o = pending[j]
    match = o.active != 0 and o.side == side
    reason = o.reason if match else REASON.NONE
    atr = o.atr if match else np.nan
    smult = o.stop_mult if match else p.stop_atr_mult
    tmult = o.tp_mult if match else p.tp_atr_mult
    om = ordermin[j]
    left_before = positions[j].qty
    dust = max(om, 1e-9 * left_before)  # below ordermin (or a float residue): cannot be sold
    apply_fill_nb(
        bar,
        j,
        side,
        qty,
        price,
        fee,
        reason,
        how,
        atr,
        smult,
        tmult,
        dust,
        state,
        positions,
        marks,
        p,
        trades,
        cnt,
        acc,
    )
    if side == SELL and left_before > qty and positions[j].qty == 0.0:
        emit_event_nb(events, cnt, bar, j, EVENT.DUST, REASON.DUST, left_before - qty)
    if not match:
        return 0
    o.filled += qty
    rem = o.qty - qty
    if rem < 0.0:
        rem = 0.0
    o.qty = rem
    if side == SELL and positions[j].qty == 0.0:
        o.active = 0
        return 0
    if rem < om or rem <= 1e-9 * o.filled:
        o.active = 0
        if rem > 0.0:
            emit_event_nb(events, cnt, bar, j, EVENT.CANCEL, REASON.REFUSE_ORDERMIN, rem)
        return 0
    return 1


@njit(cache=True)
def latch_external_kill_nb(state, bar: int, trig: int, pair: int, value: float, events, cnt) -> None:
    """Latch the kill switch on ``trig`` from outside the bar's data (the live machine booking a fill
    it did not order: over-fill, fill without a pending order); event KILL as ``kill_check_nb``."""
    st = state[0]
    if latch_kill_nb(st, bar, trig):
        cnt[C_KILLS] += 1
        emit_event_nb(events, cnt, bar, pair, EVENT.KILL, REASON.KILL_API + trig - 1, value)
    st.trading_state = effective_state_nb(st)


@njit(cache=True, inline="always")
def _close_order_nb(
    t: int,
    bar: int,
    j: int,
    o,
    state,
    positions,
    close,
    volume,
    valid,
    cluster,
    ordermin,
    costmin,
    lot_dec,
    price_dec,
    quote_dec,
    p,
    trades,
    events,
    cnt,
    acc,
    refusals,
    marks,
    marked: bool,
) -> bool:
    """Phase 3 for one order ``o`` of pair ``j`` still pending at the close: an entry is cancelled if
    ``fallback_refusal_nb`` refuses it, otherwise it fills at market at the close. The marks are set
    before the first fill that reads them, as in phase 1. Returns whether the marks are set."""
    o.active = 0
    if o.side == BUY:
        r = fallback_refusal_nb(state[0])
        if r != 0:
            refuse_nb(events, cnt, refusals, bar, j, EVENT.CANCEL, r, o.qty)
            return marked
    price = _market_price_nb(o, close[t, j], volume[t, j] * close[t, j], p, price_dec[j])
    if not marked and (o.side != SELL or cnt[C_RECORD] != 0):
        _set_marks_nb(t, marks, close, valid)
        marked = True
    _fill_order_nb(
        bar,
        j,
        o,
        price,
        HOW.MARKET_CLOSE,
        state,
        positions,
        marks,
        cluster[t],
        ordermin,
        costmin,
        lot_dec,
        quote_dec,
        p,
        trades,
        events,
        cnt,
        acc,
        refusals,
    )
    return marked


@njit(cache=True, inline="always")
def execute_close_nb(
    t: int,
    bar: int,
    state,
    positions,
    pending,
    close,
    volume,
    valid,
    cluster,
    ordermin,
    costmin,
    lot_dec,
    price_dec,
    quote_dec,
    p,
    trades,
    events,
    cnt,
    acc,
    refusals,
    marks,
) -> None:
    """Phase 3 of bar t: unfilled limit orders fall back to market at bar t's close; sells first, then
    buys, each in column order (found as in ``execute_open_nb``). ``marks`` is scratch: the close
    marks, set only when a fill reads them."""
    m = pending.shape[0]
    marked = False
    sells = buys = np.uint64(0)
    for side_pass in range(2):  # sells first, then buys
        for c0 in range(0, m, 64):
            if side_pass == 0 or m > 64:  # one word: the buys' bits hold through the sells
                sells, buys = side_bits_nb(pending, c0)
            bits = sells if side_pass == 0 else buys
            while bits != 0:
                j = c0 + lowest_bit_nb(bits)
                bits &= bits - np.uint64(1)
                marked = _close_order_nb(
                    t,
                    bar,
                    j,
                    pending[j],
                    state,
                    positions,
                    close,
                    volume,
                    valid,
                    cluster,
                    ordermin,
                    costmin,
                    lot_dec,
                    price_dec,
                    quote_dec,
                    p,
                    trades,
                    events,
                    cnt,
                    acc,
                    refusals,
                    marks,
                    marked,
                )


@njit(cache=True)
def reset_kill_nb(state, bar: int, events, cnt) -> None:
    """Manual reactivation: clear the kill-switch latch (a persisting trigger re-latches at once)."""
    st = state[0]
    if st.kill_reason != 0:
        emit_event_nb(events, cnt, bar, -1, EVENT.RESET, REASON.RESET_KILL, float(st.kill_reason))
        st.kill_reason = 0
        st.kill_bar = -1
        st.trading_state = effective_state_nb(st)


@njit(cache=True)
def reset_halt_nb(state, bar: int, events, cnt) -> None:
    """Manual reset of the drawdown halt: the peak restarts at the current equity."""
    st = state[0]
    if st.halted != 0:
        emit_event_nb(events, cnt, bar, -1, EVENT.RESET, REASON.RESET_HALT, st.drawdown)
        st.halted = 0
        st.halt_bar = -1
        st.peak = st.equity
        st.drawdown = 0.0
        st.tier = 0
        st.trading_state = effective_state_nb(st)


@njit(cache=True, inline="always")
def kill_reset_due_nb(st, op: int, bar: int, p) -> bool:
    """Operator reactivation of the kill switch at bar t (or the emulated one after kill_reset_bars)."""
    if (op & OP_RESET_KILL) != 0:
        return True
    return st.kill_reason != 0 and p.kill_reset_bars > 0 and bar - st.kill_bar >= p.kill_reset_bars


@njit(cache=True, inline="always")
def halt_reset_due_nb(st, op: int, bar: int, p) -> bool:
    """Operator reset of the drawdown halt at bar t (or the emulated one after halt_reset_bars)."""
    if (op & OP_RESET_HALT) != 0:
        return True
    return st.halted != 0 and p.halt_reset_bars > 0 and bar - st.halt_bar >= p.halt_reset_bars


@njit(cache=True, inline="always")
def operator_due_nb(st, op: int, bar: int, p) -> bool:
    """Anything for the operator phase at bar t: a reset due (kill switch, halt; operator or timed),
    or a pause, resume or flatten bit (the backtester's quiet-bar paths stop there)."""
    if (op & (OP_PAUSE | OP_RESUME | OP_FLATTEN)) != 0:
        return True
    return kill_reset_due_nb(st, op, bar, p) or halt_reset_due_nb(st, op, bar, p)


@njit(cache=True)
def operator_flags_nb(state, op: int, bar: int, events, cnt) -> None:
    """The operator's pause, resume and flatten bits at bar t (after the resets): OP_PAUSE latches the
    pause (event PAUSE), OP_RESUME lifts it (event RESUME; both bits: resume wins), OP_FLATTEN marks
    the close for decide_nb (every open position exits at market, no entry is decided)."""
    st = state[0]
    if (op & OP_PAUSE) != 0 and (op & OP_RESUME) == 0 and st.paused == 0:
        st.paused = 1
        emit_event_nb(events, cnt, bar, -1, EVENT.PAUSE, REASON.OPERATOR_PAUSE, 0.0)
    if (op & OP_RESUME) != 0 and st.paused != 0:
        st.paused = 0
        emit_event_nb(events, cnt, bar, -1, EVENT.RESUME, REASON.OPERATOR_RESUME, 0.0)
    if (op & OP_FLATTEN) != 0:
        st.flatten = 1


@njit(cache=True, inline="always")
def kill_pair_scalar_nb(
    seen: int,
    sbase: float,
    nspread: int,
    aprev: float,
    pclose: float,
    vld: bool,
    o: float,
    h: float,
    lo: float,
    c: float,
    s: float,
    a: float,
    trig: int,
    p,
):
    """Kill-switch checks of one pair's bar and its baseline updates, on the baselines as scalars
    (seen, spread EWMA, spread observations, previous ATR, previous close).

    ``trig`` is the trigger already found this bar (0: none); returns (new trigger of this pair or 0,
    its value, and the updated baselines). A bar never hides its own anomaly: baselines update after
    the checks. :func:`kill_pair_nb` is the same rule on a position record."""
    # positive, finite (NaN fails every comparison) and consistent
    ok = vld & (0.0 < lo) & (lo <= h) & (h < np.inf) & (0.0 < o) & (o < np.inf) & (0.0 < c) & (c < np.inf)  # noqa: SIM300 interval form
    new = 0
    val = 0.0
    if not ok:
        if (seen != 0 or vld) and trig == 0:
            new = KILL.DATA_INTEGRITY
        return new, val, seen, sbase, nspread, aprev, pclose
    # the checks are evaluated without short-circuit branches (NaN compares false, as the guards
    # require), then one rarely-taken branch
    spike = (s > p.spread_max) | (
        (p.spread_anomaly_mult > 0.0) & (nspread >= p.spread_min_obs) & (s > p.spread_anomaly_mult * sbase)
    )
    if trig == 0 and spike:
        new = KILL.SPREAD_ANOMALY
        val = s
    # true range against the previous close (a NaN previous close compares false: the bar alone);
    # written as selects so the compiler emits min/max, not a data-dependent branch
    hi2 = pclose if pclose > h else h
    lo2 = pclose if pclose < lo else lo
    tr = hi2 - lo2
    vsm = p.vol_spike_mult
    if trig == 0 and new == 0 and ((vsm > 0.0) & (aprev > 0.0) & (tr > vsm * aprev)):
        new = KILL.VOLATILITY_SPIKE
        val = tr / aprev
    # baselines (after the checks: a bar never hides its own anomaly)
    if s == s and s >= 0.0:
        if nspread == 0:
            sbase = s
        else:
            sbase = sbase + p.spread_alpha * (s - sbase)
        nspread += 1
    if a == a:
        aprev = a
    return new, val, 1, sbase, nspread, aprev, c


@njit(cache=True, inline="always")
def kill_pair_nb(pos, vld: bool, o: float, h: float, lo: float, c: float, s: float, a: float, trig: int, p):
    """Kill-switch checks of one pair's bar (:func:`kill_pair_scalar_nb`) on its position record's
    baselines; returns (new trigger of this pair or 0, its value)."""
    new, val, seen, sbase, nspread, aprev, pclose = kill_pair_scalar_nb(
        pos.seen, pos.spread_base, pos.n_spread, pos.atr_prev, pos.prev_close, vld, o, h, lo, c, s, a, trig, p
    )
    pos.seen = seen
    pos.spread_base = sbase
    pos.n_spread = nspread
    pos.atr_prev = aprev
    pos.prev_close = pclose
    return new, val


@njit(cache=True)
def kill_triggers_nb(open_, high, low, close, valid, atr, spread, p, code, pair, val) -> None:
    """The kill-switch trigger of every bar from the data alone: ``code[t]``/``pair[t]``/``val[t]`` =
    the first pair (in column order) whose bar t trips a data, spread or volatility trigger.

    The triggers and their baselines (spread EWMA, previous ATR and close, pair seen) depend only on
    the bars and the parameters, never on the portfolio, so a backtest computes them in one pass per
    pair, once for all the parameter sets of a sweep that share the kill-switch parameters (see
    ``same_kill_params_nb``); with the API fault flag (checked first) this is exactly what
    kill_check_nb finds bar by bar (tests/test_backtest_speedpath.py checks it bit for bit)."""
    n, m = close.shape
    # bar-major (the arrays are row-major): the baselines of each pair in small arrays that stay in L1
    seen = np.zeros(m, dtype=np.int64)
    sbase = np.full(m, np.nan)
    nspread = np.zeros(m, dtype=np.int64)
    aprev = np.full(m, np.nan)
    pclose = np.full(m, np.nan)
    for t in range(n):
        ct = 0
        pt = -1
        vt = 0.0
        for j in range(m):
            nt, v, seen[j], sbase[j], nspread[j], aprev[j], pclose[j] = kill_pair_scalar_nb(
                seen[j],
                sbase[j],
                nspread[j],
                aprev[j],
                pclose[j],
                valid[t, j],
                open_[t, j],
                high[t, j],
                low[t, j],
                close[t, j],
                spread[t, j],
                atr[t, j],
                ct,
                p,
            )
            if nt != 0:
                ct = nt
                pt = j
                vt = v
        code[t] = ct
        pair[t] = pt
        val[t] = vt


@njit(cache=True)
def same_kill_params_nb(params) -> bool:
    """True if every parameter set has the same kill-switch trigger parameters (so one
    ``kill_triggers_nb`` pass serves them all)."""
    a = params[0]
    for s in range(1, params.shape[0]):
        b = params[s]
        if not (
            b.spread_max == a.spread_max
            and b.spread_anomaly_mult == a.spread_anomaly_mult
            and b.spread_min_obs == a.spread_min_obs
            and b.spread_alpha == a.spread_alpha
            and b.vol_spike_mult == a.vol_spike_mult
        ):
            return False
    return True


@njit(cache=True, inline="always")
def latch_kill_nb(st, bar: int, trig: int) -> bool:
    """Latch the kill switch on ``trig`` unless already latched; True if it latched now."""
    if trig != 0 and st.kill_reason == 0:
        st.kill_reason = trig
        st.kill_bar = bar
        return True
    return False


@njit(cache=True, inline="always")
def kill_check_nb(
    t: int, bar: int, state, positions, open_, high, low, close, valid, atr, spread, api_fault, operator, p, events, cnt
) -> None:
    """Operator resets and pause/resume/flatten bits, then kill-switch triggers on bar t; updates
    the per-pair baselines."""
    st = state[0]
    op = operator[t]
    if kill_reset_due_nb(st, op, bar, p):
        reset_kill_nb(state, bar, events, cnt)
    if halt_reset_due_nb(st, op, bar, p):
        reset_halt_nb(state, bar, events, cnt)
    if op != 0:
        operator_flags_nb(state, op, bar, events, cnt)
    trig = 0
    trig_pair = -1
    trig_val = 0.0
    if api_fault[t]:
        trig = KILL.API_INSTABILITY
    m = positions.shape[0]
    for j in range(m):
        nt, v = kill_pair_nb(
            positions[j], valid[t, j], open_[t, j], high[t, j], low[t, j], close[t, j], spread[t, j], atr[t, j], trig, p
        )
        if nt != 0:
            trig = nt
            trig_pair = j
            trig_val = v
    if latch_kill_nb(st, bar, trig):
        cnt[C_KILLS] += 1
        emit_event_nb(events, cnt, bar, trig_pair, EVENT.KILL, REASON.KILL_API + trig - 1, trig_val)
    st.trading_state = effective_state_nb(st)


@njit(cache=True, inline="always")
def mark_state_nb(st, expo: float, bar: int, p):
    """Equity, peak, drawdown and tiers from the marked exposure; (halt latched now, tier changed)."""
    st.exposure = expo
    st.equity = st.cash + expo
    if st.equity > st.peak:
        st.peak = st.equity
    st.drawdown = 1.0 - st.equity / st.peak if st.peak > 0.0 else 1.0
    dd = st.drawdown
    halt_ev = False
    if st.halted == 0 and dd >= p.dd_halt:
        st.halted = 1
        st.halt_bar = bar
        halt_ev = True
    tier = 0
    if dd >= p.dd_tier2:
        tier = 2
    elif dd >= p.dd_tier1:
        tier = 1
    tier_ev = False
    if tier != st.tier:
        st.tier = tier
        tier_ev = True
    st.trading_state = effective_state_nb(st)
    st.bar = bar
    return halt_ev, tier_ev


@njit(cache=True, inline="always")
def mark_positions_nb(t, positions, close, valid) -> float:
    """Mark every pair with a valid close at bar ``t`` to it (a missing close keeps the last mark);
    the book's exposure at those marks."""
    expo = 0.0
    for j in range(positions.shape[0]):
        pos = positions[j]
        if valid[t, j]:
            c = close[t, j]
            if c == c:
                pos.mark = c
        if pos.qty != 0.0:
            expo += pos.qty * pos.mark
    return expo


@njit(cache=True, inline="always")
def mark_nb(t: int, bar: int, state, positions, close, valid, p, events, cnt) -> None:
    """Mark to bar t's close; equity, peak, drawdown and the drawdown tiers (halt latches)."""
    st = state[0]
    halt_ev, tier_ev = mark_state_nb(st, mark_positions_nb(t, positions, close, valid), bar, p)
    if halt_ev:
        emit_event_nb(events, cnt, bar, -1, EVENT.TIER, REASON.HALT, st.drawdown)
    if tier_ev:
        emit_event_nb(events, cnt, bar, -1, EVENT.TIER, REASON.TIER_CHANGE, st.drawdown)


@njit(cache=True)
def _set_order_nb(
    o,
    bar: int,
    side: int,
    kind: int,
    reason: int,
    qty: float,
    limit: float,
    ref: float,
    atr: float,
    spread: float,
    frac: float,
    smult: float,
    tmult: float,
) -> None:
    o.active = 1
    o.bar = bar
    o.side = side
    o.kind = kind
    o.reason = reason
    o.qty = qty
    o.limit_price = limit
    o.ref_price = ref
    o.atr = atr
    o.spread = spread
    o.frac = frac
    o.filled = 0.0
    o.fallback = 0
    o.stop_mult = smult
    o.tp_mult = tmult


@njit(cache=True, inline="always")
def exit_reason_nb(pos, c: float, pu: float, bar: int, p):
    """(reason, order kind) of an exit of the open position ``pos`` at close ``c``; reason 0: hold."""
    reason = 0
    kind = p.exit_kind
    if pos.stop == pos.stop and c <= pos.stop:
        reason = REASON.EXIT_STOP
        kind = KIND.MARKET
    elif pos.take_profit == pos.take_profit and c >= pos.take_profit:
        reason = REASON.EXIT_TAKE_PROFIT
        kind = KIND.MARKET
    elif pu == pu and pu < p.p_up_exit:
        reason = REASON.EXIT_SIGNAL
    elif p.max_hold_bars > 0 and bar - pos.entry_bar >= p.max_hold_bars:
        reason = REASON.EXIT_TIME
    return reason, kind


@njit(cache=True)
def exit_order_nb(o, pos, bar: int, c: float, reason: int, kind: int, a: float, s: float, pdec: int, p) -> None:
    limit = np.nan
    if kind == KIND.LIMIT_FIRST:
        limit = c * (1.0 + p.limit_offset)
        if p.enforce_precision != 0:
            limit = round_price_nb(limit, pdec, True)
    _set_order_nb(o, bar, SELL, kind, reason, pos.qty, limit, c, a, s, 0.0, p.stop_atr_mult, p.tp_atr_mult)


@njit(cache=True, inline="always")
def entry_static_gate_nb(st, p, vld: bool, c: float, pu: float, er: float, a: float, trd: bool, blk: bool):
    """The entry checks that do not depend on the other entries of the same bar, in this order: data,
    universe (``trd``: the pair is tradable at this bar), halt, kill switch, operator pause, entry-block window
    (``blk``: the order would execute in a scheduled window), edge, ATR: (refusal reason or 0, value)."""
    if not vld or not (c > 0.0):
        return REASON.REFUSE_NO_DATA, pu
    if not trd:
        return REASON.REFUSE_NOT_TRADABLE, pu
    if st.halted != 0:
        return REASON.REFUSE_HALTED, st.drawdown
    if st.kill_reason != 0:
        return REASON.REFUSE_KILL_SWITCH, float(st.kill_reason)
    if st.paused != 0:
        return REASON.REFUSE_PAUSED, pu
    if blk:
        return REASON.REFUSE_TRAINING_WINDOW, pu
    if not (er == er) or er <= p.min_edge:  # noqa: SIM201 NaN test kept verbatim in the kernel
        return REASON.REFUSE_EDGE, er
    if p.sizing != SIZING_FIXED_FRACTION and not (a == a and a > 0.0):  # risk and vol-target sizing need it
        return REASON.REFUSE_NO_ATR, a
    return 0, 0.0


@njit(cache=True, inline="always")
def entry_room_nb(n_open: int, maxpos: int, cap: float, eq: float, committed: float):
    """The bar-wide entry caps, checked after ``entry_static_gate_nb``, in this order: max positions
    (``n_open``: open positions + entries decided this bar), then the exposure cap (room ``cap x eq``
    less ``committed``): (refusal reason or 0, refusal value, exposure room)."""
    if n_open >= maxpos:
        return REASON.REFUSE_MAX_POSITIONS, float(n_open), 0.0
    room_x = cap * eq - committed
    if room_x <= 0.0:
        return REASON.REFUSE_EXPOSURE, committed / eq, 0.0
    return 0, 0.0, room_x


@njit(cache=True, inline="always")
def entry_gate_nb(
    st,
    p,
    vld: bool,
    c: float,
    pu: float,
    er: float,
    a: float,
    trd: bool,
    blk: bool,
    n_open: int,
    maxpos: int,
    cap: float,
    eq: float,
    committed: float,
):
    """Entry checks before the cluster cap (``entry_static_gate_nb``, then ``entry_room_nb``):
    (refusal reason or 0, refusal value, exposure room)."""
    r, v = entry_static_gate_nb(st, p, vld, c, pu, er, a, trd, blk)
    if r != 0:
        return r, v, 0.0
    return entry_room_nb(n_open, maxpos, cap, eq, committed)


@njit(cache=True, inline="always")
def cluster_room_nb(t, cj: int, room: float, cluster, positions, pending, buys: bool) -> float:
    """``room`` (the cluster cap, ``max_cluster_exposure x eq``) less the exposure of cluster ``cj`` at
    row ``t``: for each member in column order, its position at its mark, then its pending buy at
    the order's reference price (``buys`` False: no order pending is a buy, none is looked at). An
    entry candidate (flat, nothing pending) adds nothing to its own cluster's exposure. ``cj < 0``
    (no cluster): ``room`` unchanged."""
    if cj >= 0:
        for i in range(positions.shape[0]):
            # no branch on membership or position (both data-dependent): a column that adds nothing
            # subtracts +0.0, which leaves every float as it is (x - 0.0 == x, -0.0 and NaN included)
            mem = cluster[t, i] == cj
            q = positions[i].qty
            x = q * positions[i].mark
            room -= x if mem & (q != 0.0) else 0.0
            if buys:
                o = pending[i]
                if o.active != 0 and o.side == BUY:
                    y = o.qty * o.ref_price
                    room -= y if mem else 0.0
    return room


@njit(cache=True, inline="always")
def vol_adj_nb(p, c: float, a: float) -> float:
    """Volatility adjustment of vol-target sizing: ``vol_target / (a / c)`` (the bar's Wilder ATR as a
    fraction of its close), clamped to [``vol_adj_min``, ``vol_adj_max``]."""
    adj = p.vol_target * c / a
    if adj < p.vol_adj_min:
        adj = p.vol_adj_min
    if adj > p.vol_adj_max:
        adj = p.vol_adj_max
    return adj


@njit(cache=True, inline="always")
def entry_size_nb(
    st,
    p,
    reserved: float,
    room_x: float,
    room_c: float,
    c: float,
    a: float,
    eq: float,
    rmult: float,
    lot: int,
    omin: float,
    cmin: float,
    scale: float,
):
    """Entry size after the caps: (refusal reason or 0, refusal value, quantity).

    Wanted notional, by ``p.sizing``: SIZING_VOL_TARGET ``rmult x position_size x vol_adj_nb x equity``;
    SIZING_RISK ``rmult x base_risk x equity`` at a ``stop_atr_mult x ATR`` stop; SIZING_FIXED_FRACTION
    ``fixed_fraction`` of free cash (re-taken at the fill). ``rmult``: the drawdown tier's multiplier
    (``caps_nb``). ``eq``: the cap base, ``cap_base_nb`` (equity, at most the capital ceiling). Then
    clipped to the exposure room, the cluster room and the free cash. ``scale`` (the bar's
    ``size_scale``, 0..1; NaN: none) multiplies the wanted notional before the clips (R26), so a
    profile can only shrink an entry; SIZING_FIXED_FRACTION scales its fraction instead
    (``entries_nb``)."""
    f = p.fee_rate
    room_cash = (st.cash - reserved) / (1.0 + f + p.slip_buffer)
    if room_cash <= 0.0:
        return REASON.REFUSE_CASH, st.cash - reserved, 0.0
    if p.sizing == SIZING_RISK:
        notional = rmult * p.base_risk * eq / (p.stop_atr_mult * a) * c
    elif p.sizing == SIZING_FIXED_FRACTION:
        notional = p.fixed_fraction * (st.cash - reserved) / (1.0 + f)
    else:  # SIZING_VOL_TARGET (entry_static_gate_nb has refused a missing ATR)
        notional = rmult * p.position_size * vol_adj_nb(p, c, a) * eq
    if scale == scale:
        notional *= scale
    bind = 0
    if notional > room_x:
        notional = room_x
        bind = REASON.REFUSE_EXPOSURE
    if notional > room_c:
        notional = room_c
        bind = REASON.REFUSE_CLUSTER
    if notional > room_cash:
        notional = room_cash
        bind = REASON.REFUSE_CASH
    qty = notional / c
    if p.enforce_precision != 0:
        qty = round_down_nb(qty, lot)
        if qty < omin or qty <= 0.0:
            return (bind if bind != 0 else REASON.REFUSE_ORDERMIN), qty, qty
        if qty * c < cmin:
            return (bind if bind != 0 else REASON.REFUSE_COSTMIN), qty * c, qty
    elif not (qty > 0.0):
        return (bind if bind != 0 else REASON.REFUSE_ORDERMIN), qty, qty
    return 0, 0.0, qty


@njit(cache=True)
def entry_order_nb(
    o, bar: int, qty: float, c: float, a: float, s: float, pdec: int, p, frac: float, smult: float, tmult: float
) -> None:
    limit = np.nan
    if p.entry_kind == KIND.LIMIT_FIRST:
        limit = c * (1.0 - p.limit_offset)
        if p.enforce_precision != 0:
            limit = round_price_nb(limit, pdec, False)
    _set_order_nb(o, bar, BUY, p.entry_kind, REASON.ENTRY, qty, limit, c, a, s, frac, smult, tmult)


@njit(cache=True)
def entries_nb(
    t: int,
    bar: int,
    state,
    positions,
    pending,
    close,
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
    rec,
    events,
    cnt,
    refusals,
    order_buf,
):
    """Entries at the close of bar t, after the exits: candidates (P(up) >= threshold, flat, nothing
    pending) by expected return, highest first, ties by column (stable insertion sort; NaN expected
    return last), each through the entry gate, the cluster cap and the sizing, as pending orders for
    bar t+1; a refusal reason for each refused one. True if an order was placed. ``rec`` False
    (the backtester without records): only the refusal counts are kept, so the candidates the
    per-bar checks refuse are counted first and never sorted, the others are not checked again,
    and once a bar-wide cap (max positions, exposure) refuses one, the rest are counted with it
    (the same decisions and counts).
    ``bx`` (n, m, BX_N) float64, the bars' exit parameters (``bar_exit_dt``; no rows: none): an
    entry's wanted notional is scaled by its ``size_scale`` and its order carries the bar's
    take-profit multiple and its stop multiple when that is tighter than [risk]'s (NaN in a field:
    the [risk] parameter; a profile stop never widens the stop) (R26).
    """
    st = state[0]
    m = close.shape[1]
    placed = False
    u = np.uint64(t)  # unsigned row and column indices: no negative-index wraparound per access
    # the candidates in column order (no branch per pair: the outcome of P(up) >= threshold is
    # data-dependent; NaN P(up) fails it)
    thr = p.p_up_entry
    nc = 0
    nbuy = 0  # orders pending that are buys (the cluster room counts them)
    for j in range(m):
        o = pending[j]
        order_buf[nc] = j
        nc += (p_up[u, j] >= thr) & (positions[j].qty == 0.0) & (o.active == 0)
        nbuy += (o.active != 0) & (o.side == BUY)
    if not rec:
        # the refusal counts do not depend on the order: candidates the per-bar checks refuse
        # (no data, halt, kill switch, edge, ATR) are counted here and never sorted; the rest
        # keep their relative order (stable sort), so every entry decision is the same
        blk = entry_block[u]
        k = 0
        for i in range(nc):
            j = order_buf[i]
            uj = np.uint64(j)
            rr, v = entry_static_gate_nb(
                st, p, valid[u, uj], close[u, uj], p_up[u, uj], exp_ret[u, uj], atr[u, uj], tradable[u, uj], blk
            )
            if rr != 0:
                refusals[rr] += 1
            else:
                order_buf[k] = j
                k += 1
        nc = k
    # stable insertion sort by expected return, highest first, NaN last
    for i in range(1, nc):
        j = order_buf[i]
        e = exp_ret[u, np.uint64(j)]
        kj = e if e == e else -np.inf
        h = i
        while h > 0:
            e2 = exp_ret[u, np.uint64(order_buf[h - 1])]
            k2 = e2 if e2 == e2 else -np.inf
            if k2 >= kj:
                break
            order_buf[h] = order_buf[h - 1]
            h -= 1
        order_buf[h] = j
    if nc > 0:
        cap, maxpos, rmult = caps_nb(st, p)
        eq = cap_base_nb(st.equity, p)  # R3b: sizes and caps scale with min(equity, capital ceiling)
        committed = st.exposure
        reserved = 0.0
        n_open = st.n_positions
        f = p.fee_rate
        nx = bx.shape[0] != 0
        for k in range(nc):
            j = order_buf[k]
            uj = np.uint64(j)
            c = close[u, uj]
            a = atr[u, uj]
            if rec:
                rr, v, room_x = entry_gate_nb(
                    st,
                    p,
                    valid[u, uj],
                    c,
                    p_up[u, uj],
                    exp_ret[u, uj],
                    a,
                    tradable[u, uj],
                    entry_block[u],
                    n_open,
                    maxpos,
                    cap,
                    eq,
                    committed,
                )
            else:
                # entry_static_gate_nb passed above, and nothing it reads changes in this loop
                rr, v, room_x = entry_room_nb(n_open, maxpos, cap, eq, committed)
                if rr != 0:
                    # n_open and committed change only with an order: every candidate left meets
                    # the same cap
                    refusals[rr] += nc - k
                    break
            if rr != 0:
                refusals[rr] += 1
                if rec:
                    emit_event_nb(events, cnt, bar, j, EVENT.REFUSAL, rr, v)
                continue
            cj = cluster[u, uj]
            room_c = cluster_room_nb(u, cj, p.max_cluster_exposure * eq, cluster, positions, pending, nbuy != 0)
            if room_c <= 0.0:
                refusals[REASON.REFUSE_CLUSTER] += 1
                if rec:
                    emit_event_nb(events, cnt, bar, j, EVENT.REFUSAL, REASON.REFUSE_CLUSTER, float(cj))
                continue
            scale = np.nan
            frac = p.fixed_fraction
            smult = p.stop_atr_mult
            tmult = p.tp_atr_mult
            if nx:
                scale = bx[u, uj, BX_SIZE]
                if scale == scale:
                    frac = frac * scale
                x = bx[u, uj, BX_STOP]
                # a profile stop may only be tighter than [risk]'s (or add one where [risk] has
                # none): a wider stop would lose more than the sizing's risk at the same size
                if x > 0.0 and (x < smult or not (smult > 0.0)):
                    smult = x
                x = bx[u, uj, BX_TP]
                if x == x:
                    tmult = x
            rr, v, qty = entry_size_nb(
                st, p, reserved, room_x, room_c, c, a, eq, rmult, lot_dec[uj], ordermin[uj], costmin[uj], scale
            )
            if rr != 0:
                refusals[rr] += 1
                if rec:
                    emit_event_nb(events, cnt, bar, j, EVENT.REFUSAL, rr, v)
                continue
            entry_order_nb(pending[uj], bar, qty, c, a, spread[u, uj], price_dec[uj], p, frac, smult, tmult)
            placed = True
            if rec:
                emit_event_nb(events, cnt, bar, j, EVENT.ORDER, REASON.ENTRY, qty)
            committed += qty * c
            reserved += qty * c * (1.0 + f + p.slip_buffer)
            n_open += 1
            nbuy += 1
    return placed


@njit(cache=True, inline="always")
def tighten_stop_nb(pos, floor: float) -> bool:
    """Capital preservation (R26): raise the stop of the held position ``pos`` to ``floor`` (the
    bar's ``stop_floor``) when that is higher, or when it has no stop; never lower it. NaN: no
    change. True if the stop moved."""
    if floor == floor and not (floor <= pos.stop):
        pos.stop = floor
        return True
    return False


@njit(cache=True, inline="always")
def decide_nb(
    t: int,
    bar: int,
    state,
    positions,
    pending,
    close,
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
) -> None:
    """Decisions at the close of bar t: exits, then entries, as pending orders for bar t+1.

    ``tradable[t, j]`` (universe, R9) and ``entry_block[t]`` (entry-block window, R25) refuse entries
    only; exits of open positions never look at them. At a close with the operator's flatten
    (``state['flatten']``, set by kill_check_nb) every open position exits at market with
    EXIT_OPERATOR and no entry is decided (R22b). A held position with no exit has its stop raised
    to the bar's ``stop_floor`` (``bx``, ``tighten_stop_nb``; event STOP) (R26)."""
    m = positions.shape[0]
    st = state[0]
    nx = bx.shape[0] != 0
    flat = st.flatten != 0
    st.flatten = 0
    # ---- exits (always allowed: halt, kill switch and pause block entries only)
    for j in range(m):
        pos = positions[j]
        if pos.qty == 0.0 or pending[j].active != 0 or not valid[t, j]:
            continue
        c = close[t, j]
        if flat:
            reason, kind = REASON.EXIT_OPERATOR, KIND.MARKET
        else:
            reason, kind = exit_reason_nb(pos, c, p_up[t, j], bar, p)
        if reason == 0:
            if nx and tighten_stop_nb(pos, bx[t, j, BX_FLOOR]):
                emit_event_nb(events, cnt, bar, j, EVENT.STOP, REASON.STOP_TIGHTENED, pos.stop)
            continue
        exit_order_nb(pending[j], pos, bar, c, reason, kind, atr[t, j], spread[t, j], price_dec[j], p)
        emit_event_nb(events, cnt, bar, j, EVENT.ORDER, reason, pos.qty)
    # ---- entries (entries_nb); positions[].cluster: the cluster id at the last decision
    for j in range(m):
        positions[j].cluster = cluster[t, j]
    if flat:
        return
    entries_nb(
        t,
        bar,
        state,
        positions,
        pending,
        close,
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
        True,
        events,
        cnt,
        refusals,
        order_buf,
    )


@njit(cache=True)
def step_nb(
    t: int,
    state,
    positions,
    pending,
    open_,
    high,
    low,
    close,
    volume,
    valid,
    p_up,
    exp_ret,
    bx,
    atr,
    spread,
    cluster,
    tradable,
    entry_block,
    api_fault,
    operator,
    ordermin,
    costmin,
    lot_dec,
    price_dec,
    quote_dec,
    p,
    trades,
    events,
    cnt,
    acc,
    refusals,
    marks,
    order_buf,
) -> None:
    """``step_bar_nb`` with the row as the bar id (the backtester's convention)."""
    step_bar_nb(
        t,
        t,
        state,
        positions,
        pending,
        open_,
        high,
        low,
        close,
        volume,
        valid,
        p_up,
        exp_ret,
        bx,
        atr,
        spread,
        cluster,
        tradable,
        entry_block,
        api_fault,
        operator,
        ordermin,
        costmin,
        lot_dec,
        price_dec,
        quote_dec,
        p,
        trades,
        events,
        cnt,
        acc,
        refusals,
        marks,
        order_buf,
    )


@njit(cache=True)
def step_bar_nb(
    t: int,
    bar: int,
    state,
    positions,
    pending,
    open_,
    high,
    low,
    close,
    volume,
    valid,
    p_up,
    exp_ret,
    bx,
    atr,
    spread,
    cluster,
    tradable,
    entry_block,
    api_fault,
    operator,
    ordermin,
    costmin,
    lot_dec,
    price_dec,
    quote_dec,
    p,
    trades,
    events,
    cnt,
    acc,
    refusals,
    marks,
    order_buf,
) -> None:
    """One bar of a simulated portfolio, row ``t`` of the inputs, bar id ``bar``: execute the orders
    of the last close in this bar, then decide at its close."""
    execute_open_nb(
        t,
        bar,
        state,
        positions,
        pending,
        open_,
        high,
        low,
        close,
        volume,
        valid,
        cluster,
        ordermin,
        costmin,
        lot_dec,
        price_dec,
        quote_dec,
        p,
        trades,
        events,
        cnt,
        acc,
        refusals,
        marks,
    )
    kill_check_nb(
        t, bar, state, positions, open_, high, low, close, valid, atr, spread, api_fault, operator, p, events, cnt
    )
    execute_close_nb(
        t,
        bar,
        state,
        positions,
        pending,
        close,
        volume,
        valid,
        cluster,
        ordermin,
        costmin,
        lot_dec,
        price_dec,
        quote_dec,
        p,
        trades,
        events,
        cnt,
        acc,
        refusals,
        marks,
    )
    mark_nb(t, bar, state, positions, close, valid, p, events, cnt)
    decide_nb(
        t,
        bar,
        state,
        positions,
        pending,
        close,
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


def new_state(n_pairs: int, init_cash: float):
    """(state, positions, pending) record arrays of a fresh portfolio."""
    state = np.zeros(1, dtype=state_dt)
    positions = np.zeros(n_pairs, dtype=position_dt)
    pending = np.zeros(n_pairs, dtype=order_dt)
    init_state_nb(state, positions, pending, float(init_cash))
    return state, positions, pending
