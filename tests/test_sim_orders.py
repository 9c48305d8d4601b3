"""Order validation, matching, the ledger, no-lookahead, persistence and determinism."""

from __future__ import annotations

import contextlib
import time
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kraken.exceptions import (
    KrakenCostMinimumNotMetError,
    KrakenInsufficientFundsError,
    KrakenInvalidArgumentsError,
    KrakenInvalidPriceError,
    KrakenMarketInOnlyCancelModeError,
    KrakenMarketInOnlyPostModeError,
    KrakenOrderLimitsExceededError,
    KrakenUnknownAssetError,
    KrakenUnknownOrderError,
)

from engine.execution.nb import fee_nb
from live_bridge.simulator.exchange import Exchange, KrakenAPIError, asset_decimals
from live_bridge.simulator.market import Market, SimClock
from live_bridge.simulator.testing import T0, bars_panel, flat_panel, sim_test_config, start_sim

P = 20000.0
FLAT = (P, P * 1.01, P * 0.99, P, 1.0)  # low 19800, high 20200, 1 BTC traded


def panel_with(changes: dict[int, tuple], n: int = 24):
    rows = [FLAT] * n
    for i, r in changes.items():
        rows[i] = r
    return bars_panel(rows)


@pytest.fixture
def sim():
    s = start_sim(
        panel_with({7: (P, P * 1.01, 18900.0, P, 1.0), 8: (P, P * 1.01, 18900.0, P, 1.0)}),
        start=T0 + 5 * 3600,
        balances={"USD": "100000", "BTC": "1"},
    )
    yield s
    s.stop()


def add(sim, **kw):
    kw.setdefault("pair", "XBTUSD")
    return sim.trade.create_order(**kw)["txid"][0]


def status(sim, txid):
    return sim.user.get_orders_info(txid=txid)[txid]


# ---- validation: what the client sees ---------------------------------------------------------
def test_validation_errors_as_the_client_sees_them(sim):
    t = sim.trade
    cases = [
        (
            KrakenInvalidPriceError,
            "EOrder:Invalid price:XBTUSD price can only be specified up to 1 decimals.",
            dict(ordertype="limit", side="buy", volume="0.01", price="19000.05"),
        ),
        (
            KrakenInvalidArgumentsError,
            "EGeneral:Invalid arguments:volume minimum not met",
            dict(ordertype="limit", side="buy", volume="0.00005", price="19000"),
        ),
        (
            KrakenInvalidArgumentsError,
            "EGeneral:Invalid arguments:volume can only be specified up to 8 decimals",
            dict(ordertype="limit", side="buy", volume="0.000100001", price="19000"),
        ),
        (
            KrakenInsufficientFundsError,
            "EOrder:Insufficient funds",
            dict(ordertype="limit", side="buy", volume="10", price="19000"),
        ),
        (
            KrakenInsufficientFundsError,
            "EOrder:Insufficient funds",
            dict(ordertype="market", side="sell", volume="1.5"),
        ),
        # the SDK matches "EQuery:Unknown asset" first, so this surfaces as KrakenUnknownAssetError
        (
            KrakenUnknownAssetError,
            "EQuery:Unknown asset pair",
            dict(ordertype="market", side="buy", volume="1", pair="XBTJPY"),
        ),
    ]
    for exc, msg, kw in cases:
        kw.setdefault("pair", "XBTUSD")
        with pytest.raises(exc) as ei:
            t.create_order(**kw)
        assert f"'error': [{msg!r}]" in str(ei.value), (kw, str(ei.value))
    assert sim.ex.orders == {}


def test_cost_minimum():
    s = start_sim(bars_panel([(0.01, 0.0101, 0.0099, 0.01, 1e6)] * 10, pair="DOGE/USD"), start=T0 + 3 * 3600)
    try:
        with pytest.raises(KrakenCostMinimumNotMetError) as ei:
            s.trade.create_order(ordertype="limit", side="buy", pair="XDGUSD", volume="40", price="0.0100000")
        assert "'error': ['EOrder:Cost minimum not met']" in str(ei.value)
        assert s.trade.create_order(ordertype="limit", side="buy", pair="DOGE/USD", volume="60", price="0.0100000")[
            "txid"
        ]
    finally:
        s.stop()


def test_market_modes(sim):
    sim.admin("/admin/status", {"status": "cancel_only"})
    with pytest.raises(KrakenMarketInOnlyCancelModeError) as ei:
        add(sim, ordertype="limit", side="buy", volume="0.01", price="19000")
    assert "'error': ['EService:Market in cancel_only mode']" in str(ei.value)
    assert sim.market.get_system_status()["status"] == "cancel_only"
    sim.admin("/admin/status", {"status": "post_only"})
    with pytest.raises(KrakenMarketInOnlyPostModeError):
        add(sim, ordertype="limit", side="buy", volume="0.01", price="19000")
    txid = add(sim, ordertype="limit", side="buy", volume="0.01", price="19000", oflags="post")
    sim.admin("/admin/status", {"status": "cancel_only"})
    assert sim.trade.cancel_order(txid=txid) == {"count": 1}  # cancels still work
    sim.admin("/admin/status", {"status": "maintenance"})
    r = sim.raw_private("AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "market", "volume": "0.01"})
    assert r.json()["error"] == ["EService:Unavailable"]
    sim.admin("/admin/status", {"status": "online"})
    assert add(sim, ordertype="market", side="buy", volume="0.01")


def test_limit_only_and_reduce_only_pair_statuses(sim):
    """Kraken's pair-only statuses: limit_only refuses market orders, reduce_only refuses buys (spot:
    only a sell reduces a holding); both show in AssetPairs, never as the venue's SystemStatus."""

    def err(**kw):
        kw.setdefault("pair", "XBTUSD")
        return sim.raw_private("AddOrder", kw).json()["error"]

    code, r = sim.admin("/admin/status", {"status": "limit_only"})
    assert code == 400 and "name a pair" in r["error"]  # not a venue status
    assert sim.admin("/admin/status", {"status": "limit_only", "pair": "BTC/USD"})[0] == 200
    assert sim.market.get_asset_pairs(pair="XBTUSD")["XXBTZUSD"]["status"] == "limit_only"
    assert sim.market.get_system_status()["status"] == "online"
    assert err(type="buy", ordertype="market", volume="0.01") == ["EService:Market in limit_only mode"]
    assert err(type="sell", ordertype="market", volume="0.01") == ["EService:Market in limit_only mode"]
    assert add(sim, ordertype="limit", side="buy", volume="0.01", price="19000")  # limits pass
    sim.admin("/admin/status", {"status": "reduce_only", "pair": "XBTUSD"})
    assert err(type="buy", ordertype="limit", volume="0.01", price="19000") == ["EService:Market in reduce_only mode"]
    assert err(type="buy", ordertype="market", volume="0.01") == ["EService:Market in reduce_only mode"]
    assert add(sim, ordertype="market", side="sell", volume="0.01")  # a sell reduces: it passes
    sim.admin("/admin/status", {"status": "online", "pair": "XBTUSD"})
    # the same through a market_status fault, venue-wide: every pair, SystemStatus stays online
    assert sim.admin("/admin/faults", {"kind": "market_status", "status": "limit_only"})[0] == 200
    assert sim.market.get_system_status()["status"] == "online"
    assert err(type="buy", ordertype="market", volume="0.01") == ["EService:Market in limit_only mode"]
    sim.admin("/admin/faults", method="DELETE")
    assert add(sim, ordertype="market", side="buy", volume="0.01")


def test_add_order_deadline_window_and_elapsed(sim):
    """``deadline`` (RFC 3339): outside now+2 s .. now+60 s at arrival -> EGeneral:Invalid arguments:
    deadline; processed after it -> EService:Deadline elapsed and nothing placed (wall time, not the
    simulated clock)."""
    from datetime import UTC, datetime, timedelta, timezone

    wall = 1_800_000_000.0
    sim.ex.wall = lambda: wall

    def iso(t, fmt="%Y-%m-%dT%H:%M:%SZ", tz=UTC):
        return datetime.fromtimestamp(t, tz=tz).strftime(fmt)

    def send(deadline, **kw):
        p = {
            "pair": "XBTUSD",
            "type": "buy",
            "ordertype": "limit",
            "volume": "0.01",
            "price": "19000",
            "deadline": deadline,
        } | kw
        return sim.raw_private("AddOrder", p).json()

    invalid = ["EGeneral:Invalid arguments:deadline"]
    for bad in [
        "",
        "soon",
        str(int(wall) + 10),
        iso(wall + 10, "%Y-%m-%d %H:%M:%S"),
        "2027-13-01T00:00:00Z",
        iso(wall + 10) + "\n",
        iso(wall + 1),
        iso(wall - 30),
        iso(wall + 61),
        "１" + iso(wall + 10)[1:],
    ]:
        assert send(bad)["error"] == invalid, bad
    n = len(sim.ex.orders)
    assert n == 0  # none of them placed anything
    ok = [
        iso(wall + 2),
        iso(wall + 60),
        iso(wall + 10, "%Y-%m-%dT%H:%M:%S.123456789Z"),
        iso(wall + 10, "%Y-%m-%dT%H:%M:%S%z", timezone(timedelta(hours=2)))[:-2] + ":00",
    ]
    for good in ok:
        assert send(good)["result"]["txid"], good
    assert len(sim.ex.orders) == n + len(ok)
    # arrives in time, processed 10 s later (a queue): refused as elapsed, nothing placed
    calls = []

    def late():
        calls.append(1)
        return wall if len(calls) == 1 else wall + 10

    sim.ex.wall = late
    assert send(iso(wall + 5))["error"] == ["EService:Deadline elapsed"]
    calls.clear()
    assert send(iso(wall + 5), validate="true")["error"] == ["EService:Deadline elapsed"]
    assert len(sim.ex.orders) == n + len(ok)
    calls.clear()
    assert send(iso(wall + 11))["result"]["txid"]  # still ahead when processed: placed


def test_query_orders_leaves_out_unknown_and_foreign_txids(sim):
    """Kraken answers QueryOrders with the orders it knows for this key; an unknown txid, or another
    key's, is left out (``{}`` when none is known), never an error. No txid at all is still refused."""
    import base64
    import secrets

    mine = add(sim, ordertype="limit", side="buy", volume="0.01", price="19000")
    key, secret = "other" + secrets.token_hex(8), base64.b64encode(secrets.token_bytes(64)).decode()
    sim.ex.add_account("other", key, secret, {"USD": Decimal(1000)})
    theirs = sim.raw_private(
        "AddOrder",
        {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "volume": "0.01", "price": "19000"},
        key=key,
        secret=secret,
    ).json()["result"]["txid"][0]

    def q(txid):
        return sim.raw_private("QueryOrders", {"txid": txid}).json()

    assert q("OAAAAA-BBBBB-CCCCCC") == {"error": [], "result": {}}
    assert q(theirs) == {"error": [], "result": {}}
    r = q(f"OAAAAA-BBBBB-CCCCCC,{mine},{theirs}")
    assert r["error"] == [] and list(r["result"]) == [mine] and r["result"][mine]["status"] == "open"
    assert q("")["error"] == ["EGeneral:Invalid arguments:txid"]


def test_cl_ord_id_takes_only_kraken_forms(sim):
    """A long UUID, a short (32 hex) UUID, or free ASCII text of at most 18 characters; anything else
    is EGeneral:Invalid arguments:cl_ord_id and places nothing."""

    def send(cl):
        return sim.raw_private(
            "AddOrder",
            {
                "pair": "XBTUSD",
                "type": "buy",
                "ordertype": "limit",
                "volume": "0.01",
                "price": "19000",
                "cl_ord_id": cl,
            },
        ).json()

    good = [
        "6d1b345e-2821-40e2-ad83-4ecb18a06876",
        "6D1B345E-2821-40E2-AD83-4ECB18A06876",
        "da8e4ad59b78481c93e589746b0cf91f",
        "arb-20240509-00010",
        "x" * 18,
        "a",
        "kq 1/2:#",
    ]
    for cl in good:
        assert send(cl)["result"]["txid"], cl
    bad = [
        "",
        "x" * 19,
        "da8e4ad59b78481c93e589746b0cf91",  # 31 hex: neither a UUID nor short text
        "6d1b345e-2821-40e2-ad83-4ecb18a0687g",
        "6d1b345e2821-40e2-ad83-4ecb18a06876x",
        "café-1",
        "tab\there",
        "line\n",
        "１２３",
        "{6d1b345e-2821-40e2-ad83-4ecb18a06876}",
    ]
    n = len(sim.ex.orders)
    for cl in bad:
        assert send(cl)["error"] == ["EGeneral:Invalid arguments:cl_ord_id"], cl
    assert len(sim.ex.orders) == n == len(good)


def test_order_limit_and_unknown_cancel():
    s = start_sim(flat_panel(), start=T0 + 3 * 3600, config=sim_test_config(fills={"max_open_orders": 2}))
    try:
        for _ in range(2):
            add(s, ordertype="limit", side="buy", volume="0.01", price="19000")
        with pytest.raises(KrakenOrderLimitsExceededError):
            add(s, ordertype="limit", side="buy", volume="0.01", price="19000")
        with pytest.raises(KrakenUnknownOrderError):
            s.trade.cancel_order(txid="OAAAAA-BBBBB-CCCCCC")
    finally:
        s.stop()


# ---- matching ---------------------------------------------------------------------------------
def test_limit_buy_fills_only_once_a_later_low_trades_through(sim):
    a = add(sim, ordertype="limit", side="buy", volume="0.05", price="19000")
    b = add(sim, ordertype="limit", side="buy", volume="0.05", price="18900")  # touched exactly: never fills
    sim.ex.advance(to=T0 + 7 * 3600)  # bars 5, 6 closed: low 19800
    assert status(sim, a)["status"] == "open" and status(sim, a)["vol_exec"] == "0.00000000"
    sim.ex.advance(to=T0 + 8 * 3600)  # bar 7 closed: low 18900 < 19000
    sa = status(sim, a)
    assert sa["status"] == "closed" and sa["price"] == "19000.0" and sa["cost"] == "950.0000"
    assert sa["fee"] == "3.8000"  # 0.4 %
    assert status(sim, b)["status"] == "open"
    bal = sim.user.get_balances()
    assert bal["ZUSD"]["balance"] == "99046.2000"  # 100000 - 950 - 3.8
    assert bal["XXBT"]["balance"] == "1.0500000000"
    # held for b: 0.05 * 18900 * 1.004
    assert bal["ZUSD"]["hold_trade"] == "948.7800"


def test_order_placed_after_a_bar_closed_does_not_fill_from_it(sim):
    sim.ex.advance(to=T0 + 8 * 3600 - 1)  # bar 7 (low 18900) is still forming
    sim.ex.advance(to=T0 + 8 * 3600)  # now closed
    a = add(sim, ordertype="limit", side="buy", volume="0.05", price="19000")
    sim.ex.advance(to=T0 + 8 * 3600 + 1800)
    assert status(sim, a)["status"] == "open"
    sim.ex.advance(to=T0 + 9 * 3600)  # bar 8 (placed while it was forming) trades through
    assert status(sim, a)["status"] == "closed"


def test_partial_fills_against_bar_volume(sim):
    # 10 % participation cap: bar 7 and 8 trade 1 BTC each -> 0.1 per bar
    a = add(sim, ordertype="limit", side="buy", volume="0.25", price="19000")
    sim.ex.advance(to=T0 + 8 * 3600)
    s = status(sim, a)
    assert s["status"] == "open" and s["vol_exec"] == "0.10000000" and s["misc"] == "partial"
    sim.ex.advance(to=T0 + 9 * 3600)
    assert status(sim, a)["vol_exec"] == "0.20000000"
    assert len(sim.user.get_trades_history()["trades"]) == 2


def test_market_order_uses_the_shared_slippage_model(sim):
    from engine.execution.nb import BUY, market_fill_price_nb, slippage_frac_nb

    ex = sim.ex
    now = ex.now()
    a = add(sim, ordertype="market", side="buy", volume="0.5")
    s = status(sim, a)
    fc = ex.config.fills
    slip = slippage_frac_nb(
        ex.market.spread_frac("BTC/USD", now),
        ex.market.vol_frac("BTC/USD", now),
        0.5 * P,
        ex.market.quote_volume("BTC/USD", now),
        fc.impact_coef,
        fc.min_slip,
    )
    expect = market_fill_price_nb(BUY, P, slip)
    assert float(s["price"]) == pytest.approx(expect, abs=0.1) and float(s["price"]) >= expect
    assert float(s["price"]) > P * (1 + 0.0005 - 1e-12)  # at least half the 0.1 % default spread


def test_post_only_cross_is_cancelled_and_ioc_remainder_cancelled(sim):
    ask = sim.market.get_ticker(pair="XBTUSD")["XXBTZUSD"]["a"][0]
    a = add(sim, ordertype="limit", side="buy", volume="0.01", price=ask, oflags="post")
    s = status(sim, a)
    assert s["status"] == "canceled" and s["reason"] == "Post only order" and s["vol_exec"] == "0.00000000"
    b = add(sim, ordertype="limit", side="buy", volume="0.01", price="19000", timeinforce="IOC")
    assert status(sim, b)["status"] == "canceled" and status(sim, b)["reason"] == "Immediate or cancel"
    c = add(sim, ordertype="limit", side="buy", volume="0.01", price="21000", timeinforce="IOC")  # marketable
    assert status(sim, c)["status"] == "closed"


def test_gtd_expires_before_a_later_fill(sim):
    a = add(
        sim,
        ordertype="limit",
        side="buy",
        volume="0.05",
        price="19000",
        timeinforce="GTD",
        expiretm=str(T0 + 7 * 3600 + 60),
    )
    sim.ex.advance(to=T0 + 9 * 3600)  # bar 7 would fill it, but it ends after expiretm
    s = status(sim, a)
    assert s["status"] == "expired" and s["closetm"] == T0 + 7 * 3600 + 60 and s["vol_exec"] == "0.00000000"
    with pytest.raises(KrakenInvalidArgumentsError):
        add(sim, ordertype="limit", side="buy", volume="0.05", price="19000", timeinforce="GTD")


def test_dead_mans_switch_cancels_in_simulated_time(sim):
    a = add(sim, ordertype="limit", side="buy", volume="0.05", price="19000")
    sim.trade.cancel_all_orders_after_x(timeout=60)
    sim.ex.advance(seconds=59)
    assert status(sim, a)["status"] == "open"
    sim.ex.advance(seconds=2)
    assert status(sim, a)["status"] == "canceled"


def test_cancel_by_userref(sim):
    a = add(sim, ordertype="limit", side="buy", volume="0.01", price="19000", userref=77)
    b = add(sim, ordertype="limit", side="buy", volume="0.01", price="19000", userref=77)
    assert sim.trade.cancel_order(txid=77) == {"count": 2}
    assert {status(sim, x)["status"] for x in (a, b)} == {"canceled"}


# ---- the ledger adds up ------------------------------------------------------------------------
def _walk_panel(seed: int, n: int = 60):
    rng = np.random.default_rng(seed)
    close = 20000 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.r_[20000, close[:-1]]
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, n))
    vol = rng.uniform(0.05, 3, n)
    return bars_panel([tuple(r) for r in np.c_[open_, high, low, close, vol]])


OPS = st.lists(
    st.tuples(
        st.sampled_from(["mkt_buy", "mkt_sell", "lim_buy", "lim_sell", "cancel", "advance", "fault", "poll"]),
        st.integers(1, 4000),
        st.integers(-300, 300),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, seed=st.integers(0, 3))
def test_fees_and_balances_add_up_to_the_cent(ops, seed):
    ex = Exchange(Market(_walk_panel(seed), use_estimator=False), SimClock(T0 + 30 * 3600), sim_test_config())
    acct = ex.add_account("a", "k", "c2VjcmV0", {"USD": Decimal("5000"), "BTC": Decimal("0.1")})
    start = dict(acct.balances)
    for op, size, off in ops:
        vol = f"{Decimal(size) / Decimal(100000):f}"  # 0.00001 .. 0.04 BTC
        mid = ex.market.mid("BTC/USD", ex.now())
        try:
            if op == "mkt_buy":
                ex.add_order(acct, {"pair": "XBTUSD", "type": "buy", "ordertype": "market", "volume": vol})
            elif op == "mkt_sell":
                ex.add_order(acct, {"pair": "XBTUSD", "type": "sell", "ordertype": "market", "volume": vol})
            elif op in ("lim_buy", "lim_sell"):
                px = f"{round(mid * (1 + off / 10000), 1):.1f}"
                ex.add_order(acct, {"pair": "XBTUSD", "type": op[4:], "ordertype": "limit", "volume": vol, "price": px})
            elif op == "fault":  # the next order fills over polls, or sticks
                from live_bridge.simulator.faults import Fault

                f = {"kind": "partial_fills", "polls": 1 + size % 4} if size % 2 else {"kind": "stuck_open"}
                ex.faults.add(Fault.from_dict(f, ex.market.resolve))
            elif op == "poll":
                opens = [o.txid for o in ex.open_orders_list()]
                if opens:
                    ex.query_orders(acct, {"txid": ",".join(opens)})
            elif op == "cancel":
                opens = [o.txid for o in ex.orders.values() if o.status == "open"]
                if opens:
                    ex.cancel(acct, opens[size % len(opens)], None)
            else:
                ex.advance(seconds=size * 3)
        except KrakenAPIError as e:
            assert e.message.startswith(("EOrder:", "EGeneral:Invalid arguments:volume minimum")), e.message
        holds = ex.holds(acct)
        for a, v in acct.balances.items():
            assert v >= 0 and holds.get(a, Decimal(0)) <= v
    # every balance equals its start plus the booked trades, exactly
    usd, btc = start["USD"], start["BTC"]
    for t in ex.trades.values():
        assert t.cost == (t.vol * t.price).quantize(Decimal("0.0001"))
        # the backtester's fee kernel on the same floats, to the bit: the exact fee rounded UP to
        # the quote's 4 decimals (a near-tie within 1e-9 relative snaps to it instead)
        assert float(t.fee) == fee_nb(float(t.vol) * float(t.price), 0.004, 4)
        assert t.fee == t.fee.quantize(Decimal("0.0001"))
        assert Decimal("-1e-8") < t.fee - t.vol * t.price * Decimal("0.004") < Decimal("0.0001")
        usd += -(t.cost + t.fee) if t.side == "buy" else (t.cost - t.fee)
        btc += t.vol if t.side == "buy" else -t.vol
    assert acct.balances["USD"] == usd and acct.balances.get("BTC", Decimal(0)) == btc
    for o in ex.orders.values():
        tr = [ex.trades[x] for x in o.trades]
        assert o.vol_exec == sum((t.vol for t in tr), Decimal(0)) <= o.vol
        assert o.cost == sum((t.cost for t in tr), Decimal(0)) and o.fee == sum((t.fee for t in tr), Decimal(0))
    for a, v in acct.balances.items():  # booked in the asset's own decimals, never finer
        assert v == v.quantize(Decimal(1).scaleb(-asset_decimals(a)))


# ---- no lookahead ------------------------------------------------------------------------------
def test_public_data_never_reveals_a_bar_after_now():
    k = 40
    now = T0 + k * 3600 + 1800  # half-way through bar k: only its open is known

    def perturbed(bar_k: bool):
        p = _walk_panel(1)
        for f in ("open", "high", "low", "close", "volume"):
            getattr(p, f)[k + 1 :] *= 1.3  # every later bar
        if bar_k:  # the forming bar's unknown part
            p.high[k] *= 1.2
            p.low[k] *= 0.8
            p.close[k] *= 1.1
            p.volume[k] *= 5
        return p

    def seen(panel, impact_volume="execution_bar"):
        m = Market(panel, use_estimator=False, impact_volume=impact_volume)
        ex = Exchange(m, SimClock(now), sim_test_config())
        return (
            m.ohlc("BTC/USD", now, None),
            m.ticker("BTC/USD", now),
            m.depth("BTC/USD", now, 10),
            ex.taker_price("BTC/USD", "buy", Decimal("0.5"), now),
        )

    base = seen(_walk_panel(1))
    later, forming = seen(perturbed(False)), seen(perturbed(True))
    assert later == base  # nothing after bar k leaks anywhere, fills included
    assert forming[:3] == base[:3]  # OHLC, Ticker, Depth never show the forming bar's range or volume
    # the fill's impact uses the hour's own liquidity like the backtester; with last_closed it cannot
    assert seen(perturbed(True), "last_closed") == seen(_walk_panel(1), "last_closed")
    rows, last = base[0]
    assert rows[-1][0] == T0 + k * 3600 and last == T0 + (k - 1) * 3600
    assert len(set(rows[-1][1:5])) == 1 and rows[-1][6] == "0.00000000"  # forming: open only
    assert max(r[0] for r in rows) <= now


# ---- persistence and determinism -----------------------------------------------------------------
def test_state_survives_a_restart(tmp_path):
    state = str(tmp_path / "sim.sqlite")
    panel = panel_with({7: (P, P * 1.01, 18900.0, P, 1.0)})
    s = start_sim(panel, start=T0 + 5 * 3600, state=state, balances={"USD": "50000"})
    a = add(s, ordertype="limit", side="buy", volume="0.05", price="19000", cl_ord_id="keep-me")
    m = add(s, ordertype="market", side="buy", volume="0.01")
    s.ex.advance(seconds=600)
    used_nonce = s.ex.accounts[s.trade._key].last_nonce
    before = s.admin("/admin/state")[1]
    s.stop()
    # restarted with different CLI balances: the saved books win
    s2 = start_sim(panel, start=T0, state=state, balances={"USD": "1"})
    try:
        after = s2.admin("/admin/state")[1]
        for k in ("now", "accounts", "orders", "trades", "processed_bars"):
            assert after[k] == before[k], k
        assert s2.raw_private("Balance", nonce=used_nonce).json()["error"] == ["EAPI:Invalid nonce"]
        assert status(s2, a)["status"] == "open" and status(s2, m)["status"] == "closed"
        s2.ex.advance(to=T0 + 8 * 3600)
        assert status(s2, a)["status"] == "closed"
        n = add(s2, ordertype="limit", side="buy", volume="0.01", price="19000")
        assert n not in before["orders"]
    finally:
        s2.stop()


def test_same_inputs_same_books():
    def run():
        ex = Exchange(Market(_walk_panel(2), use_estimator=False), SimClock(T0 + 30 * 3600), sim_test_config())
        acct = ex.add_account("a", "k", "c2VjcmV0", {"USD": Decimal("5000")})
        ex.add_order(acct, {"pair": "XBTUSD", "type": "buy", "ordertype": "market", "volume": "0.01"})
        ex.add_order(
            acct,
            {
                "pair": "XBTUSD",
                "type": "buy",
                "ordertype": "limit",
                "volume": "0.02",
                "price": f"{ex.market.mid('BTC/USD', ex.now()) * 0.99:.1f}",
            },
        )
        ex.advance(seconds=20 * 3600)
        st_ = ex.state()
        return st_["orders"], st_["trades"], st_["accounts"]

    assert run() == run()


def test_accelerated_clock_replays_bars_and_fills_lazily():
    from live_bridge.simulator.server import build_exchange

    ex = build_exchange(
        panel_with({7: (P, P * 1.01, 18900.0, P, 1.0)}),
        config=sim_test_config(),
        start=T0 + 5 * 3600,
        clock="accelerated",
        speed=36000.0,
        env={"KRAKEN_API_KEY": "k", "KRAKEN_API_SECRET": "c2VjcmV0"},
        balances={"USD": Decimal("1e5")},
    )
    acct = ex.accounts["k"]
    t = ex.add_order(acct, {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "volume": "0.01", "price": "19000"})[
        "txid"
    ][0]
    time.sleep(0.35)  # 0.35 s wall = 3.5 simulated hours: bar 7 closes at T0 + 8h
    assert ex.now() >= T0 + 8 * 3600
    assert ex.query_orders(acct, {"txid": t})[t]["status"] == "closed"
    rows, last = ex.market.ohlc("BTC/USD", ex.now(), None)
    assert last >= T0 + 7 * 3600 and rows[-1][0] <= ex.now()


def test_config_accounts_and_fee_tiers():
    from live_bridge.simulator.config import sim_config_from_dict
    from live_bridge.simulator.server import build_exchange

    cfg = sim_config_from_dict(
        {
            "fills": {"use_estimator": False},
            "fees": {
                "tiers": {"vip": {"taker": "0.001", "maker": "0.0005"}},
                "pairs": {"XBTUSD": {"taker": "0.002", "maker": "0.002"}},
            },
            "accounts": [
                {
                    "name": "p2",
                    "key_env": "P2_KEY",
                    "secret_env": "P2_SECRET",
                    "balances": {"USD": "1000"},
                    "fee_tier": "vip",
                },
                {"name": "absent", "key_env": "NOPE_KEY", "secret_env": "NOPE_SECRET"},
            ],
        }
    )
    panel = bars_panel([FLAT] * 24, pair="BTC/USD")
    eth = bars_panel([(2000.0, 2020.0, 1980.0, 2000.0, 10.0)] * 24, pair="ETH/USD")
    from engine.store.panel import FIELDS, Panel

    both = Panel(
        "synthetic",
        ("BTC/USD", "ETH/USD"),
        panel.ts,
        *(np.hstack([getattr(panel, f), getattr(eth, f)]) for f in FIELDS),
        np.hstack([panel.valid, eth.valid]),
    )
    ex = build_exchange(
        both,
        config=cfg,
        start=T0 + 5 * 3600,
        env={"KRAKEN_API_KEY": "k1", "KRAKEN_API_SECRET": "c2VjcmV0", "P2_KEY": "k2", "P2_SECRET": "c2VjcmV0"},
        balances={"USD": Decimal("1000")},
    )
    assert {a.name for a in ex.accounts.values()} == {"default", "p2"}
    p2 = ex.accounts["k2"]
    assert p2.balances == {"USD": Decimal("1000.0000")}
    ex.add_order(p2, {"pair": "ETHUSD", "type": "buy", "ordertype": "market", "volume": "0.1"})
    ex.add_order(p2, {"pair": "XBTUSD", "type": "buy", "ordertype": "market", "volume": "0.01"})
    fees = {t.pair: float(t.fee / t.cost) for t in ex.trades.values()}
    assert fees["ETH/USD"] == pytest.approx(0.001, abs=1e-6)  # the account's tier
    assert fees["BTC/USD"] == pytest.approx(0.002, abs=1e-6)  # the per-pair override wins


def test_a_restart_midway_changes_nothing(tmp_path):
    """Same orders and clock steps, with and without a crash + restart in the middle: same books."""
    from live_bridge.simulator.server import build_exchange

    env = {"KRAKEN_API_KEY": "k", "KRAKEN_API_SECRET": "c2VjcmV0"}
    panel = _walk_panel(3)

    def step(ex, i):
        acct = ex.accounts["k"]
        mid = ex.market.mid("BTC/USD", ex.now())
        for side, off in (("buy", 0.995), ("sell", 1.004), ("buy", 0.99)):
            with contextlib.suppress(KrakenAPIError):
                ex.add_order(
                    acct,
                    {
                        "pair": "XBTUSD",
                        "type": side,
                        "ordertype": "limit",
                        "volume": "0.013",
                        "price": f"{mid * off:.1f}",
                    },
                )
        ex.advance(seconds=2 * 3600 + 17)

    def run(state, crash_at):
        ex = build_exchange(
            panel,
            config=sim_test_config(),
            start=T0 + 30 * 3600,
            state=state,
            env=env,
            balances={"USD": Decimal("3000"), "BTC": Decimal("0.05")},
        )
        for i in range(10):
            if i == crash_at:
                ex.store.close()  # the process dies; a new one resumes from the file
                ex = build_exchange(panel, config=sim_test_config(), start=T0, state=state, env=env)
            step(ex, i)
        st_ = ex.state()
        return st_["orders"], st_["trades"], st_["accounts"], st_["now"]

    a = run(str(tmp_path / "a.sqlite"), crash_at=None)
    b = run(str(tmp_path / "b.sqlite"), crash_at=5)
    assert a == b and len(a[1]) > 3


def test_concurrent_clients_on_separate_accounts_keep_exact_books():
    import threading

    from kraken.spot import Trade

    from live_bridge.simulator.config import sim_config_from_dict
    from live_bridge.simulator.server import SimServer, build_exchange
    from live_bridge.simulator.testing import SECRET

    names = [f"a{i}" for i in range(4)]
    cfg = sim_config_from_dict(
        {
            "fills": {"use_estimator": False},
            "rate_limit": {"max_counter": 1e9, "order_max_counter": 1e9},
            "accounts": [
                {"name": n, "key_env": f"K_{n}", "secret_env": "S", "balances": {"USD": "10000"}} for n in names
            ],
        }
    )
    env = {"S": SECRET} | {f"K_{n}": f"key-{n}" for n in names}
    srv = SimServer(build_exchange(_walk_panel(5), config=cfg, start=T0 + 30 * 3600, env=env)).start()
    errors = []

    def client(n):
        t = Trade(key=f"key-{n}", secret=SECRET, url=srv.url)
        try:
            for i in range(8):
                t.create_order(
                    ordertype="market",
                    side="sell" if i % 3 == 2 else "buy",
                    pair="XBTUSD",
                    volume="0.001" if i % 3 == 2 else "0.002",
                )
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(n,)) for n in names]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    srv.stop()
    ex = srv.exchange
    assert errors == [] and len(ex.trades) == 32
    for n in names:
        acct = ex.accounts[f"key-{n}"]
        tr = [t for t in ex.trades.values() if t.account == acct.key]
        usd = Decimal("10000") + sum(
            (t.cost - t.fee if t.side == "sell" else -(t.cost + t.fee) for t in tr), Decimal(0)
        )
        assert acct.balances["USD"] == usd and acct.balances["BTC"] == Decimal("0.0100000000")


def test_spread_comes_from_the_features_estimator():
    from engine.features.spread import spread_estimate

    panel = _walk_panel(4, n=80)
    m = Market(panel, use_estimator=True, default_spread=0.001)
    est = spread_estimate(panel, window=24, method="corwin_schultz")
    assert m.spread_source == "corwin_schultz"
    checked = 0
    for k in range(2, 80):
        now = T0 + k * 3600 + 5
        e = est[k - 1, 0]  # the last closed bar's estimate: never the forming bar's
        s = m.spread_frac("BTC/USD", now)
        assert s == (e if e == e and e > 0 else 0.001)
        checked += e == e and e > 0
    assert checked > 20
    assert Market(panel, use_estimator=False).spread_frac("BTC/USD", T0 + 50 * 3600) == 0.001
