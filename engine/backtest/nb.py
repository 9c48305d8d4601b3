"""Backtest kernels: the risk step over every bar, for one or many parameter sets (numba).

``simulate_nb`` runs :func:`engine.risk.nb.step_nb` over all bars of one portfolio and streams its
metrics (``metrics_dt``); full records (trades, events, equity rows) are written only when the
caller passes arrays with room for them. ``run_sets_nb`` runs many parameter sets in parallel
(``prange`` over sets): each set owns its state, so the result does not depend on the thread count.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from engine.backtest.demo import ma_signal_nb
from engine.risk.enums import equity_dt as _equity_dt
from engine.risk.enums import event_dt as _event_dt
from engine.risk.enums import order_dt, position_dt, state_dt
from engine.risk.enums import trade_dt as _trade_dt
from engine.risk.nb import (
    A_CLOSED, A_GROSS_LOSS, A_GROSS_PROFIT, A_WINS, C_FILLS, C_KILLS, C_OVERFLOW, C_RECORD, N_ACC, N_CNT,
    init_state_nb, step_nb,
)

BARS_PER_YEAR = 8760.0


@njit(cache=True)
def simulate_nb(open_, high, low, close, volume, valid, p_up, exp_ret, atr, spread, cluster, api_fault,
                operator, month_id, ordermin, costmin, lot_dec, price_dec, p, record: bool,
                trades, events, equity_rows, metrics, refusals, cnt):
    """Run one portfolio over all bars; fill ``metrics`` (one metrics_dt record) and ``refusals``."""
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
    r_n = 0
    r_mean = 0.0
    r_m2 = 0.0
    down_sq = 0.0
    mpeak = p.init_cash        # metric peak (never reset by an operator)
    max_dd = 0.0
    cur_month = -1
    month_peak = p.init_cash
    worst_mdd = 0.0
    sum_eq = 0.0
    sum_expo = 0.0
    bars_state = np.zeros(5, dtype=np.int64)
    for t in range(n):
        step_nb(t, state, positions, pending, open_, high, low, close, volume, valid, p_up, exp_ret, atr,
                spread, cluster, api_fault, operator, ordermin, costmin, lot_dec, price_dec, p,
                trades, events, cnt, acc, refusals, marks, order_buf)
        eq = st.equity
        r = eq / prev_eq - 1.0 if prev_eq > 0.0 else 0.0
        r_n += 1
        d = r - r_mean
        r_mean += d / r_n
        r_m2 += d * (r - r_mean)
        if r < 0.0:
            down_sq += r * r
        if eq > mpeak:
            mpeak = eq
        dd = 1.0 - eq / mpeak
        if dd > max_dd:
            max_dd = dd
        mo = month_id[t]
        if mo != cur_month:
            cur_month = mo
            month_peak = prev_eq
        if eq > month_peak:
            month_peak = eq
        mdd = 1.0 - eq / month_peak
        if mdd > worst_mdd:
            worst_mdd = mdd
        prev_eq = eq
        sum_eq += eq
        xf = st.exposure / eq if eq > 0.0 else 0.0
        sum_expo += xf
        bars_state[st.trading_state] += 1
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
    mt.profit_factor = acc[A_GROSS_PROFIT] / acc[A_GROSS_LOSS] if acc[A_GROSS_LOSS] > 0.0 else (
        np.inf if acc[A_GROSS_PROFIT] > 0.0 else np.nan)
    mt.fees_paid = st.fees_paid
    mt.bars_active = bars_state[0]
    mt.bars_reducing_1 = bars_state[1]
    mt.bars_reducing_2 = bars_state[2]
    mt.bars_halted = bars_state[3]
    mt.bars_kill_switch = bars_state[4]
    nr = 0
    for i in range(refusals.shape[0]):
        nr += refusals[i]
    mt.n_refusals = nr
    mt.n_kill_events = cnt[C_KILLS]
    mt.records_overflow = cnt[C_OVERFLOW]


@njit(cache=True)
def _run_set_nb(open_, high, low, close, volume, valid, p_up, exp_ret, atr, spread, cluster, api_fault,
                operator, month_id, ordermin, costmin, lot_dec, price_dec, p, metrics, refusals):
    trades = np.zeros(0, dtype=_trade_dt)
    events = np.zeros(0, dtype=_event_dt)
    eqrows = np.zeros(0, dtype=_equity_dt)
    cnt = np.zeros(N_CNT, dtype=np.int64)
    simulate_nb(open_, high, low, close, volume, valid, p_up, exp_ret, atr, spread, cluster, api_fault,
                operator, month_id, ordermin, costmin, lot_dec, price_dec, p, False,
                trades, events, eqrows, metrics, refusals, cnt)


@njit(cache=True, parallel=True)
def run_sets_nb(open_, high, low, close, volume, valid, p_up, exp_ret, sig_of_set, atr, spread, cluster,
                api_fault, operator, month_id, ordermin, costmin, lot_dec, price_dec, params,
                metrics_out, refusals_out):
    """Many parameter sets in one call, in parallel. ``p_up``/``exp_ret`` are (K, n, m) signal sets;
    set s reads signal set ``sig_of_set[s]``. Only metrics and refusal counts are kept (flat memory)."""
    S = params.shape[0]
    for s in prange(S):
        k = sig_of_set[s]
        _run_set_nb(open_, high, low, close, volume, valid, p_up[k], exp_ret[k], atr, spread, cluster,
                    api_fault, operator, month_id, ordermin, costmin, lot_dec, price_dec, params[s],
                    metrics_out[s], refusals_out[s])


@njit(cache=True, parallel=True)
def ma_sweep_nb(open_, high, low, close, volume, valid, atr, spread, cluster, api_fault, operator, month_id,
                ordermin, costmin, lot_dec, price_dec, fasts, slows, scale, params, metrics_out, refusals_out):
    """Signal sweep through the whole pipeline in one call: for each set s, the SMA(fasts[s]) /
    SMA(slows[s]) signal (engine.backtest.demo.ma_signal_nb), the backtest with params[s], and its
    metrics. Signals are built per set inside the parallel loop, so memory stays flat."""
    S = params.shape[0]
    for s in prange(S):
        pu, er = ma_signal_nb(close, fasts[s], slows[s], scale)
        _run_set_nb(open_, high, low, close, volume, valid, pu, er, atr, spread, cluster, api_fault,
                    operator, month_id, ordermin, costmin, lot_dec, price_dec, params[s],
                    metrics_out[s], refusals_out[s])
