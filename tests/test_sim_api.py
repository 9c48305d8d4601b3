"""The unmodified python-kraken-sdk against the simulator on real Kraken and Binance bars: every
endpoint answers, every answer validates against Kraken's published OpenAPI spec."""

from __future__ import annotations

import json
import os

import pytest

from engine.paths import shared_dir
from live_bridge.simulator.spec import SpecValidator
from live_bridge.simulator.testing import start_sim

START = 1_640_995_200  # 2022-01-01 00:00 UTC
NOW = START + 30 * 3600


@pytest.fixture(scope="module")
def spec() -> SpecValidator:
    d = shared_dir() / "kraken" / "spot-rest"
    if not d.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"Kraken spec not found at {d} (set KQ_SHARED)")
        pytest.skip(f"Kraken spec not found at {d}")
    return SpecValidator()


@pytest.fixture(scope="module")
def sim():
    from tests.conftest import require_shared

    require_shared()
    from engine.store.panel import load_shared_panel

    panel = load_shared_panel(
        ["XBTUSD_1h", "binance_BTCUSDT_1h", "binance_ETHUSDT_1h"], start=START, end=START + 7 * 86400
    )
    s = start_sim(panel, start=NOW, balances={"USD": "100000", "USDT": "50000", "ETH": "3"})
    yield s
    s.stop()


def ok(spec: SpecValidator, endpoint: str, result) -> None:
    errs = spec.errors(endpoint, {"error": [], "result": result})
    assert errs == [], f"{endpoint}: {errs}"


def test_public_endpoints_validate(sim, spec):
    m = sim.market
    ok(spec, "SystemStatus", m.get_system_status())
    r = sim.raw_public("Time").json()
    assert r["error"] == [] and r["result"]["unixtime"] == NOW
    ok(spec, "Time", r["result"])
    assets = m.get_assets()
    assert set(assets) == {"XXBT", "ZUSD", "USDT", "XETH"}
    ok(spec, "Assets", assets)
    pairs = m.get_asset_pairs()
    assert set(pairs) == {"XXBTZUSD", "XBTUSDT", "ETHUSDT"}
    assert pairs["XXBTZUSD"]["altname"] == "XBTUSD" and pairs["XXBTZUSD"]["ordermin"] == "0.0001"
    assert pairs["XXBTZUSD"]["tick_size"] == "0.1" and pairs["XXBTZUSD"]["pair_decimals"] == 1
    ok(spec, "AssetPairs", pairs)
    for alias in ("XBTUSD", "XBT/USD", "BTC/USD", "XXBTZUSD"):
        t = m.get_ticker(pair=alias)
        assert list(t) == ["XXBTZUSD"]
        ok(spec, "Ticker", t)
    t = m.get_ticker(pair="XBTUSD")["XXBTZUSD"]
    assert float(t["b"][0]) < float(t["c"][0]) < float(t["a"][0])
    ok(spec, "Ticker", m.get_ticker())
    o = m.get_ohlc(pair="XBTUSDT", interval=60)
    ok(spec, "OHLC", o)
    rows = o["XBTUSDT"]
    assert all(
        isinstance(r[0], int) and all(isinstance(x, str) for x in r[1:7]) and isinstance(r[7], int) for r in rows
    )
    assert rows[-1][0] == NOW and rows[-2][0] == NOW - 3600 == o["last"]
    d = m.get_order_book(pair="ETH/USDT", count=5)
    ok(spec, "Depth", d)
    book = d["ETHUSDT"]
    assert len(book["asks"]) == 5 and float(book["bids"][0][0]) < float(book["asks"][0][0])


def test_ohlc_matches_the_real_bars_and_caps_at_720(sim, spec):
    from engine.store.panel import load_shared_panel

    p = load_shared_panel(["XBTUSD_1h"], start=START, end=NOW - 3600)
    rows = sim.market.get_ohlc(pair="XBTUSD", interval=60)["XXBTZUSD"]
    closed = rows[:-1]
    j = 0
    assert [r[0] for r in closed] == [int(t) for t, v in zip(p.ts, p.valid[:, j]) if v]
    for r in closed:
        i = (r[0] - START) // 3600
        assert float(r[1]) == pytest.approx(p.open[i, j], abs=0.051)
        assert float(r[4]) == pytest.approx(p.close[i, j], abs=0.051)
    # since: only newer closed rows plus the forming one
    later = sim.market.get_ohlc(pair="XBTUSD", interval=60, since=NOW - 3 * 3600)["XXBTZUSD"]
    assert [r[0] for r in later] == [NOW - 2 * 3600, NOW - 3600, NOW]


def test_ohlc_returns_at_most_720_rows_forming_last():
    from live_bridge.simulator.market import Market
    from live_bridge.simulator.testing import T0, flat_panel

    m = Market(flat_panel(900), use_estimator=False)
    now = T0 + 850 * 3600 + 10
    rows, last = m.ohlc("BTC/USD", now, None)
    assert len(rows) == 720 and rows[-1][0] == T0 + 850 * 3600 and last == T0 + 849 * 3600
    assert rows[0][0] == T0 + (850 - 719) * 3600
    rows, _ = m.ohlc("BTC/USD", now, T0 + 100 * 3600)  # an old since cannot reach past 720 rows
    assert len(rows) == 720


def test_private_endpoints_validate(sim, spec):
    u, tr = sim.user, sim.trade
    ok(spec, "Balance", u.get_account_balance())
    ok(spec, "BalanceEx", u.get_balances())
    ok(spec, "TradeBalance", u.get_trade_balance())
    r = tr.create_order(ordertype="market", side="buy", pair="XBTUSD", volume="0.01", userref=11)
    ok(spec, "AddOrder", r)
    mk = r["txid"][0]
    r2 = tr.create_order(
        ordertype="limit",
        side="buy",
        pair="BTC/USDT",
        volume="0.002",
        price="30000",
        cl_ord_id="kq-1",
        timeinforce="GTD",
        expiretm=str(NOW + 7200),
    )
    ok(spec, "AddOrder", r2)
    lim = r2["txid"][0]
    r3 = tr.create_order(ordertype="limit", side="sell", pair="ETHUSDT", volume="0.5", price="9000.00", oflags=["post"])
    ok(spec, "AddOrder", r3)
    v = tr.create_order(ordertype="limit", side="buy", pair="XBTUSD", volume="0.01", price="30000", validate=True)
    assert "txid" not in v and v["descr"]["order"] == "buy 0.01000000 XBTUSD @ limit 30000.0"
    ok(spec, "AddOrder", v)
    q = u.get_orders_info(txid=[mk, lim], trades=True)
    ok(spec, "QueryOrders", q)
    assert q[mk]["status"] == "closed" and q[mk]["vol_exec"] == "0.01000000" and q[mk]["userref"] == 11
    assert q[lim]["status"] == "open" and q[lim]["cl_ord_id"] == "kq-1" and q[lim]["expiretm"] == NOW + 7200
    oo = u.get_open_orders(trades=True)
    ok(spec, "OpenOrders", oo)
    assert set(oo["open"]) == {lim, r3["txid"][0]}
    assert set(u.get_open_orders(cl_ord_id="kq-1")["open"]) == {lim}
    ok(spec, "ClosedOrders", u.get_closed_orders(trades=True))
    th = u.get_trades_history()
    ok(spec, "TradesHistory", th)
    assert th["count"] == 1 and next(iter(th["trades"].values()))["pair"] == "XXBTZUSD"
    (tid,) = q[mk]["trades"]
    qt = u.get_trades_info(txid=[tid, "TAAAAA-BBBBB-CCCCCC"], trades=True)
    ok(spec, "QueryTrades", qt)
    assert qt == {tid: th["trades"][tid]} and qt[tid]["ordertxid"] == mk and qt[tid]["vol"] == "0.01000000"
    assert u.get_trades_info(txid=tid) == qt
    bx = u.get_balances()
    assert bx["XETH"]["hold_trade"] == "0.5000000000"
    assert u.get_balance("XBT")["balance"] == pytest.approx(0.01)
    c = tr.cancel_order(cl_ord_id="kq-1")
    ok(spec, "CancelOrder", c)
    assert c == {"count": 1}
    ok(spec, "CancelAllOrdersAfter", tr.cancel_all_orders_after_x(timeout=60))
    ok(spec, "CancelAllOrdersAfter", tr.cancel_all_orders_after_x(timeout=0))
    ca = tr.cancel_all_orders()
    ok(spec, "CancelAll", ca)
    assert ca == {"count": 1}
    assert u.get_open_orders()["open"] == {}
    closed = u.get_closed_orders()
    assert closed["count"] == 3
    assert {o["status"] for o in closed["closed"].values()} == {"closed", "canceled"}


def test_errors_keep_the_envelope(sim, spec):
    for resp in (
        sim.raw_public("Ticker", {"pair": "NOPEUSD"}),
        sim.raw_public("OHLC", {"pair": "XBTUSD", "interval": 5}),
        sim.raw_private(
            "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "volume": "0.01", "price": "30000.05"}
        ),
        sim.raw_public("Nope"),
    ):
        assert resp.status_code == 200
        b = json.loads(resp.text)
        assert set(b) == {"error", "result"} and b["error"]
        assert spec.errors("Ticker", b) == []
    assert sim.raw_public("Ticker", {"pair": "NOPEUSD"}).json()["error"] == ["EQuery:Unknown asset pair"]


def test_admin_state_is_complete(sim):
    code, st = sim.admin("/admin/state")
    assert code == 200
    assert {"now", "accounts", "orders", "trades", "faults", "status", "pairs"} <= set(st)
    acct = st["accounts"]["default"]
    assert "secret" not in json.dumps(st).lower().replace("secret_env", "")
    assert set(acct["balances"]) >= {"USD", "USDT", "ETH"}


def test_raw_bodies_validate_as_sent(sim, spec):
    """The exact bytes on the wire (not the SDK's unwrapped result) match the spec, envelope included."""
    public = {
        "Time": {},
        "SystemStatus": {},
        "Assets": {"asset": "XBT,USD"},
        "AssetPairs": {"pair": "XBTUSDT"},
        "Ticker": {"pair": "ETHUSDT"},
        "OHLC": {"pair": "XBTUSD", "interval": 60, "since": NOW - 7200},
        "Depth": {"pair": "XBTUSD", "count": 3},
    }
    for ep, params in public.items():
        r = sim.raw_public(ep, params)
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        assert spec.errors(ep, json.loads(r.text)) == [], ep
    t = sim.raw_private(
        "AddOrder",
        {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "volume": "0.001", "price": "30000", "userref": 9},
    )
    txid = t.json()["result"]["txid"][0]
    m = sim.raw_private("AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "market", "volume": "0.001"})
    fills = sim.ex.orders[m.json()["result"]["txid"][0]].trades
    assert fills
    private = [
        ("AddOrder", t),
        ("Balance", sim.raw_private("Balance")),
        ("BalanceEx", sim.raw_private("BalanceEx")),
        ("TradeBalance", sim.raw_private("TradeBalance")),
        ("OpenOrders", sim.raw_private("OpenOrders")),
        ("ClosedOrders", sim.raw_private("ClosedOrders")),
        ("QueryOrders", sim.raw_private("QueryOrders", {"txid": txid})),
        ("TradesHistory", sim.raw_private("TradesHistory")),
        ("QueryTrades", sim.raw_private("QueryTrades", {"txid": ",".join(fills)})),
        ("CancelOrder", sim.raw_private("CancelOrder", {"txid": txid})),
        ("CancelAll", sim.raw_private("CancelAll")),
        ("CancelAllOrdersAfter", sim.raw_private("CancelAllOrdersAfter", {"timeout": 0})),
    ]
    for ep, r in private:
        b = json.loads(r.text)
        assert r.status_code == 200 and b["error"] == [] and spec.errors(ep, b) == [], (ep, b)


def test_query_trades_arguments(sim):
    """QueryTrades takes 1-20 comma-separated trade txids and an optional boolean ``trades``; unknown
    and other keys' txids are left out."""
    r = sim.raw_private("AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "market", "volume": "0.002"})
    (tid,) = sim.ex.orders[r.json()["result"]["txid"][0]].trades

    def q(**p):
        return sim.raw_private("QueryTrades", p).json()

    got = q(txid=f" {tid} ,TAAAAA-BBBBB-CCCCCC", trades="true")
    assert got["error"] == [] and list(got["result"]) == [tid] and got["result"][tid]["maker"] is False
    assert q(txid="TAAAAA-BBBBB-CCCCCC") == {"error": [], "result": {}}
    assert q()["error"] == q(txid=" , ")["error"] == ["EGeneral:Invalid arguments:txid"]
    assert q(txid=",".join([tid] * 21))["error"] == ["EGeneral:Invalid arguments:txid (at most 20)"]
    assert q(txid=",".join([tid] * 20))["result"] == {tid: got["result"][tid]}
    assert q(txid=tid, trades="maybe")["error"] == ["EGeneral:Invalid arguments:trades"]
    sim.ex.trades[tid].account = "someone-else"  # another key's trade is not this key's to see
    assert q(txid=tid) == {"error": [], "result": {}}
