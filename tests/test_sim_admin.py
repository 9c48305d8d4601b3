"""The simulator's admin API is closed to everyone but the operator: a bearer token, loopback Host
only, no foreign Origin, JSON bodies only; /admin/state shows no API key or secret. Kraken paths
refuse foreign Hosts/Origins in Kraken's envelope and otherwise behave exactly as before."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from live_bridge.simulator.app import check_admin_token, create_app, host_name
from live_bridge.simulator.server import build_exchange
from live_bridge.simulator.testing import (
    ADMIN_TOKEN,
    KEY,
    SECRET,
    T0,
    admin_headers,
    flat_panel,
    local_client,
    sim_test_config,
)

ENV = {"KRAKEN_API_KEY": KEY, "KRAKEN_API_SECRET": SECRET}
EVIL = "http://evil.example"


@pytest.fixture
def ex():
    return build_exchange(
        flat_panel(), config=sim_test_config(), start=T0 + 5 * 3600, env=ENV, balances={"USD": Decimal("1000")}
    )


@pytest.fixture
def client(ex):
    with local_client(ex) as c:
        yield c


def snapshot(ex) -> tuple:
    st = ex.state()
    return (
        st["now"],
        st["accounts"],
        st["orders"],
        st["trades"],
        st["faults"],
        st["status"],
        st["pair_status"],
        ex.config.rate_limit,
    )


CALLS = [
    ("GET", "/admin/state", None),
    ("POST", "/admin/clock/advance", {"bars": 3}),
    ("GET", "/admin/faults", None),
    ("POST", "/admin/faults", {"kind": "error", "endpoint": "Time", "message": "EService:Busy"}),
    ("DELETE", "/admin/faults", None),
    ("POST", "/admin/status", {"status": "maintenance"}),
    ("POST", "/admin/balance", {"account": "default", "asset": "USD", "delta": "1000000"}),
    ("GET", "/admin/limits", None),
    ("POST", "/admin/limits", {"tier": "starter", "max_counter": 3, "reset_counters": True}),
]


@pytest.mark.parametrize("method, path, body", CALLS)
@pytest.mark.parametrize("token", [None, "", "wrong-token-of-enough-length", ADMIN_TOKEN[:-1], ADMIN_TOKEN + "x"])
def test_every_admin_endpoint_needs_the_token(ex, client, method, path, body, token):
    before = snapshot(ex)
    r = client.request(method, path, json=body, headers=admin_headers(token) if token else {})
    assert r.status_code == 401 and "admin token" in r.json()["error"]
    assert r.headers["www-authenticate"] == "Bearer"
    assert snapshot(ex) == before


@pytest.mark.parametrize("method, path, body", CALLS)
def test_every_admin_endpoint_works_with_the_token(client, method, path, body):
    r = client.request(method, path, json=body, headers=admin_headers())
    assert r.status_code == 200, r.text


def test_the_web_page_attack_mints_nothing(ex, client):
    """What a page on any web site could send: a text/plain POST (no CORS preflight) with its Origin and,
    after DNS rebinding, its own Host. It minted 1,000,000 USD before."""
    before = snapshot(ex)
    body = json.dumps({"account": "default", "asset": "USD", "delta": "1000000"})
    for headers in (
        {"Origin": EVIL, "Host": "evil.example:8765"},
        {"Origin": EVIL},
        {"Host": "evil.example"},
        {"Host": "rebind.127.0.0.1.nip.io:8765"},
        {},
    ):
        r = client.post("/admin/balance", content=body, headers={"Content-Type": "text/plain"} | headers)
        assert r.status_code in (401, 403), (headers, r.status_code)
    # even with the token: foreign Host or Origin, or a non-JSON body, are refused
    for headers, code in (
        ({"Origin": EVIL}, 403),
        ({"Host": "evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Host": "127.0.0.1.evil.example"}, 403),
        ({"Content-Type": "text/plain"}, 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ):
        h = admin_headers() | {"Content-Type": "application/json"} | headers
        r = client.post("/admin/balance", content=body, headers=h)
        assert r.status_code == code, (headers, r.text)
        assert "error" in r.json()
    assert snapshot(ex) == before
    assert ex.accounts[KEY].balances["USD"] == Decimal("1000")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8765", "localhost:1", "LOCALHOST", "[::1]:8765", "[::1]"])
def test_loopback_hosts_and_origins_are_accepted(client, host):
    h = admin_headers() | {"Host": host, "Origin": "http://localhost:5173"}
    assert client.get("/admin/state", headers=h).status_code == 200


def test_host_names_are_parsed_strictly():
    assert host_name("127.0.0.1:8765") == "127.0.0.1" and host_name("[::1]:1") == "::1"
    for bad in ("127.0.0.1:abc", "127.0.0.1:8765:1", "[::1", "127.0.0.1:", "127.0.0.1:١٢"):
        assert host_name(bad) == "", bad


def test_admin_api_is_off_without_a_token(ex):
    with local_client(ex, admin_token=None) as c:
        for method, path, body in CALLS:
            r = c.request(method, path, json=body, headers=admin_headers())
            assert r.status_code == 403 and "admin API is off" in r.json()["error"]


@pytest.mark.parametrize(
    "bad", ["", "short", "x" * 15, "has a space in it ok", "tøken-with-non-ascii-chars", "x" * 513]
)
def test_weak_tokens_are_refused(ex, bad):
    from engine.errors import InputError

    with pytest.raises(InputError, match="KQ_SIM_ADMIN_TOKEN"):
        check_admin_token(bad)
    with pytest.raises(InputError):
        create_app(ex, admin_token=bad)


def test_state_shows_no_api_key_or_secret(ex, client):
    ex.add_order(
        ex.accounts[KEY], {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "volume": "0.01", "price": "19000"}
    )
    r = client.get("/admin/state", headers=admin_headers())
    assert r.status_code == 200
    assert KEY not in r.text and SECRET not in r.text and ADMIN_TOKEN not in r.text
    st = r.json()
    assert "key" not in st["accounts"]["default"]
    assert [o["account"] for o in st["orders"].values()] == ["default"]


def test_kraken_paths_refuse_foreign_host_or_origin_in_the_envelope(client):
    from live_bridge.simulator.testing import signed_form

    assert client.get("/0/public/Time").json()["error"] == []
    for headers in ({"Host": "evil.example"}, {"Origin": EVIL}):
        r = client.get("/0/public/Time", headers=headers)
        assert r.status_code == 200 and r.json() == {"error": ["EGeneral:Permission denied"], "result": {}}
        body, h = signed_form("Balance", {})
        r = client.post("/0/private/Balance", content=body, headers=h | headers)
        assert r.status_code == 200 and r.json() == {"error": ["EGeneral:Permission denied"], "result": {}}
    body, h = signed_form("Balance", {})
    assert client.post("/0/private/Balance", content=body, headers=h).json() == {
        "error": [],
        "result": {"ZUSD": "1000.0000"},
    }


def test_rate_limits_set_at_runtime(ex, client):
    """POST /admin/limits: a Kraken tier and/or single counters, validated strictly, applied at once to
    the REST counter (and the matching engine's); nothing changes on a refused body."""
    from live_bridge.simulator.testing import signed_form

    def balance():
        body, h = signed_form("Balance", {})
        return client.post("/0/private/Balance", content=body, headers=h).json()["error"]

    h = admin_headers()
    assert client.get("/admin/limits", headers=h).json()["rate_limit"] == ex.config.rate_limit.model_dump()
    before = snapshot(ex)
    for bad in (
        {},
        {"tier": "platinum"},
        {"tier": 1},
        {"max_counter": 0},
        {"max_counter": "NaN"},
        {"max_counter": True},
        {"decay_per_s": -1},
        {"lockout_after": 1.5},
        {"lockout_after": 0},
        {"order_max_counter": "1e13"},
        {"lockout_window_s": 0},
        {"reset_counters": "yes"},
        {"burst": 3},
        [],
        "starter",
    ):
        r = client.post("/admin/limits", json=bad, headers=h)
        assert r.status_code == 400 and r.json()["error"], bad
    assert snapshot(ex) == before
    r = client.post("/admin/limits", json={"tier": "starter"}, headers=h)
    assert r.status_code == 200 and r.json()["rate_limit"] | {} == ex.config.rate_limit.model_dump()
    rl = ex.config.rate_limit
    assert (rl.max_counter, rl.decay_per_s, rl.order_max_counter, rl.order_decay_per_s) == (15.0, 0.33, 60.0, 1.0)
    assert rl.lockout_after == 5  # fields a tier does not name are kept
    # a ceiling of 3 with no decay: the 4th call is refused; a reset and a higher ceiling let it through
    r = client.post("/admin/limits", json={"max_counter": "3", "decay_per_s": 0, "reset_counters": True}, headers=h)
    assert r.status_code == 200 and r.json()["rate_limit"]["max_counter"] == 3.0
    assert [balance() for _ in range(4)] == [[], [], [], ["EAPI:Rate limit exceeded"]]
    assert client.post("/admin/limits", json={"max_counter": 4}, headers=h).status_code == 200
    assert balance() == [] and balance() == ["EAPI:Rate limit exceeded"]
    assert client.post("/admin/limits", json={"reset_counters": True}, headers=h).status_code == 200
    assert balance() == []
    # the matching-engine counter: a threshold of 1 admits one order per pair
    client.post("/admin/limits", json={"order_max_counter": 1, "order_decay_per_s": 0}, headers=h)
    order = {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "volume": "0.01", "price": "19000"}
    ex.add_order(ex.accounts[KEY], order)
    from live_bridge.simulator.exchange import KrakenAPIError

    with pytest.raises(KrakenAPIError, match="EOrder:Rate limit exceeded"):
        ex.add_order(ex.accounts[KEY], order)
