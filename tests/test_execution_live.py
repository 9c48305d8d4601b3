"""Live execution (live_bridge.execution) through the real adapter and python-kraken-sdk against the
simulator over HTTP, into a ledger on a tmp SQLite file.

The simulator replays a flat synthetic BTC/USD tape (close 20 000, range +-1 %, volume 0.05 BTC per
bar, so the 10 % participation cap fills a resting limit at most 0.005 BTC per bar): every fill
below is exact and known in advance. Time is a fake clock shared by the adapter (AddOrder deadline)
and the executor (timeouts); a test can make a sleep advance the simulator by one bar (the limit
then trades through). Faults come from the simulator's fault injection (timeouts that did or did
not place the order, Busy answers) or, for a crash, from a ledger that dies at a named point.
"""

from __future__ import annotations

import base64
import secrets
import time
from decimal import Decimal as D
from pathlib import Path

import numpy as np
import pytest

from live_bridge.execution import (
    LIMIT_FIRST,
    MARKET,
    ExecConfig,
    Executor,
    OrderIntent,
    cl_ord_id_for,
    resume,
)
from live_bridge.kraken import CL_ORD_ID_RE, Credentials, KrakenAdapter, RateTier
from live_bridge.ledger import Kind, Ledger
from live_bridge.simulator.testing import T0, bars_panel, start_sim

FREE = RateTier(rest_max=10_000, rest_decay_per_s=1000, order_max=10_000, order_decay_per_s=1000)
PX = 20000.0
N_BARS = 400
HOUR = T0 // 3600 + 5


@pytest.fixture(scope="module")
def sim():
    panel = bars_panel([(PX, PX * 1.01, PX * 0.99, PX, 0.05)] * N_BARS)
    s = start_sim(panel, start=T0 + 5 * 3600)
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _clean(request):
    yield
    if "sim" in request.fixturenames:
        request.getfixturevalue("sim").admin("/admin/faults", method="DELETE")


class FakeTime:
    """Wall clock for the adapter and the executor: starts at the real time, moves only on sleep;
    ``on_sleep`` runs at each sleep (e.g. the simulator advances a bar)."""

    def __init__(self) -> None:
        self.t = time.time()
        self.on_sleep = None
        self.slept = 0.0

    def time(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += max(0.0, s)
        self.slept += max(0.0, s)
        if self.on_sleep is not None:
            self.on_sleep(s)


class Rig:
    def __init__(self, sim, tmp_path: Path, balances=None, **cfg) -> None:
        self.sim = sim
        key = "kqx" + secrets.token_hex(20)
        secret = base64.b64encode(secrets.token_bytes(64)).decode()
        self.name = key[:12]
        sim.ex.add_account(self.name, key, secret, {k: D(v) for k, v in (balances or {"USD": "10000"}).items()})
        self.creds = Credentials(key, secret)
        self.tmp = tmp_path
        self.ft = FakeTime()
        sim.ex.wall = self.ft.time  # the simulator checks AddOrder deadlines against the same wall clock
        self.ledger = Ledger.open(tmp_path / "ledger.sqlite")
        self.cfg = ExecConfig(
            **(
                {
                    "limit_timeout_s": 60.0,
                    "poll_interval_s": 10.0,
                    "lookup_attempts": 1,
                    "lookup_interval_s": 0.1,
                    "lookup_margin_s": 1.0,
                }
                | cfg
            )
        )
        self.adapter = self.new_adapter()
        self.ex = Executor(self.ledger, self.adapter, self.cfg)

    def new_adapter(self, **kw) -> KrakenAdapter:
        return KrakenAdapter(
            self.creds,
            state_dir=self.tmp / "state",
            url=self.sim.url,
            tier=FREE,
            clock=self.ft.time,
            sleep=self.ft.sleep,
            deadline_s=5.0,
            **kw,
        )

    def restart(self, **kw) -> Executor:
        """A fresh process: new adapter (same key and nonce file), new ledger handle, new executor."""
        self.ledger = Ledger.open(self.tmp / "ledger.sqlite")
        self.adapter = self.new_adapter(**kw)
        self.ex = Executor(self.ledger, self.adapter, self.cfg)
        return self.ex

    def orders(self, cid: str) -> list:
        return [o for o in self.sim.ex.orders.values() if o.cl_ord_id == cid]

    def all_orders(self, it: OrderIntent) -> list:
        """The intent's order and its market fallback's, in placement order."""
        ids = {it.cl_ord_id, fallback_id(it)}
        return sorted((o for o in self.sim.ex.orders.values() if o.cl_ord_id in ids), key=lambda o: o.seqno)

    def all_fills(self, it: OrderIntent) -> list:
        return self.ledger_fills(it.cl_ord_id) + self.ledger_fills(fallback_id(it))

    def bar_on_sleep(self, times: int = 1) -> None:
        left = [times]

        def hook(_s):
            if left[0] > 0:
                left[0] -= 1
                self.sim.ex.advance(seconds=3600)

        self.ft.on_sleep = hook

    def ledger_fills(self, cid: str):
        return [e for e in self.ledger.order_entries(cid) if e.kind == Kind.FILL.value]

    def final(self, cid: str):
        return [e for e in self.ledger.order_entries(cid) if e.kind == Kind.ORDER_FINAL.value]


def fallback_id(it: OrderIntent) -> str:
    return cl_ord_id_for(it.hour, it.pair, it.side, it.reason, it.n, "fallback")


def fault(sim, **f) -> None:
    code, body = sim.admin("/admin/faults", f)
    assert code == 200, body


_n = [0]


def intent(kind=LIMIT_FIRST, qty="0.004", price="19900", side="buy", reason="ENTRY") -> OrderIntent:
    _n[0] += 1  # a distinct hour per intent: one module-wide simulator, ids never collide
    return OrderIntent(
        HOUR + _n[0],
        "BTC/USD",
        side,
        D(qty),
        kind,
        D(price) if kind == LIMIT_FIRST else None,
        reason,
        ref_price=D("20000"),
    )


# ---- ids and the engine mapping ---------------------------------------------------------------
def test_cl_ord_id_is_deterministic_and_kraken_shaped():
    a = cl_ord_id_for(490000, "XBTUSD", "buy", "ENTRY")
    assert a == cl_ord_id_for(490000, "BTC/USD", "buy", "ENTRY") and CL_ORD_ID_RE.match(a)
    assert (
        len(
            {
                a,
                cl_ord_id_for(490001, "BTC/USD", "buy", "ENTRY"),
                cl_ord_id_for(490000, "ETH/USD", "buy", "ENTRY"),
                cl_ord_id_for(490000, "BTC/USD", "sell", "ENTRY"),
                cl_ord_id_for(490000, "BTC/USD", "buy", "EXIT_STOP"),
            }
        )
        == 5
    )


def test_intent_from_a_pending_engine_order():
    from engine.risk.enums import OrderKind, Reason, order_dt

    o = np.zeros(1, dtype=order_dt)[0]
    o["active"], o["side"], o["kind"], o["reason"] = 1, 1, int(OrderKind.LIMIT_FIRST), int(Reason.ENTRY)
    o["qty"], o["limit_price"], o["ref_price"] = 0.0123, 19950.5, 20000.0
    it = OrderIntent.from_pending(o, "BTC/USD", 470000)
    assert (it.side, it.kind, it.reason, it.qty, it.limit_price, it.ref_price) == (
        "buy",
        LIMIT_FIRST,
        "ENTRY",
        D("0.0123"),
        D("19950.5"),
        D("20000.0"),
    )
    o["side"], o["kind"], o["reason"], o["limit_price"] = -1, int(OrderKind.MARKET), int(Reason.EXIT_STOP), np.nan
    it = OrderIntent.from_pending(o, "XBTUSD", 470000)
    assert (it.side, it.kind, it.reason, it.limit_price, it.pair) == ("sell", MARKET, "EXIT_STOP", None, "BTC/USD")


# ---- the normal paths -------------------------------------------------------------------------
def test_limit_fills_at_its_price_with_krakens_fee(sim, tmp_path):
    r = Rig(sim, tmp_path)
    r.bar_on_sleep(1)  # the limit rests one poll, then the next bar trades through 19 900
    it = intent(qty="0.004", price="19900")
    res = r.ex.execute(it)
    assert res.status == "filled" and res.filled_qty == D("0.004")
    (f,) = res.fills
    assert (f.price, f.vol, f.cost, f.fee, f.maker) == (D("19900.0"), D("0.004"), D("79.6"), D("0.3184"), True)
    os_ = r.orders(it.cl_ord_id)
    assert len(os_) == 1 and os_[0].ordertype == "limit"
    assert [e.trade_id for e in r.ledger_fills(it.cl_ord_id)] == [f.trade_id]
    kinds = [e.kind for e in r.ledger.order_entries(it.cl_ord_id)]
    assert kinds[:3] == ["order_intent", "order_request", "order_response"] and kinds[-1] == "order_final"
    assert r.final(it.cl_ord_id)[0].code == "filled" and r.final(it.cl_ord_id)[0].qty == D("0.004")
    assert r.ledger.verify().ok
    # executing the same intent again (a restarted daemon deciding the same order) sends nothing
    again = r.restart().execute(it)
    assert again.status == "filled" and again.fills == () and r.adapter.sent["AddOrder"] == 0
    assert len(r.orders(it.cl_ord_id)) == 1


def test_partial_limit_fill_then_market_for_the_remainder_only(sim, tmp_path):
    r = Rig(sim, tmp_path, limit_timeout_s=15.0)
    r.bar_on_sleep(1)  # one bar: 0.005 of 0.012 fills at the limit (participation cap)
    it = intent(qty="0.012", price="19900")
    res = r.ex.execute(it)
    assert res.status == "filled" and res.filled_qty == D("0.012")
    lim, mkt = r.all_orders(it)
    assert (lim.ordertype, lim.status, lim.vol_exec, lim.cl_ord_id) == ("limit", "canceled", D("0.005"), it.cl_ord_id)
    assert (mkt.ordertype, mkt.status, mkt.vol, mkt.vol_exec) == ("market", "closed", D("0.007"), D("0.007"))
    assert mkt.cl_ord_id == fallback_id(it) != it.cl_ord_id
    assert sorted(f.vol for f in res.fills) == [D("0.005"), D("0.007")]
    assert sum(e.qty for e in r.all_fills(it)) == D("0.012")
    cancels = [e.code for e in r.ledger.order_entries(it.cl_ord_id) if e.kind == Kind.CANCEL.value]
    assert cancels == ["requested", "done"]
    finals = [(e.code, e.qty) for cid in (it.cl_ord_id, fallback_id(it)) for e in r.final(cid)]
    assert finals == [("cancelled", D("0.005")), ("filled", D("0.007"))]
    fb_intent = r.ledger.order_entries(fallback_id(it))[0]
    assert fb_intent.payload["parent"] == it.cl_ord_id and fb_intent.qty == D("0.007")
    # executing it again after a restart: everything is final, nothing is sent
    again = r.restart().execute(it)
    assert (again.status, again.filled_qty, again.fills) == ("filled", D("0.012"), ())
    assert r.adapter.sent["AddOrder"] == 0 and len(r.all_orders(it)) == 2


def test_fill_during_the_cancel_is_caught_by_the_query_after_it(sim, tmp_path):
    """The bar that trades through the limit closes while the cancel is in flight: the cancel
    reports nothing about it; only the query with trades afterwards sees the 0.005 filled, and the
    market fallback is sent for the remaining 0.003 only."""
    r = Rig(sim, tmp_path, limit_timeout_s=0.0)
    cancel = r.adapter.cancel_order

    def cancel_while_a_bar_closes(**kw):
        sim.ex.advance(seconds=3600)
        return cancel(**kw)

    r.adapter.cancel_order = cancel_while_a_bar_closes
    it = intent(qty="0.008", price="19900")
    res = r.ex.execute(it)
    assert res.status == "filled" and res.filled_qty == D("0.008")
    vols = [(o.ordertype, o.vol_exec) for o in r.all_orders(it)]
    assert vols == [("limit", D("0.005")), ("market", D("0.003"))]  # not 0.008 at market: no double buy
    assert len(r.all_fills(it)) == 2


def test_fully_filled_during_the_cancel_sends_no_market(sim, tmp_path):
    r = Rig(sim, tmp_path, limit_timeout_s=0.0)
    cancel = r.adapter.cancel_order

    def cancel_while_a_bar_closes(**kw):
        sim.ex.advance(seconds=3600)
        return cancel(**kw)

    r.adapter.cancel_order = cancel_while_a_bar_closes
    it = intent(qty="0.003", price="19900")
    res = r.ex.execute(it)
    assert res.status == "filled" and [o.ordertype for o in r.all_orders(it)] == ["limit"]
    assert [e.code for e in r.ledger.order_entries(it.cl_ord_id) if e.kind == Kind.CANCEL.value] == [
        "requested",
        "rejected",
    ]  # EOrder:Unknown order: it had filled


# ---- unknown outcomes -------------------------------------------------------------------------
def test_unknown_add_order_that_was_placed_is_found_not_resent(sim, tmp_path):
    r = Rig(sim, tmp_path)
    r.restart(timeout_s=0.4)
    fault(sim, endpoint="AddOrder", kind="timeout", seconds=1.2, apply=True)  # placed, answer lost
    it = intent(kind=MARKET, qty="0.004")
    res = r.ex.execute(it)
    assert res.status == "filled" and res.filled_qty == D("0.004") and len(res.fills) == 1
    assert r.adapter.sent["AddOrder"] == 1 and len(r.orders(it.cl_ord_id)) == 1
    resp = [e for e in r.ledger.order_entries(it.cl_ord_id) if e.kind == Kind.ORDER_RESPONSE.value]
    assert [e.code for e in resp] == ["unknown"]


def test_unknown_add_order_that_was_not_placed_expires_without_resend(sim, tmp_path):
    r = Rig(sim, tmp_path)
    r.restart(timeout_s=0.4)
    fault(sim, endpoint="AddOrder", kind="timeout", seconds=1.2, apply=False)
    it = intent(kind=MARKET, qty="0.004")
    t0 = r.ft.time()
    res = r.ex.execute(it)
    assert res.status == "expired" and res.filled_qty == 0 and res.fills == ()
    assert r.ft.time() >= t0 + 5.0  # "not placed" only concluded after the AddOrder deadline
    assert r.adapter.sent["AddOrder"] == 1 and r.orders(it.cl_ord_id) == []
    assert r.final(it.cl_ord_id)[0].code == "expired"


def test_unknown_lookup_leaves_the_intent_unresolved_and_sends_nothing_more(sim, tmp_path):
    r = Rig(sim, tmp_path)
    fault(sim, endpoint="AddOrder", kind="error", message="EService:Busy")
    fault(sim, endpoint="OpenOrders", kind="error", message="EService:Unavailable", count=1000)
    it = intent(kind=MARKET, qty="0.004")
    res = r.ex.execute(it)
    assert res.unresolved and r.final(it.cl_ord_id) == []
    assert r.adapter.sent["AddOrder"] == 1 and r.orders(it.cl_ord_id) == []
    assert [o.cl_ord_id for o in r.ledger.open_intents()] == [it.cl_ord_id]
    again = r.ex.execute(it)  # the daemon tries the same intent again: lookup only, never a resend
    assert again.unresolved and r.adapter.sent["AddOrder"] == 1
    sim.admin("/admin/faults", method="DELETE")
    r.restart()
    rep = resume(r.ledger, r.adapter, r.cfg)
    assert [x.status for x in rep.results] == ["expired"] and r.adapter.sent["AddOrder"] == 0
    assert r.orders(it.cl_ord_id) == []


def test_definitive_rejection_is_final_without_a_lookup(sim, tmp_path):
    r = Rig(sim, tmp_path)
    fault(sim, endpoint="AddOrder", kind="error", message="EOrder:Rate limit exceeded")
    it = intent(kind=MARKET)
    res = r.ex.execute(it)
    assert res.status == "rejected" and "EOrder:Rate limit exceeded" in res.reason
    assert r.adapter.sent["AddOrder"] == 1 and r.adapter.sent["OpenOrders"] == 0 and r.orders(it.cl_ord_id) == []
    assert r.ex.execute(it).status == "rejected" and r.adapter.sent["AddOrder"] == 1  # final: not retried


# ---- refusals: never sent ---------------------------------------------------------------------
def test_buy_beyond_the_available_balance_is_not_sent(sim, tmp_path):
    r = Rig(sim, tmp_path, balances={"USD": "79.91"})  # 0.004 x 19 900 = 79.6, plus 0.4 %: 79.9184
    it = intent(qty="0.004", price="19900")
    res = r.ex.execute(it)
    assert res.status == "not_sent" and res.reason.startswith("insufficient_available")
    assert r.adapter.sent["AddOrder"] == 0 and r.orders(it.cl_ord_id) == []
    (fin,) = r.final(it.cl_ord_id)
    assert (fin.code, fin.payload["refused"]) == ("not_sent", "insufficient_available")


def test_hold_of_an_open_order_counts_against_the_available_balance(sim, tmp_path):
    r = Rig(sim, tmp_path, balances={"USD": "200"}, limit_timeout_s=0.0, market_fallback=False)
    r.adapter.refresh()
    r.adapter.add_order("BTC/USD", "buy", "limit", D("0.006"), price=D("19000.0"), cl_ord_id="other-1")
    it = intent(qty="0.004", price="19900")  # 79.92 needed; 200 - 114.456 held = 85.544 available: ok
    assert r.ex.execute(it).status == "cancelled"
    it2 = intent(qty="0.0043", price="19900")  # 85.91 needed > 85.544
    assert r.ex.execute(it2).reason.startswith("insufficient_available")


def test_below_ordermin_is_not_sent(sim, tmp_path):
    r = Rig(sim, tmp_path)
    it = intent(qty="0.00005", price="19900")
    res = r.ex.execute(it)
    assert res.status == "not_sent" and res.reason.startswith("below_ordermin")
    assert r.adapter.sent["AddOrder"] == 0 and r.final(it.cl_ord_id)[0].payload["refused"] == "below_ordermin"


def test_cancel_only_market_is_not_sent(sim, tmp_path):
    r = Rig(sim, tmp_path)
    sim.admin("/admin/status", {"status": "cancel_only", "pair": "XBTUSD"})
    try:
        res = r.ex.execute(intent(kind=MARKET))
    finally:
        sim.admin("/admin/status", {"status": "online", "pair": "XBTUSD"})
    assert res.status == "not_sent" and res.reason.startswith("market_status")
    assert r.adapter.sent["AddOrder"] == 0


# ---- crashes ----------------------------------------------------------------------------------
class Crash(Exception):
    pass


def die_before(ledger: Ledger, kind: Kind) -> None:
    """The process dies when it is about to ledger a record of ``kind`` (nothing of it written)."""
    append = ledger.append

    def dying(*records):
        if any(x.kind == kind for x in records):
            raise Crash(kind.value)
        return append(*records)

    ledger.append = dying


def test_crash_after_the_intent_before_the_request(sim, tmp_path):
    r = Rig(sim, tmp_path)
    die_before(r.ledger, Kind.ORDER_REQUEST)
    it = intent(kind=MARKET)
    with pytest.raises(Crash):
        r.ex.execute(it)
    assert r.orders(it.cl_ord_id) == [] and len(r.ledger.open_intents()) == 1
    # restart within the hour: pending, then executed once
    r.restart()
    rep = resume(r.ledger, r.adapter, r.cfg, current_hour=it.hour)
    assert rep.pending == (it,) and r.adapter.sent["AddOrder"] == 0
    res = r.ex.execute(it)
    assert res.status == "filled" and len(r.orders(it.cl_ord_id)) == 1 and r.adapter.sent["AddOrder"] == 1
    # an intent left from an earlier hour is closed as never sent
    it2 = intent(kind=MARKET)
    die_before(r.ledger, Kind.ORDER_REQUEST)
    with pytest.raises(Crash):
        r.ex.execute(it2)
    r.restart()
    rep = resume(r.ledger, r.adapter, r.cfg, current_hour=it2.hour + 1)
    assert [x.status for x in rep.results] == ["not_sent"] and r.orders(it2.cl_ord_id) == []


def test_crash_after_the_request_before_the_response(sim, tmp_path):
    r = Rig(sim, tmp_path)
    die_before(r.ledger, Kind.ORDER_RESPONSE)
    it = intent(kind=MARKET, qty="0.004")
    with pytest.raises(Crash):
        r.ex.execute(it)
    assert len(r.orders(it.cl_ord_id)) == 1  # it reached the exchange and filled
    r.restart()
    rep = resume(r.ledger, r.adapter, r.cfg, current_hour=it.hour)
    assert [x.status for x in rep.results] == ["filled"] and len(rep.fills) == 1
    assert r.adapter.sent["AddOrder"] == 0 and len(r.orders(it.cl_ord_id)) == 1
    assert len(r.ledger_fills(it.cl_ord_id)) == 1
    # the daemon decides the same order again after the restart: nothing is sent
    assert r.ex.execute(it).status == "filled" and r.adapter.sent["AddOrder"] == 0
    assert resume(r.ledger, r.adapter, r.cfg).results == ()


def test_crash_before_a_fill_is_ledgered_loses_no_fill(sim, tmp_path):
    r = Rig(sim, tmp_path)
    r.bar_on_sleep(1)
    die_before(r.ledger, Kind.FILL)
    it = intent(qty="0.004", price="19900")
    with pytest.raises(Crash):
        r.ex.execute(it)
    r.restart()
    rep = resume(r.ledger, r.adapter, r.cfg)
    assert [x.status for x in rep.results] == ["filled"] and [f.vol for f in rep.fills] == [D("0.004")]
    assert r.adapter.sent["AddOrder"] == 0 and len(r.orders(it.cl_ord_id)) == 1


def test_crash_while_a_limit_rests_cancels_it_and_keeps_its_fills(sim, tmp_path):
    r = Rig(sim, tmp_path)
    r.bar_on_sleep(1)  # 0.005 of 0.009 fills, then the process dies before the cancel
    die_before(r.ledger, Kind.CANCEL)
    it = intent(qty="0.009", price="19900")
    with pytest.raises(Crash):
        r.ex.execute(it)
    r.restart()
    rep = resume(r.ledger, r.adapter, r.cfg)
    (x,) = rep.results
    assert x.status == "cancelled" and x.filled_qty == D("0.005")
    (o,) = r.orders(it.cl_ord_id)
    assert o.status == "canceled" and r.adapter.sent["AddOrder"] == 0
    assert sum(e.qty for e in r.ledger_fills(it.cl_ord_id)) == D("0.005")
    # the daemon executes the hour's intent again: only its market fallback goes out, once
    res = r.ex.execute(it)
    assert (res.status, res.filled_qty, [f.vol for f in res.fills]) == ("filled", D("0.009"), [D("0.004")])
    assert r.ex.execute(it).fills == () and r.adapter.sent["AddOrder"] == 1
    assert [(o.ordertype, o.vol_exec) for o in r.all_orders(it)] == [("limit", D("0.005")), ("market", D("0.004"))]
