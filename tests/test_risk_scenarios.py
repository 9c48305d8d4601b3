"""Scenario tests of the risk state machine, bar by bar through step_nb on real bars: each drawdown
tier and each kill-switch trigger shows the state change, the refusal reason and the manual reset."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from risk_harness import StepHarness

from engine.backtest.runner import default_atr
from engine.config import load_config
from engine.risk.enums import (
    OP_RESET_HALT,
    OP_RESET_KILL,
    SIZING_RISK,
    EventCode,
    KillReason,
    Reason,
    TradingState,
)
from engine.risk.params import params_from_config
from engine.store.panel import load_shared_panel

PAIRS = ["binance_BTCUSDT_1h", "binance_ETHUSDT_1h", "binance_SOLUSDT_1h"]
START = 1632906000  # 2021-09-29: a complete stretch (no missing bars) for all three
N = 400
WARM = 250  # bars stepped without signals first (ATR and spread baselines)


@functools.lru_cache(maxsize=1)
def _panel():
    from tests.conftest import require_shared

    require_shared()
    p = load_shared_panel(PAIRS, start=START, end=START + 3600 * (N - 1))
    assert p.valid.all()
    return p


class Sim(StepHarness):
    """Drive step_nb bar by bar on (copies of) real arrays, with hooks to inject conditions."""

    def __init__(self, **overrides):
        p = _panel()
        self.cfg = load_config()
        self.params = params_from_config(self.cfg, **overrides)
        self.pairs = p.pairs
        self.o, self.h, self.l, self.c, self.v = (a.copy() for a in (p.open, p.high, p.low, p.close, p.volume))
        self.valid = p.valid.copy()
        n, m = self.c.shape
        self.atr = default_atr(self.h, self.l, self.c, 14)
        self.spread = np.full((n, m), 0.001)
        self.p_up = np.full((n, m), np.nan)
        self.exp_ret = np.full((n, m), 0.05)
        self.cluster = np.tile(np.arange(m, dtype=np.int64), (n, 1))
        self.init_books(self.pairs)


def test_tier1_cuts_risk_per_trade_and_recovers():
    # ATR-risk sizing (vol-target sizing: tests/test_risk_sizing.py); base_risk small enough that the caps
    # do not bind (2% at a 2-ATR hourly stop is > 100% notional)
    base = Sim(sizing=SIZING_RISK, base_risk=0.001)
    base.step(WARM)
    base.p_up[WARM, 0] = 0.9
    base.step(WARM + 1)
    q0 = base.pend[0]["qty"]
    assert base.pend[0]["active"] == 1 and q0 > 0

    s = Sim(sizing=SIZING_RISK, base_risk=0.001)
    s.step(WARM)
    s.set_drawdown(0.11)
    s.p_up[WARM, 0] = 0.9
    s.step(WARM + 1)
    assert s.st["trading_state"] == TradingState.REDUCING_1
    assert (-1, EventCode.TIER, Reason.TIER_CHANGE) in s.events_at(WARM)
    q1 = s.pend[0]["qty"]
    assert q1 == pytest.approx(0.5 * q0, rel=1e-6)  # tier1_risk_mult = 0.5
    # not latched: once the drawdown is gone the portfolio is ACTIVE again
    s.set_drawdown(0.0)
    s.step(WARM + 3)
    assert s.st["trading_state"] == TradingState.ACTIVE


def _hold(s, j, frac):
    """Give the portfolio a position in pair j worth ``frac`` of equity at the last close."""
    c = s.c[s.t - 1, j]
    q = frac * s.st["equity"] / c
    s.pos[j]["qty"] = q
    s.pos[j]["entry_price"] = c
    s.pos[j]["entry_cost"] = q * c
    s.pos[j]["entry_bar"] = s.t - 1
    s.st["cash"] -= q * c
    s.st["n_positions"] += 1


def test_tier2_cuts_exposure_cap_and_position_count():
    for dd, expect_state, expect in (
        (0.0, TradingState.ACTIVE, None),
        (0.16, TradingState.REDUCING_2, Reason.REFUSE_EXPOSURE),
    ):
        s = Sim(max_hold_bars=0, tp_atr_mult=0.0, stop_atr_mult=2.0)
        s.step(WARM)
        _hold(s, 1, 0.12)  # 12% exposure: inside the 20% cap, above the tier-2 cap of 10%
        s.set_drawdown(dd)
        s.p_up[WARM, 0] = 0.9
        s.step(WARM + 1)
        assert s.st["trading_state"] == expect_state
        if expect is None:
            assert s.pend[0]["active"] == 1
        else:
            assert s.pend[0]["active"] == 0
            assert (0, EventCode.REFUSAL, expect) in s.events_at(WARM)
    # position count: tier 2 allows tier2_max_positions
    s = Sim(tier2_max_positions=1, max_exposure=0.2)
    s.step(WARM)
    _hold(s, 1, 0.02)
    s.set_drawdown(0.16)
    s.p_up[WARM, 0] = 0.9
    s.step(WARM + 1)
    assert (0, EventCode.REFUSAL, Reason.REFUSE_MAX_POSITIONS) in s.events_at(WARM)


def test_halt_latches_until_manual_reset():
    s = Sim()
    s.step(WARM)
    s.set_drawdown(0.21)
    s.p_up[WARM : WARM + 4, 0] = 0.9
    s.step(WARM + 1)
    assert s.st["trading_state"] == TradingState.HALTED and s.st["halted"] == 1
    assert (-1, EventCode.TIER, Reason.HALT) in s.events_at(WARM)
    assert (0, EventCode.REFUSAL, Reason.REFUSE_HALTED) in s.events_at(WARM)
    # the drawdown disappears, the halt stays latched
    s.set_drawdown(0.0)
    s.step(WARM + 2)
    assert s.st["trading_state"] == TradingState.HALTED
    assert (0, EventCode.REFUSAL, Reason.REFUSE_HALTED) in s.events_at(WARM + 1)
    assert s.pend[0]["active"] == 0
    # manual reset (operator flag) lifts it; the peak restarts at the current equity
    s.op[WARM + 2] = OP_RESET_HALT
    s.step(WARM + 3)
    assert (-1, EventCode.RESET, Reason.RESET_HALT) in s.events_at(WARM + 2)
    assert s.st["trading_state"] == TradingState.ACTIVE and s.st["drawdown"] < 0.05
    assert (0, EventCode.ORDER, Reason.ENTRY) in s.events_at(WARM + 2)


def _api(s, t):
    s.api[t] = True


def _spread_rel(s, t):
    s.spread[t, 2] = 0.008  # 8x the 0.1% baseline, below the 2% absolute limit


def _spread_abs(s, t):
    s.spread[t, 2] = 0.025  # above the 2% absolute limit (the relative check is off in this case)


def _vol(s, t):
    s.h[t, 2] = s.c[t - 1, 2] * 1.6  # a 60% range bar: far above 8 x the previous ATR


def _data(s, t):
    s.valid[t, 2] = False
    for a in (s.o, s.h, s.l, s.c):
        a[t, 2] = np.nan


@pytest.mark.parametrize(
    "inject, kill, reason, extra",
    [
        (_api, KillReason.API_INSTABILITY, Reason.KILL_API, {}),
        (_spread_rel, KillReason.SPREAD_ANOMALY, Reason.KILL_SPREAD, {}),
        (_spread_abs, KillReason.SPREAD_ANOMALY, Reason.KILL_SPREAD, {"spread_anomaly_mult": 0.0}),
        (_vol, KillReason.VOLATILITY_SPIKE, Reason.KILL_VOLATILITY, {}),
        (_data, KillReason.DATA_INTEGRITY, Reason.KILL_DATA, {}),
    ],
)
def test_kill_switch_trigger_latches_blocks_entries_allows_exits_until_reactivated(inject, kill, reason, extra):
    s = Sim(max_hold_bars=0, tp_atr_mult=0.0, kill_reset_bars=0, **extra)
    s.step(WARM)
    assert s.st["trading_state"] == TradingState.ACTIVE and s.st["kill_reason"] == 0
    _hold(s, 1, 0.05)
    t = WARM
    inject(s, t)
    s.p_up[t : t + 4, 0] = 0.9
    s.p_up[t + 1, 1] = 0.1  # the held position's signal reverses while the switch is latched
    s.step(t + 1)
    assert s.st["kill_reason"] == kill and s.st["trading_state"] == TradingState.KILL_SWITCH
    assert any(c == EventCode.KILL and r == reason for _, c, r in s.events_at(t))
    assert (0, EventCode.REFUSAL, Reason.REFUSE_KILL_SWITCH) in s.events_at(t)
    # latched: the trigger is gone next bar, entries still refused, but the exit goes out and fills
    s.step(t + 3)
    assert s.st["trading_state"] == TradingState.KILL_SWITCH
    assert (0, EventCode.REFUSAL, Reason.REFUSE_KILL_SWITCH) in s.events_at(t + 1)
    assert (1, EventCode.ORDER, Reason.EXIT_SIGNAL) in s.events_at(t + 1)
    tr = s.trades[: s.cnt[0]]
    assert np.any((tr["pair"] == 1) & (tr["side"] == -1) & (tr["reason"] == Reason.EXIT_SIGNAL))
    assert not np.any(tr["side"] == 1), "no entry while the kill switch is latched"
    # manual reactivation
    s.op[t + 3] = OP_RESET_KILL
    s.step(t + 4)
    assert (-1, EventCode.RESET, Reason.RESET_KILL) in s.events_at(t + 3)
    assert s.st["kill_reason"] == 0 and s.st["trading_state"] == TradingState.ACTIVE
    assert (0, EventCode.ORDER, Reason.ENTRY) in s.events_at(t + 3)


def test_persisting_trigger_relatches_after_reset():
    s = Sim(kill_reset_bars=0)
    s.step(WARM)
    s.spread[WARM:, 2] = 0.03  # stays above the absolute limit
    s.op[WARM + 2] = OP_RESET_KILL
    s.step(WARM + 3)
    kinds = [(c, r) for _, c, r in s.events_at(WARM + 2)]
    assert kinds.index((EventCode.RESET, Reason.RESET_KILL)) < kinds.index((EventCode.KILL, Reason.KILL_SPREAD))
    assert s.st["trading_state"] == TradingState.KILL_SWITCH


def test_backtest_operator_emulation_reactivates_after_n_bars():
    s = Sim(kill_reset_bars=24)
    s.step(WARM)
    s.api[WARM] = True
    s.step(WARM + 30)
    assert (-1, EventCode.RESET, Reason.RESET_KILL) in s.events_at(WARM + 24)
    assert s.st["kill_reason"] == 0


def test_state_persists_and_restores_exactly():
    """The live bridge persists the records as bytes and restores them: the run continues identically."""
    a = Sim()
    a.p_up[WARM:, :] = np.where(np.arange(N - WARM)[:, None] % 7 < 3, 0.9, 0.3)
    a.step(WARM + 40)
    blob = (a.state.tobytes(), a.pos.tobytes(), a.pend.tobytes())
    b = Sim()
    b.p_up[:] = a.p_up
    b.state[:] = np.frombuffer(blob[0], dtype=a.state.dtype)
    b.pos[:] = np.frombuffer(blob[1], dtype=a.pos.dtype)
    b.pend[:] = np.frombuffer(blob[2], dtype=a.pend.dtype)
    b.t = a.t
    a.step(N)
    b.step(N)
    assert a.state.tobytes() == b.state.tobytes() and a.pos.tobytes() == b.pos.tobytes()
    assert a.cnt[0] > 2


def test_precision_and_minimums():
    """Quantities are rounded DOWN to lot_decimals; entries below ordermin/costmin are refused."""
    s = Sim(sizing=SIZING_RISK, base_risk=0.02)
    s.step(WARM)
    s.p_up[WARM, 0] = 0.9
    s.step(WARM + 1)
    q = s.pend[0]["qty"]
    assert q > 0 and round(q, 8) == q and q * 1e8 == np.floor(q * 1e8)
    lim = s.pend[0]["limit_price"]
    assert round(lim, 1) == lim  # BTC/USDT price decimals: 1
    # a tiny account cannot meet BTC's ordermin (0.0001 BTC, about 4 USD here)
    s = Sim(init_cash=20.0, sizing=SIZING_RISK, base_risk=0.001)
    s.step(WARM)
    s.p_up[WARM, 0] = 0.9
    s.step(WARM + 1)
    assert (0, EventCode.REFUSAL, Reason.REFUSE_ORDERMIN) in s.events_at(WARM)


def test_entry_rules_edge_and_threshold():
    s = Sim()
    s.step(WARM)
    s.p_up[WARM, 0] = 0.9
    s.exp_ret[WARM, 0] = s.cfg.fees.round_trip_cost  # not strictly above the hurdle
    s.p_up[WARM, 1] = 0.54  # below the threshold: no signal, no refusal
    s.step(WARM + 1)
    ev = s.events_at(WARM)
    assert (0, EventCode.REFUSAL, Reason.REFUSE_EDGE) in ev
    assert not any(p == 1 for p, _, _ in ev)
    assert s.pend["active"].sum() == 0


def test_cluster_cap():
    s = Sim(max_cluster_exposure=0.05)
    s.cluster[:, :] = 7  # all three pairs in one correlation cluster
    s.step(WARM)
    _hold(s, 1, 0.06)
    s.p_up[WARM, 0] = 0.9
    s.step(WARM + 1)
    assert (0, EventCode.REFUSAL, Reason.REFUSE_CLUSTER) in s.events_at(WARM)
    s2 = Sim(max_cluster_exposure=0.05)  # same, separate clusters: allowed
    s2.step(WARM)
    _hold(s2, 1, 0.06)
    s2.p_up[WARM, 0] = 0.9
    s2.step(WARM + 1)
    assert s2.pend[0]["active"] == 1


def test_exits_stop_take_profit_time():
    s = Sim(stop_atr_mult=2.0, tp_atr_mult=4.0, max_hold_bars=5)
    s.step(WARM)
    s.p_up[WARM, 0] = 0.9
    s.p_up[WARM + 1 :, 0] = 0.5  # neutral afterwards: no signal exit
    s.step(WARM + 2)
    assert s.pos[0]["qty"] > 0
    e = s.pos[0]["entry_bar"]
    s.step(e + 8)
    tr = s.trades[: s.cnt[0]]
    sells = tr[(tr["pair"] == 0) & (tr["side"] == -1)]
    assert len(sells) == 1 and sells[0]["reason"] in (Reason.EXIT_TIME, Reason.EXIT_STOP, Reason.EXIT_TAKE_PROFIT)
    # a crash through the stop: market exit at the next open
    s = Sim(stop_atr_mult=2.0, tp_atr_mult=0.0, max_hold_bars=0)
    s.step(WARM)
    s.p_up[WARM, 0] = 0.9
    s.p_up[WARM + 1 :, 0] = 0.5
    s.step(WARM + 2)
    stop = s.pos[0]["stop"]
    t = s.t
    s.c[t, 0] = stop * 0.99
    s.l[t, 0] = min(s.l[t, 0], stop * 0.99)
    s.step(t + 2)
    assert (0, EventCode.ORDER, Reason.EXIT_STOP) in s.events_at(t)
    tr = s.trades[: s.cnt[0]]
    last = tr[-1]
    assert last["side"] == -1 and last["reason"] == Reason.EXIT_STOP and last["bar"] == t + 1
    assert last["price"] < s.o[t + 1, 0]  # market sell at the open, slipped down


def test_not_tradable_refuses_entries_but_never_blocks_exits():
    """Universe rule R9 inside the step: an entry on a pair outside the universe is refused with
    REFUSE_NOT_TRADABLE; a position in a pair that leaves the universe still exits on its signal."""
    s = Sim()
    s.step(WARM)
    s.tradable[WARM:, 0] = False
    s.p_up[WARM, 0] = 0.9
    s.p_up[WARM, 1] = 0.9
    s.step(WARM + 1)
    ev = s.events_at(WARM)
    assert (0, EventCode.REFUSAL, Reason.REFUSE_NOT_TRADABLE) in ev
    assert s.pend[0]["active"] == 0 and s.pend[1]["active"] == 1  # the tradable pair still enters
    assert s.refusals[Reason.REFUSE_NOT_TRADABLE] == 1
    # pair 1 enters, then leaves the universe: its signal exit is unaffected
    s.p_up[WARM + 1 :, 1] = 0.5
    s.step(WARM + 3)
    assert s.pos[1]["qty"] > 0
    s.tradable[s.t :, 1] = False
    s.p_up[s.t, 1] = 0.1
    t = s.t
    s.step(t + 3)
    assert (1, EventCode.ORDER, Reason.EXIT_SIGNAL) in s.events_at(t)
    assert s.pos[1]["qty"] == 0.0
    sells = s.trades[: s.cnt[0]]
    assert ((sells["pair"] == 1) & (sells["side"] == -1) & (sells["reason"] == Reason.EXIT_SIGNAL)).sum() == 1


def test_entry_block_window_refuses_entries_exits_still_happen():
    """R25: in a scheduled entry-block window no entry is decided (REFUSE_TRAINING_WINDOW); exits and
    stops go on; the first bar after the window enters as usual."""
    s = Sim()
    s.step(WARM)
    _hold(s, 1, 0.05)
    s.entry_block[WARM : WARM + 2] = True
    s.p_up[WARM : WARM + 3, 0] = 0.9
    s.p_up[WARM, 1] = 0.1  # signal exit of the held pair inside the window
    s.step(WARM + 1)
    ev = s.events_at(WARM)
    assert (0, EventCode.REFUSAL, Reason.REFUSE_TRAINING_WINDOW) in ev
    assert (1, EventCode.ORDER, Reason.EXIT_SIGNAL) in ev
    assert s.pend[0]["active"] == 0 and s.pend[1]["active"] == 1
    s.step(WARM + 2)
    assert s.pos[1]["qty"] == 0.0  # the exit filled in the window
    assert (0, EventCode.REFUSAL, Reason.REFUSE_TRAINING_WINDOW) in s.events_at(WARM + 1)
    s.step(WARM + 3)
    assert (0, EventCode.ORDER, Reason.ENTRY) in s.events_at(WARM + 2)  # window over: enters
    assert s.refusals[Reason.REFUSE_TRAINING_WINDOW] == 2


def test_refusal_order_universe_and_window_after_data_before_halt():
    """Refusal precedence: no data, not tradable, halted, kill switch, entry-block window, edge."""
    s = Sim()
    s.step(WARM)
    s.set_drawdown(0.25)  # the halt latches at this bar's mark
    s.entry_block[WARM] = True
    s.tradable[WARM, 0] = False
    s.p_up[WARM, :2] = 0.9
    s.step(WARM + 1)
    ev = s.events_at(WARM)
    assert (0, EventCode.REFUSAL, Reason.REFUSE_NOT_TRADABLE) in ev
    assert (1, EventCode.REFUSAL, Reason.REFUSE_HALTED) in ev
    s2 = Sim()
    s2.step(WARM)
    s2.entry_block[WARM] = True
    s2.p_up[WARM, 0] = 0.9
    s2.exp_ret[WARM, 0] = 0.0  # also no edge: the window is reported first
    s2.step(WARM + 1)
    assert (0, EventCode.REFUSAL, Reason.REFUSE_TRAINING_WINDOW) in s2.events_at(WARM)
