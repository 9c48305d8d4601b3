"""The fill model as the backtester applies it (decide at t's close, execute in bar t+1)."""

from __future__ import annotations

import numpy as np
from numba import njit

from engine.execution.nb import (
    BUY,
    fee_nb,
    market_fill_price_nb,
    neg_pow10_nb,
    pow10_nb,
    slippage_frac_nb,
    taker_tick_nb,
)
from engine.risk.enums import SIZING_RISK, FillHow, OrderKind, Reason
from tests.test_risk_scenarios import WARM, Sim


def _entry(limit_hit: bool, kind=OrderKind.LIMIT_FIRST):
    s = Sim(sizing=SIZING_RISK, base_risk=0.001, entry_kind=int(kind))
    s.step(WARM)
    s.p_up[WARM, 0] = 0.9
    s.step(WARM + 1)
    o = s.pend[0].copy()
    t = WARM + 1
    if kind == OrderKind.LIMIT_FIRST:
        if limit_hit:
            s.l[t, 0] = o["limit_price"] * 0.999
        else:
            s.l[t, 0] = o["limit_price"]  # touching is not trading through
            s.h[t, 0] = max(s.h[t, 0], s.o[t, 0], s.c[t, 0], s.l[t, 0])
    s.step(t + 1)
    tr = s.trades[: s.cnt[0]]
    assert len(tr) == 1
    return s, o, tr[0], t


def test_limit_first_fills_at_the_limit_when_traded_through():
    s, o, tr, t = _entry(True)
    assert o["kind"] == OrderKind.LIMIT_FIRST and o["limit_price"] < o["ref_price"]
    assert tr["bar"] == t and tr["how"] == FillHow.LIMIT and tr["price"] == o["limit_price"]
    # the fee rounded UP to the quote's decimals (USDT: 8), as the exchange books it
    assert tr["qty"] == o["qty"] and tr["fee"] == fee_nb(tr["qty"] * tr["price"], 0.004, s.rules[4][0])
    assert s.rules[4][0] == 8 and 0.0 <= tr["fee"] - tr["qty"] * tr["price"] * 0.004 < 1e-8
    assert tr["reason"] == Reason.ENTRY


def test_limit_first_falls_back_to_market_at_the_close_with_slippage():
    s, o, tr, t = _entry(False)
    p = s.params[0]
    slip = slippage_frac_nb(
        o["spread"],
        o["atr"] / o["ref_price"],
        o["qty"] * s.c[t, 0],
        s.v[t, 0] * s.c[t, 0],
        p["impact_coef"],
        p["min_slip"],
    )
    assert slip >= 0.0005  # at least half the 0.1% spread
    assert tr["how"] == FillHow.MARKET_CLOSE
    # on the pair's tick (BTC: 0.1) against the taker, the fee up to the quote's decimals
    raw = market_fill_price_nb(BUY, s.c[t, 0], slip)
    assert tr["price"] == taker_tick_nb(BUY, raw, s.rules[3][0]) and raw <= tr["price"] < raw + 0.1
    assert tr["fee"] == fee_nb(tr["notional"], 0.004, s.rules[4][0])


def test_market_order_fills_at_next_open():
    s, o, tr, t = _entry(False, OrderKind.MARKET)
    assert tr["how"] == FillHow.MARKET_OPEN and tr["bar"] == t
    assert tr["price"] > s.o[t, 0]


def test_missing_execution_bar_cancels_the_order():
    s = Sim(sizing=SIZING_RISK, base_risk=0.001, kill_reset_bars=0)
    s.step(WARM)
    s.p_up[WARM, 0] = 0.9
    s.step(WARM + 1)
    s.valid[WARM + 1, 0] = False
    s.step(WARM + 2)
    assert s.cnt[0] == 0
    assert any(r == Reason.REFUSE_NO_BAR for _, _, r in s.events_at(WARM + 1))
    assert np.all(s.pos["qty"] == 0)


@njit
def _numba_pow10(k):
    return 10.0**k, 10.0**-k


@njit
def _table_pow10(k):
    return pow10_nb(k), neg_pow10_nb(k)


def test_power_of_ten_table_is_numbas_power_bit_for_bit():
    # the rounding kernels read 10**k from a table (pow10_nb): the same doubles numba's float ** int
    # computes, inside the table (0..22) and past it
    for k in range(40):
        a, b = _numba_pow10(k), _table_pow10(k)
        assert np.float64(a[0]).tobytes() == np.float64(b[0]).tobytes(), k
        assert np.float64(a[1]).tobytes() == np.float64(b[1]).tobytes(), k
