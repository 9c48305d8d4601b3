"""Reconciliation (live_bridge.reconcile) against the simulator over HTTP through the adapter, with
the ledger on a tmp SQLite file: clean after a normal run, external orders/fills/balance changes
reported, a lost fill recovered, an unexplained mismatch asking for the kill switch."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from live_bridge.execution import MARKET
from live_bridge.kraken import KrakenAdapter
from live_bridge.ledger import Kind
from live_bridge.ledger import records as rec
from live_bridge.reconcile import reconcile
from live_bridge.simulator.testing import T0, bars_panel, start_sim
from tests.test_execution_live import FREE, PX, Crash, Rig, die_before, fault, intent

N_BARS = 400


@pytest.fixture(scope="module")
def sim():
    s = start_sim(bars_panel([(PX, PX * 1.01, PX * 0.99, PX, 0.05)] * N_BARS), start=T0 + 5 * 3600)
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _clean(request):
    yield
    if "sim" in request.fixturenames:
        request.getfixturevalue("sim").admin("/admin/faults", method="DELETE")


def outsider(r: Rig) -> KrakenAdapter:
    """Someone else trading on the same account (the web UI, another bot): same key, no ledger."""
    return KrakenAdapter(r.creds, state_dir=r.tmp / "state", url=r.sim.url, tier=FREE)


def recon(r: Rig, **kw):
    return reconcile(r.ledger, r.adapter, hour=int(r.sim.ex.now() // 3600), **kw)


def test_clean_after_a_normal_run(sim, tmp_path):
    r = Rig(sim, tmp_path, balances={"USD": "10000", "ETH": "2"})
    first = recon(r)
    assert first.ok and first.baseline and first.balances == {"USD": D("10000"), "ETH": D("2")}
    r.bar_on_sleep(1)
    assert r.ex.execute(intent(qty="0.004", price="19900")).status == "filled"
    assert r.ex.execute(intent(kind=MARKET, qty="0.003")).status == "filled"
    assert r.ex.execute(intent(kind=MARKET, qty="0.002", side="sell", reason="EXIT_SIGNAL")).status == "filled"
    res = recon(r)
    assert res.ok and not res.latch and res.problems == ()
    assert res.external_fills == () and res.external_orders == () and res.recovered_fills == ()
    assert res.external_balance_changes == {} and res.expected == res.balances
    assert res.positions == {"BTC": D("0.005")} and res.balances["BTC"] == D("0.005")
    (last,) = r.ledger.entries(kind=Kind.RECONCILIATION)[-1:]
    assert last.code == "ok" and D(last.payload["balances"]["BTC"]) == D("0.005")
    assert recon(r).ok and r.ledger.verify().ok  # and again, from the new starting point


def test_external_order_fill_and_balance_change_are_recorded_and_reported(sim, tmp_path):
    r = Rig(sim, tmp_path)
    assert recon(r).baseline
    r.ex.execute(intent(kind=MARKET, qty="0.004"))
    o = outsider(r)
    o.refresh()
    ext_limit = o.add_order("BTC/USD", "buy", "limit", D("0.01"), price=D("15000.0"), cl_ord_id="by-hand-1")
    ext_mkt = o.add_order("BTC/USD", "buy", "market", D("0.001"), ref_price=D("20000"), cl_ord_id="by-hand-2")
    assert ext_limit.done and ext_mkt.done
    code, _ = sim.admin("/admin/balance", {"account": r.name, "asset": "USD", "delta": "500"})
    assert code == 200
    res = recon(r)
    assert res.ok and not res.latch  # reported, not a reason to stop
    assert [f.ordertxid for f in res.external_fills] == list(ext_mkt.result.txids)
    assert [x.txid for x in res.external_orders] == list(ext_limit.result.txids)
    assert res.external_balance_changes == {"USD": D("500")}
    assert res.positions == {"BTC": D("0.004")} and res.balances["BTC"] == D("0.005")
    ext_rows = [e for e in r.ledger.entries(kind=Kind.FILL) if e.code == "external"]
    assert [e.trade_id for e in ext_rows] == [res.external_fills[0].trade_id]
    events = [e.code for e in r.ledger.entries(kind=Kind.EVENT)]
    assert events.count("external_order") == 1 and events.count("external_balance_change") == 1
    again = recon(r)  # the same external activity is not recorded twice, the deposit is the new base
    assert again.ok and again.external_fills == () and again.external_balance_changes == {}
    assert [e.code for e in r.ledger.entries(kind=Kind.EVENT)].count("external_order") == 1


def test_unexplained_shortfall_asks_for_the_kill_switch(sim, tmp_path):
    r = Rig(sim, tmp_path)
    recon(r)
    assert r.ex.execute(intent(kind=MARKET, qty="0.004")).status == "filled"
    code, _ = sim.admin("/admin/balance", {"account": r.name, "asset": "BTC", "delta": "-0.001"})
    assert code == 200
    res = recon(r)
    assert res.status == "mismatch" and res.latch
    assert res.reason.startswith("latch kill switch (API/data input): BTC: the exchange holds 0.003")
    assert r.ledger.entries(kind=Kind.RECONCILIATION)[-1].code == "mismatch"


def test_a_ledgered_fill_the_exchange_does_not_show_asks_for_the_kill_switch(sim, tmp_path):
    r = Rig(sim, tmp_path)
    recon(r)
    it = intent(kind=MARKET, qty="0.004")
    h = it.hour
    r.ledger.append(
        rec.order_intent(h, it.cl_ord_id, "BTC/USD", "buy", D("0.004"), None, "market"),
        rec.fill(
            h,
            "TPHANTOM-1",
            "BTC/USD",
            "buy",
            D("0.004"),
            D("20000"),
            D("0.32"),
            cl_ord_id=it.cl_ord_id,
            cost=D("80"),
            payload={"time": D(repr(sim.ex.now()))},
        ),
    )
    res = recon(r)
    assert res.latch and "fill TPHANTOM-1" in res.reason


@pytest.mark.parametrize("dies_before", [Kind.FILL, Kind.ORDER_RESPONSE])  # txid ledgered, or only its cl_ord_id
def test_a_fill_execution_lost_is_recovered_as_ours(sim, tmp_path, dies_before):
    r = Rig(sim, tmp_path)
    recon(r)
    die_before(r.ledger, dies_before)
    it = intent(kind=MARKET, qty="0.004")
    with pytest.raises(Crash):
        r.ex.execute(it)
    r.restart()
    res = recon(r)
    assert res.ok and [(c, f.vol) for c, f in res.recovered_fills] == [(it.cl_ord_id, D("0.004"))]
    assert res.positions == {"BTC": D("0.004")} and res.external_fills == ()
    (row,) = [e for e in r.ledger.entries(kind=Kind.FILL)]
    assert (row.code, row.cl_ord_id) == ("own", it.cl_ord_id)


def test_unanswered_call_is_incomplete_not_a_verdict(sim, tmp_path):
    r = Rig(sim, tmp_path)
    recon(r)
    fault(sim, endpoint="OpenOrders", kind="error", message="EService:Busy")
    res = recon(r)
    assert res.status == "incomplete" and not res.latch
    assert r.ledger.entries(kind=Kind.EVENT)[-1].code == "reconcile_incomplete"
