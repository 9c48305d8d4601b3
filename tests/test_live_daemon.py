"""The paper daemon end to end (issue 15): real Kraken bars replayed by the simulator, the
unmodified python-kraken-sdk through the adapter, a real tiny model, the risk machine, the executor,
reconciliation and the ledger; hour after hour through :meth:`Daemon.run_once`.

The proof: a paper run of ``HOURS`` hours that trades, and whose books balance against the
simulator's to the cent (cash) and to the lot (base assets); the ledger verifies, every intent has a
final outcome, no client order id reaches the exchange twice, every hour completes in order. Then
determinism, idempotent re-runs, catch-up after downtime, the start-up gates, and no secret anywhere.

Shared pieces (the tiny model, the store, the simulator, ``make_daemon``) are in tests/live_harness.py.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine.errors import ConfigError
from engine.pairs import instrument
from engine.paths import configs_dir
from live_bridge.ledger import Kind
from tests.live_harness import (
    P0,
    SETTLE,
    BundleModel,
    H,
    kraken_store,
    make_daemon,
    paper_dict,
    run_hours,
    shared_frames,
    sim_panel,
    tiny_model_dir,
)

HOURS = 200  # the proof run: 2022-06-08 22:00 .. 2022-06-17 05:00 UTC, where the tiny model trades
PAPER_FIRST = P0 + 190 * H
DET_HOURS = 30  # determinism: from P0; the window's first order is decided in its hour 29
START_USD = "10000"
FIRST_HOUR = PAPER_FIRST // H


@pytest.fixture(scope="module")
def model() -> BundleModel:
    return BundleModel(tiny_model_dir())


@dataclass
class Run:
    """A paper daemon against a running simulator, with every AddOrder the simulator received."""

    sim: Any
    daemon: Any
    tmp: Path
    reports: list = field(default_factory=list)
    add_orders: list[dict] = field(default_factory=list)  # the parameters of each AddOrder received
    wall_s: float = 0.0
    machine: Any = None  # the risk machine after the last hour run

    @property
    def ledger(self):
        return self.daemon.ledger

    def close(self) -> None:
        self.daemon.close()
        self.sim.stop()


def _record_add_orders(sim: Any, into: list[dict]) -> None:
    """Wrap the simulator's AddOrder (what the HTTP app calls for each signed, authenticated request)
    so a test sees every order request the exchange received, accepted or not."""
    real = sim.ex.add_order

    def add_order(acct, p, *a, **kw):
        into.append(dict(p))
        return real(acct, p, *a, **kw)

    sim.ex.add_order = add_order


def start_run(tmp: Path, model: Any, *, first: int = P0, hours_after: int = 60, **over: Any) -> Run:
    """Store with the bars before ``min(first, P0)``, simulator at ``first`` + SETTLE with
    ``START_USD``, a started paper daemon. The first hour the daemon runs is the bar that opens at
    ``first``; its data step fetches the bars the store lacks from the simulator (OHLC)."""
    from live_bridge.simulator.testing import start_sim

    tmp.mkdir(parents=True, exist_ok=True)
    kraken_store(tmp / "m.duckdb", shared_frames(hours_after), upto=min(first, P0) - H)
    sim = start_sim(sim_panel(hours_after), start=first + SETTLE, balances={"USD": START_USD})
    run = Run(sim, None, tmp)
    _record_add_orders(sim, run.add_orders)
    run.daemon = make_daemon(sim.url, tmp, model, **over)
    rep = run.daemon.start()
    assert rep.reconcile == "ok" and not rep.latch and rep.unresolved == 0, rep
    return run


def advance(run: Run, n: int, first: int = P0) -> list:
    t = time.perf_counter()
    out = run_hours(run.sim, run.daemon, n, first=first)
    run.wall_s += time.perf_counter() - t
    run.reports.extend(out)
    run.machine = run.daemon.cycle.machine
    return out


def sim_account(run: Run) -> dict[str, Decimal]:
    acct = run.sim.ex.state()["accounts"]["default"]
    return {k: Decimal(v) for k, v in acct["balances"].items()}


def decision_rows(ledger) -> list[tuple]:
    return [
        (e.hour, e.code, e.pair, e.side, e.qty, e.price, json.dumps(e.payload, sort_keys=True))
        for e in ledger.entries(kind=Kind.DECISION)
    ]


def snapshot_after(ledger, hour: int) -> bytes:
    rows = [e for e in ledger.entries(hour=hour, kind=Kind.RISK_SNAPSHOT) if e.code == "after"]
    assert len(rows) == 1, f"hour {hour}: {len(rows)} after-snapshots"
    assert rows[0].blob
    return rows[0].blob


# ---- the proof run (module scope: built once, every assertion reads it) --------------------------


@pytest.fixture(scope="module")
def paper(tmp_path_factory, model):
    hours_after = (PAPER_FIRST - P0) // H + HOURS + 10
    run = start_run(tmp_path_factory.mktemp("paper"), model, first=PAPER_FIRST, hours_after=hours_after)
    advance(run, HOURS, first=PAPER_FIRST)
    n_fills = len(run.ledger.entries(kind=Kind.FILL))
    print(
        f"\npaper run: {len(run.reports)} hours in {run.wall_s:.1f} s, {sum(r.orders for r in run.reports)} orders "
        f"decided, {len(run.add_orders)} AddOrder received, {len(run.sim.ex.orders)} orders and "
        f"{len(run.sim.ex.trades)} trades at the simulator, {n_fills} fills ledgered; machine cash "
        f"{float(run.machine.state[0]['cash']):.6f}, simulator USD {sim_account(run).get('USD')}"
    )
    yield run
    run.close()


def test_paper_run_trades(paper):
    reps = paper.reports
    assert len(reps) == HOURS and [r.hour for r in reps] == list(range(FIRST_HOUR, FIRST_HOUR + HOURS))
    assert all(r.status == "completed" and not r.catch_up and not r.latch for r in reps), [
        r.line() for r in reps if r.status != "completed" or r.latch
    ]
    fills = paper.ledger.entries(kind=Kind.FILL)
    assert len(fills) >= 4, f"the tiny model should trade in this window; {len(fills)} fills"
    assert {f.side for f in fills} == {"buy", "sell"}
    assert sum(r.fills for r in reps) == len(fills) == len(paper.sim.ex.trades)
    assert {f.trade_id for f in fills} == set(paper.sim.ex.trades)
    assert all(f.code == "own" and f.cl_ord_id for f in fills)


def test_every_hour_of_the_paper_run_replays_from_the_ledger_alone(paper):
    """Issue 16's replay on the 200-hour run: each hour rebuilt from its ledgered inputs, before
    snapshot and journal reproduces its decisions and its after snapshot byte for byte."""
    from live_bridge.replay import replay_window

    s = replay_window(paper.ledger, FIRST_HOUR, FIRST_HOUR + HOURS - 1)
    assert s.ok and s.reproduced == HOURS, s.first_failure


def test_cash_balances_to_the_cent(paper):
    m = paper.machine
    usd = sim_account(paper)["USD"]
    cash = Decimal(repr(float(m.state[0]["cash"])))
    assert abs(cash - usd) <= Decimal("0.01"), f"machine cash {cash} vs simulator USD {usd}"
    assert usd != Decimal(START_USD)  # it traded: fees and P&L moved the balance


def test_base_positions_match_at_lot_precision(paper):
    m = paper.machine
    bal = sim_account(paper)
    held_any = False
    for j, pair in enumerate(paper.daemon.cycle.pairs):
        ins = instrument(pair)
        base = pair.split("/")[0]
        lot = Decimal(1).scaleb(-ins.lot_decimals)
        qty = Decimal(repr(float(m.positions[j]["qty"]))).quantize(lot)
        held = bal.get(base, Decimal(0))
        assert qty == held, f"{pair}: machine {qty} vs simulator {base} {held}"
        held_any |= held > 0
    assert held_any, "the run should end holding a position (else this compares zeros)"


def test_ledger_fills_reproduce_the_simulators_books(paper):
    bal = sim_account(paper)
    usd = Decimal(0)
    base: Counter[str] = Counter()
    for f in paper.ledger.entries(kind=Kind.FILL):
        assert isinstance(f.cost, Decimal) and isinstance(f.fee, Decimal) and isinstance(f.qty, Decimal)
        b = f.pair.split("/")[0]
        if f.side == "buy":
            usd -= f.cost + f.fee
            base[b] += f.qty
        else:
            usd += f.cost - f.fee
            base[b] -= f.qty
    assert bal["USD"] - Decimal(START_USD) == usd, f"ledger fills {usd} vs simulator USD change"
    for b in {p.split("/")[0] for p in paper.daemon.cycle.pairs}:
        assert base[b] == bal.get(b, Decimal(0)), b


def test_ledger_verifies_and_every_intent_is_final(paper):
    rep = paper.ledger.verify()
    assert rep.ok, rep.message
    intents = Counter(e.cl_ord_id for e in paper.ledger.entries(kind=Kind.ORDER_INTENT))
    finals = Counter(e.cl_ord_id for e in paper.ledger.entries(kind=Kind.ORDER_FINAL))
    assert intents and set(intents) == set(finals), set(intents) ^ set(finals)
    assert max(finals.values()) == 1
    assert paper.ledger.open_intents() == []


def test_no_client_order_id_reaches_the_exchange_twice(paper):
    sent = Counter(p.get("cl_ord_id") for p in paper.add_orders)
    assert sent and None not in sent, sent
    assert max(sent.values()) == 1, [c for c, n in sent.items() if n > 1]
    at_sim = Counter(o.cl_ord_id for o in paper.sim.ex.orders.values())
    assert max(at_sim.values()) == 1 and set(at_sim) <= set(sent)
    # what the ledger says it requested is what the exchange received
    requested = {e.cl_ord_id for e in paper.ledger.entries(kind=Kind.ORDER_REQUEST)}
    assert set(sent) <= requested


def test_every_hour_completes_once_in_order(paper):
    ends = paper.ledger.entries(kind=Kind.CYCLE_END)
    assert [e.hour for e in ends] == list(range(FIRST_HOUR, FIRST_HOUR + HOURS))
    assert all(e.code == "completed" and e.payload["catch_up"] is False for e in ends)
    starts = paper.ledger.entries(kind=Kind.CYCLE_START)
    assert [e.hour for e in starts] == [e.hour for e in ends]
    assert paper.ledger.last_completed_hour() == FIRST_HOUR + HOURS - 1


def test_rerunning_a_completed_hour_sends_nothing(paper, model):
    n_rows, n_orders = paper.ledger.count(), len(paper.add_orders)
    assert paper.daemon.run_once() == []  # the same sim time: nothing due
    last = FIRST_HOUR + HOURS - 1
    assert paper.daemon.cycle.run_hour(last).status == "skipped"
    assert paper.daemon.cycle.run_hour(FIRST_HOUR).status == "skipped"
    # a second daemon on the same state folder is refused while the first runs ...
    from live_bridge.daemon import DaemonBusy

    with pytest.raises(DaemonBusy):
        make_daemon(paper.sim.url, paper.tmp, model)
    # ... and once it stopped, the restarted one recovers (nothing open) and finds nothing due
    paper.daemon.close()
    paper.daemon = make_daemon(paper.sim.url, paper.tmp, model)
    rep = paper.daemon.start()
    assert (rep.last_completed, rep.resumed, rep.unresolved, rep.latch) == (last, 0, 0, "")
    assert rep.reconcile == "ok"
    assert paper.daemon.run_once() == []
    assert paper.daemon.cycle.run_hour(last).status == "skipped"
    assert len(paper.add_orders) == n_orders
    new = [e for e in paper.ledger.iter_entries(after_seq=n_rows)]
    assert all(e.kind in (Kind.RECONCILIATION, Kind.EVENT) for e in new), [(e.kind, e.code) for e in new]


# ---- determinism ---------------------------------------------------------------------------------


def test_two_runs_of_the_same_hours_are_identical(tmp_path, model):
    """Two fresh runs (sim, store, ledger, state) of the same hours decide the same rows, send the
    same client order ids and end in the same risk snapshot bytes."""
    last = P0 // H + DET_HOURS - 1
    runs = []
    for name in ("a", "b"):
        r = start_run(tmp_path / name, model, hours_after=DET_HOURS + 10)
        try:
            advance(r, DET_HOURS)
            runs.append(
                (decision_rows(r.ledger), snapshot_after(r.ledger, last), [p["cl_ord_id"] for p in r.add_orders])
            )
        finally:
            r.close()
    (da, sa, ca), (db, sb, cb) = runs
    assert da == db and sa == sb and ca == cb
    assert any(row[1].startswith("ORDER:") for row in da) and ca, "the window should hold a sent order"


# ---- catch-up after downtime ---------------------------------------------------------------------


def test_catch_up_runs_missed_hours_in_order_and_sends_no_stale_entry(tmp_path, model):
    """Start 24 h into the window, run three hours, then stay down three closes: the fourth run
    completes all four due hours in order, the first three as catch-up hours. The window's first
    entry (hour 29 of the window) is decided in a catch-up hour: it is ledgered NOT_SENT:STALE_ENTRY
    and never reaches the exchange."""
    first = P0 + 24 * H
    run = start_run(tmp_path, model, first=first, hours_after=40)
    try:
        assert [r.hour for r in advance(run, 3, first=first)] == [first // H + i for i in range(3)]
        run.sim.ex.advance(to=float(first + 7 * H + SETTLE))  # three closes missed, the fourth due
        reps = run.daemon.run_once()
        hours = [first // H + i for i in range(3, 7)]
        assert [r.hour for r in reps] == hours
        assert [r.catch_up for r in reps] == [True, True, True, False]
        assert all(r.status == "completed" for r in reps)
        ends = {e.hour: e for e in run.ledger.entries(kind=Kind.CYCLE_END)}
        assert [ends[h].payload["catch_up"] for h in hours] == [True, True, True, False]
        assert sorted(ends) == [first // H + i for i in range(7)]
        stale = [e for e in run.ledger.entries(kind=Kind.DECISION) if e.code == "NOT_SENT:STALE_ENTRY"]
        assert stale, "the window's first entry falls in a catch-up hour"
        assert all(e.hour in hours[:3] and e.side == "buy" for e in stale)
        sent = {p.get("cl_ord_id") for p in run.add_orders}
        for e in stale:
            cid = e.payload["cl_ord_id"]
            assert cid not in sent and run.ledger.order_entries(cid) == []
        assert run.ledger.verify().ok
    finally:
        run.close()


# ---- start-up gates ------------------------------------------------------------------------------


def _gate(tmp: Path, *, allow_live: bool = False, environ: dict | None = None, model: Any = "stub", **over):
    from live_bridge.config import live_config_from_dict
    from live_bridge.daemon import Daemon
    from live_bridge.simulator.testing import KEY, SECRET

    live = live_config_from_dict(paper_dict("http://127.0.0.1:9", tmp, **over), "gate.toml")
    env = {"KRAKEN_API_KEY": KEY, "KRAKEN_API_SECRET": SECRET} if environ is None else environ
    return Daemon.from_config(live, allow_live=allow_live, environ=env, model=None if model is None else object())


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def test_live_mode_needs_allow_live(tmp_path):
    with pytest.raises(ConfigError) as ei:
        _gate(tmp_path, mode="live", exchange={"url": "https://api.kraken.com"})
    assert "--live" in _one_line(ei) and "gate.toml" in str(ei.value)
    assert not (tmp_path / "state").exists()  # refused before anything was built


def test_allow_live_refuses_a_paper_config(tmp_path):
    with pytest.raises(ConfigError) as ei:
        _gate(tmp_path, allow_live=True)
    assert "mode = 'live'" in _one_line(ei) and "paper" in str(ei.value)


@pytest.mark.parametrize(
    "env, words",
    [
        ({"KRAKEN_API_SECRET": "c2VjcmV0"}, "KRAKEN_API_KEY not set in the environment"),
        ({"KRAKEN_API_KEY": "kq-gate-key"}, "KRAKEN_API_SECRET not set in the environment"),
        ({}, "KRAKEN_API_KEY and KRAKEN_API_SECRET not set"),
        (
            {"KRAKEN_API_KEY": "kq-gate-key", "KRAKEN_API_SECRET": "not base64!"},
            "KRAKEN_API_SECRET is empty or not valid base64",
        ),
    ],
)
def test_missing_credentials_are_one_line(tmp_path, env, words):
    from live_bridge.kraken import CredentialsError

    with pytest.raises(CredentialsError) as ei:
        _gate(tmp_path, environ=env)
    msg = _one_line(ei)
    assert words in msg, msg
    for v in env.values():
        assert v not in msg


def test_no_approved_model_refuses_to_start(tmp_path):
    text = (configs_dir() / "default.toml").read_text()
    plant = '# approvals_dir = "data/approvals"'
    assert plant in text
    eng = tmp_path / "engine.toml"
    eng.write_text(text.replace(plant, f"approvals_dir = {str(tmp_path / 'approvals')!r}"))
    with pytest.raises(ConfigError) as ei:
        _gate(tmp_path, model=None, engine_config=str(eng))
    assert "no model is approved for paper" in _one_line(ei)


# ---- no secret anywhere --------------------------------------------------------------------------


def test_no_secret_in_logs_output_ledger_or_files(tmp_path, model, caplog, capsys):
    """Run hours that place orders (signed AddOrder, QueryOrders, cancels) with every logger at DEBUG,
    then search the log records, stdout/stderr, every ledger row and every file the daemon wrote
    for the API key, the base64 secret and the secret's raw bytes."""
    from live_bridge.simulator.testing import KEY, SECRET

    caplog.set_level(logging.DEBUG)
    first = P0 + 27 * H
    run = start_run(tmp_path / "run", model, first=first, hours_after=40)
    try:
        advance(run, 4, first=first)
        assert run.add_orders, "these hours should send orders (the signed private path)"
        rows = list(run.ledger.iter_entries())
    finally:
        run.close()
    raw = base64.b64decode(SECRET)
    needles_text = [KEY, SECRET, raw.hex(), SECRET.rstrip("=")]
    needles_bytes = [KEY.encode(), SECRET.encode(), raw, raw.hex().encode()]
    out, err = capsys.readouterr()
    logs = "\n".join(f"{r.name} {r.getMessage()} {r.args!r}" for r in caplog.records) + caplog.text
    assert len(caplog.records) > 0
    for where, text in (("log", logs), ("stdout", out), ("stderr", err)):
        for s in needles_text:
            assert s not in text, f"{where} holds a secret"
    for e in rows:
        for k, v in vars(e).items():
            if isinstance(v, bytes):
                assert not any(s in v for s in needles_bytes), f"ledger seq {e.seq} {k}"
            else:
                t = json.dumps(v, default=str) if k == "payload" else str(v)
                assert not any(s in t for s in needles_text), f"ledger seq {e.seq} {k}"
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.name.startswith("ledger") for p in files) and any(p.suffix == ".duckdb" for p in files)
    assert any((tmp_path / "run" / "state").rglob("*")), "the nonce state should be on disk"
    for p in files:
        data = p.read_bytes()
        for s in needles_bytes:
            assert s not in data, f"{p.relative_to(tmp_path)} holds a secret"
