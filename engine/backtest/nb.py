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
a sweep), and so do the entry masks (``entry_masks_nb``: per bar, 64 pairs a word, the entry
candidates by the outcome of their per-pair checks, which read the signal, the bars and three
parameters only); without records, the rows that only bars with work read (entries, exits, fills)
are prefetched a bar or two ahead (engine.backtest.prefetch, a hint), only the held pairs are
marked (only their marks are ever read; a pair opened on a bar without a close takes the mark the
reference gives it, ``_mark_opened_nb``), and the candidates of a bar are never visited one by one
unless an entry may be placed: their refusals are popcounts of the masks and the flat pairs
(engine.backtest.bits). Without records, the bars go to two tight loops: ``_quiet_run_nb`` (flat
book, nothing pending: nothing can change, only counters move) and ``_hold_run_nb`` (its own
function), which runs every bar whose phase 2 changes nothing (no reset or operator bit due, no
kill-switch trigger that would latch): pending orders execute (``_execute_bar_nb``, out of line),
the mark and the exit tests share one pass over the held pairs (``_exit_due_nb``), exits are
placed, and entries are decided: where every candidate is refused (entries blocked, per-pair
checks, max positions, no exposure room) the refusals are counted from the masks without calling
``entries_nb`` (``_entries_refused_nb``), otherwise entries_nb runs. Each loop checks a bar before
changing anything and leaves the first bar that needs more to the full bar (in a run trading
throughout, about 300 of 45k bars). Entries (``engine.risk.nb.entries_nb``, the code ``decide_nb``
runs) are called out of line: inlined, their many live values made the compiler spill the loop's
own on every bar (47 -> 25 ns per bar held, one pair).
``simulate_reference_nb`` is the plain loop over ``step_nb``; tests/test_backtest_speedpath.py
checks the two bit for bit on real data. ``run_sets_nb`` runs many parameter sets in parallel
(``prange`` over sets): each set owns its state, so the result does not depend on the thread count.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from engine.backtest.bits import ctz_nb, popcount_nb
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
    SIZING_FIXED_FRACTION,
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


# entry masks (``entry_masks_nb``): per bar and per 64-pair word, the entry candidates (P(up) >=
# threshold) and, among them, each outcome of the per-pair checks of entry_static_gate_nb that do
# not depend on the state: no data, not tradable, edge, ATR, or none (live)
EM_CAND, EM_NO_DATA, EM_NOT_TRADABLE, EM_EDGE, EM_NO_ATR, EM_LIVE = 0, 1, 2, 3, 4, 5
EM_N = 6


def mask_words(m: int) -> int:
    """64-bit words per pair mask of ``m`` pairs."""
    return (m + 63) // 64


@njit(cache=True)
def entry_masks_nb(p_up, exp_ret, atr, valid, close, tradable, p, out) -> None:
    """Fill ``out`` (n, EM_N, words) uint64: bit ``j % 64`` of word ``j // 64`` of ``out[t, k]`` is
    set where pair ``j`` at bar ``t`` is a candidate (P(up) >= ``p.p_up_entry``; EM_CAND) and, for
    EM_NO_DATA .. EM_LIVE, where entry_static_gate_nb refuses that candidate for that reason or
    passes it, leaving out what depends on the state and the bar (halt, kill switch, pause,
    entry-block window, which come between the tradable and the edge checks there). A function of
    the bars, the signal and three parameters (``p_up_entry``, ``min_edge``, whether the sizing
    needs an ATR) only, like the kill-switch triggers: computed once per inputs (memoised by
    engine.backtest.runner) and shared by the sets of a sweep. Keep it in step with
    entry_static_gate_nb (tests/test_backtest_speedpath.py checks the loops bit for bit)."""
    n, m = close.shape
    thr = p.p_up_entry
    me = p.min_edge
    no_atr_ok = p.sizing == SIZING_FIXED_FRACTION  # fixed-fraction sizing needs no ATR
    for t in range(n):
        for w in range(out.shape[2]):
            cand = np.uint64(0)
            nd = np.uint64(0)
            nt = np.uint64(0)
            ed = np.uint64(0)
            na = np.uint64(0)
            j0 = 64 * w
            for j in range(j0, min(m, j0 + 64)):  # no branch per pair: each outcome is a bit
                b = np.uint64(j - j0)
                c_ = p_up[t, j] >= thr
                dat = valid[t, j] & (close[t, j] > 0.0)
                trd = dat & tradable[t, j]
                edge = trd & (exp_ret[t, j] > me)  # NaN: no edge
                atr_ok = edge & (no_atr_ok | (atr[t, j] > 0.0))  # NaN: no ATR
                cand |= np.uint64(c_) << b
                nd |= np.uint64(c_ & (not dat)) << b
                nt |= np.uint64(c_ & dat & (not trd)) << b
                ed |= np.uint64(c_ & trd & (not edge)) << b
                na |= np.uint64(c_ & edge & (not atr_ok)) << b
            out[t, EM_CAND, w] = cand
            out[t, EM_NO_DATA, w] = nd
            out[t, EM_NOT_TRADABLE, w] = nt
            out[t, EM_EDGE, w] = ed
            out[t, EM_NO_ATR, w] = na
            out[t, EM_LIVE, w] = cand & ~(nd | nt | ed | na)


@njit(cache=True, inline="always")
def _held_mask_nb(positions, held) -> None:
    """Set ``held`` (words) to the pairs with an open position (no branch per pair)."""
    m = positions.shape[0]
    for w in range(held.shape[0]):
        acc = np.uint64(0)
        j0 = 64 * w
        for j in range(j0, min(m, j0 + 64)):
            acc |= np.uint64(positions[j].qty != 0.0) << np.uint64(j - j0)
        held[w] = acc


@njit(cache=True, inline="always")
def _flat_candidates_nb(em, u, held) -> bool:
    """Any entry candidate at bar ``u`` among the pairs not in ``held``."""
    any_c = np.uint64(0)
    for w in range(held.shape[0]):
        any_c |= em[u, EM_CAND, w] & ~held[w]
    return any_c != 0


@njit(cache=True, inline="always")
def _last_mark_nb(close, valid, t, j) -> float:
    """The mark ``engine.risk.nb.mark_positions_nb`` gives pair ``j`` at bar ``t`` when it marks every
    pair every bar: its close at the last bar <= t where it is valid with a close (NaN: none)."""
    for s in range(t, -1, -1):
        c = close[s, j]
        if valid[s, j] and c == c:
            return c
    return np.nan


@njit(cache=True, inline="always")
def _mark_opened_nb(t, positions, close, valid, before, after) -> None:
    """Pairs opened at bar ``t`` (in ``after``, not in ``before``): the marks of flat pairs are not
    kept up to date by the records-off loop (only held pairs' marks are ever read), so an opened
    pair gets the mark the reference path (every pair marked every bar) holds for it; bar ``t``'s
    own close then re-marks it as usual."""
    for w in range(after.shape[0]):
        nw = after[w] & ~before[w]
        while nw != 0:
            j = 64 * w + ctz_nb(nw)
            nw &= nw - np.uint64(1)
            positions[j].mark = _last_mark_nb(close, valid, t, j)


@njit(cache=True, inline="always")
def _entries_refused_nb(u, st, p, em, held, entry_block, refusals):
    """Phase 5's entries at the close of bar ``u`` (an index) without records, where no flat pair has
    an order pending (every order of the last close has executed or been cancelled; this close's
    exits are for held pairs), when every candidate is refused: then each refusal is counted as
    ``engine.risk.nb.entries_nb`` counts it and True is returned; otherwise (an order may be placed)
    nothing is counted and False is returned (the caller runs entries_nb). The candidates are the
    flat pairs (not in ``held``) of the entry masks ``em`` (entry_masks_nb), counted by the outcome
    of their per-pair checks. Every candidate is refused when entries are blocked (halt, kill
    switch, pause, entry-block window: those without data or not tradable are refused for that,
    the others for the block, entry_static_gate_nb's order), when none passes the per-pair checks,
    or when those that pass all meet the same first bar-wide cap while no order is placed: the book
    at max positions (REFUSE_MAX_POSITIONS) or no exposure room (REFUSE_EXPOSURE; the room as
    entry_gate_nb computes it)."""
    n_nd = 0
    n_nt = 0
    n_ed = 0
    n_na = 0
    n_live = 0
    for w in range(held.shape[0]):
        f = ~held[w]
        n_nd += popcount_nb(em[u, EM_NO_DATA, w] & f)
        n_nt += popcount_nb(em[u, EM_NOT_TRADABLE, w] & f)
        n_ed += popcount_nb(em[u, EM_EDGE, w] & f)
        n_na += popcount_nb(em[u, EM_NO_ATR, w] & f)
        n_live += popcount_nb(em[u, EM_LIVE, w] & f)
    blocked = 0
    if st.halted != 0:
        blocked = REASON.REFUSE_HALTED
    elif st.kill_reason != 0:
        blocked = REASON.REFUSE_KILL_SWITCH
    elif st.paused != 0:
        blocked = REASON.REFUSE_PAUSED
    elif entry_block[u]:
        blocked = REASON.REFUSE_TRAINING_WINDOW
    if blocked == 0 and n_live > 0:
        cap, maxpos, rmult = caps_nb(st, p)
        if st.n_positions >= maxpos:
            refusals[REASON.REFUSE_MAX_POSITIONS] += n_live
        elif cap * cap_base_nb(st.equity, p) - st.exposure <= 0.0:
            refusals[REASON.REFUSE_EXPOSURE] += n_live
        else:
            return False  # an order may be placed: entries_nb decides and counts every refusal
    refusals[REASON.REFUSE_NO_DATA] += n_nd
    refusals[REASON.REFUSE_NOT_TRADABLE] += n_nt
    if blocked != 0:
        refusals[blocked] += n_ed + n_na + n_live
    else:
        refusals[REASON.REFUSE_EDGE] += n_ed
        refusals[REASON.REFUSE_NO_ATR] += n_na
    return True


@njit(cache=True, inline="always")
def _quiet_run_nb(
    t,
    st,
    p,
    em,
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
    candidates' refusal counts from the entry masks ``em`` (entry_masks_nb): no data, not tradable,
    blocked). Checked bit for bit against the step_nb loop (tests/test_backtest_speedpath.py)."""
    n = em.shape[0]
    nw = em.shape[2]
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
            for w in range(nw):
                n_nd += popcount_nb(em[u, EM_NO_DATA, w])
                n_nt += popcount_nb(em[u, EM_NOT_TRADABLE, w])
                n_bl += popcount_nb(em[u, EM_EDGE, w] | em[u, EM_NO_ATR, w] | em[u, EM_LIVE, w])
        else:
            cand = np.uint64(0)
            for w in range(nw):
                cand |= em[u, EM_CAND, w]
            if cand != 0:
                break
        mo = month_id[u]
        if mo != cur_month:
            cur_month = mo
            month_peak = eq
        sum_eq += eq
        t += 1
    return t, sum_eq, cur_month, month_peak, n_nd, n_nt, n_bl


@njit(cache=True, inline="always")
def _add_blocked_nb(st, refusals, n_nd, n_nt, n_bl):
    """Add the blocked-bar refusal counts of _quiet_run_nb (the blocking reason from the state: halt,
    kill switch, operator pause, otherwise the entry-block window)."""
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
    em,
    held,
    held_before,
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
    n = close.shape[0]
    nw = held.shape[0]
    nx = bx.shape[0] != 0
    _held_mask_nb(positions, held)
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
            for w in range(nw):
                held_before[w] = held[w]
            _held_mask_nb(positions, held)
            _mark_opened_nb(t, positions, close, valid, held_before, held)
        # ---- phase 4: mark the held pairs to the close (mark_positions_nb: only held pairs' marks are
        # ever read; _mark_opened_nb), in one pass with the exit tests of phase 5 (_exit_due_nb)
        n_held = st.n_positions
        expo = 0.0
        due = False
        for w in range(nw):
            hb = held[w]
            while hb != 0:
                j = 64 * w + ctz_nb(hb)
                hb &= hb - np.uint64(1)
                pos = positions[j]
                vj = valid[u, j]
                c = close[u, j]
                if vj and c == c:
                    pos.mark = c
                expo += pos.qty * pos.mark
                due |= vj & _exit_due_nb(pos, c, p_up[u, j], t, p)
        mark_state_nb(st, expo, t, p)
        # ---- phase 5: exits (nothing is pending: every held pair with a valid bar is checked), then
        # entries (only flat pairs can be candidates: the entry masks, _entries_refused_nb)
        if due or (nx and n_held != 0):
            for w in range(nw):
                hb = held[w]
                while hb != 0:
                    j = 64 * w + ctz_nb(hb)
                    hb &= hb - np.uint64(1)
                    if valid[u, j]:
                        pos = positions[j]
                        c = close[u, j]
                        reason, kind = exit_reason_nb(pos, c, p_up[u, j], t, p)
                        if reason != 0:
                            exit_order_nb(pending[j], pos, t, c, reason, kind, atr[u, j], spread[u, j], price_dec[j], p)
                            placed = True
                        elif nx:  # held with no exit: capital preservation's stop floor (R26)
                            tighten_stop_nb(pos, bx[u, j, BX_FLOOR])
        if _flat_candidates_nb(em, u, held) and not _entries_refused_nb(u, st, p, em, held, entry_block, refusals):
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
        np.zeros((0, EM_N, (close.shape[1] + 63) // 64), dtype=np.uint64),
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
    em,
):
    """``simulate_nb``; with ``kill_pre`` the kill-switch triggers of each bar are the given
    ``kcode``/``kpair``/``kval`` (``engine.risk.nb.kill_triggers_nb``, computed once for all the sets of
    a sweep), otherwise this run computes them first. Without records the loop reads the entry masks
    ``em`` (entry_masks_nb, (n, EM_N, words): memoised or shared by the caller; with another number of
    rows this run computes them). Allocates the portfolio's state and scratch
    arrays, then runs the bar loop (``_simulate_loop_nb``)."""
    n, m = close.shape
    if not kill_pre:
        # the kill-switch triggers depend on the bars and the kill parameters only: one pass over the
        # data before the loop instead of per-pair checks inside it
        kcode = np.empty(n, dtype=np.int64)
        kpair = np.empty(n, dtype=np.int64)
        kval = np.empty(n)
        kill_triggers_nb(open_, high, low, close, valid, atr, spread, p, kcode, kpair, kval)
    nw = (m + 63) // 64
    if not record and em.shape[0] != n:
        em = np.empty((n, EM_N, nw), dtype=np.uint64)
        entry_masks_nb(p_up, exp_ret, atr, valid, close, tradable, p, em)
    held = np.zeros(nw, dtype=np.uint64)
    held_before = np.zeros(nw, dtype=np.uint64)
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
        em,
        held,
        held_before,
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
    em,
    held,
    held_before,
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
                em,
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
                em,
                held,
                held_before,
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
            _held_mask_nb(positions, held_before)
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
        if placed:
            _held_mask_nb(positions, held)
            _mark_opened_nb(t, positions, close, valid, held_before, held)
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
        if not rec:
            _held_mask_nb(positions, held)
        if flat:
            pass  # operator flatten: no entry is decided at this close (R22b)
        elif not rec and _entries_refused_nb(t, st, p, em, held, entry_block, refusals):
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
    em,
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
        em,
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
    em_all,
    em_of_set,
):
    """Many parameter sets in one call, in parallel. ``p_up``/``exp_ret`` are (K, n, m) signal sets;
    set s reads signal set ``sig_of_set[s]``. Only metrics and refusal counts are kept (flat memory).
    Kill-switch triggers are computed once when every set shares their parameters. Set s reads the
    entry masks ``em_all[em_of_set[s]]`` (entry_masks_nb, one per distinct signal set and entry
    parameters: engine.backtest.runner.run_sweep); ``em_of_set[s]`` < 0: it computes its own."""
    S = params.shape[0]
    pre, kcode, kpair, kval = _shared_kill_triggers_nb(open_, high, low, close, valid, atr, spread, params)
    no_em = np.zeros((0, EM_N, em_all.shape[3]), dtype=np.uint64)
    for s in prange(S):
        k = sig_of_set[s]
        g = em_of_set[s]
        em = em_all[g] if g >= 0 else no_em
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
            em,
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
    no_em = np.zeros((0, EM_N, (m + 63) // 64), dtype=np.uint64)  # each set's signal: its own masks
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
                no_em,
            )
