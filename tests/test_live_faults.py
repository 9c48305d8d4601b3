"""The daemon under exchange and market faults, end to end: ``Daemon.run_once`` against the simulator
replaying Kraken's real BTC/USD and ETH/USD bars (tests/live_harness.py), a tiny real model, a
paper ledger on SQLite.

Without faults this window enters BTC/USD at the close of 2022-06-02 05:00 (``ENTRY_HOUR``, P0+29h:
a limit buy of 0.08836964 filled in the next minutes), so each test starts its portfolio one or two
bars before it (the store holds the bars up to the start; the first run is the newest closed bar)
and plants one fault around that bar.

Every test ends with the books checked against the exchange (:func:`check_books`): no
``cl_ord_id`` on more than one simulator order (nothing sent twice), every simulator trade of the
account is a ledger fill row with the same amounts, and the risk machine's cash equals the
simulator's USD to the cent (its positions the base assets), i.e. no fill lost or booked twice.
"""

from __future__ import annotations

import time
from collections import Counter
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.pairs import normalize_asset
from engine.risk.enums import KillReason
from live_bridge.daemon import DaemonStopped
from live_bridge.execution import cl_ord_id_for
from live_bridge.ledger import Kind
from live_bridge.ledger import records as rec
from live_bridge.simulator.testing import KEY, start_sim
from tests.live_harness import (
    P0,
    SETTLE,
    BundleModel,
    H,
    kraken_store,
    make_daemon,
    shared_frames,
    sim_panel,
    tiny_model_dir,
)

HOURS_AFTER = 48  # the simulator's bars reach P0 + 48 h
ENTRY_HOUR = P0 // H + 29  # 2022-06-02 05:00 UTC: the bar at whose close BTC/USD is bought
ENTRY_CID = cl_ord_id_for(ENTRY_HOUR, "BTC/USD", "buy", "ENTRY")


@pytest.fixture(scope="module")
def model():
    return BundleModel(tiny_model_dir())


@pytest.fixture(scope="module")
def frames():
    return shared_frames(HOURS_AFTER)


@pytest.fixture(scope="module")
def panel():
    return sim_panel(HOURS_AFTER)


class Rig:
    """A simulator started at the close of the bar before ``first`` (+ settle), a store holding the
    bars up to that one, and a started paper daemon. ``run(hour)`` moves the simulator past the
    close of ``hour`` and runs the due hours."""

    def __init__(self, tmp: Path, model, frames, panel, first: int, **over: Any) -> None:
        self.tmp, self.model, self.over = tmp, model, over
        kraken_store(tmp / "m.duckdb", frames, upto=(first - 1) * H)
        self.sim = start_sim(panel, start=float(first * H + SETTLE))
        self.acct = self.sim.ex.accounts[KEY]
        self.daemon = make_daemon(self.sim.url, tmp, model, **over)
        self.start = self.daemon.start()

    def run(self, hour: int) -> list:
        self.sim.ex.advance(to=float((hour + 1) * H + SETTLE))
        return self.daemon.run_once()

    def restart(self):
        self.daemon.close()
        self.daemon = make_daemon(self.sim.url, self.tmp, self.model, **self.over)
        self.start = self.daemon.start()
        return self.start

    def fault(self, **f: Any) -> None:
        code, body = self.sim.admin("/admin/faults", f)
        assert code == 200, body

    @property
    def ledger(self):
        return self.daemon.ledger

    @property
    def machine(self):
        return self.daemon.cycle.machine

    def rows(self, hour: int, kind: Kind) -> list:
        return self.ledger.entries(hour=hour, kind=kind)

    def risk_inputs(self, hour: int) -> dict:
        (e,) = [x for x in self.rows(hour, Kind.EVENT) if x.code == "risk_inputs"]
        return e.payload

    def decisions(self, hour: int) -> list[str]:
        return [f"{e.code}|{e.pair or ''}" for e in self.rows(hour, Kind.DECISION)]

    def state_row(self, hour: int):
        (e,) = [x for x in self.rows(hour, Kind.DECISION) if x.code.startswith("STATE:")]
        return e

    def bars_valid(self, hour: int) -> dict[str, bool]:
        return {e.pair: bool(e.payload["bars"][0]["valid"]) for e in self.rows(hour, Kind.BARS)}

    def our_orders(self, cid: str) -> list:
        return [o for o in self.sim.ex.orders.values() if o.cl_ord_id == cid]

    def close(self) -> None:
        self.daemon.close()
        self.sim.stop()


@pytest.fixture
def rig(tmp_path, model, frames, panel):
    made: list[Rig] = []

    def make(first: int, *, sim_panel=None, store_frames=None, **over: Any) -> Rig:
        r = Rig(tmp_path, model, store_frames or frames, sim_panel or panel, first, **over)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def check_books(r: Rig, external_usd: D = D(0), external_base: dict[str, D] | None = None) -> None:
    """0 duplicate orders, 0 lost fills: the simulator's books against the ledger and the machine.
    ``external_*``: what changed the account outside the daemon (deposits, external trades)."""
    ex = r.sim.ex
    per_cid = Counter(o.cl_ord_id for o in ex.orders.values() if o.cl_ord_id)
    assert not [c for c, n in per_cid.items() if n > 1], f"orders sent twice: {per_cid}"
    fills = {e.trade_id: e for e in r.ledger.entries(kind=Kind.FILL)}
    trades = [t for t in ex.trades.values() if t.account == r.acct.key]
    for t in trades:
        row = fills.get(t.txid)
        assert row is not None, f"simulator trade {t.txid} ({t.side} {t.vol} {t.pair}) is not in the ledger"
        assert (row.side, row.qty, row.price, row.fee) == (t.side, t.vol, t.price, t.fee)
    assert len(fills) == len(trades)
    m = r.machine
    usd = r.acct.balances.get("USD", D(0)) - external_usd
    assert abs(D(repr(float(m.state[0]["cash"]))) - usd) < D("0.005"), (float(m.state[0]["cash"]), usd)
    ext = external_base or {}
    for j, pair in enumerate(r.daemon.cycle.pairs):
        code = normalize_asset(pair.split("/")[0])
        held = r.acct.balances.get(code, D(0)) - ext.get(code, D(0))
        assert abs(D(repr(float(m.positions[j]["qty"]))) - held) <= D("1e-8"), (pair, m.positions[j]["qty"], held)


# ---- 1. API failures in the data step -----------------------------------------------------------
def test_ohlc_busy_for_the_whole_data_step_latches_api_kill_until_reactivated(rig):
    h = ENTRY_HOUR
    r = rig(h - 1, cycle={"max_api_failures": 2})
    (rep,) = r.run(h - 1)
    assert rep.state == "ACTIVE" and r.bars_valid(h - 1) == {"BTC/USD": True, "ETH/USD": True}
    # every OHLC call of hour h's data step fails (Busy, then Unavailable); the window is the
    # cycle's moment in simulated time, so the next hour's data step is clean again
    win = {"endpoint": "OHLC", "from_ts": (h + 1) * H, "until_ts": (h + 1) * H + SETTLE + 1}
    r.fault(kind="error", message="EService:Busy", count=1, **win)
    r.fault(kind="error", message="EService:Unavailable", count=None, **win)
    ohlc = r.daemon.adapter.sent["OHLC"]
    (rep,) = r.run(h)
    assert r.daemon.adapter.sent["OHLC"] == ohlc + 2  # one call per pair, not retried within the step
    assert r.bars_valid(h) == {"BTC/USD": False, "ETH/USD": False}
    failed = [e for e in r.rows(h, Kind.EVENT) if e.code == "data_fetchfailed"]
    assert sorted(e.pair for e in failed) == ["BTC/USD", "ETH/USD"]
    assert "EService:Busy" in str(failed[0].payload) + str(failed[1].payload)
    ri = r.risk_inputs(h)
    assert ri["api_fault"] is True and ri["api_failures"] == 2
    assert ri["api_fault_reasons"] == ["2 failed API calls in the data step"]
    assert "KILL:KILL_API|" in r.decisions(h)
    st = r.state_row(h)
    assert st.code == "STATE:KILL_SWITCH" and st.payload["kill_reason"] == int(KillReason.API_INSTABILITY)
    assert rep.state == "KILL_SWITCH" and rep.latch.startswith("2 failed")
    assert not any(d.startswith("ORDER:") for d in r.decisions(h)) and r.our_orders(ENTRY_CID) == []
    # the next bar: data is back, the kill switch stays latched and refuses entries
    (rep,) = r.run(h + 1)
    assert r.bars_valid(h + 1) == {"BTC/USD": True, "ETH/USD": True}
    assert r.risk_inputs(h + 1)["api_fault"] is True  # asked by the previous cycle
    assert rep.state == "KILL_SWITCH" and rep.orders == 0
    assert "REFUSAL:REFUSE_KILL_SWITCH|BTC/USD" in r.decisions(h + 1), r.decisions(h + 1)
    # an operator reactivates: applied at the next close, trading resumes
    (act,) = r.ledger.append(rec.operator_action("reactivate", "OHLC back", "test", "yes"))
    (rep,) = r.run(h + 2)
    (applied,) = r.rows(h + 2, Kind.OPERATOR_APPLIED)
    assert applied.ref_seq == act.seq and applied.code == "applied"
    assert r.risk_inputs(h + 2)["operator"] == 1 and r.risk_inputs(h + 2)["api_fault"] is False
    assert any(d.startswith("RESET:RESET_KILL") for d in r.decisions(h + 2)), r.decisions(h + 2)
    assert rep.state == "ACTIVE" and r.state_row(h + 2).payload["kill_reason"] == 0
    assert r.ledger.pending_operator_actions() == []
    check_books(r)


# ---- 2. an AddOrder whose answer is lost --------------------------------------------------------
def test_add_order_timeout_that_placed_the_order_is_found_booked_not_resent(rig):
    h = ENTRY_HOUR
    fb = cl_ord_id_for(h, "BTC/USD", "buy", "ENTRY", 0, "fallback")
    r = rig(h, exchange={"timeout_s": 3.0})
    # the request reaches the engine (the order is placed); its answer comes after the client gave up
    r.fault(kind="timeout", endpoint="AddOrder", seconds=5.0, apply=True)
    (rep,) = r.run(h)
    a = r.daemon.adapter
    # the limit (answer lost, found by its cl_ord_id, rested, cancelled unfilled) and its market
    # fallback: one AddOrder and one simulator order each
    assert a.sent["AddOrder"] == 2 and len(r.our_orders(ENTRY_CID)) == 1 and len(r.our_orders(fb)) == 1
    main = r.ledger.order_entries(ENTRY_CID)
    assert [e.code for e in main if e.kind == Kind.ORDER_RESPONSE] == ["unknown"]
    assert [e.code for e in main if e.kind == Kind.ORDER_FINAL] == ["cancelled"]
    assert next(e.txid for e in main if e.kind == Kind.CANCEL) == r.our_orders(ENTRY_CID)[0].txid
    legs = r.ledger.order_entries(fb)
    assert [e.code for e in legs if e.kind == Kind.ORDER_FINAL] == ["filled"]
    (fill,) = [e for e in main + legs if e.kind == Kind.FILL]
    assert fill.qty == D("0.08836964") and fill.trade_id == r.our_orders(fb)[0].trades[0]
    assert rep.orders == 1 and rep.fills == 1 and rep.latch == "" and rep.state == "ACTIVE"
    assert rep.n_positions == 1 and r.machine.positions[0]["qty"] == float(fill.qty)
    check_books(r)
    # the next hour sends nothing again and asks for no kill switch
    (rep,) = r.run(h + 1)
    assert a.sent["AddOrder"] == 2 and len(r.our_orders(ENTRY_CID)) == 1 and len(r.our_orders(fb)) == 1
    assert r.risk_inputs(h + 1)["api_fault"] is False and rep.state == "ACTIVE"
    check_books(r)


# ---- 3. the market in cancel_only ---------------------------------------------------------------
def test_cancel_only_market_refuses_the_entry_before_sending(rig):
    h = ENTRY_HOUR
    r = rig(h - 1)
    r.run(h - 1)
    code, body = r.sim.admin("/admin/status", {"status": "cancel_only"})
    assert code == 200 and body["status"] == "cancel_only"
    # an hour passes between two cycles in production: the status is read again before the order
    r.daemon.adapter.status_max_age_s = 0.0
    (rep,) = r.run(h)
    assert rep.orders == 1 and rep.fills == 0 and rep.latch == "" and rep.n_positions == 0
    assert r.our_orders(ENTRY_CID) == [] and r.daemon.adapter.sent["AddOrder"] == 0
    hist = r.ledger.order_entries(ENTRY_CID)
    assert [e.kind for e in hist] == [Kind.ORDER_INTENT, Kind.ORDER_FINAL]
    assert hist[-1].code == "not_sent" and hist[-1].payload["refused"] == "market_status"
    assert "cancel_only" in hist[-1].payload["reason"]
    assert r.machine.pending["active"].sum() == 0 and r.machine.state[0]["n_positions"] == 0
    (end,) = r.rows(h, Kind.CYCLE_END)
    assert end.code == "completed" and end.payload["latch_next"] == []
    r.sim.admin("/admin/status", {"status": "online"})
    (rep,) = r.run(h + 1)
    assert r.risk_inputs(h + 1)["api_fault"] is False and rep.state == "ACTIVE"
    check_books(r)


# ---- 4. a Kraken lockout ------------------------------------------------------------------------
def test_lockout_stops_the_daemon_and_the_restart_latches_the_kill_switch(rig):
    h = ENTRY_HOUR
    r = rig(h)
    r.fault(kind="lockout", endpoint="AddOrder", seconds=1.0)
    with pytest.raises(DaemonStopped) as ei:
        r.run(h)
    msg = str(ei.value)
    assert "\n" not in msg and "lockout" in msg.lower() and msg.startswith(f"hour {h}: Kraken halt")
    ends = r.rows(h, Kind.CYCLE_END)
    assert [e.code for e in ends] == ["failed"] and "lockout" in ends[0].payload["latch_next"][0].lower()
    assert r.our_orders(ENTRY_CID) == []  # refused by the lockout: never placed
    # the operator's process manager restarts it once the lockout is over and the fault removed
    r.sim.admin("/admin/faults", method="DELETE")
    time.sleep(1.1)
    st = r.restart()
    assert st.unresolved == 0 and st.last_completed == h - 1 if st.last_completed is not None else True
    reps = r.daemon.run_once()
    assert [x.hour for x in reps] == [h]
    assert reps[0].resumed and r.our_orders(ENTRY_CID) == []  # the intent was resolved, not resent
    assert [e.code for e in r.rows(h, Kind.CYCLE_END)] == ["failed", "completed"]
    (rep,) = r.run(h + 1)
    ri = r.risk_inputs(h + 1)
    assert ri["api_fault"] is True and any("lockout" in x.lower() for x in ri["api_fault_reasons"]), ri
    assert rep.state == "KILL_SWITCH"
    assert r.state_row(h + 1).payload["kill_reason"] == int(KillReason.API_INSTABILITY)
    check_books(r)


# ---- 5. Kraken late with a bar ------------------------------------------------------------------
def test_bar_not_committed_in_time_is_missing_and_latches_the_data_kill_switch(rig):
    h = ENTRY_HOUR
    r = rig(h - 1)  # behind_retries 0 (the harness): a lagging bar is not waited for
    (rep,) = r.run(h - 1)
    assert rep.state == "ACTIVE" and rep.n_positions == 0
    # Kraken publishes bar h ten minutes after its close; the cycle runs SETTLE seconds after it
    r.fault(kind="late_candle", delay=600, from_ts=(h + 1) * H, until_ts=(h + 1) * H + SETTLE + 1)
    (rep,) = r.run(h)
    behind = [e for e in r.rows(h, Kind.EVENT) if e.code == "data_behind"]
    assert sorted(e.pair for e in behind) == ["BTC/USD", "ETH/USD"]
    assert r.bars_valid(h) == {"BTC/USD": False, "ETH/USD": False}
    # the hour's line tells the operator why (the data step's own reason for each pair)
    assert sum("not closed there yet" in n for n in rep.notes) == 2 and "not closed there yet" in rep.line()
    ri = r.risk_inputs(h)
    assert ri["api_fault"] is False and ri["api_failures"] == 0  # a lag is not an API failure
    # ONE missing bar of a pair the machine has seen (kill_pair_scalar_nb: seen and not valid),
    # held or not (no position here), latches DATA_INTEGRITY at that bar: no run of them is needed
    assert "KILL:KILL_DATA|BTC/USD" in r.decisions(h), r.decisions(h)
    st = r.state_row(h)
    assert st.code == "STATE:KILL_SWITCH" and st.payload["kill_reason"] == int(KillReason.DATA_INTEGRITY)
    assert st.payload["n_positions"] == 0 and rep.orders == 0 and r.our_orders(ENTRY_CID) == []
    # the bar arrives with the next hour's data step; the switch stays latched (no automatic release)
    (rep,) = r.run(h + 1)
    assert r.bars_valid(h + 1) == {"BTC/USD": True, "ETH/USD": True}
    assert rep.state == "KILL_SWITCH" and rep.orders == 0
    assert r.state_row(h + 1).payload["kill_reason"] == int(KillReason.DATA_INTEGRITY)
    stored = r.daemon.store.load_panel(["BTC/USD"], "kraken", start=h * H, end=h * H)
    assert bool(stored.valid[0, 0])  # the late bar is in the store now
    check_books(r)


# ---- 6. a bar with an enormous range ------------------------------------------------------------
def _blown_up(panel, frames, hour: int, pair: str = "BTC/USD", up: float = 1.25, down: float = 0.8):
    """Copies of the simulator's panel and the store's frames whose bar ``hour`` of ``pair`` spans
    close x ``down`` .. close x ``up`` (open and close unchanged)."""
    from dataclasses import replace

    i = int(np.searchsorted(panel.ts, hour * H))
    j = panel.pairs.index(pair)
    high, low = panel.high.copy(), panel.low.copy()
    c = float(panel.close[i, j])
    high[i, j], low[i, j] = c * up, c * down
    p2 = replace(panel, high=high, low=low)
    f2 = {k: v.copy() for k, v in frames.items()}
    row = f2[pair].ts == hour * H
    f2[pair].loc[row, "high"], f2[pair].loc[row, "low"] = c * up, c * down
    return p2, f2


def test_range_blowup_bar_latches_the_volatility_kill_switch(rig, panel, frames):
    h = ENTRY_HOUR
    p2, f2 = _blown_up(panel, frames, h)
    r = rig(h - 1, sim_panel=p2, store_frames=f2)
    (rep,) = r.run(h - 1)
    assert rep.state == "ACTIVE"
    (rep,) = r.run(h)
    (bar,) = [e.payload["bars"][0] for e in r.rows(h, Kind.BARS) if e.pair == "BTC/USD"]
    assert bar["valid"] is True and float(bar["high"]) / float(bar["low"]) > 1.5
    (prev,) = [e.payload["bars"][0] for e in r.rows(h - 1, Kind.BARS) if e.pair == "BTC/USD"]
    st = r.state_row(h)
    kills = [e for e in r.rows(h, Kind.DECISION) if e.code.startswith("KILL:")]
    assert st.code == "STATE:KILL_SWITCH" and rep.state == "KILL_SWITCH", r.decisions(h)
    # VOLATILITY_SPIKE, not SPREAD_ANOMALY: the true range (high - low here) is ~49 x the previous
    # ATR (risk.vol_spike_mult 8), while the Corwin-Schultz spread estimate does not move: one bar's
    # range enters both its 2-bar high/low terms alike, which the estimator reads as volatility
    # (alpha ~ 0), and the estimate is a 24-bar mean; it stays at ~0.12 %, far below risk.spread_max 2 %
    assert [(e.code, e.pair) for e in kills] == [("KILL:KILL_VOLATILITY", "BTC/USD")]
    assert st.payload["kill_reason"] == int(KillReason.VOLATILITY_SPIKE)
    ratio = (float(bar["high"]) - float(bar["low"])) / float(prev["atr"])
    assert ratio > 8 and abs(float(kills[0].payload["value"]) - ratio) < 1e-6 * ratio
    assert float(bar["spread"]) < 0.005 and float(bar["spread"]) <= float(prev["spread"])
    assert rep.orders == 0 and r.our_orders(ENTRY_CID) == []  # the entry of this close is refused
    check_books(r)


def test_quoted_spread_blowup_latches_the_spread_kill_switch(rig):
    """A blow-out in Kraken's book (the simulator's ``spread_blowup``: quoted spread x 1000) is in no
    OHLC bar, so the OHLC estimate cannot see it; the cycle reads the Ticker at the close and feeds
    the wider of the two as the bar's spread input: R19's absolute limit (2%) latches the kill switch.
    Planted fault: without the Ticker read (spread input = the estimate) the state stays ACTIVE."""
    h = ENTRY_HOUR
    r = rig(h - 1)
    (rep,) = r.run(h - 1)
    assert rep.state == "ACTIVE"
    r.fault(kind="spread_blowup", factor=1000, pair="XBTUSD", from_ts=(h + 1) * H, until_ts=(h + 2) * H)
    (rep,) = r.run(h)
    (row,) = [e for e in r.rows(h, Kind.BARS) if e.pair == "BTC/USD"]
    quoted = float(row.payload["quoted_spread"])
    assert quoted > 0.02 and float(row.payload["bars"][0]["spread"]) == quoted
    (eth,) = [e for e in r.rows(h, Kind.BARS) if e.pair == "ETH/USD"]
    assert float(eth.payload["quoted_spread"]) < 0.02  # the other pair's book is normal
    st = r.state_row(h)
    kills = [(e.code, e.pair) for e in r.rows(h, Kind.DECISION) if e.code.startswith("KILL:")]
    assert st.code == "STATE:KILL_SWITCH" and kills == [("KILL:KILL_SPREAD", "BTC/USD")], r.decisions(h)
    assert st.payload["kill_reason"] == int(KillReason.SPREAD_ANOMALY)
    assert rep.orders == 0 and r.our_orders(ENTRY_CID) == []
    check_books(r)


# ---- 7. activity outside the daemon -------------------------------------------------------------
def test_external_orders_fills_and_deposit_are_reported_not_latched(rig):
    h = ENTRY_HOUR
    r = rig(h - 1)
    (rep,) = r.run(h - 1)  # the portfolio starts with the account's 100 000 USD
    assert rep.state == "ACTIVE" and float(r.machine.state[0]["cash"]) == 100000.0

    def add(**p: Any) -> str:
        resp = r.sim.raw_private("AddOrder", p)  # another client on the same key, its own ids
        body = resp.json()
        assert resp.status_code == 200 and not body["error"], body
        return body["result"]["txid"][0]

    resting = add(pair="XBTUSD", type="buy", ordertype="limit", price="15000", volume="0.01", cl_ord_id="ext-rest-1")
    taken = add(pair="ETHUSD", type="buy", ordertype="market", volume="0.5", cl_ord_id="ext-mkt-1")
    (ext_trade,) = r.sim.ex.orders[taken].trades
    t = r.sim.ex.trades[ext_trade]
    code, body = r.sim.admin("/admin/balance", {"account": r.acct.name, "asset": "USD", "delta": "5000"})
    assert code == 200, body
    # the entry bar: the daemon's own order goes through, then reconciliation finds the outsider
    (rep,) = r.run(h)
    assert r.risk_inputs(h)["api_fault"] is False
    assert rep.orders == 1 and rep.fills == 1 and rep.n_positions == 1
    assert rep.reconcile == "ok" and rep.latch == "" and rep.state == "ACTIVE"
    (rc,) = r.rows(h, Kind.RECONCILIATION)
    p = rc.payload
    assert rc.code == "ok" and p["problems"] == [] and p["latch"] is False
    assert p["external_orders"] == [resting] and p["external_fills"] == [ext_trade]
    assert {k: D(v) for k, v in p["external_balance_changes"].items()} == {"USD": D("5000")}
    ev = {e.code: e for e in r.rows(h, Kind.EVENT)}
    assert ev["external_order"].payload["txid"] == resting and ev["external_order"].payload["cl_ord_id"] == "ext-rest-1"
    assert D(ev["external_balance_change"].payload["changes"]["USD"]) == D("5000")
    (xf,) = [e for e in r.ledger.entries(kind=Kind.FILL) if e.trade_id == ext_trade]
    assert xf.code == "external" and xf.cl_ord_id is None and (xf.qty, xf.price) == (t.vol, t.price)
    ext_usd = D("5000") - t.cost - t.fee
    check_books(r, external_usd=ext_usd, external_base={"ETH": t.vol})  # the machine books only its own
    # the next bar: no kill switch asked, the outsider reported once, the deposit the new baseline
    (rep,) = r.run(h + 1)
    assert r.risk_inputs(h + 1)["api_fault"] is False and rep.latch == "" and rep.state == "ACTIVE"
    (rc,) = r.rows(h + 1, Kind.RECONCILIATION)
    assert rc.code == "ok" and rc.payload["external_orders"] == [resting]
    assert rc.payload["external_balance_changes"] == {} and rc.payload["external_fills"] == []
    assert [e.code for e in r.rows(h + 1, Kind.EVENT) if e.code.startswith("external")] == []
    check_books(r, external_usd=ext_usd, external_base={"ETH": t.vol})
