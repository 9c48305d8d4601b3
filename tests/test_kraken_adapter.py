"""The Kraken adapter (live_bridge.kraken): outcome classification, nonces, rate budget, precision
and minimums, market-status gating, BalanceEx, order calls, no credential leak.

Most tests drive the unmodified python-kraken-sdk through the adapter against the simulator over
HTTP, replaying real Kraken bars (XBTUSD, ETHUSD from ../shared/data/ohlcv). Faults the simulator
cannot produce (``W...`` warnings, raw-dict errors in the SDK's exception mode, limit_only /
reduce_only pair status, a DONE AddOrder without txid) use a stub SDK.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import secrets
import threading
import time
from datetime import datetime
from decimal import Decimal as D
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from live_bridge.kraken import (
    Credentials,
    CredentialsError,
    Halt,
    KrakenAdapter,
    KrakenHalt,
    NonceCounter,
    OrderRefused,
    Outcome,
    RateBudget,
    RateTier,
    SdkClients,
    cancel_penalty,
    classify_envelope,
    classify_exception,
    classify_http,
    parse_balance_ex,
    round_price,
    round_volume,
    status_gate,
)

START = 1_672_531_200  # 2023-01-01 00:00 UTC
NOW = START + 2 * 86400
FREE = RateTier(rest_max=10_000, rest_decay_per_s=1000, order_max=10_000, order_decay_per_s=1000)


# ---- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim():
    from tests.conftest import require_shared

    require_shared()
    from engine.store.panel import load_shared_panel
    from live_bridge.simulator.testing import start_sim

    panel = load_shared_panel(["XBTUSD_1h", "ETHUSD_1h"], start=START, end=START + 3 * 86400)
    s = start_sim(panel, start=NOW, balances={"USD": "100000", "BTC": "1"})
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _clean_sim(request):
    yield
    if "sim" in request.fixturenames:
        s = request.getfixturevalue("sim")
        s.admin("/admin/faults", method="DELETE")
        s.admin("/admin/status", {"status": "online"})
        for p in ("XBTUSD", "ETHUSD"):
            s.admin("/admin/status", {"status": "online", "pair": p})


def account(sim, balances: dict[str, str] | None = None) -> Credentials:
    """A fresh simulator account (its own key: nonces, lockouts and rate counters apart)."""
    key = "kqk" + secrets.token_hex(20)
    secret = base64.b64encode(secrets.token_bytes(64)).decode()
    sim.ex.add_account(key[:12], key, secret, {k: D(v) for k, v in (balances or {"USD": "100000", "BTC": "1"}).items()})
    return Credentials(key, secret)


def adapter(sim, tmp_path: Path, creds: Credentials | None = None, **kw) -> KrakenAdapter:
    kw.setdefault("tier", FREE)
    return KrakenAdapter(creds or account(sim), state_dir=tmp_path / "state", url=sim.url, **kw)


def fault(sim, **f) -> None:
    code, body = sim.admin("/admin/faults", f)
    assert code == 200, body


def n_orders(sim, cl_ord_id: str) -> int:
    return sum(1 for o in sim.ex.orders.values() if o.cl_ord_id == cl_ord_id)


# ---- classification table ---------------------------------------------------------------------
CODES = [
    ("EService:Busy", Outcome.UNKNOWN, None),
    ("EService:Unavailable", Outcome.UNKNOWN, None),
    ("EService:Throttled:1700000000", Outcome.UNKNOWN, None),
    ("EGeneral:Internal error", Outcome.UNKNOWN, None),
    ("EOrder:Cancel pending", Outcome.UNKNOWN, None),
    ("EOrder:Something new", Outcome.UNKNOWN, None),  # unmapped: never a rejection
    ("WGeneral:Whatever", Outcome.UNKNOWN, None),  # a warning
    ("garbage", Outcome.UNKNOWN, None),
    ("EOrder:Insufficient funds", Outcome.REJECTED, None),
    ("EGeneral:Invalid arguments:volume minimum not met", Outcome.REJECTED, None),
    ("EOrder:Cost minimum not met", Outcome.REJECTED, None),
    ("EOrder:Invalid price:XBTUSD price can only be specified up to 1 decimals.", Outcome.REJECTED, None),
    ("EQuery:Unknown asset pair", Outcome.REJECTED, None),
    ("EService:Market in cancel_only mode", Outcome.REJECTED, None),
    ("EService:Deadline elapsed", Outcome.REJECTED, None),
    ("EAPI:Rate limit exceeded", Outcome.REJECTED, None),
    ("EOrder:Rate limit exceeded", Outcome.REJECTED, None),
    ("EAPI:Invalid nonce", Outcome.REJECTED, None),
    ("EOrder:Unknown order", Outcome.REJECTED, None),
    ("EGeneral:Temporary lockout", Outcome.REJECTED, Halt.LOCKOUT),
    ("EAPI:Invalid key", Outcome.REJECTED, Halt.CREDENTIALS),
    ("EAPI:Invalid signature", Outcome.REJECTED, Halt.CREDENTIALS),
]


@pytest.mark.parametrize(("code", "outcome", "halt"), CODES)
def test_error_codes_classify(code, outcome, halt):
    v = classify_envelope({"error": [code], "result": {}})
    assert (v.outcome, v.halt) == (outcome, halt)
    # a definitive code next to an unknown one is unknown
    v2 = classify_envelope({"error": ["EOrder:Insufficient funds", code], "result": {}})
    assert v2.outcome is (Outcome.UNKNOWN if outcome is Outcome.UNKNOWN else Outcome.REJECTED)


@settings(max_examples=200, deadline=None)
@given(code=st.text(max_size=60), status=st.integers(100, 599), body=st.text(max_size=80))
def test_unknown_never_means_rejected(code, status, body):
    from live_bridge.kraken import ERROR_TABLE

    v = classify_envelope({"error": [code], "result": {}})
    listed = [p for p in ERROR_TABLE if code.startswith(p)]
    if not listed or ERROR_TABLE[max(listed, key=len)].outcome is Outcome.UNKNOWN:
        assert v.outcome is Outcome.UNKNOWN and v.halt is None
    assert v.outcome is not Outcome.DONE
    if status != 200:
        assert classify_http(status, body).outcome is Outcome.UNKNOWN


def test_http_and_exception_answers_classify():
    ok = json.dumps({"error": [], "result": {"count": 1}})
    assert classify_http(200, ok).outcome is Outcome.DONE
    for status, body in [
        (502, "<html>bad gateway</html>"),
        (504, ""),
        (520, "x"),
        (429, "slow down"),
        (403, "cloudflare"),
        (200, ok[: len(ok) // 2]),
        (200, "[]"),
        (200, '{"error": []}'),
        (200, '{"result": {}}'),
        (200, '{"error": ["WGeneral:note"], "result": {"count": 1}}'),
    ]:
        assert classify_http(status, body).outcome is Outcome.UNKNOWN, (status, body)
    from kraken.exceptions import KrakenInvalidArgumentsError, KrakenServiceUnavailableError

    for exc in [
        requests.exceptions.ReadTimeout("read timed out"),
        requests.exceptions.ConnectTimeout("x"),
        requests.exceptions.ConnectionError("Connection reset by peer"),
        requests.exceptions.ChunkedEncodingError("x"),
        Exception("502 - <html></html>"),
        ValueError(b"{truncated"),
        KrakenServiceUnavailableError({"error": ["EService:Unavailable"]}),
        RuntimeError("anything else"),
    ]:
        assert classify_exception(exc).outcome is Outcome.UNKNOWN, exc
    v = classify_exception(KrakenInvalidArgumentsError({"error": ["EGeneral:Invalid arguments:volume"]}))
    assert v.outcome is Outcome.REJECTED and v.errors == ("EGeneral:Invalid arguments:volume",)


# ---- against the simulator: the happy path ----------------------------------------------------
def test_orders_balances_and_fills_through_the_sdk(sim, tmp_path):
    a = adapter(sim, tmp_path)
    assert a.refresh() and a.system_status_value == "online"
    r = a.pairs["BTC/USD"]
    assert (
        r.instrument.kraken_id,
        r.instrument.altname,
        r.instrument.pair_decimals,
        r.instrument.lot_decimals,
        r.instrument.ordermin,
        r.instrument.costmin,
        r.instrument.tick_size,
        r.status,
    ) == ("XXBTZUSD", "XBTUSD", 1, 8, D("0.0001"), D("0.5"), D("0.1"), "online")
    assert "ETH/USD" in a.pairs

    rest = a.add_order("BTC/USD", "buy", "limit", D("0.01"), price=D("10000.0"), cl_ord_id="rest-1")
    assert rest.done and len(rest.result.txids) == 1
    b = a.balances()
    assert b.done and b.result.tradable["USD"].hold_trade == D("100.4000")  # 0.01 x 10000 x (1 + 0.4 %)
    assert b.result.available("USD") == D("100000") - D("100.4")
    found = a.find_order("rest-1")
    assert found.done and [o.status for o in found.result] == ["open"]
    c = a.cancel_order(cl_ord_id="rest-1")
    assert c.done and c.result == 1
    q = a.query_orders(rest.result.txids)
    assert q.result[rest.result.txids[0]].status == "canceled"

    mkt = a.add_order("BTC/USD", "buy", "market", D("0.002"), ref_price=D("16500"), cl_ord_id="mkt-1")
    assert mkt.done
    o = a.query_orders(mkt.result.txids).result[mkt.result.txids[0]]
    assert o.status == "closed" and o.vol_exec == D("0.002") and len(o.trades) == 1
    fills, count = a.trades_history().result
    f = fills[o.trades[0]]
    booked = sim.ex.trades[o.trades[0]]
    assert (f.price, f.vol, f.cost, f.fee, f.pair, f.side) == (
        booked.price,
        booked.vol,
        booked.cost,
        booked.fee,
        "BTC/USD",
        "buy",
    )
    assert isinstance(f.fee, D) and f.fee == (f.cost * D("0.004")).quantize(D("0.0001"), rounding="ROUND_UP")
    assert (o.cost, o.fee) == (f.cost, f.fee)


def test_add_order_carries_cl_ord_id_and_a_deadline_seconds_ahead(tmp_path):
    seen = {}
    stub = StubSdk({"AddOrder": lambda kw: seen.update(kw) or ok({"txid": ["OABC-1"], "descr": {"order": "x"}})})
    a = stub_adapter(stub, tmp_path, clock=lambda: 1_700_000_000.0)
    res = a.add_order("BTC/USD", "buy", "limit", D("0.01"), price=D("20000.0"), cl_ord_id="intent-7")
    assert res.done and res.result.txids == ("OABC-1",)
    assert seen["cl_ord_id"] == "intent-7" and seen["validate"] is False and seen["truncate"] is False
    dl = datetime.fromisoformat(seen["deadline"].replace("Z", "+00:00")).timestamp()
    assert dl == 1_700_000_005.0 and seen["deadline"].endswith("Z")
    assert (seen["volume"], seen["price"], seen["pair"]) == ("0.01", "20000.0", "XBTUSD")


def test_the_deadline_is_set_at_sending_after_the_rate_wait(tmp_path):
    c = FakeClock()  # one clock for wall time, the budget and sleeps: the budget's wait moves it
    c.t = 1_700_000_000.0
    seen: list = []
    empty = {"OpenOrders": lambda kw: ok({"open": {}}), "ClosedOrders": lambda kw: ok({"closed": {}, "count": 0})}
    stub = StubSdk(empty | {"AddOrder": lambda kw: seen.append((dict(kw), c.t)) or ok({"txid": ["O1"]})})
    tier = RateTier(rest_max=10_000, rest_decay_per_s=1000, order_max=14, order_decay_per_s=0.1)
    a = stub_adapter(stub, tmp_path, tier=tier, clock=c, monotonic=c, sleep=c.sleep)
    a.ensure_fresh()
    a.budget.saturate_order("BTC/USD")  # the next order waits 1 / 0.1 = 10 s, longer than deadline_s
    t0 = c.t
    res = a.add_order("BTC/USD", "buy", "limit", D("0.01"), price=D("20000.0"), cl_ord_id="dl-1")
    kw, at = seen[-1]
    dl = datetime.fromisoformat(kw["deadline"].replace("Z", "+00:00")).timestamp()
    assert at == t0 + 10 and dl == at + 5 == res.deadline  # not t0 + 5, already past when it left
    # a lookup given the caller's (earlier) send time still waits for the real deadline
    c.t = t0 + 5 + a.lookup_margin_s + 1
    assert a.find_order("dl-1", sent_at=t0).unknown
    c.t = res.deadline + a.lookup_margin_s
    assert a.find_order("dl-1", sent_at=t0, interval_s=0).done
    # a latest deadline caps it, and with under 2 s of it left nothing is sent
    a.budget.saturate_order("BTC/USD")
    tb = c.t
    capped = a.add_order(
        "BTC/USD", "buy", "limit", D("0.01"), price=D("20000.0"), cl_ord_id="dl-2", latest_deadline=tb + 13
    )
    assert capped.done and seen[-1][1] == tb + 10 and capped.deadline == tb + 13  # not tb + 10 + 5
    n, sent = len(seen), a.calls_sent
    a.budget.saturate_order("BTC/USD")
    with pytest.raises(OrderRefused) as e:
        a.add_order(
            "BTC/USD", "buy", "limit", D("0.01"), price=D("20000.0"), cl_ord_id="dl-3", latest_deadline=c.t + 11.5
        )
    assert e.value.code == "deadline_passed" and len(seen) == n and a.calls_sent == sent


# ---- faults injected in the simulator: unknown, then the lookup finds the truth ----------------
@pytest.mark.parametrize(
    ("f", "applied"),
    [
        ({"kind": "timeout", "seconds": 3.0, "apply": True}, True),  # ghost order: timed out, but placed
        ({"kind": "timeout", "seconds": 3.0, "apply": False}, False),
        ({"kind": "http_error", "status": 502, "apply": True}, True),
        ({"kind": "http_error", "status": 520, "apply": False}, False),
        ({"kind": "truncated_json"}, True),
        ({"kind": "http_429"}, False),
        ({"kind": "error", "message": "EService:Busy"}, False),
        ({"kind": "error", "message": "EService:Unavailable"}, False),
        ({"kind": "error", "message": "EService:Throttled:1672704000"}, False),
        ({"kind": "error", "message": "EGeneral:Internal error"}, False),
    ],
)
def test_faults_are_unknown_and_find_order_tells_what_happened(sim, tmp_path, f, applied):
    creds = account(sim)
    # a short timeout for AddOrder only (the fault holds the answer 3 s); status and rules get 30 s
    a = adapter(sim, tmp_path, creds, timeout_s=1.0 if f["kind"] == "timeout" else 10.0, public_timeout_s=30.0)
    assert a.refresh()
    fault(sim, endpoint="AddOrder", **f)
    cid = "f-" + secrets.token_hex(4)
    sent_at = time.time()
    res = a.add_order("BTC/USD", "buy", "limit", D("0.001"), price=D("10000.0"), cl_ord_id=cid)
    assert res.outcome is Outcome.UNKNOWN, res
    until = time.monotonic() + 30  # under load the simulator may place it after the client gave up
    while applied and n_orders(sim, cid) == 0 and time.monotonic() < until:
        time.sleep(0.05)
    assert n_orders(sim, cid) == (1 if applied else 0)
    # a restarted process (same key, same nonce file) looking a minute later, with the send time
    later = adapter(sim, tmp_path, creds, clock=lambda: time.time() + 60)
    look = later.find_order(cid, sent_at=sent_at, interval_s=0.01)
    assert look.done and len(look.result) == (1 if applied else 0)


def test_lookup_failure_is_unknown_not_absent(sim, tmp_path):
    a = adapter(sim, tmp_path)
    fault(sim, endpoint="ClosedOrders", kind="error", message="EService:Busy")
    r = a.find_order("nothing-here")
    assert r.outcome is Outcome.UNKNOWN


def test_late_visible_order_is_found_by_retrying_the_lookup(sim, tmp_path):
    def sleep(_s):  # the order shows up while the adapter waits between lookups (deterministic)
        for o in sim.ex.orders.values():
            if o.cl_ord_id == "late-1":
                o.invisible_until = 0.0

    a = adapter(sim, tmp_path, sleep=sleep)
    fault(sim, kind="invisible", seconds=3600)
    sent_at = time.time()
    res = a.add_order("BTC/USD", "buy", "limit", D("0.001"), price=D("10000.0"), cl_ord_id="late-1")
    assert res.done
    first = a.find_order("late-1", sent_at=sent_at)  # not visible yet: one look proves nothing
    assert first.unknown and first.result is None
    assert "absent is concluded only after" in first.reason
    look = a.find_order("late-1", sent_at=sent_at, attempts=3, interval_s=0.0)
    assert look.done and [o.txid for o in look.result] == list(res.result.txids)


def test_an_empty_lookup_is_absent_only_after_the_deadline_and_two_looks(tmp_path):
    empty = {"OpenOrders": lambda kw: ok({"open": {}}), "ClosedOrders": lambda kw: ok({"closed": {}, "count": 0})}
    t = [1_700_000_000.0]
    stub = StubSdk(empty)
    a = stub_adapter(stub, tmp_path, clock=lambda: t[0], sleep=lambda s: None, lookup_margin_s=10.0)
    looks = lambda: stub.calls.count("OpenOrders")  # noqa: E731

    r = a.find_order("gone-1", attempts=5)  # no send time, no deadline: never "absent"
    assert r.unknown and r.result is None and "no send time or deadline" in r.reason and looks() == 5
    sent = t[0]
    t[0] = sent + 14.9  # before sent + deadline_s (5) + margin (10)
    r = a.find_order("gone-1", sent_at=sent, attempts=3)
    assert r.unknown and looks() == 8
    r = a.find_order("gone-1", deadline=sent + 5, attempts=3)  # the ledger's deadline, the same rule
    assert r.unknown and looks() == 11
    t[0] = sent + 15.0
    r = a.find_order("gone-1", sent_at=sent)  # past it: two looks, both empty -> absent
    assert r.done and r.result == () and looks() == 13
    r = a.find_order("gone-1", sent_at=sent, min_lookups=3, interval_s=0.0)
    assert r.done and looks() == 16
    # the latest limit wins: an explicit absent_ok_after later than the deadline keeps it unknown
    assert a.find_order("gone-1", sent_at=sent, absent_ok_after=t[0] + 1).unknown
    assert a.find_order("gone-1", absent_ok_after=t[0] - 1).done


def test_find_order_compares_ids_by_meaning_and_never_drops_a_mismatch(tmp_path):
    import uuid

    from live_bridge.kraken import normalize_cl_ord_id, same_cl_ord_id

    u = uuid.UUID("0f8fad5b-d9cb-469f-a165-70867728950e")

    def order(cl):
        e = {
            "descr": {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "price": "20000.0"},
            "status": "open",
            "vol": "0.01",
            "vol_exec": "0",
            "cost": "0",
            "fee": "0",
            "price": "0",
            "opentm": 1.5,
        }
        return e if cl is None else e | {"cl_ord_id": cl}

    def sdk(cl):
        return StubSdk(
            {
                "OpenOrders": lambda kw: ok({"open": {"O-1": order(cl)}}),
                "ClosedOrders": lambda kw: ok({"closed": {}, "count": 0}),
            }
        )

    for asked, returned in [
        (u.hex, str(u).upper()),
        (str(u), u.hex.upper()),
        (str(u).upper(), str(u)),
        ("kq-free.1", "kq-free.1"),
    ]:
        r = stub_adapter(sdk(returned), tmp_path).find_order(asked)
        assert r.done and [o.txid for o in r.result] == ["O-1"], (asked, returned, r)
    for asked, returned in [(u.hex, uuid.uuid4().hex), ("kq-free.1", "KQ-FREE.1"), ("kq-free.1", None)]:
        r = stub_adapter(sdk(returned), tmp_path).find_order(asked, absent_ok_after=0.0)
        assert r.unknown and r.result is None and "O-1" in r.reason, (asked, returned, r)
    assert normalize_cl_ord_id(u.hex.upper()) == str(u) and not same_cl_ord_id(None, None)


# ---- stub SDK: what the simulator cannot produce ----------------------------------------------
class _Resp:
    def __init__(self, status: int, body) -> None:
        self.status_code = status
        self.text = body if isinstance(body, str) else json.dumps(body)


def ok(result) -> _Resp:
    return _Resp(200, {"error": [], "result": result})


PAIRS = {
    "XXBTZUSD": {
        "altname": "XBTUSD",
        "wsname": "XBT/USD",
        "base": "XXBT",
        "quote": "ZUSD",
        "pair_decimals": 1,
        "lot_decimals": 8,
        "cost_decimals": 5,
        "ordermin": "0.0001",
        "costmin": "0.5",
        "tick_size": "0.1",
        "status": "online",
    }
}
SDK_NAMES = {
    "get_balances": "BalanceEx",
    "get_open_orders": "OpenOrders",
    "get_closed_orders": "ClosedOrders",
    "get_orders_info": "QueryOrders",
    "get_trades_history": "TradesHistory",
    "create_order": "AddOrder",
    "cancel_order": "CancelOrder",
    "get_system_status": "SystemStatus",
}


class StubSdk:
    """User/Trade/Market stand-in: each method answers from ``script[endpoint]`` (a callable of the
    call's kwargs returning a response, a dict, or raising). SystemStatus/AssetPairs default to online."""

    def __init__(self, script: dict, pair_status: str = "online", system: str = "online") -> None:
        pairs = json.loads(json.dumps(PAIRS))
        pairs["XXBTZUSD"]["status"] = pair_status
        self.script = {"SystemStatus": lambda kw: ok({"status": system}), "AssetPairs": lambda kw: ok(pairs)} | script
        self.calls: list[str] = []

    def _answer(self, endpoint, kw):
        self.calls.append(endpoint)
        return self.script[endpoint](kw)

    def __getattr__(self, name):
        if name == "request":
            return lambda **kw: self._answer(kw["uri"].rsplit("/", 1)[1], kw)
        return lambda **kw: self._answer(SDK_NAMES[name], kw)


def stub_adapter(stub: StubSdk, tmp_path: Path, **kw) -> KrakenAdapter:
    creds = Credentials("stub-key-" + secrets.token_hex(8), base64.b64encode(b"s" * 64).decode())
    kw.setdefault("tier", FREE)
    return KrakenAdapter(
        creds, state_dir=tmp_path / "stub", url="http://127.0.0.1:9", sdk=SdkClients(stub, stub, stub), **kw
    )


def _raise(e):
    raise e


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (lambda kw: {"error": ["EService:Busy"], "result": {}}, Outcome.UNKNOWN),  # raw dict back from the SDK
        (lambda kw: {"error": ["EGeneral:Brand new error"]}, Outcome.UNKNOWN),
        (lambda kw: ok({"descr": {"order": "x"}}), Outcome.UNKNOWN),  # DONE without a txid
        (lambda kw: _Resp(200, {"error": ["WOrder:Something odd"], "result": {"txid": ["O1"]}}), Outcome.UNKNOWN),
        (lambda kw: _raise(requests.exceptions.ConnectionError("Connection reset by peer")), Outcome.UNKNOWN),
        (lambda kw: _raise(requests.exceptions.ReadTimeout("timed out")), Outcome.UNKNOWN),
        (lambda kw: _raise(Exception("503 - <html>")), Outcome.UNKNOWN),
        (lambda kw: _Resp(200, {"error": ["EOrder:Insufficient funds"], "result": {}}), Outcome.REJECTED),
        (lambda kw: ok({"txid": ["O1"], "descr": {"order": "x"}}), Outcome.DONE),
    ],
)
def test_stub_transport_answers(tmp_path, answer, outcome):
    a = stub_adapter(StubSdk({"AddOrder": answer}), tmp_path)
    res = a.add_order("BTC/USD", "sell", "limit", D("0.01"), price=D("30000.0"), cl_ord_id="s-1")
    assert res.outcome is outcome, res
    assert isinstance(res.errors, tuple) and not isinstance(res.result, dict)


# ---- nonces ------------------------------------------------------------------------------------
def test_nonce_monotonic_across_two_instances_threads_and_a_restart(sim, tmp_path):
    creds = account(sim)
    a1, a2 = adapter(sim, tmp_path, creds), adapter(sim, tmp_path, creds)
    results: list = []

    def work(a):
        for _ in range(12):
            results.append(a.balances())

    ts = [threading.Thread(target=work, args=(a,)) for a in (a1, a2, a1)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(results) == 36 and all(r.done for r in results), [r.errors for r in results if not r.done]
    last = a1.nonces.current()
    assert last == sim.ex.accounts[creds.key].last_nonce
    path = a1.nonces.path
    assert (path.stat().st_mode & 0o777) == 0o600 and creds.key not in path.name
    # a restart whose clock runs an hour behind still sends increasing nonces (the file wins)
    a3 = adapter(sim, tmp_path, creds, clock=lambda: time.time() - 3600)
    assert a3.balances().done and a3.nonces.current() == last + 1


def test_nonce_counter_needs_its_lock(tmp_path):
    n = NonceCounter(tmp_path, "k", clock=lambda: 1.0)  # a stopped clock: the counter alone advances
    with pytest.raises(RuntimeError):
        n.next()
    with n.hold():
        x, y = n.next(), n.next()
    assert x == 100_000_000 and y == x + 1 and NonceCounter(tmp_path, "k").current() == y
    (tmp_path / n.path.name).write_text("not a number")
    with pytest.raises(KrakenHalt) as e, n.hold():
        n.next()
    assert e.value.code is Halt.NONCE_STATE


_DRAW = """
import sys
from live_bridge.kraken.nonce import NonceCounter
n = NonceCounter(sys.argv[1], "shared-key", clock=lambda: 0.0)  # a stopped clock: only the file orders them
out = []
for _ in range(int(sys.argv[2])):
    with n.hold():
        out.append(n.next())
print(" ".join(map(str, out)))
"""


def test_nonce_counter_is_locked_across_processes(tmp_path):
    import subprocess
    import sys

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _DRAW, str(tmp_path), "120"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        for _ in range(2)
    ]
    seqs = [[int(x) for x in p.communicate(timeout=60)[0].split()] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    drawn = [x for s in seqs for x in s]
    assert len(drawn) == 240 and len(set(drawn)) == 240, "a nonce was issued twice"
    assert all(s == sorted(s) for s in seqs) and sorted(drawn) == list(range(1, 241))
    assert NonceCounter(tmp_path, "shared-key").current() == 240


def test_repeated_invalid_nonce_halts_and_latches(sim, tmp_path):
    creds = account(sim)
    a = adapter(sim, tmp_path, creds)
    assert a.balances().done
    # another client on the same key races far ahead (the SDK's default nonce, on a fast clock)
    r = sim.raw_private("Balance", key=creds.key, secret=creds.secret, nonce=int(time.time() * 1e8) + 10**15)
    assert r.json()["error"] == []
    first = a.balances()
    assert first.rejected and first.transient and first.errors == ("EAPI:Invalid nonce",)
    with pytest.raises(KrakenHalt) as e:
        a.balances()
    assert e.value.code is Halt.NONCE and "another client uses this key" in str(e.value)
    sent = a.calls_sent
    with pytest.raises(KrakenHalt):
        a.add_order("BTC/USD", "buy", "limit", D("0.001"), price=D("10000.0"), cl_ord_id="after-halt")
    assert a.calls_sent == sent and n_orders(sim, "after-halt") == 0


def test_lockout_halts_never_retries(sim, tmp_path):
    a = adapter(sim, tmp_path)
    fault(sim, endpoint="BalanceEx", kind="lockout", seconds=30)
    with pytest.raises(KrakenHalt) as e:
        a.balances()
    assert e.value.code is Halt.LOCKOUT and "EGeneral:Temporary lockout" in str(e.value)
    sent = a.calls_sent
    for call in (a.balances, lambda: a.find_order("x"), lambda: a.cancel_order(txid="O", pair="BTC/USD")):
        with pytest.raises(KrakenHalt):
            call()
    assert a.calls_sent == sent
    a.reset_halt("test: operator cleared")
    with pytest.raises(KrakenHalt):  # still locked out at the exchange: halts again, one call, no loop
        a.balances()
    assert a.calls_sent == sent + 1


# ---- precision and minimums -------------------------------------------------------------------
def test_precision_and_minimums_from_asset_pairs(sim, tmp_path):
    a = adapter(sim, tmp_path)
    r = a.rules("XBT/USD")
    assert round_volume(r, D("0.123456789")) == D("0.12345678")
    assert round_price(r, "buy", D("16000.06")) == D("16000.0")
    assert round_price(r, "sell", D("16000.01")) == D("16000.1")
    assert round_price(r, "sell", D("16000.1")) == D("16000.1")
    refusals = [
        ("below_ordermin", dict(side="buy", ordertype="limit", volume=D("0.00009"), price=D("16000.0"))),
        ("below_costmin", dict(side="buy", ordertype="limit", volume=D("0.0001"), price=D("4000.0"))),
        ("bad_precision", dict(side="buy", ordertype="limit", volume=D("0.000100001"), price=D("16000.0"))),
        ("bad_precision", dict(side="buy", ordertype="limit", volume=D("0.001"), price=D("16000.05"))),
        ("no_ref_price", dict(side="buy", ordertype="market", volume=D("0.001"))),
        ("below_costmin", dict(side="sell", ordertype="market", volume=D("0.0001"), ref_price=D("100"))),
        ("bad_volume", dict(side="buy", ordertype="limit", volume=D("-1"), price=D("16000.0"))),
    ]
    before = len(sim.ex.orders)
    for code, kw in refusals:
        with pytest.raises(OrderRefused) as e:
            a.add_order("BTC/USD", cl_ord_id="p-" + code[:10], **kw)
        assert e.value.code == code, (code, kw, e.value)
    assert len(sim.ex.orders) == before and a.sent["AddOrder"] == 0
    # Kraken raises ordermin; the reload picks it up and the adapter refuses what it sent before
    fault(sim, kind="rules_change", pair="XBTUSD", ordermin="0.01")
    a.refresh()
    with pytest.raises(OrderRefused) as e:
        a.add_order("BTC/USD", "buy", "limit", D("0.001"), price=D("10000.0"), cl_ord_id="p-after")
    assert e.value.code == "below_ordermin" and n_orders(sim, "p-after") == 0


def test_rounding_and_checks_take_decimals_and_an_exact_side_only():
    from live_bridge.kraken import check_order, parse_asset_pairs

    r = parse_asset_pairs(PAIRS)["BTC/USD"]
    assert round_volume(r, D("0.0029")) == D("0.0029") and round_price(r, "sell", D("16000.1")) == D("16000.1")
    for bad in (0.0029, 1, "0.0029", None, True):
        with pytest.raises(TypeError, match="must be a Decimal"):
            round_volume(r, bad)
    with pytest.raises(TypeError, match="must be a Decimal"):
        round_price(r, "sell", 16000.1)  # as a Decimal, 16000.1000000000003638: it used to round up to 16000.2
    for side in ("SELL", "Buy", "bid", "", None, "buy "):
        with pytest.raises(ValueError, match="side must be"):
            round_price(r, side, D("16000.05"))
    base = dict(side="buy", ordertype="limit", volume=D("0.001"), price=D("16000.0"), ref_price=None)
    for k, v in (("volume", 0.001), ("price", 16000.0), ("volume", 1), ("ref_price", 16000.0)):
        with pytest.raises(TypeError, match=f"{k} must be a Decimal"):
            check_order(r, **(base | {k: v} | ({"ordertype": "market", "price": None} if k == "ref_price" else {})))
    check_order(r, **base)


def test_rules_reload_after_their_max_age(tmp_path):
    t = [0.0]
    stub = StubSdk({})
    a = stub_adapter(stub, tmp_path, monotonic=lambda: t[0], rules_max_age_s=86400)
    a.rules("BTC/USD")
    a.rules("BTC/USD")
    assert stub.calls.count("AssetPairs") == 1
    t[0] = 86401.0
    a.rules("BTC/USD")
    assert stub.calls.count("AssetPairs") == 2


# ---- rate budget -------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def test_rate_budget_waits_instead_of_exceeding():
    c = FakeClock()
    b = RateBudget("starter", clock=c, sleep=c.sleep)  # REST 15 (13 with margin), decay 0.33/s
    for _ in range(13):
        b.acquire_rest("BalanceEx")
    assert c.slept == []
    b.acquire_rest("ClosedOrders")  # a history call costs 2: waits until 2 have decayed
    assert c.slept and abs(sum(c.slept) - 2 / 0.33) < 1e-9
    for _ in range(50):
        b.acquire_rest("OpenOrders")
        assert b.rest_level() <= 13 + 1e-9
    assert b.acquire_rest("AddOrder") == 0.0  # orders count on the trading counter instead
    # trading counter: starter 60 (55 with margin), decay 1/s; an early cancel costs 8
    c2 = FakeClock()
    b2 = RateBudget("starter", clock=c2, sleep=c2.sleep)
    for _ in range(55):
        b2.acquire_order("BTC/USD")
    assert c2.slept == []
    b2.acquire_order("BTC/USD", cancel_penalty(1.0))
    assert abs(sum(c2.slept) - 8.0) < 1e-9
    b2.acquire_order("ETH/USD")  # another pair has its own counter
    assert abs(sum(c2.slept) - 8.0) < 1e-9
    assert [cancel_penalty(s) for s in (0, 7, 12, 30, 60, 200, 400, None)] == [8, 6, 5, 4, 2, 1, 0, 8]


def test_a_wait_over_the_budgets_limit_is_a_one_line_kq_error(tmp_path):
    from engine.errors import KQError
    from live_bridge.kraken import RateBudgetExceeded

    c = FakeClock()
    b = RateBudget("starter", clock=c, sleep=c.sleep, max_wait_s=5)
    b.saturate_rest()
    assert b.acquire_rest("BalanceEx") == pytest.approx(1 / 0.33)  # 3 s: fits in 5
    b.saturate_rest()
    with pytest.raises(RateBudgetExceeded) as e:
        b.acquire_rest("ClosedOrders")  # 2 / 0.33 = 6 s does not
    assert isinstance(e.value, KQError) and isinstance(e.value, RuntimeError) and "\n" not in str(e.value)
    assert "nothing was sent" in str(e.value)
    stub = StubSdk({"BalanceEx": lambda kw: ok({"ZUSD": {"balance": "1", "hold_trade": "0"}})})
    a = stub_adapter(stub, tmp_path, budget=RateBudget("starter", clock=c, sleep=c.sleep, max_wait_s=1))
    a.budget.saturate_rest()
    with pytest.raises(KQError, match="rate budget"):
        a.balances()
    assert "BalanceEx" not in stub.calls


def test_rate_budget_keeps_the_simulators_counter_below_its_limit(sim, tmp_path, monkeypatch):
    from live_bridge.simulator import app as sim_app

    levels: dict[str, list[tuple[float, bool]]] = {}  # key -> the simulator's counter after each charge
    charge = sim_app.Guard.charge

    def watched(self, key, cost):
        ok_ = charge(self, key, cost)
        levels.setdefault(key, []).append((self.counters[key][0], ok_))
        return ok_

    monkeypatch.setattr(sim_app.Guard, "charge", watched)

    code, old = sim.admin("/admin/limits")
    assert code == 200
    code, _ = sim.admin("/admin/limits", {"max_counter": 6.0, "decay_per_s": 3.0, "reset_counters": True})
    assert code == 200
    try:
        # control: the bare SDK in a tight loop is refused by the simulator's counter
        ctl = account(sim)
        from kraken.spot import User

        u = User(key=ctl.key, secret=ctl.secret, url=sim.url)
        u._use_custom_exceptions = False
        errs = []
        for _ in range(40):
            errs.append(u.get_balances().json()["error"])
            if errs[-1]:
                break
        assert errs[-1] == ["EAPI:Rate limit exceeded"]
        # the adapter told the same limits waits instead
        assert not all(ok_ for _, ok_ in levels[ctl.key])  # the watch sees the control's refusal
        creds = account(sim)
        a = adapter(sim, tmp_path, creds, tier=RateTier(6.0, 3.0, 10_000, 1000))
        res = [a.balances() for _ in range(12)]
        assert all(r.done for r in res), [r.errors for r in res if not r.done]
        mine = levels[creds.key]
        assert len(mine) == 12 and all(ok_ for _, ok_ in mine)
        assert max(lvl for lvl, _ in mine) <= 6.0  # the simulator's counter never passed its limit
    finally:
        assert sim.admin("/admin/limits", old["rate_limit"])[0] == 200


# ---- market status -----------------------------------------------------------------------------
def test_status_gate_table():
    def g(system, pair, side="buy", ordertype="limit", post=False):
        return status_gate(system, pair, side=side, ordertype=ordertype, post_only=post)

    assert g("online", "online") is None and g("online", "online", "sell", "market") is None
    assert "maintenance" in g("maintenance", "online", "sell")
    assert g("online", "cancel_only") and g("online", "cancel_only", "sell") and g("cancel_only", "online", "sell")
    assert "reduce_only" in g("online", "reduce_only") and g("online", "reduce_only", "sell") is None
    assert g("online", "reduce_only", "sell", "market") is None
    assert "limit_only" in g("online", "limit_only", "sell", "market") and g("online", "limit_only") is None
    assert g("online", "post_only", "buy", "limit", post=True) is None
    assert g("online", "post_only") and g("post_only", "online", "sell", "market")
    assert g("online", "delisted") and g("weird", "online")


def test_status_gating_against_the_simulator(sim, tmp_path):
    a = adapter(sim, tmp_path, status_max_age_s=0)  # reload status before every order
    rest = a.add_order("BTC/USD", "buy", "limit", D("0.001"), price=D("10000.0"), cl_ord_id="g-rest")
    assert rest.done
    sim.admin("/admin/status", {"status": "cancel_only", "pair": "XBTUSD"})
    for side in ("buy", "sell"):
        with pytest.raises(OrderRefused) as e:
            a.add_order("BTC/USD", side, "limit", D("0.001"), price=D("30000.0"), cl_ord_id="g-" + side)
        assert e.value.code == "market_status" and "cancel_only" in str(e.value)
    assert a.cancel_order(cl_ord_id="g-rest").done  # cancels still go through
    assert a.add_order("ETH/USD", "buy", "limit", D("0.01"), price=D("1000.00"), cl_ord_id="g-eth").done
    sim.admin("/admin/status", {"status": "post_only", "pair": "XBTUSD"})
    with pytest.raises(OrderRefused):
        a.add_order("BTC/USD", "buy", "market", D("0.001"), ref_price=D("16000"), cl_ord_id="g-mkt")
    with pytest.raises(OrderRefused):
        a.add_order("BTC/USD", "buy", "limit", D("0.001"), price=D("10000.0"), cl_ord_id="g-nopost")
    assert a.add_order(
        "BTC/USD", "buy", "limit", D("0.001"), price=D("10000.0"), cl_ord_id="g-post", post_only=True
    ).done
    sim.admin("/admin/status", {"status": "maintenance"})
    with pytest.raises(OrderRefused) as e:
        a.add_order("ETH/USD", "sell", "limit", D("0.01"), price=D("9000.00"), cl_ord_id="g-maint")
    assert "maintenance" in str(e.value)
    assert n_orders(sim, "g-buy") + n_orders(sim, "g-sell") + n_orders(sim, "g-mkt") + n_orders(sim, "g-maint") == 0


def test_reduce_and_limit_only_pairs_with_a_stub(tmp_path):
    answer = {"AddOrder": lambda kw: ok({"txid": ["O1"], "descr": {"order": "x"}})}
    a = stub_adapter(StubSdk(answer, pair_status="reduce_only"), tmp_path)
    with pytest.raises(OrderRefused, match="reduce_only"):
        a.add_order("BTC/USD", "buy", "limit", D("0.01"), price=D("20000.0"), cl_ord_id="r-buy")
    assert a.add_order("BTC/USD", "sell", "limit", D("0.01"), price=D("20000.0"), cl_ord_id="r-sell").done
    b = stub_adapter(StubSdk(answer, pair_status="limit_only"), tmp_path)
    with pytest.raises(OrderRefused, match="limit_only"):
        b.add_order("BTC/USD", "sell", "market", D("0.01"), ref_price=D("20000"), cl_ord_id="l-mkt")
    assert b.add_order("BTC/USD", "sell", "limit", D("0.01"), price=D("20000.0"), cl_ord_id="l-lim").done
    c = stub_adapter(StubSdk({"SystemStatus": lambda kw: {"error": ["EService:Busy"]}} | answer), tmp_path)
    with pytest.raises(OrderRefused) as e:  # status unknown: nothing is sent
        c.add_order("BTC/USD", "sell", "limit", D("0.01"), price=D("20000.0"), cl_ord_id="u-1")
    assert e.value.code == "status_unknown"


# ---- balances ----------------------------------------------------------------------------------
def test_balance_ex_parsing():
    b = parse_balance_ex(
        {
            "XXBT": {"balance": "1.5000000000", "hold_trade": "0.2500000000"},
            "ZUSD": {"balance": "1000.0000", "hold_trade": "1200.0000"},
            "XBT.F": {"balance": "0.7", "hold_trade": "0"},
            "DOT.S": {"balance": "10", "hold_trade": "0"},
            "ETH2.M": {"balance": "3", "hold_trade": "0"},
            "SOL.B": {"balance": "2", "hold_trade": "0"},
            "KFEE": {"balance": "500.00", "hold_trade": "0"},
            "SOL": {"balance": "4", "hold_trade": "0"},
        }
    )
    assert b.tradable["BTC"].available == D("1.25") and b.available("XBT") == D("1.25")
    assert b.available("USD") == 0  # hold above balance: nothing available, never negative
    assert b.available("SOL") == D("4") and b.available("ETH") == 0
    assert set(b.staked) == {"XBT.F", "DOT.S", "ETH2.M", "SOL.B"} and set(b.other) == {"KFEE"}
    assert "BTC.F" not in b.tradable and all(isinstance(x.balance, D) for x in b.tradable.values())
    from live_bridge.kraken import MalformedResult

    for bad in (
        [],
        {"XXBT": {"balance": 1.5}},
        {"XXBT": {"balance": "nan"}},
        {"XXBT": "1"},
        {"XXBT": {"balance": "4"}},
        {"XXBT": {"balance": "4", "hold_trade": None}},
    ):
        with pytest.raises(MalformedResult):
            parse_balance_ex(bad)


def test_missing_required_fields_are_malformed_never_defaults(tmp_path):
    from live_bridge.kraken import MalformedResult, parse_asset_pairs
    from live_bridge.kraken.records import parse_orders

    for drop in ("status", "costmin", "ordermin", "pair_decimals", "lot_decimals"):
        pairs = json.loads(json.dumps(PAIRS))
        del pairs["XXBTZUSD"][drop]
        with pytest.raises(MalformedResult, match=drop):
            parse_asset_pairs(pairs)
        # through the adapter: AssetPairs is UNKNOWN and no order is sent
        stub = StubSdk(
            {
                "AssetPairs": lambda kw, p=pairs: ok(p),
                "AddOrder": lambda kw: ok({"txid": ["O1"], "descr": {"order": "x"}}),
            }
        )
        a = stub_adapter(stub, tmp_path)
        assert a.asset_pairs().unknown
        with pytest.raises(OrderRefused):
            a.add_order("BTC/USD", "buy", "limit", D("0.01"), price=D("20000.0"), cl_ord_id="m-" + drop)
        assert "AddOrder" not in stub.calls
    # BalanceEx without hold_trade: UNKNOWN, not "everything available"
    b = stub_adapter(StubSdk({"BalanceEx": lambda kw: ok({"ZUSD": {"balance": "1000"}})}), tmp_path).balances()
    assert b.unknown and "hold_trade" in b.reason
    order = {
        "descr": {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "price": "20000.0"},
        "status": "closed",
        "vol": "0.01",
        "vol_exec": "0.01",
        "cost": "200",
        "fee": "0.8",
        "price": "20000.0",
    }
    assert parse_orders({"O1": order}, None, str)["O1"].vol_exec == D("0.01")
    for drop in ("status", "vol_exec", "cost", "fee", "price"):
        with pytest.raises(MalformedResult, match=drop):
            parse_orders({"O1": {k: v for k, v in order.items() if k != drop}}, None, str)


# ---- credentials -------------------------------------------------------------------------------
def test_credentials_never_leak(sim, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    good = account(sim)
    wrong = Credentials(good.key, base64.b64encode(secrets.token_bytes(64)).decode())
    texts: list[str] = []
    a = adapter(sim, tmp_path, good, timeout_s=1.0, public_timeout_s=30.0)  # only AddOrder times out
    assert a.refresh()
    fault(sim, endpoint="AddOrder", kind="timeout", seconds=3.0, apply=False)
    texts.append(repr(a.add_order("BTC/USD", "buy", "limit", D("0.001"), price=D("10000.0"), cl_ord_id="leak-1")))
    try:
        a.add_order("BTC/USD", "buy", "limit", D("0.00001"), price=D("10000.0"), cl_ord_id="leak-2")
    except OrderRefused as e:
        texts.append(str(e))
    bad = adapter(sim, tmp_path / "b", wrong)
    with pytest.raises(KrakenHalt) as e:
        bad.balances()
    assert e.value.code is Halt.CREDENTIALS
    texts += [str(e.value), repr(e.value), repr(a), repr(bad), repr(good), str(good), repr(a.budget)]
    for env in (
        {},
        {"KRAKEN_API_KEY": good.key},
        {"KRAKEN_API_KEY": good.key, "KRAKEN_API_SECRET": "!!not-b64!!"},
        {"KRAKEN_API_KEY": "has space " + good.key, "KRAKEN_API_SECRET": good.secret},
    ):
        with pytest.raises(CredentialsError) as ce:
            KrakenAdapter.from_env(env=env, state_dir=tmp_path / "e", url=sim.url)
        texts.append(str(ce.value))
    assert (
        KrakenAdapter.from_env(
            env={"KRAKEN_API_KEY": good.key, "KRAKEN_API_SECRET": good.secret}, state_dir=tmp_path / "e", url=sim.url
        )
        .balances()
        .done
    )
    with pytest.raises(TypeError):
        pickle.dumps(good)
    files = [p.read_bytes().decode("latin-1") + p.name for p in tmp_path.rglob("*") if p.is_file()]
    blob = "\n".join(texts + files + [caplog.text] + [r.getMessage() for r in caplog.records])
    assert "kraken AddOrder -> unknown" in blob and "EAPI:Invalid signature" in blob  # the log was captured
    for s in (good.key, good.secret, wrong.secret):
        assert s not in blob
    assert os.environ.get("KRAKEN_API_SECRET", "\0") not in blob
