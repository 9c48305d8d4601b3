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
    # a profile stop of 0 (none) never removes [risk]'s stop
    assert r.orders["stop_mult"].tolist() == [1.0, cfg.risk.stop_atr_mult, cfg.risk.stop_atr_mult]
    pos = m.positions
    assert pos["stop"][0] == PX - 1.0 and np.isnan(pos["take_profit"][0])  # 1 ATR stop, no take-profit
    assert pos["stop"][1] == PX - 2.0 and pos["take_profit"][1] == PX + 3.0  # [risk]'s stop, 3 ATR take-profit
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
    """The bar's exits are part of the snapshot: a close that waits for fallback fills (limit-first
    entries not traded through) and is finished after a restore decides with them."""
    p = params_from_config(load_config(), entry_kind=int(OrderKind.LIMIT_FIRST))
    m = RiskMachine(PAIRS, p, INSTRUMENTS)
    for h in range(5):
        m.on_bar(H0 + h, _bars(), _pred(*BEAR))
    r = m.on_bar(H0 + 5, _bars(), _pred(*BULL))
    lim = r.orders["limit_price"]
    m.on_fill("AAA", "buy", float(r.orders[0]["qty"]), float(lim[0]), 0.96, FillHow.LIMIT)
    ex = _exits(floor=(99.5, NAN, NAN))
    w = m.on_bar(H0 + 6, _bars(), _pred(*BULL), None, False, False, 0, ex)
    assert not w.complete and m.awaiting_fills  # BBB and CCC fall back to market: the close waits
    b = RiskMachine.restore(m.snapshot())
    assert b.exits.tobytes() == ex.tobytes()
    for mm in (m, b):
        for j in (1, 2):
            q = float(mm.pending[j]["qty"])
            mm.on_fill(PAIRS[j], "buy", q, PX, round(q * PX * 0.004, 4), FillHow.MARKET_CLOSE)
    fa, fb = m.finish_bar(), b.finish_bar()
    assert fa.events.tobytes() == fb.events.tobytes() and m.snapshot() == b.snapshot()
    assert b.positions["stop"][0] == 99.5  # decided at the finished close with the restored exits
    assert (fb.events["code"] == EventCode.STOP).sum() == 1


def _v5_blob(m):
    """``m``'s snapshot as the build before per-bar exits wrote it (version 5: no order stop/take
    multiples, no exits record)."""

    from engine.risk import machine as M
    from engine.risk.enums import order_dt

    old_dt = np.dtype([(n, order_dt.fields[n][0]) for n in order_dt.names if n not in ("stop_mult", "tp_mult")])
    arrays = m._arrays()
    del arrays["exits"]
    pend = np.zeros(arrays["pending"].shape, dtype=old_dt)
    for n in old_dt.names:
        pend[n] = arrays["pending"][n]
    arrays["pending"] = pend
    return M.pack_snapshot(arrays, m.pairs, 5)


def test_a_version_5_snapshot_restores_with_the_risk_multiples():
    """A daemon upgraded while an entry is pending restarts: the order gets [risk]'s multiples (what
    its fill read before), the exits none; the fill then sets the same stop as the old build."""
    m = _machine()
    m.on_bar(H0 + 5, _bars(), _pred(*BULL))
    r = RiskMachine.restore(_v5_blob(m))
    assert r.pending["stop_mult"].tolist() == [2.0] * 3 and np.isnan(r.exits["stop_floor"]).all()
    r.on_fill("AAA", "buy", float(r.pending[0]["qty"]), PX, 0.96, FillHow.MARKET_OPEN)
    assert r.positions["stop"][0] == PX - 2.0


def test_a_tightened_risk_stop_applies_to_a_pending_entry_after_restore():
    m = _machine()
    m.on_bar(H0 + 5, _bars(), _pred(*BULL), None, False, False, 0, _exits(stop=(1.5, NAN, NAN)))
    assert m.pending["stop_mult"].tolist() == [1.5, 2.0, 2.0]
    tighter = params_from_config(load_config(), entry_kind=int(OrderKind.MARKET), stop_atr_mult=1.8)
    r = RiskMachine.restore(m.snapshot(), tighter, accept_param_change=True)
    assert r.pending["stop_mult"].tolist() == [1.5, 1.8, 1.8]  # tighter applies; the tighter profile stop stays
    wider = params_from_config(load_config(), entry_kind=int(OrderKind.MARKET), stop_atr_mult=3.0)
    r = RiskMachine.restore(m.snapshot(), wider, accept_param_change=True)
    assert r.pending["stop_mult"].tolist() == [1.5, 2.0, 2.0]  # a wider config never widens a decided stop


def test_a_profile_stop_never_widens_the_risk_stop_under_every_sizing():
    """sizing = risk sizes an entry for base_risk at [risk]'s stop distance: a wider profile stop
    (or none) would lose more at the same size, so only a tighter one applies; fixed-fraction
    entries are scaled at the fill by the same size scale."""
    for sizing in ("risk", "fixed_fraction", "vol_target"):
        cfg = load_config()
        p = params_from_config(cfg, entry_kind=int(OrderKind.MARKET))
        from engine.risk.params import SIZING_MODES

        p[0]["sizing"] = SIZING_MODES[sizing]
        p[0]["fixed_fraction"] = 0.05
        p[0]["base_risk"] = 0.001
        m0 = RiskMachine(PAIRS, p.copy(), INSTRUMENTS)
        m1 = RiskMachine(PAIRS, p.copy(), INSTRUMENTS)
        for h in range(5):
            m0.on_bar(H0 + h, _bars(), _pred(*BEAR))
            m1.on_bar(H0 + h, _bars(), _pred(*BEAR))
        r0 = m0.on_bar(H0 + 5, _bars(), _pred(*BULL))
        r1 = m1.on_bar(H0 + 5, _bars(), _pred(*BULL), None, False, False, 0, _exits((10.0, 0.0, 1.0), size=(0.5, 1, 1)))
        assert list(r1.order_pairs) == [0, 1, 2], sizing
        assert r1.orders["stop_mult"].tolist() == [2.0, 2.0, 1.0], sizing  # wide and none: [risk]'s 2 ATR
        for m in (m0, m1):
            for j, pair in enumerate(PAIRS):
                q = float(m.pending[j]["qty"])
                m.on_fill(pair, "buy", q, PX, round(q * PX * 0.004, 4), FillHow.MARKET_OPEN)
        assert m1.positions["stop"].tolist() == [PX - 2.0, PX - 2.0, PX - 1.0], sizing
        q0, q1 = m0.positions["qty"], m1.positions["qty"]
        if sizing == "fixed_fraction":
            assert r1.orders["frac"][0] == 0.025 and r0.orders["frac"][0] == 0.05
        assert q1[0] == pytest.approx(q0[0] / 2, abs=1e-4), (sizing, q0, q1)  # half size in AAA
        if sizing != "fixed_fraction":  # (fixed fraction: later fills read the cash the first left)
            assert q1[1] == q0[1], (sizing, q0, q1)


def test_bad_exits_are_refused_by_the_backtest_inputs_too():
    """The values the live machine refuses never run in a backtest either (one shared check)."""
    from dataclasses import replace

    from engine.backtest.runner import make_inputs
    from tests.test_strategy import _cfg, _panel, _signals

    p = _panel()
    pu, er = _signals(p)
    inp = make_inputs(p, pu, er, _cfg())
    bx = inp.bar_exits.copy()
    bx[7, 1, 2] = 3.0  # size scale 3
    with pytest.raises(InputError, match=r"bar_exits\[bar 7, .*\]\.size_scale = 3.0"):
        replace(inp, bar_exits=bx)
    bx = inp.bar_exits.copy()
    bx[9, 0, 0] = -1.0
    with pytest.raises(InputError, match="stop_mult = -1.0"):
        replace(inp, bar_exits=bx)
    from engine.backtest.runner import run_ma_sweep

    with pytest.raises(InputError, match="per-bar exits"):
        run_ma_sweep(inp, [5], [20], 50.0, params_from_config(load_config()))


def test_a_partial_profile_table_keeps_the_profiles_other_defaults():
    from engine.strategy.config import StrategyConfig

    c = StrategyConfig(exits={"defensive": {"stop_atr_mult": 1.2}})
    assert (c.exits.defensive.take_profit_atr_mult, c.exits.defensive.size_scale) == (2.0, 0.5)
    assert c.exits.defensive.stop_atr_mult == 1.2 and c.exits == StrategyConfig(exits=c.exits).exits


def test_a_preservation_floor_at_or_below_zero_is_no_floor():
    from engine.strategy import StrategySelection, bar_exits

    prof = np.full((3, 2), 5, dtype=np.int8)  # preservation everywhere
    one = np.ones((3, 2))
    sel = StrategySelection(prof, prof, np.zeros((3, 2), bool), one, one, one * 40.0, one * 0, one * 0)
    close = np.array([[100.0, 100.0], [100.0, 1.0], [100.0, 0.5]])
    atr = np.full((3, 2), 2.0)
    bx = bar_exits(sel, close, atr, np.ones((3, 2), bool))
    np.testing.assert_array_equal(bx[:, :, 3], [[20.0, 20.0], [20.0, np.nan], [20.0, np.nan]])
