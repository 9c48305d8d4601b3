"""Signing, nonces, lockout and rate limits: what a Kraken client sees when it gets them wrong."""

from __future__ import annotations

import base64
import time

import pytest
from kraken.exceptions import (
    KrakenApiLimitExceededError,
    KrakenInvalidAPIKeyError,
    KrakenInvalidNonceError,
    KrakenInvalidSignatureError,
    KrakenTemporaryLockoutError,
)
from kraken.spot import User

from live_bridge.simulator.testing import KEY, SECRET, flat_panel, sim_test_config, start_sim


@pytest.fixture
def sim():
    s = start_sim(
        flat_panel(),
        start=flat_panel().ts[5],
        config=sim_test_config(rate_limit={"lockout_after": 3, "lockout_s": 1.0}),
    )
    yield s
    s.stop()


def test_good_signature_is_accepted(sim):
    r = sim.raw_private("Balance")
    assert r.status_code == 200 and r.json() == {"error": [], "result": {"ZUSD": "100000.0000"}}


def test_wrong_secret_is_rejected(sim):
    wrong = base64.b64encode(b"x" * 64).decode()
    with pytest.raises(KrakenInvalidSignatureError):
        User(key=KEY, secret=wrong, url=sim.url).get_account_balance()
    assert sim.raw_private("Balance", secret=wrong).json() == {"error": ["EAPI:Invalid signature"], "result": {}}


def test_tampered_body_is_rejected(sim):
    import urllib.parse

    import requests

    from live_bridge.simulator.app import sign

    nonce = str(time.time_ns())
    signed = urllib.parse.urlencode(
        {"nonce": nonce, "pair": "XBTUSD", "type": "buy", "ordertype": "market", "volume": "0.001"}
    )
    sent = signed.replace("0.001", "0.002")
    r = requests.post(
        sim.url + "/0/private/AddOrder",
        data=sent,
        timeout=10,
        headers={
            "API-Key": KEY,
            "API-Sign": sign(SECRET, "/0/private/AddOrder", nonce, signed),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert r.json()["error"] == ["EAPI:Invalid signature"]
    assert sim.ex.orders == {}


def test_missing_or_unknown_key(sim):
    assert sim.raw_private("Balance", key="").json()["error"] == ["EAPI:Invalid key"]
    with pytest.raises(KrakenInvalidAPIKeyError):
        User(key="nobody", secret=SECRET, url=sim.url).get_account_balance()
    with pytest.raises(ValueError, match="Missing credentials"):  # the SDK refuses before sending
        User(url=sim.url).get_account_balance()


def test_reused_and_old_nonce_rejected(sim):
    n = time.time_ns()
    assert sim.raw_private("Balance", nonce=n).json()["error"] == []
    assert sim.raw_private("Balance", nonce=n).json()["error"] == ["EAPI:Invalid nonce"]
    assert sim.raw_private("Balance", nonce=n - 1).json()["error"] == ["EAPI:Invalid nonce"]
    assert sim.raw_private("Balance", nonce=n + 1).json()["error"] == []
    # the SDK's own nonce (time * 1e8) is far below a nanosecond nonce: the client sees the exception
    with pytest.raises(KrakenInvalidNonceError):
        sim.user.get_account_balance()


def test_repeated_bad_nonces_lock_the_key_out_then_it_recovers(sim):
    n = time.time_ns()
    assert sim.raw_private("Balance", nonce=n).json()["error"] == []
    errs = [sim.raw_private("Balance", nonce=n).json()["error"] for _ in range(3)]
    assert errs == [["EAPI:Invalid nonce"]] * 3
    # even a correct request is refused while locked
    assert sim.raw_private("Balance", nonce=n + 10).json()["error"] == ["EGeneral:Temporary lockout"]
    with pytest.raises(KrakenTemporaryLockoutError):
        User(key=KEY, secret=SECRET, url=sim.url).get_account_balance()
    time.sleep(1.1)
    assert sim.raw_private("Balance", nonce=n + 20).json()["error"] == []


def test_rate_limit_counter_with_decay():
    s = start_sim(
        flat_panel(),
        start=flat_panel().ts[5],
        config=sim_test_config(rate_limit={"max_counter": 6, "decay_per_s": 2.0}),
    )
    try:
        # history calls cost 2: three fit under 6, the fourth is refused
        errs = [s.raw_private("TradesHistory").json()["error"] for _ in range(4)]
        assert errs[:3] == [[], [], []] and errs[3] == ["EAPI:Rate limit exceeded"]
        with pytest.raises(KrakenApiLimitExceededError):
            s.user.get_trades_history()
        # AddOrder is not counted on the REST counter
        assert (
            s.raw_private(
                "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "volume": "0.001", "price": "19000"}
            ).json()["error"]
            == []
        )
        time.sleep(1.1)  # decays by 2.2: one more history call fits
        assert s.raw_private("TradesHistory").json()["error"] == []
    finally:
        s.stop()


def test_matching_engine_counter_on_early_cancels():
    s = start_sim(
        flat_panel(),
        start=flat_panel().ts[5],
        config=sim_test_config(rate_limit={"order_max_counter": 20, "order_decay_per_s": 0.0}),
    )
    try:
        errs = []
        for _ in range(3):
            r = s.raw_private(
                "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "volume": "0.001", "price": "19000"}
            ).json()
            errs.append(r["error"])
            if not r["error"]:
                errs.append(s.raw_private("CancelOrder", {"txid": r["result"]["txid"][0]}).json()["error"])
        # +1 add, +8 early cancel: 9, 18, then the third add (19) fits but its cancel (27) does not
        assert errs == [[], [], [], [], [], ["EOrder:Rate limit exceeded"]]
    finally:
        s.stop()


def test_json_bodies_are_signed_over_the_json_text(sim):
    import json

    import requests

    from live_bridge.simulator.app import sign

    nonce = str(time.time_ns())
    text = json.dumps({"nonce": nonce})
    headers = {
        "API-Key": KEY,
        "API-Sign": sign(SECRET, "/0/private/Balance", nonce, text),
        "Content-Type": "application/json; charset=utf-8",
    }
    r = requests.post(sim.url + "/0/private/Balance", data=text, headers=headers, timeout=10)
    assert r.json() == {"error": [], "result": {"ZUSD": "100000.0000"}}


def test_repeated_bad_signatures_lock_the_key_out(sim):
    wrong = base64.b64encode(b"y" * 64).decode()
    errs = [sim.raw_private("Balance", secret=wrong).json()["error"] for _ in range(4)]
    assert errs == [["EAPI:Invalid signature"]] * 3 + [["EGeneral:Temporary lockout"]]
    assert sim.raw_private("Balance").json()["error"] == ["EGeneral:Temporary lockout"]
    errs = [sim.raw_private("Balance", key="stranger").json()["error"] for _ in range(4)]
    assert errs == [["EAPI:Invalid key"]] * 3 + [["EGeneral:Temporary lockout"]]


def test_the_auth_failure_table_is_bounded_and_real_lockouts_survive_a_flood():
    """The per-key failure table grew with every made-up API-Key header; now made-up keys share a
    bounded LRU table (by digest), and cannot push a real key's lockout out of it."""
    from decimal import Decimal

    from live_bridge.simulator.app import Guard
    from live_bridge.simulator.server import build_exchange
    from live_bridge.simulator.testing import T0

    ex = build_exchange(
        flat_panel(),
        config=sim_test_config(rate_limit={"lockout_after": 3, "lockout_s": 60.0}),
        start=T0 + 5 * 3600,
        env={"KRAKEN_API_KEY": KEY, "KRAKEN_API_SECRET": SECRET},
        balances={"USD": Decimal(1)},
    )
    g = Guard(ex)
    for _ in range(3):
        g.fail(KEY)
    assert g.locked(KEY)
    for i in range(2 * Guard.MAX_STRANGERS):  # each made-up key locked out: both tables fill up
        for _ in range(3):
            g.fail(f"made-up-key-{i}-" + "x" * 200)
    assert len(g.stranger_failures) <= Guard.MAX_STRANGERS and len(g.stranger_locked) <= Guard.MAX_STRANGERS
    assert len(g.failures) <= len(ex.accounts) and len(g.locked_until) <= len(ex.accounts)
    assert g.locked(KEY)  # the flood did not unlock the real key
    for _ in range(3):  # a stranger still gets locked out
        g.fail("stranger")
    assert g.locked("stranger")
    assert sum(len(k) for k in g.stranger_failures) <= 32 * Guard.MAX_STRANGERS  # digests, not the keys sent
