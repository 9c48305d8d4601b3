"""Live risk parameters: the kill switch and the drawdown halt stay latched until an operator acts.

The backtester emulates an operator (``kill_reset_bars`` / ``halt_reset_bars`` in [backtest]: the
switch re-arms entries after 24 bars); live, nobody may be looking, so
``live_bridge.cycle.live_params`` sets both to 0. Fed an API fault at its first bar and then 40
quiet bars, a RiskMachine with the live parameters is still KILL_SWITCH at the end, while the
backtest's parameters are ACTIVE again (the planted fault this test exists to catch)."""

from __future__ import annotations

from decimal import Decimal

import numpy as np

from engine.config import load_config
from engine.risk.enums import OP_RESET_KILL, TradingState, bar_dt, prediction_dt
from engine.risk.machine import RiskMachine
from engine.risk.params import params_from_config
from live_bridge.cycle import live_params

H0 = 1_654_041_600 // 3600


def _bars(m: int) -> tuple[np.ndarray, np.ndarray]:
    b = np.zeros(m, dtype=bar_dt)
    b["open"] = b["close"] = 100.0
    b["high"], b["low"] = 100.5, 99.5
    b["volume"], b["valid"], b["atr"], b["spread"] = 1000.0, True, 1.0, 0.001
    p = np.zeros(m, dtype=prediction_dt)
    p["p_up"], p["exp_ret"] = 0.5, 0.0
    return b, p


def _state_after(params: np.ndarray, n: int = 41, operator_at: int | None = None) -> int:
    pairs = ("BTC/USD",)
    m = RiskMachine(pairs, params)
    b, p = _bars(1)
    for i in range(n):
        r = m.on_bar(H0 + i, b, p, api_fault=(i == 0), operator=OP_RESET_KILL if i == operator_at else 0)
        assert r.complete
    return int(m.state[0]["trading_state"])


def test_live_kill_switch_stays_latched_without_an_operator():
    cfg = load_config()
    assert int(params_from_config(cfg)[0]["kill_reset_bars"]) > 0, "the backtest emulates an operator"
    live = live_params(cfg, Decimal("10000"))
    assert int(live[0]["kill_reset_bars"]) == 0 and int(live[0]["halt_reset_bars"]) == 0
    assert float(live[0]["init_cash"]) == 10000.0
    assert _state_after(live) == TradingState.KILL_SWITCH
    # the backtest's parameters release it by themselves: what live must never do
    assert _state_after(params_from_config(cfg)) == TradingState.ACTIVE
    # an operator's reactivation (the operator input at a close) does release it
    assert _state_after(live, operator_at=30) == TradingState.ACTIVE
