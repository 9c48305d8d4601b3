"""Phase 2 of the strategy layer (R26): the risk step applies the selected profile's exit
parameters. An entry's order carries the bar's stop and take-profit ATR multiples (set on the
position at the fill), its wanted notional is scaled by the bar's size scale (0..1: a profile can
only shrink an entry), and a held position's stop is raised to capital preservation's stop floor,
never lowered. Three synthetic pairs at a flat price (ATR 1.0), so every figure is known; the
fused backtest kernel against the step_nb loop with these inputs is in
tests/test_backtest_speedpath.py (bar_exits_random, strategy_selector)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import load_config
from engine.errors import InputError
from engine.risk.enums import EventCode, FillHow, OrderKind, Reason, bar_dt, bar_exit_dt, prediction_dt
from engine.risk.machine import RiskMachine
from engine.risk.params import params_from_config

PAIRS = ("AAA", "BBB", "CCC")
H0 = 480_000
INSTRUMENTS = (
    np.full(3, 0.5),
    np.full(3, 0.5),
    np.full(3, 4, dtype=np.int64),
    np.full(3, 2, dtype=np.int64),
    np.full(3, 4, dtype=np.int64),
)
PX = 100.0
BULL, BEAR = (0.9, 0.05), (0.3, -0.02)
NAN = float("nan")


def _bars(c=PX):
    b = np.zeros(3, dtype=bar_dt)
    b["open"], b["high"], b["low"], b["close"] = c, c * 1.002, c * 0.998, c
    b["volume"], b["valid"], b["atr"], b["spread"], b["cluster"] = 1e6, True, 1.0, 0.001, -1
    return b


def _pred(pu, er):
    p = np.zeros(3, dtype=prediction_dt)
    p["p_up"], p["exp_ret"] = pu, er
    return p


def _exits(stop=(NAN,) * 3, tp=(NAN,) * 3, size=(NAN,) * 3, floor=(NAN,) * 3):
    x = np.zeros(3, dtype=bar_exit_dt)
    x["stop_mult"], x["tp_mult"], x["size_scale"], x["stop_floor"] = stop, tp, size, floor
    return x


def _machine():
    p = params_from_config(load_config(), entry_kind=int(OrderKind.MARKET))
    m = RiskMachine(PAIRS, p, INSTRUMENTS)
    for h in range(5):
        m.on_bar(H0 + h, _bars(), _pred(*BEAR))
    return m


def _enter(exits):
    """A machine whose bull close at H0+5 decided entries under ``exits``, each filled at PX."""
    m = _machine()
    r = m.on_bar(H0 + 5, _bars(), _pred(*BULL), None, False, False, 0, exits)
    for o, j in zip(r.orders, r.order_pairs, strict=True):
        q = float(o["qty"])
        m.on_fill(PAIRS[int(j)], "buy", q, PX, round(q * PX * 0.004, 4), FillHow.MARKET_OPEN)
    return m, r


def test_config_exits_without_bar_exits():
    """No exits (or every field NaN): the [risk] stop (2 ATR) and take-profit apply, full size."""
    cfg = load_config()
    a, ra = _enter(None)
    b, rb = _enter(_exits())
    assert a.snapshot() == b.snapshot() and ra.orders.tobytes() == rb.orders.tobytes()
    assert (ra.orders["qty"] == 2.4).all()
    assert a.positions["stop"].tolist() == [PX - cfg.risk.stop_atr_mult * 1.0] * 3
    tp = PX + cfg.risk.take_profit_atr_mult * 1.0 if cfg.risk.take_profit_atr_mult > 0 else NAN
    np.testing.assert_array_equal(a.positions["take_profit"], [tp] * 3)


def test_entry_carries_its_bars_stop_and_take_profit_multiples():
    cfg = load_config()
    m, r = _enter(_exits(stop=(1.0, 0.0, NAN), tp=(0.0, 3.0, NAN)))
    assert r.orders["stop_mult"].tolist() == [1.0, 0.0, cfg.risk.stop_atr_mult]
    pos = m.positions
    assert pos["stop"][0] == PX - 1.0 and np.isnan(pos["take_profit"][0])  # 1 ATR stop, no take-profit
    assert np.isnan(pos["stop"][1]) and pos["take_profit"][1] == PX + 3.0  # no stop, 3 ATR take-profit
    assert pos["stop"][2] == PX - cfg.risk.stop_atr_mult  # NaN: the config's
    # the multiples travel with the order: a restart between decision and fill keeps them
    m2 = _machine()
    r2 = m2.on_bar(H0 + 5, _bars(), _pred(*BULL), None, False, False, 0, _exits(stop=(1.0, 0.0, NAN)))
    m2 = RiskMachine.restore(m2.snapshot())
    m2.on_fill("AAA", "buy", float(r2.orders[0]["qty"]), PX, 0.96, FillHow.MARKET_OPEN)
    assert m2.positions["stop"][0] == PX - 1.0
    # a take-profit at 3 ATRs exits BBB when the close reaches 103
    res = m.on_bar(H0 + 6, _bars(PX + 3.0), _pred(*BULL))
    assert [(int(j), int(o["reason"])) for o, j in zip(res.orders, res.order_pairs, strict=True)] == [
        (1, Reason.EXIT_TAKE_PROFIT)
    ]


def test_size_scale_shrinks_an_entry_and_can_never_grow_one():
    _, full = _enter(None)
    _, half = _enter(_exits(size=(0.5, 1.0, 0.25)))
    assert full.orders["qty"].tolist() == [2.4, 2.4, 2.4]
    assert half.orders["qty"].tolist() == [1.2, 2.4, 0.6]
    m = _machine()
    for bad in (1.5, -0.1, np.inf):
        with pytest.raises(InputError, match="size_scale"):
            m.on_bar(H0 + 5, _bars(), _pred(*BULL), None, False, False, 0, _exits(size=(bad, NAN, NAN)))
    with pytest.raises(InputError, match="stop_mult"):
        m.on_bar(H0 + 5, _bars(), _pred(*BULL), None, False, False, 0, _exits(stop=(-1.0, NAN, NAN)))
    with pytest.raises(InputError, match="stop_floor"):
        m.on_bar(H0 + 5, _bars(), _pred(*BULL), None, False, False, 0, _exits(floor=(0.0, NAN, NAN)))
    assert m.last_hour == H0 + 4  # a refused input changed nothing


def test_preservation_floor_raises_a_held_stop_and_never_lowers_it():
    m, _ = _enter(None)
    ref, _ = _enter(None)
    assert m.positions["stop"][0] == PX - 2.0
    r = m.on_bar(H0 + 6, _bars(), _pred(*BULL), None, False, False, 0, _exits(floor=(99.5, NAN, 97.0)))
    ref.on_bar(H0 + 6, _bars(), _pred(*BULL))
    assert m.positions["stop"].tolist() == [99.5, 98.0, 98.0]  # AAA raised; CCC's floor is below: kept
    ev = r.events[r.events["code"] == EventCode.STOP]
    assert ev["pair"].tolist() == [0] and ev["reason"].tolist() == [Reason.STOP_TIGHTENED]
    assert ev["value"].tolist() == [99.5]
    m.on_bar(H0 + 7, _bars(), _pred(*BULL), None, False, False, 0, _exits(floor=(99.0, NAN, NAN)))
    ref.on_bar(H0 + 7, _bars(), _pred(*BULL))
    assert m.positions["stop"][0] == 99.5  # a lower floor never lowers the stop
    # a close of 99.4: the raised stop exits AAA at market; without the floor nothing exits
    r = m.on_bar(H0 + 8, _bars(99.4), _pred(*BULL))
    r0 = ref.on_bar(H0 + 8, _bars(99.4), _pred(*BULL))
    assert [(int(j), int(o["reason"]), int(o["kind"])) for o, j in zip(r.orders, r.order_pairs, strict=True)] == [
        (0, Reason.EXIT_STOP, OrderKind.MARKET)
    ]
    assert len(r0.orders) == 0


def test_exits_survive_a_restart_mid_close():
    """The bar's exits are part of the snapshot: a close that waits for fallback fills and is
    finished after a restore decides with them."""
    m, _ = _enter(None)
    snap = RiskMachine.restore(m.snapshot())
    ex = _exits(floor=(99.5, NAN, NAN))
    a = m.on_bar(H0 + 6, _bars(), _pred(*BULL), None, False, False, 0, ex)
    b = snap.on_bar(H0 + 6, _bars(), _pred(*BULL), None, False, False, 0, ex)
    assert a.events.tobytes() == b.events.tobytes() and m.snapshot() == snap.snapshot()
    assert RiskMachine.restore(m.snapshot()).exits.tobytes() == ex.tobytes()
