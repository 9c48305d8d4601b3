"""Every injectable fault, and exactly what a python-kraken-sdk client sees when it fires."""

from __future__ import annotations

import time

import pytest
import requests
from kraken.exceptions import (
    KrakenApiLimitExceededError,
    KrakenInvalidNonceError,
    KrakenMarketInOnlyCancelModeError,
    KrakenServiceUnavailableError,
    KrakenTemporaryLockoutError,
)

from live_bridge.simulator.testing import T0, bars_panel, start_sim

P = 20000.0
FLAT = (P, P * 1.01, P * 0.99, P, 1.0)
NOW = T0 + 5 * 3600


@pytest.fixture
def sim():
    rows = [FLAT] * 24
    rows[7] = (P, P * 1.01, 18900.0, P, 1.0)
    s = start_sim(bars_panel(rows), start=NOW, balances={"USD": "100000", "BTC": "1"})
    s.trade.TIMEOUT = 1  # the SDK's per-client timeout (10 s by default)
    yield s
    s.stop()


def fault(sim, **f):
    code, body = sim.admin("/admin/faults", f)
    assert code == 200, body


def buy(sim, **kw):
    kw = {"ordertype": "limit", "side": "buy", "pair": "XBTUSD", "volume": "0.01", "price": "19000"} | kw
    return sim.trade.create_order(**kw)


def orders_with(sim, cl: str) -> list[str]:
    return [t for t, o in sim.ex.orders.items() if o.cl_ord_id == cl]


def test_timeout_without_and_with_the_action_applied(sim):
    fault(sim, kind="timeout", endpoint="AddOrder", seconds=1.5, apply=False)
    with pytest.raises(requests.exceptions.ReadTimeout):
        buy(sim, cl_ord_id="t-lost")
    assert orders_with(sim, "t-lost") == []
    fault(sim, kind="timeout", endpoint="AddOrder", seconds=1.5, apply=True)
    with pytest.raises(requests.exceptions.ReadTimeout):
        buy(sim, cl_ord_id="t-ghost")
    # the ghost order exists: a careful client finds it by its client id before any retry
    found = sim.user.get_open_orders(cl_ord_id="t-ghost")["open"]
    assert list(found) == orders_with(sim, "t-ghost") and len(found) == 1


def test_http_5xx_html_with_and_without_the_action(sim):
    fault(sim, kind="http_error", endpoint="AddOrder", status=502)
    with pytest.raises(Exception, match=r"^502 - <html>") as ei:
        buy(sim, cl_ord_id="h-lost")
    assert "Bad Gateway" in str(ei.value)
    assert orders_with(sim, "h-lost") == []
    fault(sim, kind="http_error", endpoint="AddOrder", status=520, apply=True)
    with pytest.raises(Exception, match=r"^520 - <html>"):
        buy(sim, cl_ord_id="h-ghost")
    assert len(sim.user.get_open_orders(cl_ord_id="h-ghost")["open"]) == 1
    fault(sim, kind="http_error", endpoint="Ticker", status=504)
    with pytest.raises(Exception, match=r"^504 - "):
        sim.market.get_ticker(pair="XBTUSD")
    assert sim.market.get_ticker(pair="XBTUSD")  # count 1: the next call is fine


def test_429(sim):
    fault(sim, kind="http_429", endpoint="OpenOrders")
    with pytest.raises(Exception, match=r"^429 - "):
        sim.user.get_open_orders()


def test_truncated_json_after_the_action(sim):
    fault(sim, kind="truncated_json", endpoint="AddOrder")
    with pytest.raises(ValueError):
        buy(sim, cl_ord_id="tr")
    assert len(orders_with(sim, "tr")) == 1


def test_kraken_service_errors(sim):
    fault(sim, kind="error", endpoint="AddOrder", message="EService:Unavailable")
    with pytest.raises(KrakenServiceUnavailableError):
        buy(sim)
    # Busy and Throttled are not mapped by the SDK: the raw envelope comes back, nothing was done
    fault(sim, kind="error", endpoint="AddOrder", message="EService:Busy")
    assert buy(sim) == {"error": ["EService:Busy"], "result": {}}
    fault(sim, kind="error", endpoint="AddOrder", message=f"EService:Throttled:{NOW + 60}")
    assert buy(sim)["error"] == [f"EService:Throttled:{NOW + 60}"]
    assert sim.ex.orders == {}
    fault(sim, kind="error", endpoint="Balance", message="EAPI:Rate limit exceeded")
    with pytest.raises(KrakenApiLimitExceededError):
        sim.user.get_account_balance()
    fault(sim, kind="error", endpoint="Balance", message="EAPI:Invalid nonce")
    with pytest.raises(KrakenInvalidNonceError):
        sim.user.get_account_balance()
    assert sim.user.get_account_balance()["ZUSD"] == "100000.0000"


def test_warning_fault_rides_along_a_normal_result(sim):
    """An ``error`` fault with a ``W...`` message is a Kraken warning: the call IS executed and the
    warning sits in ``error`` next to the normal result (the adapter must treat it as unknown, not done)."""
    fault(sim, kind="error", endpoint="AddOrder", message="WGeneral:Danger:market order")
    r = sim.raw_private(
        "AddOrder",
        {
            "pair": "XBTUSD",
            "type": "buy",
            "ordertype": "limit",
            "volume": "0.01",
            "price": "19000",
            "cl_ord_id": "warned",
        },
    ).json()
    assert r["error"] == ["WGeneral:Danger:market order"] and r["result"]["txid"] == orders_with(sim, "warned")
    assert len(orders_with(sim, "warned")) == 1
    # once only (count 1); an error the call itself answers keeps the warning after it
    fault(sim, kind="error", endpoint="AddOrder", message="WOrder:Something")
    r = sim.raw_private(
        "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "volume": "0.01", "price": "19000.05"}
    ).json()
    assert r == {
        "error": ["EOrder:Invalid price:XBTUSD price can only be specified up to 1 decimals.", "WOrder:Something"],
        "result": {},
    }
    fault(sim, kind="error", endpoint="Time", message="WGeneral:Public")
    r = sim.raw_public("Time").json()
    assert r["error"] == ["WGeneral:Public"] and r["result"]["unixtime"] == int(NOW)
    assert sim.raw_public("Time").json()["error"] == []
    code, body = sim.admin("/admin/faults", {"kind": "error", "message": "Xnope"})
    assert code == 400 and "warning" in body["error"]


def test_lockout_fault(sim):
    fault(sim, kind="lockout", endpoint="Balance", seconds=1)
    with pytest.raises(KrakenTemporaryLockoutError):
        sim.user.get_account_balance()
    with pytest.raises(KrakenTemporaryLockoutError):
        sim.user.get_open_orders()
    time.sleep(1.1)
    assert sim.user.get_open_orders() == {"open": {}}


def test_market_status_scheduled_in_simulated_time(sim):
    fault(sim, kind="market_status", status="cancel_only", from_ts=NOW + 3600, until_ts=NOW + 7200)
    t = buy(sim)["txid"][0]
    sim.ex.advance(seconds=3600)
    assert sim.market.get_system_status()["status"] == "cancel_only"
    with pytest.raises(KrakenMarketInOnlyCancelModeError):
        buy(sim)
    assert sim.trade.cancel_order(txid=t) == {"count": 1}
    sim.ex.advance(seconds=3600)
    assert sim.market.get_system_status()["status"] == "online"
    assert buy(sim)["txid"]


def test_partial_fills_over_several_polls(sim):
    fault(sim, kind="partial_fills", polls=3)
    t = sim.trade.create_order(ordertype="market", side="buy", pair="XBTUSD", volume="0.03")["txid"][0]
    seen = [(o["status"], o["vol_exec"]) for o in (sim.user.get_orders_info(txid=t)[t] for _ in range(4))]
    assert seen == [("open", "0.01000000"), ("open", "0.02000000"), ("closed", "0.03000000"), ("closed", "0.03000000")]
    assert len(sim.user.get_trades_history()["trades"]) == 3


def test_order_stuck_open(sim):
    fault(sim, kind="stuck_open")
    t = buy(sim, price="19500")["txid"][0]
    sim.ex.advance(seconds=5 * 3600)  # bar 7 trades through 19500, the stuck order ignores it
    assert sim.user.get_orders_info(txid=t)[t]["status"] == "open"
    assert sim.trade.cancel_order(txid=t) == {"count": 1}


def test_order_invisible_after_add(sim):
    fault(sim, kind="invisible", seconds=1.0)
    t = buy(sim)["txid"][0]
    assert sim.user.get_orders_info(txid=t) == {}  # as Kraken: not known yet is an empty answer, no error
    assert sim.user.get_orders_info(txid=f"{t},OUNKNO-WNTXI-DXXXXX") == {}
    assert sim.user.get_open_orders()["open"] == {}
    time.sleep(1.1)
    assert sim.user.get_orders_info(txid=t)[t]["status"] == "open"


def test_spread_blowup(sim):
    def width():
        t = sim.market.get_ticker(pair="XBTUSD")["XXBTZUSD"]
        return float(t["a"][0]) - float(t["b"][0])

    normal = width()
    fault(sim, kind="spread_blowup", factor=30, from_ts=NOW, until_ts=NOW + 3600)
    assert width() == pytest.approx(30 * normal, rel=0.02)
    sim.ex.advance(seconds=3600)
    assert width() == pytest.approx(normal, rel=0.02)


def test_price_gap_between_candles(sim):
    fault(sim, kind="price_gap", factor=0.75, from_ts=T0 + 8 * 3600)
    sim.ex.advance(to=T0 + 10 * 3600)
    rows = sim.market.get_ohlc(pair="XBTUSD", interval=60)["XXBTZUSD"]
    by_ts = {r[0]: r for r in rows}
    assert float(by_ts[T0 + 7 * 3600][4]) == P and float(by_ts[T0 + 8 * 3600][1]) == 0.75 * P
    assert float(sim.market.get_ticker(pair="XBTUSD")["XXBTZUSD"]["c"][0]) == 0.75 * P


def test_missing_candle_gives_no_row_and_no_fill(sim):
    fault(sim, kind="missing_candle", ts=T0 + 7 * 3600)
    t = buy(sim)["txid"][0]
    sim.ex.advance(to=T0 + 9 * 3600)
    rows = sim.market.get_ohlc(pair="XBTUSD", interval=60)["XXBTZUSD"]
    assert T0 + 7 * 3600 not in [r[0] for r in rows] and T0 + 8 * 3600 in [r[0] for r in rows]
    assert sim.user.get_orders_info(txid=t)[t]["status"] == "open"


def test_late_candle(sim):
    fault(sim, kind="late_candle", delay=600)
    sim.ex.advance(to=T0 + 7 * 3600 + 300)
    assert sim.market.get_ohlc(pair="XBTUSD", interval=60)["last"] == T0 + 5 * 3600  # bar 6 not yet out
    sim.ex.advance(to=T0 + 7 * 3600 + 600)
    assert sim.market.get_ohlc(pair="XBTUSD", interval=60)["last"] == T0 + 6 * 3600


def test_external_balance_change(sim):
    code, bal = sim.admin("/admin/balance", {"account": "default", "asset": "USD", "delta": "-2500.5"})
    assert code == 200 and bal["ZUSD"] == "97499.5000"
    assert sim.user.get_account_balance()["ZUSD"] == "97499.5000"
    assert sim.user.get_balance("USD")["available_balance"] == pytest.approx(97499.5)


def test_bad_fault_is_refused(sim):
    code, body = sim.admin("/admin/faults", {"kind": "meteor"})
    assert code == 400 and "unknown fault kind" in body["error"]
    code, body = sim.admin("/admin/faults", {"kind": "error", "message": "oops"})
    assert code == 400


def test_empty_book_stale_ticker_and_clock_skew(sim):
    fault(sim, kind="empty_book", from_ts=NOW, until_ts=NOW + 3600)
    assert sim.market.get_order_book(pair="XBTUSD", count=5)["XXBTZUSD"] == {"asks": [], "bids": []}
    fault(sim, kind="price_gap", factor=1.2, from_ts=NOW + 3600)
    fault(sim, kind="stale_ticker", from_ts=NOW, until_ts=NOW + 2 * 3600)
    fault(sim, kind="clock_skew", seconds=-90)
    sim.ex.advance(seconds=3600)
    assert len(sim.market.get_order_book(pair="XBTUSD", count=5)["XXBTZUSD"]["asks"]) == 5
    assert float(sim.market.get_ticker(pair="XBTUSD")["XXBTZUSD"]["c"][0]) == P  # stale: the gap is not shown
    assert sim.raw_public("Time").json()["result"]["unixtime"] == NOW + 3600 - 90
    sim.ex.advance(seconds=3600)
    assert float(sim.market.get_ticker(pair="XBTUSD")["XXBTZUSD"]["c"][0]) == 1.2 * P


def test_pair_rules_change_and_delisting(sim):
    from kraken.exceptions import KrakenInvalidArgumentsError, KrakenUnknownAssetError

    fault(sim, kind="rules_change", pair="XBTUSD", ordermin="0.05", tick_size="5", pair_decimals=0)
    p = sim.market.get_asset_pairs(pair="XBTUSD")["XXBTZUSD"]
    assert (p["ordermin"], p["tick_size"], p["pair_decimals"]) == ("0.05", "5", 0)
    with pytest.raises(KrakenInvalidArgumentsError):
        buy(sim, volume="0.01")
    r = sim.raw_private(
        "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "volume": "0.05", "price": "19001"}
    )
    assert r.json()["error"] == ["EOrder:Tick size check failed"]
    t = buy(sim, volume="0.05", price="19000")["txid"][0]
    fault(sim, kind="delist", pair="BTC/USD")
    assert sim.market.get_asset_pairs() == {}
    with pytest.raises(KrakenUnknownAssetError):  # EQuery:Unknown asset pair
        buy(sim, volume="0.05", price="19000")
    o = sim.user.get_orders_info(txid=t)[t]
    assert o["status"] == "canceled" and o["reason"] == "Pair delisted"
    sim.admin("/admin/faults", method="DELETE")
    # (the SDK lru-caches get_asset_pairs, so ask without it)
    assert list(sim.raw_public("AssetPairs").json()["result"]) == ["XXBTZUSD"]


def test_fill_racing_a_cancel(sim):
    from kraken.exceptions import KrakenUnknownOrderError

    t = buy(sim, volume="0.05")["txid"][0]
    sim.ex.advance(to=T0 + 8 * 3600)  # bar 7 fills it before the client's cancel arrives
    with pytest.raises(KrakenUnknownOrderError):
        sim.trade.cancel_order(txid=t)
    assert sim.user.get_orders_info(txid=t)[t]["status"] == "closed"


def test_connection_refused_when_the_venue_is_down(sim):
    url = sim.url
    sim.stop()
    from kraken.spot import Market

    with pytest.raises(requests.exceptions.ConnectionError):
        Market(url=url).get_system_status()
