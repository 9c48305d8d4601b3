"""Trading states, reason codes and record dtypes of the per-bar risk state machine.

Everything the state machine keeps between bars is a plain numpy structured array of the dtypes
below, so the live bridge can persist it (``arr.tobytes()`` / ``np.frombuffer``) and restore it
exactly, and the backtester can keep one per parameter set.

Every code is written once, as an ``IntEnum`` (names for Python and reports). The kernels read the
same values through a NamedTuple instance derived from each enum (``STATE``, ``KILL``, ``KIND``,
``HOW``, ``EVENT``, ``REASON``: e.g. ``REASON.REFUSE_CASH``), as vectorbt does with its enums: numba
reads a global NamedTuple's fields as compile-time int64 constants, which it cannot do with the
``IntEnum`` members themselves. Being derived, the two cannot drift (tests/test_risk_enums.py).
"""

from __future__ import annotations

from collections import namedtuple
from enum import IntEnum

import numpy as np


class TradingState(IntEnum):
    """Effective trading state of a portfolio (``state['trading_state']``)."""

    ACTIVE = 0
    REDUCING_1 = 1  # drawdown tier 1: risk per trade cut
    REDUCING_2 = 2  # drawdown tier 2: exposure cap and position count cut too
    HALTED = 3  # drawdown tier 3: no new entries until a manual reset (latched)
    KILL_SWITCH = 4  # kill switch latched: no new entries until manual reactivation


N_STATES = len(TradingState)


class KillReason(IntEnum):
    """Why the kill switch latched (``state['kill_reason']``; 0 = not latched)."""

    NONE = 0
    API_INSTABILITY = 1
    SPREAD_ANOMALY = 2
    VOLATILITY_SPIKE = 3
    DATA_INTEGRITY = 4


class OrderKind(IntEnum):
    MARKET = 1  # market order at the next bar's open
    LIMIT_FIRST = 2  # limit at an offset for one bar, then market fallback at that bar's close


class FillHow(IntEnum):
    MARKET_OPEN = 1  # market order filled at bar t+1 open (+ slippage)
    LIMIT = 2  # limit traded through in bar t+1, filled at the limit price
    MARKET_CLOSE = 3  # limit not filled: market fallback at bar t+1 close (+ slippage)


class EventCode(IntEnum):
    REFUSAL = 1  # an entry the signal wanted was refused (reason says why)
    ORDER = 2  # an order was decided (reason: entry or exit kind)
    CANCEL = 3  # a pending order was cancelled or clipped to nothing at execution
    TIER = 4  # drawdown tier changed (value = drawdown)
    KILL = 5  # kill switch latched (reason = trigger; pair = first pair that tripped it)
    RESET = 6  # manual reset (kill switch reactivated or halt lifted)
    DUST = 7  # live: a partial sell left less than ordermin; the remainder was written off (value = qty)
    PAUSE = 8  # operator pause latched: no new entries until a resume (R22a)
    RESUME = 9  # operator pause lifted
    STOP = 10  # a held position's stop was raised to the bar's stop floor (value = the new stop)


class Reason(IntEnum):
    """Reason code carried by every order, trade and event."""

    NONE = 0
    # why an order exists
    ENTRY = 1
    EXIT_STOP = 2
    EXIT_TAKE_PROFIT = 3
    EXIT_SIGNAL = 4
    EXIT_TIME = 5
    EXIT_OPERATOR = 6  # operator flatten: every open position exits at market (R22b)
    # why an entry was refused (or an order cancelled at execution)
    REFUSE_NO_DATA = 10  # the pair's bar is missing or invalid
    REFUSE_HALTED = 11  # drawdown halt latched
    REFUSE_KILL_SWITCH = 12  # kill switch latched
    REFUSE_EDGE = 13  # expected return <= round-trip cost hurdle
    REFUSE_NO_ATR = 14  # no volatility estimate for the stop distance
    REFUSE_MAX_POSITIONS = 15  # open positions + pending entries at the (tier) maximum
    REFUSE_EXPOSURE = 16  # no room under the (tier) total exposure cap
    REFUSE_CLUSTER = 17  # no room under the correlation-cluster exposure cap
    REFUSE_CASH = 18  # not enough free cash (long-only, no leverage)
    REFUSE_ORDERMIN = 19  # quantity (rounded down to lot_decimals) below Kraken ordermin
    REFUSE_COSTMIN = 20  # notional below Kraken costmin
    REFUSE_NO_BAR = 21  # execution bar missing: order cancelled
    REFUSE_NOT_TRADABLE = 22  # the pair is outside the tradable universe at this bar (R9)
    REFUSE_TRAINING_WINDOW = 23  # the order would execute in a scheduled entry-block window (R25)
    DUST = 24  # live: position remainder below ordermin after a partial sell, written off
    REFUSE_PAUSED = 25  # operator pause latched (R22a)
    STOP_TIGHTENED = 26  # capital preservation: the stop of a held position raised (R26)
    # kill-switch triggers
    KILL_API = 30
    KILL_SPREAD = 31
    KILL_VOLATILITY = 32
    KILL_DATA = 33
    # state changes
    TIER_CHANGE = 40
    HALT = 41
    RESET_KILL = 42
    RESET_HALT = 43
    OPERATOR_PAUSE = 44
    OPERATOR_RESUME = 45


N_REASONS = 48  # length of a refusal-count array (every Reason value indexes it)


def _nb_constants(enum_cls):
    """(NamedTuple type, instance) holding the values of ``enum_cls`` as plain ints, field per member.

    The type is named ``<Enum>T`` and lives in this module, so cached kernels that read the instance
    (a compile-time constant) can find it again."""
    cls = namedtuple(enum_cls.__name__ + "T", [m.name for m in enum_cls])
    cls.__module__ = __name__
    return cls, cls(*(int(m) for m in enum_cls))


# Kernel-side constants: the enums above as NamedTuple instances (numba folds them as globals).
TradingStateT, STATE = _nb_constants(TradingState)
KillReasonT, KILL = _nb_constants(KillReason)
OrderKindT, KIND = _nb_constants(OrderKind)
FillHowT, HOW = _nb_constants(FillHow)
EventCodeT, EVENT = _nb_constants(EventCode)
ReasonT, REASON = _nb_constants(Reason)

# Operator actions (the ``operator`` input of a bar; bit flags).
OP_RESET_KILL = 1
OP_RESET_HALT = 2
OP_PAUSE = 4  # latch the pause: no new entries (R22a)
OP_RESUME = 8  # lift the pause
OP_FLATTEN = 16  # exit every open position at market at this close, decide no entry (R22b)
OP_ALL = 31  # every operator bit

# Portfolio state: one record per portfolio.
state_dt = np.dtype(
    [
        ("bar", np.int64),  # last bar processed
        ("cash", np.float64),
        ("equity", np.float64),  # cash + sum(qty * mark) at the last close
        ("exposure", np.float64),  # sum(qty * mark)
        ("peak", np.float64),  # equity peak (reset on a manual halt reset)
        ("drawdown", np.float64),  # 1 - equity / peak
        ("tier", np.int64),  # drawdown tier 0, 1, 2 (3 is the latched halt)
        ("halted", np.int64),  # 1 while the drawdown halt is latched
        ("halt_bar", np.int64),
        ("kill_reason", np.int64),  # KillReason; 0 = not latched
        ("kill_bar", np.int64),
        ("trading_state", np.int64),  # TradingState
        ("n_positions", np.int64),
        ("fees_paid", np.float64),
        ("traded_notional", np.float64),
        ("paused", np.int64),  # 1 while the operator pause is latched (R22a)
        ("flatten", np.int64),  # 1 from an operator flatten until the decisions of that close (R22b)
    ]
)

# Per pair: open position, last mark and the baselines the kill-switch triggers compare against.
position_dt = np.dtype(
    [
        ("qty", np.float64),  # base units held (>= 0: long-only)
        ("entry_price", np.float64),
        ("entry_cost", np.float64),  # notional + fee paid at entry (for round-trip P&L)
        ("entry_bar", np.int64),
        ("stop", np.float64),  # NaN = no stop
        ("take_profit", np.float64),  # NaN = no take-profit
        ("mark", np.float64),  # last valid close
        ("seen", np.int64),  # 1 once the pair has had a valid bar (it is then expected every hour)
        ("spread_base", np.float64),  # EWMA of the spread estimate
        ("n_spread", np.int64),  # spread observations in the EWMA
        ("atr_prev", np.float64),  # ATR known before this bar (volatility-spike baseline)
        ("prev_close", np.float64),
        ("cluster", np.int64),  # cluster id at the last decision
        ("realized", np.float64),  # live: P&L booked by partial sells of the open position (0 otherwise)
    ]
)

# Pending order per pair (at most one), decided at the close of bar t, executed in bar t+1.
order_dt = np.dtype(
    [
        ("active", np.int64),
        ("bar", np.int64),  # decision bar
        ("side", np.int64),  # BUY = 1, SELL = -1
        ("kind", np.int64),  # OrderKind
        ("reason", np.int64),  # Reason (ENTRY or EXIT_*)
        ("qty", np.float64),  # quantity still to fill (planned at decision; live: less what was filled)
        ("limit_price", np.float64),  # NaN for market orders
        ("ref_price", np.float64),  # close at decision
        ("atr", np.float64),  # ATR at decision (stop/take-profit distance)
        ("spread", np.float64),  # spread estimate at decision (slippage)
        ("frac", np.float64),  # fixed-fraction sizing: fraction of cash at the fill
        ("filled", np.float64),  # live: quantity filled so far (partial fills; engine.risk.nb.book_fill_nb)
        ("fallback", np.int64),  # live: 1 once the machine's close turned this limit into a market order
        ("stop_mult", np.float64),  # stop distance in ATRs set at the fill (0 = none): the decision's
        ("tp_mult", np.float64),  # take-profit in ATRs (0 = none): [risk]'s, or the bar's bar_exit_dt
    ]
)

# One fill.
trade_dt = np.dtype(
    [
        ("bar", np.int64),  # execution bar
        ("pair", np.int64),
        ("side", np.int64),
        ("qty", np.float64),
        ("price", np.float64),
        ("notional", np.float64),
        ("fee", np.float64),
        ("reason", np.int64),
        ("how", np.int64),  # FillHow
        ("cash_after", np.float64),
        ("equity_after", np.float64),  # at the marks of the fill phase
        ("exposure_after", np.float64),  # fraction of equity, at the marks of the fill phase
        ("pnl", np.float64),  # sells: round-trip P&L net of both fees; buys: 0
    ]
)

event_dt = np.dtype(
    [
        ("bar", np.int64),
        ("pair", np.int64),  # -1 for portfolio-level events
        ("code", np.int64),  # EventCode
        ("reason", np.int64),  # Reason
        ("value", np.float64),
    ]
)

equity_dt = np.dtype(
    [
        ("bar", np.int64),
        ("equity", np.float64),
        ("cash", np.float64),
        ("exposure", np.float64),  # fraction of equity
        ("drawdown", np.float64),
        ("trading_state", np.int64),
        ("n_positions", np.int64),
        ("kill_reason", np.int64),
    ]
)

# One bar of one pair as the live-facing RiskMachine takes it (engine.risk.machine.bar_inputs builds
# it from backtest inputs): market data plus the inputs computed from history like the backtester's.
bar_dt = np.dtype(
    [
        ("open", np.float64),
        ("high", np.float64),
        ("low", np.float64),
        ("close", np.float64),
        ("volume", np.float64),
        ("valid", np.bool_),  # the bar exists and passed validation
        ("atr", np.float64),  # Wilder ATR (engine.backtest.runner.default_atr)
        ("spread", np.float64),  # spread estimate, fraction (default_spread)
        ("cluster", np.int64),  # correlation cluster id, -1 = none (default_clusters)
    ]
)

# The model's output for one pair at one bar.
prediction_dt = np.dtype(
    [
        ("p_up", np.float64),  # NaN = no signal
        ("exp_ret", np.float64),
    ]
)

# Per-bar exit parameters of one pair (the strategy layer's selected profile, [strategy] enabled;
# engine.strategy.bar_exits builds them). NaN in a field: the [risk] parameter applies. The kernels
# read them as an (n, m, BX_N) float64 array; an array with no rows means "none given" (layer off).
bar_exit_dt = np.dtype(
    [
        ("stop_mult", np.float64),  # stop in ATRs of an entry decided here; applied only when tighter than [risk]'s
        ("tp_mult", np.float64),  # take-profit in ATRs of that entry (0 = none)
        ("size_scale", np.float64),  # multiplier (0..1) of the entry's wanted notional, before the caps
        ("stop_floor", np.float64),  # a held position's stop is raised to this price (never lowered)
    ]
)
BX_STOP = 0
BX_TP = 1
BX_SIZE = 2
BX_FLOOR = 3
BX_N = 4

# Sizing modes and order-kind choices inside the parameter record.
SIZING_RISK = 0  # base risk at the ATR stop distance
SIZING_FIXED_FRACTION = 1  # fixed fraction of cash at the fill (vectorbt "percent")
SIZING_VOL_TARGET = 2  # position_size of equity x clamp(vol_target / (ATR / close), vol_adj_min, vol_adj_max)

# One parameter set (everything step_nb reads). Built by engine.risk.params.params_from_config.
params_dt = np.dtype(
    [
        ("init_cash", np.float64),
        ("p_up_entry", np.float64),
        ("p_up_exit", np.float64),
        ("min_edge", np.float64),  # expected return must exceed this (2 fees + slippage)
        ("sizing", np.int64),
        ("base_risk", np.float64),
        ("fixed_fraction", np.float64),
        ("position_size", np.float64),  # vol-target sizing: notional fraction of equity at the target volatility
        ("vol_target", np.float64),  # vol-target sizing: target ATR / close (hourly)
        ("vol_adj_min", np.float64),  # vol-target sizing: clamp of vol_target / (ATR / close)
        ("vol_adj_max", np.float64),
        ("stop_atr_mult", np.float64),  # 0 = no stop
        ("tp_atr_mult", np.float64),  # 0 = no take-profit
        ("max_hold_bars", np.int64),  # 0 = no time exit
        ("max_positions", np.int64),
        ("max_exposure", np.float64),
        ("max_cluster_exposure", np.float64),
        ("capital_ceiling", np.float64),  # quote: equity-scaled caps and sizes read min(equity, this); inf = off
        ("dd_tier1", np.float64),
        ("dd_tier2", np.float64),
        ("dd_halt", np.float64),
        ("tier1_risk_mult", np.float64),
        ("tier2_exposure_mult", np.float64),
        ("tier2_max_positions", np.int64),
        ("spread_max", np.float64),  # absolute spread anomaly threshold (fraction); inf = off
        ("spread_anomaly_mult", np.float64),  # x EWMA baseline; 0 = off
        ("spread_alpha", np.float64),
        ("spread_min_obs", np.int64),
        ("vol_spike_mult", np.float64),  # true range > mult x previous ATR; 0 = off
        ("fee_rate", np.float64),
        ("entry_kind", np.int64),  # OrderKind
        ("exit_kind", np.int64),  # OrderKind for signal/time exits (stops are market)
        ("limit_offset", np.float64),  # limit price offset from the decision close (fraction)
        ("impact_coef", np.float64),
        ("spread_slip", np.int64),  # 1: half the spread estimate is part of market slippage
        ("min_slip", np.float64),
        ("slip_buffer", np.float64),  # cash reserved per entry for slippage (fraction)
        ("enforce_precision", np.int64),  # 1: lot/price rounding and ordermin/costmin
        ("kill_reset_bars", np.int64),  # backtest only: emulated operator reactivation; 0 = never
        ("halt_reset_bars", np.int64),  # backtest only: emulated operator halt reset; 0 = never
    ]
)

# Per-parameter-set summary streamed by the backtester.
metrics_dt = np.dtype(
    [
        ("final_equity", np.float64),
        ("total_return", np.float64),
        ("annual_return", np.float64),
        ("sharpe", np.float64),
        ("sortino", np.float64),
        ("calmar", np.float64),
        ("max_drawdown", np.float64),
        ("worst_month_drawdown", np.float64),
        ("turnover", np.float64),  # traded notional / mean equity, annualised
        ("mean_exposure", np.float64),  # mean exposure fraction over bars
        ("n_fills", np.int64),
        ("n_trades", np.int64),  # closed round trips
        ("win_rate", np.float64),
        ("profit_factor", np.float64),
        ("fees_paid", np.float64),
        ("bars", np.int64),
        ("bars_active", np.int64),
        ("bars_reducing_1", np.int64),
        ("bars_reducing_2", np.int64),
        ("bars_halted", np.int64),
        ("bars_kill_switch", np.int64),
        ("n_refusals", np.int64),
        ("n_kill_events", np.int64),
        ("records_overflow", np.int64),
    ]
)
