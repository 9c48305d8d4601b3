"""Backtest kernels: the risk step over every bar, for one or many parameter sets (numba).

``simulate_nb`` runs the risk state machine over all bars of one portfolio and streams its metrics
(``metrics_dt``); full records (trades, events, equity rows) are written only when the caller passes
arrays with room for them. It is the fused form of :func:`engine.risk.nb.step_nb`: the same phases
and the same per-pair rule kernels of engine.risk.nb, written out in one loop so that no function
taking arrays is called on a bar where nothing happens (numba reference-counts every array passed to
a function, inlined or not: about 400 ns per bar with the phase functions). Rare work (fills,
pending orders, events, resets) still goes through the engine.risk.nb functions. The bar loop
(``_simulate_loop_nb``) is compiled without reference counting (``_nrt=False``): the caller
allocates every array it uses, so no bar pays for the counts of the arrays an inlined phase binds.
Shortcuts that change nothing but the time: the kill-switch triggers (data + five parameters
only) come from one pass over the bars before the loop (``kill_triggers_nb``, shared by the sets of
a sweep); without records, the rows that only bars with work read (entries, exits, fills) are
prefetched a bar or two ahead (engine.backtest.prefetch, a hint); a flat book is not marked; on a
bar where no entry is possible (halt, kill switch, entry-block window) without records,
candidates are counted by reason without branches. Without
records, the bars go to two tight loops: ``_quiet_run_nb`` (flat book, nothing pending: nothing
can change, only counters move) and ``_hold_run_nb`` (its own function), which runs every bar whose
phase 2 changes nothing (no reset or operator bit due, no kill-switch trigger that would latch):
pending orders execute (``_execute_bar_nb``, out of line), the mark and the exit tests share one pass
over the pairs (``_exit_due_nb``), exits are placed, and entries are decided: where every candidate
is refused (entries blocked, per-pair checks, max positions, no exposure room) the refusals are
counted in one pass without calling ``entries_nb`` (``_entries_refused_nb``), otherwise entries_nb
runs. Each loop checks a bar before changing anything and leaves the first bar that needs more to
the full bar (in a run trading throughout, about 300 of 45k bars). Entries
(``engine.risk.nb.entries_nb``, the code ``decide_nb`` runs) are called out of line: inlined, their
many live values made the compiler spill the loop's own on every bar (47 -> 25 ns per bar held,
one pair).
``simulate_reference_nb`` is the plain loop over ``step_nb``; tests/test_backtest_speedpath.py
checks the two bit for bit on real data. ``run_sets_nb`` runs many parameter sets in parallel
(``prange`` over sets): each set owns its state, so the result does not depend on the thread count.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from engine.backtest.demo import ma_signal_from_sma_nb, ma_signal_into_nb, sma_into_nb
from engine.backtest.prefetch import prefetch_row_nb
from engine.risk.enums import (
    BX_FLOOR,
    BX_N,
    EVENT,
    KILL,
    KIND,
    N_STATES,
    REASON,
    STATE,
    equity_dt,
    event_dt,
    order_dt,
    position_dt,
    state_dt,
    trade_dt,
)
from engine.risk.nb import (
    A_CLOSED,
    A_GROSS_LOSS,
    A_GROSS_PROFIT,
    A_WINS,
    C_FILLS,
    C_KILLS,
    C_OVERFLOW,
    C_RECORD,
    N_ACC,
    N_CNT,
    cap_base_nb,
    caps_nb,
    effective_state_nb,
    emit_event_nb,
    entries_nb,
    entry_static_gate_nb,
    execute_close_nb,
    execute_open_nb,
    exit_order_nb,
    exit_reason_nb,
    halt_reset_due_nb,
    init_state_nb,
    kill_reset_due_nb,
    kill_triggers_nb,
    latch_kill_nb,
    mark_positions_nb,
    mark_state_nb,
    operator_due_nb,
    operator_flags_nb,
    reset_halt_nb,
    reset_kill_nb,
    same_kill_params_nb,
    step_nb,
    tighten_stop_nb,
)

BARS_PER_YEAR = 8760.0
# how many bars ahead the records-off loop prefetches the rows it reads only on bars with work
PREFETCH_AHEAD = 2


@njit(cache=True, inline="always")
def _prefetch_ahead_nb(t, n, exp_ret, atr, tradable, cluster, spread):
    """Prefetch (engine.backtest.prefetch: a hint, no result depends on it) the rows of bar
    ``t + PREFETCH_AHEAD`` that only a bar with work reads: the expected return, ATR, tradable flag
    and cluster of entries_nb's candidates, the ATR and spread of an exit order."""
    i = t + PREFETCH_AHEAD
    if i < n:
        prefetch_row_nb(exp_ret, i)
        prefetch_row_nb(atr, i)
        prefetch_row_nb(tradable, i)
        prefetch_row_nb(cluster, i)
        prefetch_row_nb(spread, i)


@njit(cache=True, inline="always")
def _prefetch_fills_nb(i, n, open_, high, low, close, volume, cluster):
    """Orders were placed at the close of bar ``i - 1``: prefetch the rows of bar ``i`` their
    execution reads (open, high, low, close, volume, cluster), all at once rather than one miss
    after another."""
    if i < n:
        prefetch_row_nb(open_, i)
        prefetch_row_nb(high, i)
        prefetch_row_nb(low, i)
        prefetch_row_nb(close, i)
        prefetch_row_nb(volume, i)
        prefetch_row_nb(cluster, i)


@njit(cache=True, inline="always")
def _merge_zero_returns_nb(r_n, r_z, r_mean, r_m2):
    """(count, mean, M2) of ``r_n`` returns with running mean ``r_mean`` and sum of squared deviations
    ``r_m2``, joined by ``r_z`` returns of exactly 0 (the pairwise update of Chan, Golub and LeVeque
    with a block of zeros: mean 0, M2 0)."""
    if r_z == 0:
        return r_n, r_mean, r_m2
    nn = r_n + r_z
    delta = -r_mean
    return nn, r_mean + delta * r_z / nn, r_m2 + delta * delta * r_n * r_z / nn


@njit(cache=True, inline="always")
def _bar_metrics_nb(eq, prev_eq, mo, r_n, r_z, r_mean, r_m2, down_sq, mpeak, max_dd, cur_month, month_peak, worst_mdd):
    """One bar of the streaming metrics (the equity ``eq`` after the bar, ``prev_eq`` before it, the
    bar's calendar month ``mo``): hourly return moments, downside sum, drawdown from the metric peak
    (never reset by an operator), worst drawdown within a calendar month. Returns of exactly 0 (a
    flat book's bar) are counted in ``r_z`` and folded into the mean/M2 in one step when the next
    non-zero return comes (or at the end), so a run of flat bars costs no division; every bar is
    still one return of the Sharpe and Sortino ratios."""
    r = eq / prev_eq - 1.0 if prev_eq > 0.0 else 0.0
    if r == 0.0:
        r_z += 1
    else:
        r_n, r_mean, r_m2 = _merge_zero_returns_nb(r_n, r_z, r_mean, r_m2)
        r_z = 0
        r_n += 1
        d = r - r_mean
        r_mean += d / r_n
        r_m2 += d * (r - r_mean)
        rn = r if r < 0.0 else 0.0  # no branch: the sign of an hourly return is a coin flip
        down_sq += rn * rn
    if eq > mpeak:
        mpeak = eq
    dd = 1.0 - eq / mpeak
    if dd > max_dd:
        max_dd = dd
    if mo != cur_month:
        cur_month = mo
        month_peak = prev_eq
    if eq > month_peak:
        month_peak = eq
    mdd = 1.0 - eq / month_peak
    if mdd > worst_mdd:
        worst_mdd = mdd
    return r_n, r_z, r_mean, r_m2, down_sq, mpeak, max_dd, cur_month, month_peak, worst_mdd


@njit(cache=True, inline="always")
def _bar_end_nb(
    st,
    mo,
    bars_state,
    prev_eq,
    r_n,
    r_z,
    r_mean,
    r_m2,
    down_sq,
    mpeak,
    max_dd,
    cur_month,
    month_peak,
    worst_mdd,
    sum_eq,
    sum_expo,
):
    """The end of a bar: its metrics (_bar_metrics_nb) at the state's equity, the equity and exposure
    sums, the bar counted in its trading state. Returns the accumulators (``prev_eq`` is now this
    bar's equity) and the bar's exposure as a fraction of equity."""
    eq = st.equity
    (r_n, r_z, r_mean, r_m2, down_sq, mpeak, max_dd, cur_month, month_peak, worst_mdd) = _bar_metrics_nb(
        eq, prev_eq, mo, r_n, r_z, r_mean, r_m2, down_sq, mpeak, max_dd, cur_month, month_peak, worst_mdd
    )
    xf = st.exposure / eq if eq > 0.0 else 0.0
    bars_state[st.trading_state] += 1
    return (
        eq,
        r_n,
        r_z,
        r_mean,
        r_m2,
        down_sq,
        mpeak,
        max_dd,
        cur_month,
        month_peak,
        worst_mdd,
        sum_eq + eq,
        sum_expo + xf,
        xf,
    )


@njit(cache=True, inline="always")
def _exit_due_nb(pos, c, pu, bar, p):
    """``engine.risk.nb.exit_reason_nb(pos, c, pu, bar, p)[0] != 0`` (an exit of the open position
    ``pos`` at close ``c`` is due), without branches: each NaN test of exit_reason_nb is a comparison
    that NaN already fails (stop, take-profit, P(up)). Keep it in step with exit_reason_nb
    (tests/test_backtest_speedpath.py checks the two loops bit for bit)."""
    mh = p.max_hold_bars
    return (c <= pos.stop) | (c >= pos.take_profit) | (pu < p.p_up_exit) | ((mh > 0) & (bar - pos.entry_bar >= mh))


@njit(cache=True, inline="always")
def _count_blocked_nb(t, p, p_up, positions, valid, close, tradable):
    """At bar ``t`` (an index), where no entry is possible (halt, kill switch or entry-block window),
    without records: every candidate (P(up) >= threshold, flat; nothing is pending for a flat pair at
    this point) is refused by entry_static_gate_nb with no data, not tradable, or the blocking reason,
    in that order. Counted without branches; the counts (no data, not tradable, blocked) are those of
    the per-pair path."""
    thr = p.p_up_entry
    n_nd = 0
    n_nt = 0
    n_bl = 0
    for j in range(close.shape[1]):
        cand = (p_up[t, j] >= thr) & (positions[j].qty == 0.0)
        cl = close[t, j]
        dat = valid[t, j] & (cl > 0.0)
        trd = tradable[t, j]
        n_nd += cand & (not dat)
        n_nt += cand & dat & (not trd)
        n_bl += cand & dat & trd
    return n_nd, n_nt, n_bl


@njit(cache=True, inline="always")
def _add_blocked_nb(st, refusals, n_nd, n_nt, n_bl):
    """Add the counts of _count_blocked_nb (the blocking reason from the state: halt, kill switch,
    operator pause, otherwise the entry-block window)."""
    refusals[REASON.REFUSE_NO_DATA] += n_nd
    refusals[REASON.REFUSE_NOT_TRADABLE] += n_nt
    if st.halted != 0:
        refusals[REASON.REFUSE_HALTED] += n_bl
    elif st.kill_reason != 0:
        refusals[REASON.REFUSE_KILL_SWITCH] += n_bl
    elif st.paused != 0:
        refusals[REASON.REFUSE_PAUSED] += n_bl
    else:
        refusals[REASON.REFUSE_TRAINING_WINDOW] += n_bl


@njit(cache=True, inline="always")
def _candidates_nb(t, p, p_up, positions, cands):
    """The candidates at bar ``t`` (P(up) >= threshold, flat) in ``cands``, in column order; their count."""
    thr = p.p_up_entry
    nc = 0
    for j in range(positions.shape[0]):
        cands[nc] = j
        nc += (p_up[t, j] >= thr) & (positions[j].qty == 0.0)
    return nc


@njit(cache=True, inline="always")
def _entries_refused_nb(
    t, st, p, cands, nc, p_up, positions, valid, close, exp_ret, atr, tradable, entry_block, refusals
):
    """Phase 5's entries at the close of bar ``t`` (an index) without records, where no flat pair has
    an order pending (every order of the last close has executed or been cancelled; this close's
    exits are for held pairs), when every candidate is refused: then each refusal is counted as
    ``engine.risk.nb.entries_nb`` counts it and True is returned; otherwise (an order may be placed)
    nothing is counted and False is returned (the caller runs entries_nb). Every candidate is refused
    when entries are blocked (halt, kill switch, pause, entry-block window: _count_blocked_nb), when
    none passes the per-pair checks (entry_static_gate_nb), or when those that pass all meet the same
    first bar-wide cap while no order is placed: the book at max positions (REFUSE_MAX_POSITIONS) or
    no exposure room (REFUSE_EXPOSURE; the room as entry_gate_nb computes it). ``cands[:nc]``: the
    candidates (P(up) >= threshold, flat) in column order (_candidates_nb)."""
    if (st.halted != 0) | (st.kill_reason != 0) | (st.paused != 0) | entry_block[t]:
        n_nd, n_nt, n_bl = _count_blocked_nb(t, p, p_up, positions, valid, close, tradable)
        _add_blocked_nb(st, refusals, n_nd, n_nt, n_bl)
        return True
    # one pass: the candidates that pass the per-pair checks, and the refusals of the others by reason
    # (entries are not blocked here, so only these four reasons can come; any other is counted by the
    # second pass)
    n_live = 0
    n_nd = 0
    n_nt = 0
    n_ed = 0
    n_na = 0
    for k in range(nc):
        j = cands[k]
        rr, v = entry_static_gate_nb(
            st, p, valid[t, j], close[t, j], p_up[t, j], exp_ret[t, j], atr[t, j], tradable[t, j], False
        )
        n_live += rr == 0
        n_nd += rr == REASON.REFUSE_NO_DATA
        n_nt += rr == REASON.REFUSE_NOT_TRADABLE
        n_ed += rr == REASON.REFUSE_EDGE
        n_na += rr == REASON.REFUSE_NO_ATR
    if n_live > 0:
        cap, maxpos, rmult = caps_nb(st, p)
        if st.n_positions >= maxpos:
            refusals[REASON.REFUSE_MAX_POSITIONS] += n_live
        elif cap * cap_base_nb(st.equity, p) - st.exposure <= 0.0:
            refusals[REASON.REFUSE_EXPOSURE] += n_live
        else:
            return False
    if n_live + n_nd + n_nt + n_ed + n_na == nc:
        refusals[REASON.REFUSE_NO_DATA] += n_nd
        refusals[REASON.REFUSE_NOT_TRADABLE] += n_nt
        refusals[REASON.REFUSE_EDGE] += n_ed
        refusals[REASON.REFUSE_NO_ATR] += n_na
        return True
    for k in range(nc):
        j = cands[k]
        rr, v = entry_static_gate_nb(
            st, p, valid[t, j], close[t, j], p_up[t, j], exp_ret[t, j], atr[t, j], tradable[t, j], False
        )
        if rr != 0:
            refusals[rr] += 1
    return True


@njit(cache=True, inline="always")
def _quiet_run_nb(
    t,
    st,
    p,
    p_up,
    positions,
    valid,
    close,
    tradable,
    entry_block,
    api_fault,
    operator,
    kcode,
    month_id,
    eq,
    sum_eq,
    cur_month,
    month_peak,
):
    """Bars from ``t`` on that are quiet, for a flat book with nothing pending and no records kept,
    whose equity ``eq`` is that of the last bar: no operator or timed reset due, no kill-switch
    trigger that would latch, and no entry candidate unless entries are blocked (halt, kill switch,
    entry-block window: then each candidate is refused and counted as in phase 5). On such a bar
    every phase of the full bar leaves the state as it is (equity = cash, the same peak, drawdown,
    tier and trading state) and the return is exactly 0, so of the metrics only the equity sum and
    the calendar month move. Returns (first bar not quiet, sum_eq, cur_month, month_peak, and the
    refusal counts of _count_blocked_nb). Checked bit for bit against the step_nb loop
    (tests/test_backtest_speedpath.py)."""
    n, m = close.shape
    thr = p.p_up_entry
    stop_blocked = (st.halted != 0) | (st.kill_reason != 0) | (st.paused != 0)
    n_nd = 0
    n_nt = 0
    n_bl = 0
    while t < n:
        u = np.uint64(t)  # an unsigned index: no negative-index wraparound per access
        op = operator[u]
        trig = KILL.API_INSTABILITY if api_fault[u] else kcode[u]
        if (trig != 0 and st.kill_reason == 0) or operator_due_nb(st, op, t, p):
            break
        if stop_blocked | entry_block[u]:
            a, b, c = _count_blocked_nb(u, p, p_up, positions, valid, close, tradable)
            n_nd += a
            n_nt += b
            n_bl += c
        else:
            cand = False
            for j in range(m):
                cand |= p_up[u, j] >= thr
            if cand:
                break
        mo = month_id[u]
        if mo != cur_month:
            cur_month = mo
            month_peak = eq
        sum_eq += eq
        t += 1
    return t, sum_eq, cur_month, month_peak, n_nd, n_nt, n_bl


@njit(cache=True, _nrt=False)  # type: ignore[call-overload]  # _nrt: numba option absent from its stubs
def _execute_bar_nb(
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
):
    """Phases 1-3 of bar ``t`` (an index) on a bar whose phase 2 changes nothing (no reset or operator
    bit, no kill-switch trigger that would latch): the orders of the last close execute at the open
    (execute_open_nb), then those not traded through fall back at the close (execute_close_nb). Out
    of line: the hold run calls it only on bars with orders. The close's pass is skipped when the
    open left no order pending (execute_open_nb's count)."""
    left = execute_open_nb(
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
    st = state[0]
    st.trading_state = effective_state_nb(st)
    if left == 0:
        return
    execute_close_nb(
        t,
        t,
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


@njit(cache=True, _nrt=False)  # type: ignore[call-overload]  # _nrt: numba option absent from its stubs
def _hold_run_nb(
    t,
    placed,
    state,
    p,
    positions,
    pending,
    p_up,
    exp_ret,
    bx,
    open_,
    high,
    low,
    volume,
    valid,
    close,
    atr,
    spread,
    cluster,
    tradable,
    entry_block,
    api_fault,
    operator,
    kcode,
    month_id,
    ordermin,
    costmin,
    lot_dec,
    price_dec,
    quote_dec,
    trades,
    events,
    cnt,
    acc,
    refusals,
    marks,
    order_buf,
    bars_state,
    prev_eq,
    r_n,
    r_z,
    r_mean,
    r_m2,
    down_sq,
    mpeak,
    max_dd,
    cur_month,
    month_peak,
    worst_mdd,
    sum_eq,
    sum_expo,
):
    """Bars from ``t`` on, without records, whose phase 2 changes nothing: no operator bit or reset
    due (timed or not), no kill-switch trigger that would latch. ``placed``: orders of the last close
    are pending. The checks come before the bar changes anything; the first bar that fails one is
    left to the full bar (its index is returned first, with ``placed``). Each bar that passes runs
    the full bar's phases: the pending orders execute (_execute_bar_nb: execute_open_nb, then
    execute_close_nb), the mark (mark_state_nb: drawdown tiers and the halt latch included), the
    exits (exit_reason_nb, exit_order_nb), the entries (counted here when every candidate is
    refused, _entries_refused_nb; otherwise entries_nb) and the metrics. A separate function from the
    bar loop, its rare work out of line (_execute_bar_nb, entries_nb, exit_order_nb): inside the bar
    loop the same code ran about twice as slow (register spills around the loop's calls); leaving it
    for the full bar on every bar with orders cost more than the bar's own work.
    Returns (t, placed, the metric accumulators)."""
    st = state[0]
    n, m = close.shape
    thr = p.p_up_entry
    nx = bx.shape[0] != 0
    while t < n:
        u = np.uint64(t)  # an unsigned index: no negative-index wraparound per access
        _prefetch_ahead_nb(t, n, exp_ret, atr, tradable, cluster, spread)
        # ---- the checks (nothing changes before all pass)
        op = operator[u]
        trig = KILL.API_INSTABILITY if api_fault[u] else kcode[u]
        if (trig != 0 and st.kill_reason == 0) or operator_due_nb(st, op, t, p):
            break
        # ---- phases 1-3: the orders of the last close execute (phase 2 changes nothing here)
        if placed:
            _execute_bar_nb(
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
            placed = False
        # ---- phase 4: mark to the close (mark_positions_nb; a flat book is not marked), in one pass
        # over the pairs with the tests of phase 5: exits due (_exit_due_nb), candidates
        n_held = st.n_positions
        expo = 0.0
        nc = 0
        due = False
        for j in range(m):
            pos = positions[j]
            vj = valid[u, j]
            c = close[u, j]
            pu = p_up[u, j]
            q = pos.qty
            if n_held != 0 and vj and c == c:
                pos.mark = c
            if q != 0.0:
                expo += q * pos.mark
                due |= vj & _exit_due_nb(pos, c, pu, t, p)
            else:  # the candidates (P(up) >= threshold, flat), in column order
                order_buf[nc] = j
                nc += pu >= thr
        mark_state_nb(st, expo, t, p)
        # ---- phase 5: exits (nothing is pending: every held pair with a valid bar is checked), then
        # entries (only flat pairs can be candidates)
        if due or (nx and n_held != 0):
            for j in range(m):
                pos = positions[j]
                if pos.qty != 0.0 and valid[u, j]:
                    c = close[u, j]
                    reason, kind = exit_reason_nb(pos, c, p_up[u, j], t, p)
                    if reason != 0:
                        exit_order_nb(pending[j], pos, t, c, reason, kind, atr[u, j], spread[u, j], price_dec[j], p)
                        placed = True
                    elif nx:  # held with no exit: capital preservation's stop floor (R26)
                        tighten_stop_nb(pos, bx[u, j, BX_FLOOR])
        if nc > 0 and not _entries_refused_nb(
            u, st, p, order_buf, nc, p_up, positions, valid, close, exp_ret, atr, tradable, entry_block, refusals
        ):
            placed |= entries_nb(
                t,
                t,
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
                False,
                events,
                cnt,
                refusals,
                order_buf,
            )
        if placed:
            _prefetch_fills_nb(t + 1, n, open_, high, low, close, volume, cluster)
        # ---- metrics
        (
            prev_eq,
            r_n,
            r_z,
            r_mean,
            r_m2,
            down_sq,
            mpeak,
            max_dd,
            cur_month,
            month_peak,
            worst_mdd,
            sum_eq,
            sum_expo,
            xf,
        ) = _bar_end_nb(
            st,
            month_id[u],
            bars_state,
            prev_eq,
            r_n,
            r_z,
            r_mean,
            r_m2,
            down_sq,
            mpeak,
            max_dd,
            cur_month,
            month_peak,
            worst_mdd,
            sum_eq,
            sum_expo,
        )
        t += 1
    return (
        t,
        placed,
        prev_eq,
        r_n,
        r_z,
        r_mean,
        r_m2,
        down_sq,
        mpeak,
        max_dd,
        cur_month,
        month_peak,
        worst_mdd,
        sum_eq,
        sum_expo,
    )


@njit(cache=True)
def simulate_nb(
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
    month_id,
    ordermin,
    costmin,
    lot_dec,
    price_dec,
    quote_dec,
    p,
    record: bool,
    trades,
    events,
    equity_rows,
    metrics,
    refusals,
    cnt,
):
    """Run one portfolio over all bars; fill ``metrics`` (one metrics_dt record) and ``refusals``.

    Bit-identical to ``simulate_reference_nb`` (step_nb per bar); see the module docstring."""
    none_i = np.zeros(0, dtype=np.int64)
    simulate_core_nb(
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
        month_id,
        ordermin,
        costmin,
        lot_dec,
        price_dec,
        quote_dec,
        p,
        record,
        trades,
        events,
        equity_rows,
        metrics,
        refusals,
        cnt,
        False,
        none_i,
        none_i,
        np.zeros(0),
    )


@njit(cache=True)
def simulate_core_nb(
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
    month_id,
    ordermin,
    costmin,
    lot_dec,
    price_dec,
    quote_dec,
    p,
    record: bool,
    trades,
    events,
    equity_rows,
    metrics,
    refusals,
    cnt,
    kill_pre: bool,
    kcode,
    kpair,
    kval,
):
    """``simulate_nb``; with ``kill_pre`` the kill-switch triggers of each bar are the given
    ``kcode``/``kpair``/``kval`` (``engine.risk.nb.kill_triggers_nb``, computed once for all the sets of
    a sweep), otherwise this run computes them first. Allocates the portfolio's state and scratch
    arrays, then runs the bar loop (``_simulate_loop_nb``)."""
    n, m = close.shape
    if not kill_pre:
        # the kill-switch triggers depend on the bars and the kill parameters only: one pass over the
        # data before the loop instead of per-pair checks inside it
        kcode = np.empty(n, dtype=np.int64)
        kpair = np.empty(n, dtype=np.int64)
        kval = np.empty(n)
        kill_triggers_nb(open_, high, low, close, valid, atr, spread, p, kcode, kpair, kval)
    state = np.zeros(1, dtype=state_dt)
    positions = np.zeros(m, dtype=position_dt)
    pending = np.zeros(m, dtype=order_dt)
    acc = np.zeros(N_ACC)
    marks = np.empty(m)
    order_buf = np.empty(m, dtype=np.int64)
    bars_state = np.zeros(N_STATES, dtype=np.int64)
    _simulate_loop_nb(
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
        month_id,
        ordermin,
        costmin,
        lot_dec,
        price_dec,
        quote_dec,
        p,
        record,
        trades,
        events,
        equity_rows,
        metrics,
        refusals,
        cnt,
        kcode,
        kpair,
        kval,
        state,
        positions,
        pending,
        acc,
        marks,
        order_buf,
        bars_state,
    )


# No reference counting in the bar loop (``_nrt=False``: it allocates nothing, its caller owns every
# array). With it, numba increments and decrements the count of each array bound to a parameter of
# an inlined phase (execute_open_nb/execute_close_nb take 22-24), two atomic calls apiece on every bar
# with orders; measured: 12.5 -> 11.4 ms for 10 pairs x 45k bars trading throughout.
@njit(cache=True, _nrt=False)  # type: ignore[call-overload]  # _nrt: numba option absent from its stubs
def _simulate_loop_nb(
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
    month_id,
    ordermin,
    costmin,
    lot_dec,
    price_dec,
    quote_dec,
    p,
    record: bool,
    trades,
    events,
    equity_rows,
    metrics,
    refusals,
    cnt,
    kcode,
    kpair,
    kval,
    state,
    positions,
    pending,
    acc,
    marks,
    order_buf,
    bars_state,
):
    n, m = close.shape
    init_state_nb(state, positions, pending, p.init_cash)
    st = state[0]
    for i in range(cnt.shape[0]):
        cnt[i] = 0
    cnt[C_RECORD] = 1 if record else 0
    for i in range(refusals.shape[0]):
        refusals[i] = 0
    rec = record
    nx = bx.shape[0] != 0  # per-bar exit parameters given ([strategy] enabled)
    placed = False  # orders were decided at the last close (pending until bar t's close)
    # streaming metrics
    prev_eq = p.init_cash
    r_n = 0  # returns folded into r_mean / r_m2
    r_z = 0  # zero returns not yet folded in (_bar_metrics_nb)
    r_mean = 0.0
    r_m2 = 0.0
    down_sq = 0.0
    mpeak = p.init_cash  # metric peak (never reset by an operator)
    max_dd = 0.0
    cur_month = -1
    month_peak = p.init_cash
    worst_mdd = 0.0
    sum_eq = 0.0
    sum_expo = 0.0
    t = 0
    while t < n:
        if not placed and not rec and st.n_positions == 0 and st.equity == prev_eq:
            # Quiet bars: see _quiet_run_nb. Each leaves the state as it is and has a return of
            # exactly 0, so only the counters move.
            t0 = t
            t, sum_eq, cur_month, month_peak, n_nd, n_nt, n_bl = _quiet_run_nb(
                t,
                st,
                p,
                p_up,
                positions,
                valid,
                close,
                tradable,
                entry_block,
                api_fault,
                operator,
                kcode,
                month_id,
                prev_eq,
                sum_eq,
                cur_month,
                month_peak,
            )
            if t > t0:
                r_z += t - t0
                bars_state[st.trading_state] += t - t0
                st.bar = t - 1
                _add_blocked_nb(st, refusals, n_nd, n_nt, n_bl)
        if not rec and t < n:
            (
                t,
                placed,
                prev_eq,
                r_n,
                r_z,
                r_mean,
                r_m2,
                down_sq,
                mpeak,
                max_dd,
                cur_month,
                month_peak,
                worst_mdd,
                sum_eq,
                sum_expo,
            ) = _hold_run_nb(
                t,
                placed,
                state,
                p,
                positions,
                pending,
                p_up,
                exp_ret,
                bx,
                open_,
                high,
                low,
                volume,
                valid,
                close,
                atr,
                spread,
                cluster,
                tradable,
                entry_block,
                api_fault,
                operator,
                kcode,
                month_id,
                ordermin,
                costmin,
                lot_dec,
                price_dec,
                quote_dec,
                trades,
                events,
                cnt,
                acc,
                refusals,
                marks,
                order_buf,
                bars_state,
                prev_eq,
                r_n,
                r_z,
                r_mean,
                r_m2,
                down_sq,
                mpeak,
                max_dd,
                cur_month,
                month_peak,
                worst_mdd,
                sum_eq,
                sum_expo,
            )
        if t >= n:
            break
        if not rec:
            _prefetch_ahead_nb(t, n, exp_ret, atr, tradable, cluster, spread)
        # ---- 1. orders decided at t-1 execute in bar t (engine.risk.nb.execute_open_nb)
        if placed:
            execute_open_nb(
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
        # ---- 2. resets and kill-switch triggers (engine.risk.nb.kill_check_nb)
        op = operator[t]
        if kill_reset_due_nb(st, op, t, p):
            reset_kill_nb(state, t, events, cnt)
        if halt_reset_due_nb(st, op, t, p):
            reset_halt_nb(state, t, events, cnt)
        if op != 0:
            operator_flags_nb(state, op, t, events, cnt)
        trig = 0
        trig_pair = -1
        trig_val = 0.0
        if api_fault[t]:
            trig = KILL.API_INSTABILITY
        else:
            trig = kcode[t]
            trig_pair = kpair[t]
            trig_val = kval[t]
        if latch_kill_nb(st, t, trig):
            cnt[C_KILLS] += 1
            if rec:
                emit_event_nb(events, cnt, t, trig_pair, EVENT.KILL, REASON.KILL_API + trig - 1, trig_val)
        st.trading_state = effective_state_nb(st)
        # ---- 3. limit orders not traded through: market fallback at the close (execute_close_nb)
        if placed:
            execute_close_nb(
                t,
                t,
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
        # every order of bar t-1 is now filled or cancelled: nothing is pending until decisions below
        placed = False
        # ---- 4. mark to the close (engine.risk.nb.mark_nb)
        # (only held pairs' marks are ever read: a flat book needs no marking, its exposure is 0)
        n_held = st.n_positions
        halt_ev, tier_ev = mark_state_nb(
            st, mark_positions_nb(t, positions, close, valid) if n_held != 0 else 0.0, t, p
        )
        if rec and halt_ev:
            emit_event_nb(events, cnt, t, -1, EVENT.TIER, REASON.HALT, st.drawdown)
        if rec and tier_ev:
            emit_event_nb(events, cnt, t, -1, EVENT.TIER, REASON.TIER_CHANGE, st.drawdown)
        # ---- 5. decisions at the close (engine.risk.nb.decide_nb): exits, then entries
        flat = st.flatten != 0
        st.flatten = 0
        for j in range(m if n_held != 0 else 0):
            pos = positions[j]
            if pos.qty == 0.0 or pending[j].active != 0 or not valid[t, j]:
                continue
            c = close[t, j]
            if flat:
                reason, kind = REASON.EXIT_OPERATOR, KIND.MARKET
            else:
                reason, kind = exit_reason_nb(pos, c, p_up[t, j], t, p)
            if reason == 0:
                if nx and tighten_stop_nb(pos, bx[t, j, BX_FLOOR]) and rec:
                    emit_event_nb(events, cnt, t, j, EVENT.STOP, REASON.STOP_TIGHTENED, pos.stop)
                continue
            exit_order_nb(pending[j], pos, t, c, reason, kind, atr[t, j], spread[t, j], price_dec[j], p)
            placed = True
            if rec:
                emit_event_nb(events, cnt, t, j, EVENT.ORDER, reason, pos.qty)
        if flat:
            pass  # operator flatten: no entry is decided at this close (R22b)
        elif not rec and _entries_refused_nb(
            t,
            st,
            p,
            order_buf,
            _candidates_nb(t, p, p_up, positions, order_buf),
            p_up,
            positions,
            valid,
            close,
            exp_ret,
            atr,
            tradable,
            entry_block,
            refusals,
        ):
            pass  # every candidate refused and counted
        else:
            thr = p.p_up_entry
            any_cand = False
            for j in range(m):
                any_cand |= (p_up[t, j] >= thr) & (positions[j].qty == 0.0) & (pending[j].active == 0)
            if any_cand and entries_nb(
                t,
                t,
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
                placed = True
        if placed and not rec:
            _prefetch_fills_nb(t + 1, n, open_, high, low, close, volume, cluster)
        # ---- streaming metrics
        (
            prev_eq,
            r_n,
            r_z,
            r_mean,
            r_m2,
            down_sq,
            mpeak,
            max_dd,
            cur_month,
            month_peak,
            worst_mdd,
            sum_eq,
            sum_expo,
            xf,
        ) = _bar_end_nb(
            st,
            month_id[t],
            bars_state,
            prev_eq,
            r_n,
            r_z,
            r_mean,
            r_m2,
            down_sq,
            mpeak,
            max_dd,
            cur_month,
            month_peak,
            worst_mdd,
            sum_eq,
            sum_expo,
        )
        eq = prev_eq
        if rec and t < equity_rows.shape[0]:
            row = equity_rows[t]
            row.bar = t
            row.equity = eq
            row.cash = st.cash
            row.exposure = xf
            row.drawdown = st.drawdown
            row.trading_state = st.trading_state
            row.n_positions = st.n_positions
            row.kill_reason = st.kill_reason
        t += 1
    r_n, r_mean, r_m2 = _merge_zero_returns_nb(r_n, r_z, r_mean, r_m2)
    _finish_metrics_nb(
        metrics,
        st,
        p,
        n,
        r_n,
        r_mean,
        r_m2,
        down_sq,
        max_dd,
        worst_mdd,
        sum_eq,
        sum_expo,
        bars_state,
        cnt,
        acc,
        refusals,
    )


@njit(cache=True)
def simulate_reference_nb(
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
    month_id,
    ordermin,
    costmin,
    lot_dec,
    price_dec,
    quote_dec,
    p,
    record: bool,
    trades,
    events,
    equity_rows,
    metrics,
    refusals,
    cnt,
):
    """Reference: ``simulate_nb`` as a plain loop over :func:`engine.risk.nb.step_nb` (tests only)."""
    n, m = close.shape
    state = np.zeros(1, dtype=state_dt)
    positions = np.zeros(m, dtype=position_dt)
    pending = np.zeros(m, dtype=order_dt)
    init_state_nb(state, positions, pending, p.init_cash)
    st = state[0]
    acc = np.zeros(N_ACC)
    marks = np.empty(m)
    order_buf = np.empty(m, dtype=np.int64)
    for i in range(cnt.shape[0]):
        cnt[i] = 0
    cnt[C_RECORD] = 1 if record else 0
    for i in range(refusals.shape[0]):
        refusals[i] = 0
    # streaming metrics
    prev_eq = p.init_cash
    r_n = 0  # returns folded into r_mean / r_m2
    r_z = 0  # zero returns not yet folded in (_bar_metrics_nb)
    r_mean = 0.0
    r_m2 = 0.0
    down_sq = 0.0
    mpeak = p.init_cash  # metric peak (never reset by an operator)
    max_dd = 0.0
    cur_month = -1
    month_peak = p.init_cash
    worst_mdd = 0.0
    sum_eq = 0.0
    sum_expo = 0.0
    bars_state = np.zeros(N_STATES, dtype=np.int64)
    for t in range(n):
        step_nb(
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
        (
            prev_eq,
            r_n,
            r_z,
            r_mean,
            r_m2,
            down_sq,
            mpeak,
            max_dd,
            cur_month,
            month_peak,
            worst_mdd,
            sum_eq,
            sum_expo,
            xf,
        ) = _bar_end_nb(
            st,
            month_id[t],
            bars_state,
            prev_eq,
            r_n,
            r_z,
            r_mean,
            r_m2,
            down_sq,
            mpeak,
            max_dd,
            cur_month,
            month_peak,
            worst_mdd,
            sum_eq,
            sum_expo,
        )
        eq = prev_eq
        if record and t < equity_rows.shape[0]:
            row = equity_rows[t]
            row.bar = t
            row.equity = eq
            row.cash = st.cash
            row.exposure = xf
            row.drawdown = st.drawdown
            row.trading_state = st.trading_state
            row.n_positions = st.n_positions
            row.kill_reason = st.kill_reason
    r_n, r_mean, r_m2 = _merge_zero_returns_nb(r_n, r_z, r_mean, r_m2)
    _finish_metrics_nb(
        metrics,
        st,
        p,
        n,
        r_n,
        r_mean,
        r_m2,
        down_sq,
        max_dd,
        worst_mdd,
        sum_eq,
        sum_expo,
        bars_state,
        cnt,
        acc,
        refusals,
    )


@njit(cache=True)
def _finish_metrics_nb(
    metrics, st, p, n, r_n, r_mean, r_m2, down_sq, max_dd, worst_mdd, sum_eq, sum_expo, bars_state, cnt, acc, refusals
):
    mt = metrics
    mt.final_equity = st.equity
    mt.total_return = st.equity / p.init_cash - 1.0
    mt.bars = n
    if n > 0 and st.equity > 0.0:
        mt.annual_return = (st.equity / p.init_cash) ** (BARS_PER_YEAR / n) - 1.0
    else:
        mt.annual_return = -1.0 if n > 0 else 0.0
    std = math.sqrt(r_m2 / (r_n - 1)) if r_n > 1 else np.nan
    mt.sharpe = r_mean / std * math.sqrt(BARS_PER_YEAR) if (std == std and std > 0.0) else np.nan
    dr = math.sqrt(down_sq / r_n) if r_n > 0 else np.nan
    mt.sortino = r_mean / dr * math.sqrt(BARS_PER_YEAR) if (dr == dr and dr > 0.0) else np.nan
    mt.max_drawdown = max_dd
    mt.calmar = mt.annual_return / max_dd if max_dd > 0.0 else np.nan
    mt.worst_month_drawdown = worst_mdd
    mean_eq = sum_eq / n if n > 0 else p.init_cash
    mt.turnover = st.traded_notional / mean_eq * (BARS_PER_YEAR / n) if n > 0 else 0.0
    mt.mean_exposure = sum_expo / n if n > 0 else 0.0
    mt.n_fills = cnt[C_FILLS]
    mt.n_trades = int(acc[A_CLOSED])
    mt.win_rate = acc[A_WINS] / acc[A_CLOSED] if acc[A_CLOSED] > 0 else np.nan
    mt.profit_factor = (
        acc[A_GROSS_PROFIT] / acc[A_GROSS_LOSS]
        if acc[A_GROSS_LOSS] > 0.0
        else (np.inf if acc[A_GROSS_PROFIT] > 0.0 else np.nan)
    )
    mt.fees_paid = st.fees_paid
    mt.bars_active = bars_state[STATE.ACTIVE]
    mt.bars_reducing_1 = bars_state[STATE.REDUCING_1]
    mt.bars_reducing_2 = bars_state[STATE.REDUCING_2]
    mt.bars_halted = bars_state[STATE.HALTED]
    mt.bars_kill_switch = bars_state[STATE.KILL_SWITCH]
    nr = 0
    for i in range(refusals.shape[0]):
        nr += refusals[i]
    mt.n_refusals = nr
    mt.n_kill_events = cnt[C_KILLS]
    mt.records_overflow = cnt[C_OVERFLOW]


@njit(cache=True)
def _run_set_nb(
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
    month_id,
    ordermin,
    costmin,
    lot_dec,
    price_dec,
    quote_dec,
    p,
    metrics,
    refusals,
    kill_pre,
    kcode,
    kpair,
    kval,
):
    trades = np.zeros(0, dtype=trade_dt)
    events = np.zeros(0, dtype=event_dt)
    eqrows = np.zeros(0, dtype=equity_dt)
    cnt = np.zeros(N_CNT, dtype=np.int64)
    simulate_core_nb(
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
        month_id,
        ordermin,
        costmin,
        lot_dec,
        price_dec,
        quote_dec,
        p,
        False,
        trades,
        events,
        eqrows,
        metrics,
        refusals,
        cnt,
        kill_pre,
        kcode,
        kpair,
        kval,
    )


@njit(cache=True)
def _shared_kill_triggers_nb(open_, high, low, close, valid, atr, spread, params):
    """(shared?, code, pair, value): the kill-switch triggers once for all sets when they share the
    kill-switch parameters (the triggers depend on the bars and those parameters only)."""
    n = close.shape[0]
    if params.shape[0] > 1 and same_kill_params_nb(params):
        kcode = np.empty(n, dtype=np.int64)
        kpair = np.empty(n, dtype=np.int64)
        kval = np.empty(n)
        kill_triggers_nb(open_, high, low, close, valid, atr, spread, params[0], kcode, kpair, kval)
        return True, kcode, kpair, kval
    return False, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)


@njit(cache=True, parallel=True)
def run_sets_nb(
    open_,
    high,
    low,
    close,
    volume,
    valid,
    p_up,
    exp_ret,
    sig_of_set,
    bx,
    atr,
    spread,
    cluster,
    tradable,
    entry_block,
    api_fault,
    operator,
    month_id,
    ordermin,
    costmin,
    lot_dec,
    price_dec,
    quote_dec,
    params,
    metrics_out,
    refusals_out,
):
    """Many parameter sets in one call, in parallel. ``p_up``/``exp_ret`` are (K, n, m) signal sets;
    set s reads signal set ``sig_of_set[s]``. Only metrics and refusal counts are kept (flat memory).
    Kill-switch triggers are computed once when every set shares their parameters."""
    S = params.shape[0]
    pre, kcode, kpair, kval = _shared_kill_triggers_nb(open_, high, low, close, valid, atr, spread, params)
    for s in prange(S):
        k = sig_of_set[s]
        _run_set_nb(
            open_,
            high,
            low,
            close,
            volume,
            valid,
            p_up[k],
            exp_ret[k],
            bx,
            atr,
            spread,
            cluster,
            tradable,
            entry_block,
            api_fault,
            operator,
            month_id,
            ordermin,
            costmin,
            lot_dec,
            price_dec,
            quote_dec,
            params[s],
            metrics_out[s],
            refusals_out[s],
            pre,
            kcode,
            kpair,
            kval,
        )


@njit(cache=True, parallel=True)
def ma_sweep_nb(
    open_,
    high,
    low,
    close,
    volume,
    valid,
    atr,
    spread,
    cluster,
    tradable,
    entry_block,
    api_fault,
    operator,
    month_id,
    ordermin,
    costmin,
    lot_dec,
    price_dec,
    quote_dec,
    fasts,
    slows,
    scale,
    params,
    metrics_out,
    refusals_out,
    n_buf,
    windows,
    fast_w,
    slow_w,
):
    """Signal sweep through the whole pipeline in one call: for each set s, the SMA(fasts[s]) /
    SMA(slows[s]) signal (engine.backtest.demo.ma_signal_nb), the backtest with params[s], and its
    metrics. Signals are built per set inside the parallel loop into one of ``n_buf`` buffers (pass
    the thread count; sets c, c + T, c + 2T, ... use buffer c), so memory stays flat and no set
    allocates its signal; each set's result depends on its own inputs only, never on ``n_buf`` or
    the thread count. With ``windows`` (the distinct window lengths; set s uses
    ``windows[fast_w[s]]`` and ``windows[slow_w[s]]``) each SMA is computed once for all sets, in
    parallel, and a set's signal is one division per bar from that table (the same values bit for
    bit); with an empty ``windows`` each set computes its own. ``engine.backtest.runner.run_ma_sweep``
    is the Python entry point (it chooses the table when it fits its memory budget)."""
    S = params.shape[0]
    n, m = close.shape
    pre, kcode, kpair, kval = _shared_kill_triggers_nb(open_, high, low, close, valid, atr, spread, params)
    no_bx = np.zeros((0, m, BX_N))  # the MA signal has no per-bar exit parameters
    W = windows.shape[0]
    table = np.empty((W, n, m))
    for w in prange(W):
        sma_into_nb(close, windows[w], table[w])
    T = max(1, min(n_buf, S))
    pu_buf = np.empty((T, n, m))
    er_buf = np.empty((T, n, m))
    for c in prange(T):
        pu = pu_buf[c]
        er = er_buf[c]
        for s in range(c, S, T):
            if W > 0:
                ma_signal_from_sma_nb(table[fast_w[s]], table[slow_w[s]], scale, pu, er)
            else:
                ma_signal_into_nb(close, fasts[s], slows[s], scale, pu, er)
            _run_set_nb(
                open_,
                high,
                low,
                close,
                volume,
                valid,
                pu,
                er,
                no_bx,
                atr,
                spread,
                cluster,
                tradable,
                entry_block,
                api_fault,
                operator,
                month_id,
                ordermin,
                costmin,
                lot_dec,
                price_dec,
                quote_dec,
                params[s],
                metrics_out[s],
                refusals_out[s],
                pre,
                kcode,
                kpair,
                kval,
            )
