"""Hostile parameters get Kraken's error envelope (HTTP 200, ``{"error": [...], "result": {}}``),
never an HTTP 500, and change nothing: the cases that used to crash the simulator."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest

from live_bridge.simulator.app import sign
from live_bridge.simulator.server import build_exchange
from live_bridge.simulator.testing import KEY, SECRET, T0, flat_panel, local_client, signed_form, sim_test_config

ENV = {"KRAKEN_API_KEY": KEY, "KRAKEN_API_SECRET": SECRET}
LIMIT = {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "volume": "0.01", "price": "19000"}


@pytest.fixture
def ex():
    return build_exchange(
        flat_panel(),
        config=sim_test_config(),
        start=T0 + 5 * 3600,
        env=ENV,
        balances={"USD": Decimal("100000"), "BTC": Decimal("1")},
    )


@pytest.fixture
def client(ex):
    with local_client(ex) as c:
        yield c


def books(ex):
    st = ex.state()
    return st["now"], st["accounts"]["default"]["balances"], st["orders"], st["trades"]


def private(client, endpoint, params):
    body, headers = signed_form(endpoint, params)
    r = client.post(f"/0/private/{endpoint}", content=body, headers=headers)
    assert r.status_code == 200, (endpoint, params, r.status_code, r.text[:200])
    return r.json()


def refused(client, ex, endpoint, params, error):
    before = books(ex)
    b = private(client, endpoint, params)
    assert b == {"error": [error], "result": {}}, (params, b)
    assert books(ex) == before


@pytest.mark.parametrize(
    "v",
    [
        "1e25",
        "1e999999999",
        "-1e999999999",
        "1e-999999999",
        "١",
        "²",
        "1_0",
        " 1",
        "0x1",
        "True",
        "NaN",
        "Infinity",
        "1e16",
    ],
)
def test_absurd_volumes(client, ex, v):
    refused(client, ex, "AddOrder", LIMIT | {"volume": v}, "EGeneral:Invalid arguments:volume")
    refused(
        client,
        ex,
        "AddOrder",
        {"pair": "XBTUSD", "type": "sell", "ordertype": "market", "volume": v},
        "EGeneral:Invalid arguments:volume",
    )


@pytest.mark.parametrize("v", ["1e25", "1e999999999", "1e16"])
def test_absurd_prices(client, ex, v):
    refused(client, ex, "AddOrder", LIMIT | {"price": v}, "EOrder:Invalid price")


@pytest.mark.parametrize("v", ["١٩٠٠٠", "NaN", "inf", "abc", "True"])
def test_prices_that_are_not_numbers(client, ex, v):
    refused(client, ex, "AddOrder", LIMIT | {"price": v}, "EGeneral:Invalid arguments:price")


def test_a_notional_beyond_any_balance_is_insufficient_funds(client, ex):
    refused(
        client, ex, "AddOrder", LIMIT | {"volume": "1000000000", "price": "1000000000"}, "EOrder:Insufficient funds"
    )


@pytest.mark.parametrize("endpoint", ["AddOrder", "OpenOrders", "ClosedOrders", "QueryOrders"])
@pytest.mark.parametrize("v", ["abc", "1e3", "١", "²", "1.5", "99999999999", "True"])
def test_userref_must_be_an_int32(client, ex, endpoint, v):
    params = {"AddOrder": LIMIT, "QueryOrders": {"txid": "OAAAAA-AAAAA-AAAAAA"}}.get(endpoint, {})
    refused(client, ex, endpoint, params | {"userref": v}, "EGeneral:Invalid arguments:userref")


@pytest.mark.parametrize("endpoint", ["ClosedOrders", "TradesHistory"])
@pytest.mark.parametrize("v", ["abc", "1e3", "-1", "١", "²", "1.0", "99999999999999999999999"])
def test_ofs_must_be_a_small_count(client, ex, endpoint, v):
    refused(client, ex, endpoint, {"ofs": v}, "EGeneral:Invalid arguments:ofs")


@pytest.mark.parametrize("endpoint", ["ClosedOrders", "TradesHistory"])
@pytest.mark.parametrize("v", ["nan", "inf", "-inf", "١", "1e999999", "True"])
def test_start_and_end_must_be_times(client, ex, endpoint, v):
    refused(client, ex, endpoint, {"start": v}, "EGeneral:Invalid arguments:start")
    refused(client, ex, endpoint, {"end": v}, "EGeneral:Invalid arguments:end")


@pytest.mark.parametrize("v", ["²", "¹²", "-²", "١٢"])
def test_cancel_by_unicode_digits_is_an_unknown_order(client, ex, v):
    private(client, "AddOrder", LIMIT | {"userref": "12"})
    refused(client, ex, "CancelOrder", {"txid": v}, "EOrder:Unknown order")


@pytest.mark.parametrize("v", ["nan", "inf", "+inf", "+nan", "-inf", "1e999", "+1e999", "٣", "9e18", "True"])
def test_expiretm_must_be_a_finite_time(client, ex, v):
    refused(
        client, ex, "AddOrder", LIMIT | {"timeinforce": "GTD", "expiretm": v}, "EGeneral:Invalid arguments:expiretm"
    )


@pytest.mark.parametrize("v", ["١", "²", "1e3", "nan", "True", "86400", "-1"])
def test_cancel_after_timeout(client, ex, v):
    refused(client, ex, "CancelAllOrdersAfter", {"timeout": v}, "EGeneral:Invalid arguments:timeout")


@pytest.mark.parametrize("nonce", ["١٢٣٤٥٦٧٨٩", "1_000_000_000_000", " 123", "1e20", "9" * 5000, "-5", "True"])
def test_odd_nonces_are_invalid_nonces(client, ex, nonce):
    before = books(ex)
    body = f"nonce={nonce}"
    headers = {
        "API-Key": KEY,
        "API-Sign": sign(SECRET, "/0/private/Balance", nonce, body),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    r = client.post("/0/private/Balance", content=body.encode(), headers=headers)
    assert r.status_code == 200 and r.json() == {"error": ["EAPI:Invalid nonce"], "result": {}}
    assert books(ex) == before


def test_a_non_ascii_signature_header_is_an_invalid_signature(client):
    body, headers = signed_form("Balance", {})
    headers = {k: v.encode() for k, v in headers.items()} | {"API-Sign": b"\xff\xfe" + b"A" * 86}
    r = client.post("/0/private/Balance", content=body, headers=headers)
    assert r.status_code == 200 and r.json()["error"] == ["EAPI:Invalid signature"]


@pytest.mark.parametrize("raw", [b"pair=XBTUSD&\xff\xfe", b"\x80\x81", b"pair=\xc3"])
def test_a_non_utf8_public_body_is_invalid_arguments(client, raw):
    r = client.post("/0/public/Ticker", content=raw, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and r.json() == {"error": ["EGeneral:Invalid arguments"], "result": {}}


@pytest.mark.parametrize(
    "params",
    [
        {"pair": "XBTUSD", "interval": "60", "since": "nan"},
        {"pair": "XBTUSD", "interval": "60", "since": "١"},
        {"pair": "XBTUSD", "interval": "60", "since": "1e999"},
    ],
)
def test_ohlc_since_must_be_a_time(client, params):
    r = client.get("/0/public/OHLC", params=params)
    assert r.status_code == 200 and r.json() == {"error": ["EGeneral:Invalid arguments:since"], "result": {}}


@pytest.mark.parametrize("count", ["١٠", "1e3", "nan", "10.5", "True", "9" * 5000])
def test_depth_count_must_be_an_integer(client, count):
    r = client.get("/0/public/Depth", params={"pair": "XBTUSD", "count": count})
    assert r.status_code == 200 and r.json() == {"error": ["EGeneral:Invalid arguments:count"], "result": {}}


@pytest.mark.parametrize("raw", ['{"nonce": "1", "x": NaN}', "[" * 50_000 + "]" * 50_000, '{"nonce": 1', "[1]", "5"])
def test_bad_private_json_is_invalid_arguments(client, ex, raw):
    nonce = str(time.time_ns())
    headers = {
        "API-Key": KEY,
        "API-Sign": sign(SECRET, "/0/private/Balance", nonce, raw),
        "Content-Type": "application/json",
    }
    before = books(ex)
    r = client.post("/0/private/Balance", content=raw.encode(), headers=headers)
    assert r.status_code == 200 and r.json() == {"error": ["EGeneral:Invalid arguments"], "result": {}}
    assert books(ex) == before


def test_booleans_in_json_bodies_are_not_numbers(client, ex):
    nonce = str(time.time_ns())
    raw = json.dumps({"nonce": nonce, **LIMIT, "volume": True})
    headers = {
        "API-Key": KEY,
        "API-Sign": sign(SECRET, "/0/private/AddOrder", nonce, raw),
        "Content-Type": "application/json",
    }
    before = books(ex)
    r = client.post("/0/private/AddOrder", content=raw.encode(), headers=headers)
    assert r.json() == {"error": ["EGeneral:Invalid arguments:volume"], "result": {}}
    assert books(ex) == before


def test_unknown_paths_and_methods_under_0_get_the_envelope(client):
    for method, path in (
        ("GET", "/0/private/Balance"),
        ("PUT", "/0/public/Time"),
        ("GET", "/0/nothing/here"),
        ("DELETE", "/0/private/AddOrder"),
        ("POST", "/0/private/%2F%0A0"),
        ("GET", "/0/%0A"),
    ):
        r = client.request(method, path)
        assert r.status_code == 200 and r.json() == {"error": ["EGeneral:Unknown method"], "result": {}}, path
        r = client.request(method, path, headers={"Origin": "http://evil.example"})
        assert r.status_code == 200 and r.json() == {"error": ["EGeneral:Permission denied"], "result": {}}, path


def test_unknown_admin_paths_answer_json_errors(client):
    r = client.get("/admin/nope%0A")
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}
    r = client.put("/admin/balance")
    assert r.status_code == 405 and r.json() == {"error": "Method Not Allowed"}


def test_state_stays_strict_json_after_the_attacks(client, ex):
    from live_bridge.simulator.testing import admin_headers

    for v in ["nan", "inf", "+inf", "1e999"]:
        private(client, "AddOrder", LIMIT | {"timeinforce": "GTD", "expiretm": v})
    private(client, "AddOrder", LIMIT | {"timeinforce": "GTD", "expiretm": "+3600"})
    r = client.get("/admin/state", headers=admin_headers())

    def no_constant(name):
        raise AssertionError(f"{name} in /admin/state")

    st = json.loads(r.text, parse_constant=no_constant)
    assert [o["expiretm"] for o in st["orders"].values()] == [T0 + 5 * 3600 + 3600]


def test_a_bug_is_krakens_internal_error_not_an_http_500(client, ex, monkeypatch, caplog):
    def boom(*a, **k):
        raise RuntimeError("a bug")

    monkeypatch.setattr(ex, "balance", boom)
    b = private(client, "Balance", {})
    assert b == {"error": ["EGeneral:Internal error"], "result": {}}
    assert "a bug" in caplog.text
