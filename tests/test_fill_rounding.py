"""Market fill prices on the tick and fees in the quote's decimals: the backtester books what the
exchange simulator books, to the bit (engine.execution.nb.taker_tick_nb / fee_nb, shared).

(a) the kernels against exact Decimal arithmetic on many random prices and quantities, ties included;
(b) a backtest's fills (market at the open, limit, market fallback at the close; buys and sells)
    replayed through the simulator with the same inputs book the same price and fee floats;
(c) with ``enforce_precision`` off the backtester's prices and fees stay unrounded."""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

import numpy as np
import pytest

from engine.backtest.runner import make_inputs, run_backtest
from engine.config import load_config
from engine.execution.nb import BUY, SELL, fee_nb, market_fill_price_nb, slippage_frac_nb, taker_tick_nb
from engine.pairs import asset_decimals, instrument
from engine.risk.enums import SIZING_RISK, FillHow, OrderKind, order_dt
from engine.risk.machine import RiskMachine, bar_inputs
from engine.risk.nb import round_down_nb
from engine.risk.params import instrument_arrays, params_from_config
from live_bridge.simulator.exchange import Exchange
from live_bridge.simulator.market import Market, SimClock
from live_bridge.simulator.testing import bars_panel, sim_test_config

RATE = 0.004


def _ref(x: Decimal, d: int, up: bool) -> tuple[float, bool]:
    """The kernels' rule in exact Decimal: k = x * 10**d; round(k) within min(1e-9 * max(1, |k|),
    0.01) of it, else ceil (up) / floor; as a float, and whether k lies so close to that snap
    boundary (1e-12 relative) that the float arithmetic may fall on either side of it."""
    k = x.scaleb(d)
    r = k.to_integral_value(rounding=ROUND_HALF_EVEN)
    tol = min(Decimal("1e-9") * max(Decimal(1), abs(k)), Decimal("0.01"))
    if abs(k - r) <= tol:
        out = r
    else:
        out = k.to_integral_value(rounding=ROUND_CEILING if up else ROUND_FLOOR)
    edge = abs(abs(k - r) - tol) <= Decimal("1e-12") * max(Decimal(1), abs(k))
    return float(out.scaleb(-d)), edge


def _agrees(got: float, x: Decimal, d: int, up: bool) -> bool:
    want, edge = _ref(x, d, up)
    return got == want or edge


# ---- (a) the kernels against Decimal


def test_ties_land_on_the_decimal_not_one_tick_off():
    # float products a few ulps off a decimal tie: a plain ceil / floor would be one unit off
    notional = 0.1 * 3.0  # 0.30000000000000004
    assert notional * 1e4 != 3000.0
    assert fee_nb(notional / RATE * RATE, 1.0, 4) == 0.3
    assert fee_nb(75.0, RATE, 4) == 0.3  # 75 * 0.004 = 0.30000000000000004 in binary
    assert fee_nb(1000.0, RATE, 4) == 4.0 and fee_nb(1000.0, RATE, 8) == 4.0
    assert fee_nb(0.003 * 30000.1, RATE, 4) == 0.3601  # 0.3600012 up to the cent's hundredth
    for px in (30000.1, 0.3, 1.1, 2.675, 20000.03):
        for d in (1, 2, 5):
            exact = Decimal(repr(px))
            assert taker_tick_nb(BUY, px, d) == _ref(exact, d, True)[0]
            assert taker_tick_nb(SELL, px, d) == _ref(exact, d, False)[0]
    assert taker_tick_nb(BUY, 30000.1, 1) == 30000.1 == taker_tick_nb(SELL, 30000.1, 1)
    assert taker_tick_nb(BUY, 30000.11, 1) == 30000.2 and taker_tick_nb(SELL, 30000.19, 1) == 30000.1
    assert taker_tick_nb(BUY, 1.1 * 3, 1) == 3.3  # 3.3000000000000003: a tie, not 3.4
    assert np.isnan(taker_tick_nb(BUY, np.nan, 2)) and np.isnan(fee_nb(np.nan, RATE, 4))
    assert fee_nb(1234.5678, RATE, -1) == 1234.5678 * RATE and taker_tick_nb(BUY, 1.23456, -1) == 1.23456


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kernels_equal_decimal_on_random_prices_and_quantities(seed):
    rng = np.random.default_rng(seed)
    n_snapped = 0
    for _ in range(3000):
        pd_ = int(rng.integers(1, 8))  # price decimals (BTC 1 ... DOGE 7)
        qd = int(rng.choice([4, 8]))  # quote decimals (USD, USDT)
        # a raw fill price with more digits than the tick, sometimes exactly on a tick
        digits = pd_ + int(rng.integers(0, 4))
        raw = Decimal(int(rng.integers(1, 2 * 10 ** (digits + 5)))).scaleb(-digits)  # up to 200,000
        px = float(raw)
        for side, up in ((BUY, True), (SELL, False)):
            got = taker_tick_nb(side, px, pd_)
            assert _agrees(got, Decimal(px), pd_, up), (px, pd_, side)
            assert got == float(Decimal(repr(got)).quantize(Decimal(1).scaleb(-pd_)))  # on its grid
        # a fee: lot-rounded quantity (8 decimals) x a tick price x the fee rate
        qty = Decimal(int(rng.integers(1, 10**10))).scaleb(-8)  # up to 100 units
        price = Decimal(repr(taker_tick_nb(BUY, px, pd_)))
        rate = Decimal(rng.choice(["0.004", "0.0026", "0.0016", "0.001"]))
        exact = qty * price * rate
        fee = fee_nb(float(qty) * float(price), float(rate), qd)
        assert _agrees(fee, exact, qd, True), (qty, price, rate, qd)
        # against a plain ROUND_UP of the exact fee: equal unless a near-tie snapped down to it
        plain = float(exact.quantize(Decimal(1).scaleb(-qd), rounding=ROUND_CEILING))
        if fee != plain and not _ref(exact, qd, True)[1]:
            n_snapped += 1
            f, pl = Decimal(repr(fee)), Decimal(repr(plain))
            assert pl - f == Decimal(1).scaleb(-qd) and f < exact  # one unit: the tie below it was taken
            assert (exact - f).scaleb(qd) <= min(Decimal("1e-9") * max(Decimal(1), exact.scaleb(qd)), Decimal("0.01"))
    assert n_snapped < 30  # near-ties are rare on random inputs


def test_round_down_keeps_a_quantity_on_its_lot_and_never_rounds_up():
    # 0.14574352 * 1e8 = 14574351.999999998: a plain floor drops the lot the quantity is already on
    assert 0.14574352 * 1e8 != 14574352.0 and round_down_nb(0.14574352, 8) == 0.14574352
    assert round_down_nb(0.06378748, 8) == 0.06378748 and round_down_nb(8.51926977, 8) == 8.51926977
    # a value a near-tie BELOW a lot (a cash or cap clip) is floored, never snapped up past itself
    x = 0.1457435199999
    assert round_down_nb(x, 8) == 0.14574351
    rng = np.random.default_rng(5)
    for _ in range(3000):
        d = int(rng.choice([0, 2, 4, 5, 8]))
        on = float(Decimal(int(rng.integers(1, 10**10))).scaleb(-d))  # a quantity on its lot
        assert round_down_nb(on, d) == on, (on, d)
        below = on * (1.0 - float(rng.uniform(1e-15, 1e-9)))  # just under it, within the snap
        got = round_down_nb(below, d)
        assert got <= below and below - got < 10.0**-d, (below, d, got)
        assert got == float(Decimal(repr(got)).quantize(Decimal(1).scaleb(-d)))  # on its grid


# ---- (b) the backtester books what the simulator books

N = 80


def _panel(seed: int):
    rng = np.random.default_rng(seed)
    c = 20000.0 + np.cumsum(rng.normal(0.0, 40.0, N))
    o = np.r_[c[0], c[:-1]] + rng.normal(0.0, 3.0, N)
    h = np.maximum(o, c) + np.abs(rng.normal(0.0, 30.0, N))
    lo = np.minimum(o, c) - np.abs(rng.normal(0.0, 30.0, N))
    v = 20.0 + np.abs(rng.normal(0.0, 5.0, N))
    return bars_panel(list(zip(o, h, lo, c, v, strict=True)), pair="BTC/USD")


def _run(entry_kind: int, seed: int, **over):
    """A one-pair BTC/USD run through the RiskMachine with the backtester's fill model: each fill with
    the order that made it, its execution bar and the params."""
    cfg = load_config()
    panel = _panel(seed)
    pu = np.full((N, 1), 0.5)
    pu[30::12, 0] = 0.9  # entries
    pu[36::12, 0] = 0.1  # signal exits
    er = np.full((N, 1), 0.05)
    inp = make_inputs(panel, pu, er, cfg, entry_block=np.zeros(N, dtype=np.bool_))
    params = params_from_config(
        cfg,
        sizing=SIZING_RISK,
        base_risk=0.001,
        max_exposure=0.9,  # no cap binds: each fill is the order's quantity
        max_cluster_exposure=0.9,
        entry_kind=entry_kind,
        exit_kind=entry_kind,
        **over,
    )
    m = RiskMachine(inp.pairs, params)
    fills: list = []
    orders = np.zeros(0, dtype=order_dt)
    for t in range(N):
        r = m.on_bar(*bar_inputs(inp, t), simulate_fills=True)
        for tr in r.trades:
            o = orders[orders["side"] == tr["side"]][0]
            fills.append((tr, o, t))
        orders = r.orders.copy()
    assert fills, "the run must trade"
    return panel, inp, params[0], fills


def _sim_fill(panel, inp, p, tr, o, t, monkeypatch):
    """The same order through the simulator: market orders at the backtester's reference price,
    spread, volatility and bar quote volume (its own taker price and fee); a limit fill booked at
    its limit price. Returns the simulator's trade."""
    now = float(inp.ts[t]) + 1800.0
    market = Market(panel, use_estimator=False)
    cfg = sim_test_config(fills={"impact_coef": float(p["impact_coef"]), "min_slip": float(p["min_slip"])})
    ex = Exchange(market, SimClock(now), cfg)
    acct = ex.add_account("a", "k", "s", {"USD": Decimal("10000000"), "BTC": Decimal("100")})
    side = "buy" if tr["side"] == BUY else "sell"
    vol = str(Decimal(repr(float(tr["qty"]))).quantize(Decimal("1e-8")))
    assert float(vol) == tr["qty"]
    if tr["how"] == FillHow.LIMIT:
        px = Decimal(repr(float(tr["price"])))
        far = px * Decimal("0.5") if side == "buy" else px * 2  # rests: filled by hand at the limit
        ex.add_order(acct, {"pair": "XBTUSD", "type": side, "ordertype": "limit", "volume": vol, "price": f"{far:.1f}"})
        (order,) = [x for x in ex.orders.values() if x.status == "open"]
        assert ex._fill(order, Decimal(vol), px, now, maker=True)
    else:
        ref = float(inp.open[t, 0] if tr["how"] == FillHow.MARKET_OPEN else inp.close[t, 0])
        monkeypatch.setattr(market, "mid", lambda pair, now: ref)
        monkeypatch.setattr(market, "spread_frac", lambda pair, now: float(o["spread"]) if p["spread_slip"] else 0.0)
        monkeypatch.setattr(market, "vol_frac", lambda pair, now: float(o["atr"] / o["ref_price"]))
        monkeypatch.setattr(market, "quote_volume", lambda pair, now: float(inp.volume[t, 0] * inp.close[t, 0]))
        ex.add_order(acct, {"pair": "XBTUSD", "type": side, "ordertype": "market", "volume": vol})
    (trade,) = ex.trades.values()
    return trade


@pytest.mark.parametrize("kind", [OrderKind.MARKET, OrderKind.LIMIT_FIRST])
def test_backtest_fills_equal_the_simulator_bookings(kind, monkeypatch):
    hows = set()
    n = 0
    for seed in range(3):
        panel, inp, p, fills = _run(int(kind), seed)
        assert p["enforce_precision"] == 1
        for tr, o, t in fills:
            # the fill keeps the order's lot-rounded quantity (round_down_nb snaps near-ties: it
            # once floored 0.06378748 * 1e8 = 6378747.999999999 one lot down)
            assert tr["qty"] == o["qty"], (tr, o)
            n += 1
            hows.add((int(tr["how"]), int(tr["side"])))
            with monkeypatch.context() as mp:
                st = _sim_fill(panel, inp, p, tr, o, t, mp)
            assert float(st.price) == tr["price"], (tr, st)
            assert float(st.fee) == tr["fee"], (tr, st)
            assert float(st.vol) == tr["qty"]
            # the cost: the simulator quantises qty * price to the quote's decimals, the backtester
            # keeps the float product (at most half a unit of the 4th decimal apart)
            assert abs(float(st.cost) - tr["qty"] * tr["price"]) <= 0.5e-4 + 1e-9
    assert n >= 10
    if kind == OrderKind.MARKET:
        assert hows == {(FillHow.MARKET_OPEN, BUY), (FillHow.MARKET_OPEN, SELL)}
    else:
        assert {h for h, _ in hows} >= {FillHow.LIMIT, FillHow.MARKET_CLOSE}


def test_backtest_prices_on_the_tick_and_fees_in_quote_decimals():
    _, inp, p, fills = _run(int(OrderKind.MARKET), 0)
    pd_ = instrument("BTC/USD").pair_decimals
    qd = asset_decimals("USD")
    assert instrument_arrays(["BTC/USD"])[4].tolist() == [qd] == [4]
    for tr, o, t in fills:
        ref = inp.open[t, 0]
        slip = slippage_frac_nb(
            o["spread"],
            o["atr"] / o["ref_price"],
            o["qty"] * ref,
            inp.volume[t, 0] * inp.close[t, 0],
            p["impact_coef"],
            p["min_slip"],
        )
        raw = market_fill_price_nb(int(tr["side"]), ref, slip)
        assert tr["price"] == taker_tick_nb(int(tr["side"]), raw, pd_)
        assert (tr["price"] >= raw) if tr["side"] == BUY else (tr["price"] <= raw)
        assert abs(tr["price"] - raw) < 10.0**-pd_
        assert tr["fee"] == fee_nb(tr["qty"] * tr["price"], p["fee_rate"], qd)
        assert 0.0 <= tr["fee"] - tr["qty"] * tr["price"] * p["fee_rate"] < 10.0**-qd


# ---- (c) precision off: unrounded


def test_precision_off_leaves_prices_and_fees_unrounded():
    _, inp, p, fills = _run(int(OrderKind.MARKET), 0, enforce_precision=0)
    assert p["enforce_precision"] == 0
    n_off_tick = 0
    for tr, o, t in fills:
        ref = inp.open[t, 0]
        slip = slippage_frac_nb(
            o["spread"],
            o["atr"] / o["ref_price"],
            o["qty"] * ref,
            inp.volume[t, 0] * inp.close[t, 0],
            p["impact_coef"],
            p["min_slip"],
        )
        assert tr["price"] == market_fill_price_nb(int(tr["side"]), ref, slip)
        assert tr["fee"] == tr["qty"] * tr["price"] * p["fee_rate"]
        n_off_tick += tr["price"] != taker_tick_nb(int(tr["side"]), tr["price"], 1)
    assert n_off_tick == len(fills)  # none happens to sit on the tick: the rounding above is real
    # the same run through run_backtest (the fused kernel) books the same trades
    bt = run_backtest(inp, p.reshape(1).copy())
    assert bt.trades["price"].tolist() == [tr["price"] for tr, _, _ in fills]
    assert bt.trades["fee"].tolist() == [tr["fee"] for tr, _, _ in fills]
