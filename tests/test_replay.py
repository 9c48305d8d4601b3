"""``kq replay`` (issue 16): any completed daemon hour is rebuilt from the ledger alone and
reproduces its decisions and its risk snapshot after, byte for byte.

The ledger is real: a paper daemon run of 45 hours from ``P0`` (2022-06-01 00:00 UTC) against the
simulator replaying Kraken's real bars, with the tiny real model (tests/live_harness.py). Its hour
29 decides an entry (a limit order, then the market fallback fills) and its hour 40 an exit, so
the replay covers fills, cancels and position changes, not only quiet hours. The simulator is
stopped before anything is replayed, and the tests that replay block every socket connect.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from live_bridge.ledger import Kind, Ledger
from tests.live_harness import P0, BundleModel, H, kraken_store, make_daemon, run_hours, shared_frames, sim_panel

HOURS = 45
H0 = P0 // H  # the first hour the daemon ran
ENTRY = H0 + 29  # the window's entry is decided at this close
EXIT = H0 + 40  # and its exit here


def iso(hour: int) -> str:
    return datetime.fromtimestamp(hour * H, UTC).strftime("%Y-%m-%dT%H:%M")


@pytest.fixture(scope="module")
def paper(tmp_path_factory) -> Path:
    """The ledger of a finished 45-hour paper run (daemon closed, simulator stopped)."""
    from live_bridge.simulator.testing import start_sim
    from tests.live_harness import tiny_model_dir

    tmp = tmp_path_factory.mktemp("replay")
    frames = shared_frames(HOURS + 15)
    kraken_store(tmp / "m.duckdb", frames)
    sim = start_sim(sim_panel(HOURS + 15), start=P0 + 30, balances={"USD": "10000"})
    daemon = make_daemon(sim.url, tmp, BundleModel(tiny_model_dir()))
    try:
        rep = daemon.start()
        assert rep.reconcile == "ok" and not rep.latch, rep
        reports = run_hours(sim, daemon, HOURS)
        assert [r.status for r in reports] == ["completed"] * HOURS
    finally:
        daemon.close()
        sim.stop()
    return tmp / "ledger.sqlite"


@pytest.fixture
def ledger(paper: Path):
    with Ledger.open(paper, migrate=False) as led:
        yield led


@pytest.fixture
def offline(monkeypatch):
    """No network: any socket connect fails the test."""

    def refuse(*a: Any, **k: Any) -> None:
        raise AssertionError("the replay tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def edited_copy(src: Path, dst: Path, sql: str, *params: Any) -> Path:
    """A copy of the ledger with one row edited behind the store's back: the copy's append-only
    triggers are dropped with sqlite3 and the row updated in place (its hash left as it was)."""
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    con = sqlite3.connect(dst)
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        con.execute(f'DROP TRIGGER "{name}"')
    n = con.execute(sql, params).rowcount
    con.commit()
    con.close()
    assert n == 1, f"edited {n} rows"
    return dst


def fill_of(ledger: Ledger, hour: int):
    fills = ledger.entries(hour=hour, kind=Kind.FILL)
    assert len(fills) == 1, fills
    return fills[0]


# ---- every hour reproduces -----------------------------------------------------------------------


def test_every_hour_of_the_paper_run_replays_exactly(ledger, offline):
    from live_bridge.replay import replay_window

    # the run is not trivial: an entry and an exit, each booked from a real simulator fill
    for h, side in ((ENTRY, "buy"), (EXIT, "sell")):
        orders = [e for e in ledger.entries(hour=h, kind=Kind.DECISION) if e.side == side]
        assert orders and orders[0].code.startswith("ORDER:"), (h, orders)
        assert fill_of(ledger, h).side == side
    seen: list[tuple[int, int]] = []
    s = replay_window(ledger, H0, H0 + HOURS - 1, progress=lambda d, t, r: seen.append((d, t)))
    assert seen == [(i + 1, HOURS) for i in range(HOURS)]
    assert s.skipped == []
    assert [r.hour for r in s.results] == list(range(H0, H0 + HOURS))
    assert s.replayed == s.reproduced == HOURS, s.first_failure
    assert s.ok and s.first_failure is None
    by = {r.hour: r for r in s.results}
    assert by[ENTRY].details["journal"] >= 1 and by[EXIT].details["journal"] >= 1
    assert by[ENTRY].details["decisions"] >= 3  # the ENTRY event, its order, the STATE row
    # the window around the run: hours the ledger does not hold are skipped, not failures
    s2 = replay_window(ledger, H0 - 2, H0 + 1)
    assert s2.skipped == [H0 - 2, H0 - 1] and s2.reproduced == 2 and s2.ok


# ---- a ledger edited after the fact is detected, never replayed ----------------------------------


def test_an_edited_fill_is_reported_by_the_chain_and_not_replayed(ledger, paper, tmp_path):
    from live_bridge.replay import replay_hour, replay_window

    f = fill_of(ledger, ENTRY)
    bad = str(f.price + Decimal("1"))
    db = edited_copy(paper, tmp_path / "edited.sqlite", "UPDATE ledger_entry SET price = ? WHERE seq = ?", bad, f.seq)
    with Ledger.open(db, migrate=False) as led:
        assert led.entry(f.seq).price == Decimal(bad)  # the edit is there
        r = replay_hour(led, ENTRY)
        assert not r.ok and not r.replayed and r.status == "not replayed"
        assert f"broken at seq {f.seq} (hash)" in (r.first_diff or ""), r.first_diff
        assert r.details["broken_seq"] == f.seq
        # an hour far from the edit is not replayed either: the whole chain is in doubt
        assert not replay_hour(led, H0 + 3).replayed
        s = replay_window(led, H0, H0 + HOURS - 1)
        assert s.replayed == 0 and s.first_failure is not None and not s.ok
        assert f"seq {f.seq}" in (s.first_failure.first_diff or "")


# ---- a changed replay input makes that hour fail, the field named --------------------------------


def _perturb_inputs(monkeypatch, hour: int, change) -> None:
    import live_bridge.cycle as cycle

    real = cycle.recorded_inputs

    def decoded(ledger, h, pairs, rows=None):
        got = real(ledger, h, pairs, rows=rows)
        if got is not None and int(h) == hour:
            change(got[0], list(pairs))
        return got

    monkeypatch.setattr(cycle, "recorded_inputs", decoded)


def test_a_changed_prediction_fails_at_its_hour_naming_the_first_decision(ledger, monkeypatch):
    from live_bridge.replay import replay_hour, replay_window

    def no_edge(args, pairs):  # BTC's expected return at the entry's close: no edge, no entry
        args[2]["exp_ret"][pairs.index("BTC/USD")] = 0.0

    _perturb_inputs(monkeypatch, ENTRY, no_edge)
    r = replay_hour(ledger, ENTRY)
    assert r.replayed and not r.ok and r.status == "differs"
    assert r.first_diff == (
        "decision[close][0] ORDER:ENTRY BTC/USD code: replayed REFUSAL:REFUSE_EDGE != ledger ORDER:ENTRY"
    ), r.first_diff
    s = replay_window(ledger, ENTRY - 3, ENTRY + 3)
    assert s.replayed == 7 and s.reproduced == 6
    assert s.first_failure is not None and s.first_failure.hour == ENTRY


def test_a_changed_bar_fails_at_its_hour(ledger, monkeypatch):
    from live_bridge.replay import replay_hour

    def lower_close(args, pairs):  # the exit's close one tick lower: another limit price
        j = pairs.index("BTC/USD")
        args[1]["close"][j] -= 0.1

    _perturb_inputs(monkeypatch, EXIT, lower_close)
    r = replay_hour(ledger, EXIT)
    assert r.replayed and not r.ok
    assert r.first_diff is not None and r.first_diff.startswith("decision[close]"), r.first_diff
    assert "BTC/USD" in r.first_diff and "replayed" in r.first_diff and "ledger" in r.first_diff
    assert replay_hour(ledger, EXIT - 1).ok  # the hour before is untouched


def test_a_changed_fill_names_the_snapshot_field_with_both_values(ledger, monkeypatch):
    import dataclasses

    import live_bridge.replay as replay

    real = replay._fill_index

    def dearer(led):
        return {k: dataclasses.replace(e, fee=e.fee + Decimal("0.01")) for k, e in real(led).items()}

    monkeypatch.setattr(replay, "_fill_index", dearer)
    r = replay.replay_hour(ledger, ENTRY)
    assert r.replayed and not r.ok
    # a cent more fee: the cash is the first field of the snapshot after that differs
    assert r.first_diff is not None and r.first_diff.startswith("state.cash: replayed "), r.first_diff
    mine, theirs = (Decimal(x) for x in r.first_diff.removeprefix("state.cash: replayed ").split(" != ledger "))
    assert abs(theirs - mine - Decimal("0.01")) < Decimal("1e-9")
    assert replay.replay_hour(ledger, ENTRY - 1).ok  # no fill there


def test_snapshot_diff_names_the_pair_and_field(ledger):
    from engine.risk.machine import RiskMachine
    from live_bridge.replay import snapshot_diff

    after = next(e for e in ledger.entries(hour=ENTRY + 1, kind=Kind.RISK_SNAPSHOT) if e.code == "after")
    assert after.blob is not None
    m = RiskMachine.restore(after.blob)
    q = float(m.positions[0]["qty"])
    assert q > 0
    m.positions[0]["qty"] = q + 1e-8
    assert snapshot_diff(after.blob, after.blob) is None
    assert snapshot_diff(m.snapshot(), after.blob) == f"positions[BTC/USD].qty: replayed {q + 1e-8!r} != ledger {q!r}"
    # Kraken's instrument rules are taken fresh at each restore: named, and ignorable
    m = RiskMachine.restore(after.blob)
    om = float(m.ordermin[1])
    m.ordermin[1] = om * 2
    blob = m.snapshot()
    assert snapshot_diff(blob, after.blob) == f"instruments[ETH/USD].ordermin: replayed {om * 2!r} != ledger {om!r}"
    assert snapshot_diff(blob, after.blob, ignore=("instruments",)) is None


# ---- manifest ------------------------------------------------------------------------------------


def test_manifest_lists_every_input_with_hashes_an_auditor_can_check(ledger):
    import hashlib

    from engine.hashing import canonical_json
    from live_bridge.replay import manifest

    m = manifest(ledger, ENTRY)
    assert set(m) == {
        "hour",
        "utc",
        "code_version",
        "config_digest",
        "universe_sha256",
        "pairs",
        "history_bars",
        "bars",
        "features",
        "model",
        "predictions",
        "risk_inputs",
        "snapshots",
        "fills",
        "cycle_end",
        "ledger",
    }
    assert m["hour"] == ENTRY and m["pairs"] == ["BTC/USD", "ETH/USD"]
    assert set(m["bars"]) == {"BTC/USD", "ETH/USD"}
    for b in m["bars"].values():
        # the bars digest is checkable from the bar record itself
        assert b["digest"] == hashlib.sha256(canonical_json([b["bar"]]).encode()).hexdigest()
        assert len(b["window_sha256"]) == 64 and b["window_bars"] == 1000
    assert len(m["features"]["hash"]) == 64
    assert m["model"]["id"] == "tiny/1" and len(m["model"]["manifest_sha256"]) == 64
    assert len(m["config_digest"]) == 64 and len(m["universe_sha256"]) == 64 and m["code_version"]
    for ph in ("before", "after"):
        e = ledger.entry(m["snapshots"][ph]["seq"])
        assert e.blob is not None and hashlib.sha256(e.blob).hexdigest() == m["snapshots"][ph]["sha256"]
    f = fill_of(ledger, ENTRY)
    assert m["fills"] == [
        {
            "trade_id": f.trade_id,
            "pair": "BTC/USD",
            "side": "buy",
            "qty": str(f.qty),
            "price": str(f.price),
            "fee": str(f.fee),
            "seq": f.seq,
        }
    ]
    lg = m["ledger"]
    rows = ledger.entries(hour=ENTRY)
    assert (lg["first_seq"], lg["last_seq"], lg["rows"]) == (rows[0].seq, rows[-1].seq, len(rows))
    assert lg["head_hash"] == ledger.entry(lg["last_seq"]).hash and lg["chain_ok"]


# ---- the command line ----------------------------------------------------------------------------


def _kq(args: list[str], capsys) -> tuple[int, str, str]:
    from kq.cli import main

    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_exit_codes(paper, tmp_path, capsys, monkeypatch, offline):
    dsn = f"sqlite:///{paper}"
    rc, out, err = _kq(["replay", "hour", "--hour", iso(ENTRY), "--dsn", dsn], capsys)
    assert rc == 0 and out.startswith(f"{iso(ENTRY)}Z: reproduced"), (out, err)
    assert out.splitlines()[1].startswith("ledger verified: ")
    rc, out, _ = _kq(["replay", "hour", "--hour", str(EXIT * H), "--dsn", str(paper)], capsys)  # unix s, path
    assert rc == 0 and "reproduced" in out
    rc, out, err = _kq(["replay", "window", "--start", iso(H0), "--end", "2022-06-02", "--dsn", dsn], capsys)
    assert rc == 0, (out, err)
    table = dict(line.split(None, 1) for line in out.splitlines() if line and not line.startswith(("first", "not")))
    assert table["replayed"] == str(HOURS) and table["reproduced"] == str(HOURS)
    assert "first failure  none" in out and "skipped        3" in out  # 2022-06-02 21:00..23:00 not run
    # bad input: one line, exit 2
    for args, msg in (
        (["--hour", "2022-06-02T05:30"], "not on the hour"),
        (["--hour", "yesterday"], "invalid time"),
        (["--hour", iso(H0 + 500)], "nothing to replay"),
    ):
        rc, out, err = _kq(["replay", "hour", *args, "--dsn", dsn], capsys)
        assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    rc, _, err = _kq(["replay", "hour", "--hour", iso(ENTRY), "--dsn", str(tmp_path / "none.sqlite")], capsys)
    assert rc == 2 and "no ledger at" in err
    rc, _, err = _kq(["replay", "window", "--start", iso(EXIT), "--end", iso(ENTRY), "--dsn", dsn], capsys)
    assert rc == 2 and "before --start" in err
    # an edited ledger: exit 1, the broken seq named
    with Ledger.open(paper, migrate=False) as led:
        f = fill_of(led, EXIT)
    db = edited_copy(paper, tmp_path / "e.sqlite", "UPDATE ledger_entry SET qty = ? WHERE seq = ?", "0.001", f.seq)
    rc, out, _ = _kq(["replay", "hour", "--hour", iso(EXIT), "--dsn", str(db)], capsys)
    assert rc == 1 and f"not replayed: ledger broken at seq {f.seq}" in out, out
    rc, out, _ = _kq(
        ["replay", "window", "--start", iso(H0), "--end", iso(H0 + 5), "--dsn", str(db), "--quiet"], capsys
    )
    assert rc == 1 and f"seq {f.seq}" in out
    # a difference: exit 1, the first differing field printed
    _perturb_inputs(monkeypatch, ENTRY, lambda a, p: a[2]["exp_ret"].__setitem__(0, 0.0))
    rc, out, _ = _kq(["replay", "hour", "--hour", iso(ENTRY), "--dsn", dsn], capsys)
    assert rc == 1 and "differs: decision[close][0] ORDER:ENTRY BTC/USD code: replayed REFUSAL:REFUSE_EDGE" in out
    rc, out, _ = _kq(["replay", "window", "--start", iso(ENTRY - 1), "--end", iso(ENTRY + 1), "--dsn", dsn], capsys)
    assert rc == 1 and "reproduced     2" in out and f"first failure  {iso(ENTRY)}Z: decision[close][0]" in out


def test_cli_manifest_json_and_dsn_from_config(paper, tmp_path, capsys, monkeypatch):
    dsn = f"sqlite:///{paper}"
    rc, out, err = _kq(["replay", "manifest", "--hour", iso(ENTRY), "--dsn", dsn, "--json"], capsys)
    assert rc == 0, err
    m = json.loads(out)
    assert {
        "bars",
        "features",
        "model",
        "config_digest",
        "code_version",
        "universe_sha256",
        "snapshots",
        "ledger",
    } <= set(m)
    assert m["ledger"]["chain_ok"] is True and m["model"]["id"] == "tiny/1"
    rc, out, _ = _kq(["replay", "manifest", "--hour", iso(ENTRY), "--dsn", dsn], capsys)
    assert rc == 0 and m["features"]["hash"] in out and m["snapshots"]["after"]["sha256"] in out
    # the DSN: --config's ledger, else KQ_LEDGER_DSN
    from tests.live_harness import paper_dict
    from tests.test_live_cli import write_toml

    cfg = paper_dict("http://127.0.0.1:9", tmp_path)
    cfg["paths"]["ledger"] = dsn
    toml = write_toml(tmp_path / "paper.toml", cfg)
    rc, out, err = _kq(["replay", "hour", "--hour", iso(EXIT), "--config", str(toml)], capsys)
    assert rc == 0 and "reproduced" in out, err
    monkeypatch.setenv("KQ_LEDGER_DSN", dsn)
    rc, out, err = _kq(["replay", "hour", "--hour", iso(EXIT)], capsys)
    assert rc == 0 and "reproduced" in out, err


# ---- a close that waited for fills (on_bar incomplete, finish_bar journaled) ---------------------
# The paper run never has one (the daemon settles every order within its hour); a ledger whose
# snapshot after still holds orders (an earlier daemon's, or a crash between on_bar and settling)
# does. This ledger is written row by row as Cycle.run_hour writes it, around a machine with three
# synthetic pairs at a flat price, so the carry decisions, cancels, fills, an unexpected fill and
# finish_bar are all replayed.

SYN = ("AAA", "BBB", "CCC")
SYN_H0 = 480_000
SYN_RULES = (
    np.full(3, 0.5),
    np.full(3, 0.5),
    np.full(3, 4, dtype=np.int64),
    np.full(3, 2, dtype=np.int64),
    np.full(3, 4, dtype=np.int64),
)


def _syn_bars(c: float = 100.0):
    from engine.risk.enums import bar_dt

    b = np.zeros(3, dtype=bar_dt)
    b["open"], b["high"], b["low"], b["close"] = c, c * 1.002, c * 0.998, c
    b["volume"], b["valid"], b["atr"], b["spread"], b["cluster"] = 1e6, True, c * 0.01, 0.001, -1
    return b


def _syn_pred(pu: float, er: float):
    from engine.risk.enums import prediction_dt

    p = np.zeros(3, dtype=prediction_dt)
    p["p_up"], p["exp_ret"] = pu, er
    return p


def _syn_hour(led: Ledger, m: Any, hour: int, bars: Any, pred: Any, settle_carry=None, settle=None) -> None:
    """One hour ledgered the way Cycle.run_hour ledgers it: inputs + snapshot before, decisions,
    fills (each booked as the ledger holds it), the journal in the snapshot after, cycle_end."""
    from live_bridge.cycle import BAR_FIELDS, decision_records
    from live_bridge.ledger import records as rec
    from live_bridge.ledger.canonical import exact_decimal

    def dec(x: float):
        return exact_decimal(float(x)) if np.isfinite(x) else None

    batch = []
    for j, pair in enumerate(SYN):
        row: dict[str, Any] = {k: dec(bars[j][k]) for k in BAR_FIELDS}
        row.update(ts=hour * H, valid=bool(bars[j]["valid"]), cluster=int(bars[j]["cluster"]))
        batch.append(rec.bars(hour, pair, [row], payload={"tradable": True}))
        vals = {"p_up": dec(pred[j]["p_up"]), "exp_return": dec(pred[j]["exp_ret"])}
        batch.append(rec.prediction(hour, pair, vals, model_id="syn/1"))
    batch.append(rec.risk_snapshot(hour, "before", m.snapshot()))
    flags = {"entry_block": False, "api_fault": False, "operator": 0, "api_fault_reasons": []}
    batch.append(rec.event("risk_inputs", hour, payload=flags))
    led.append(*batch)
    journal: list[list[Any]] = []
    res = m.on_bar(hour, bars, pred, np.ones(3, dtype=bool), False, False, 0)

    def book(kind: str, tid: str, pair: str, side: str, qty: str, price: str, fee: str, how: int) -> None:
        if kind == "fill":  # our order: its intent first, as the executor writes it
            cid = f"cid-{tid}"
            intent = rec.order_intent(hour, cid, pair, side, qty, price, "limit")
            (_, e) = led.append(intent, rec.fill(hour, tid, pair, side, qty, price, fee, cl_ord_id=cid))
        else:  # a trade the daemon did not make
            (e,) = led.append(rec.fill(hour, tid, pair, side, qty, price, fee, external=True))
        args = (pair, side, float(e.qty or 0), float(e.price or 0), float(e.fee or 0), how)  # as Cycle._book
        (m.on_fill if kind == "fill" else m.on_unexpected_fill)(*args)
        journal.append([kind, tid, how])

    def cancel(pair: str) -> None:
        m.on_cancel(pair)
        journal.append(["cancel", pair])

    if not res.complete:
        led.append(*decision_records(hour, res, SYN, "carry"))
        settle_carry(book, cancel)
        res = m.finish_bar()
        journal.append(["finish_bar"])
    led.append(*decision_records(hour, res, SYN, "close"))
    if settle is not None:
        settle(book, cancel)
    led.append(
        rec.risk_snapshot(hour, "after", m.snapshot(), payload={"pairs": SYN, "journal": journal}),
        rec.cycle_end(hour, "completed"),
    )


@pytest.fixture(scope="module")
def carry_ledger(tmp_path_factory) -> Path:
    from engine.config import load_config
    from engine.risk.enums import FillHow, OrderKind
    from engine.risk.machine import RiskMachine
    from engine.risk.params import params_from_config

    path = tmp_path_factory.mktemp("carry") / "ledger.sqlite"
    m = RiskMachine(SYN, params_from_config(load_config(), entry_kind=int(OrderKind.LIMIT_FIRST)), SYN_RULES)
    bull, bear = (0.9, 0.05), (0.3, -0.02)
    with Ledger.open(path) as led:
        for h in range(5):
            _syn_hour(led, m, SYN_H0 + h, _syn_bars(), _syn_pred(*bear))

        def part(book, cancel):  # AAA's limit fills in part; BBB, CCC are left pending (no settling)
            book("fill", "T1", "AAA", "buy", "1.0", "99.9", "0.1", int(FillHow.LIMIT))

        _syn_hour(led, m, SYN_H0 + 5, _syn_bars(), _syn_pred(*bull), settle=part)
        assert m.pending["active"].all()

        def fallback(book, cancel):  # the close waits: BBB's market fallback fills, the others cancel
            book("fill", "T2", "BBB", "buy", "2.4", "100.2", "0.96", int(FillHow.MARKET_CLOSE))
            cancel("AAA")
            cancel("CCC")

        def stray(book, cancel):  # a fill nobody ordered: booked as unexpected (kill switch)
            for j in np.flatnonzero(m.pending["active"]):
                cancel(SYN[j])
            book("unexpected", "T3", "CCC", "buy", "1.0", "100.0", "0.4", int(FillHow.MARKET_OPEN))

        _syn_hour(led, m, SYN_H0 + 6, _syn_bars(), _syn_pred(*bull), settle_carry=fallback, settle=stray)
        _syn_hour(led, m, SYN_H0 + 7, _syn_bars(101.0), _syn_pred(*bull))
    return path


def test_a_close_that_waited_for_fills_replays_through_finish_bar(carry_ledger, monkeypatch):
    from live_bridge.replay import replay_hour, replay_window

    carry = SYN_H0 + 6
    with Ledger.open(carry_ledger, migrate=False) as led:
        tags = {e.payload["tag"] for e in led.entries(hour=carry, kind=Kind.DECISION)}
        assert tags == {"carry", "close"}
        after = next(e for e in led.entries(hour=carry, kind=Kind.RISK_SNAPSHOT) if e.code == "after")
        kinds = [c[0] for c in after.payload["journal"]]
        assert kinds[:4] == ["fill", "cancel", "cancel", "finish_bar"] and kinds[-1] == "unexpected", kinds
        s = replay_window(led, SYN_H0, SYN_H0 + 7)
        assert s.replayed == s.reproduced == 8 and s.ok, s.first_failure
        # the carry decisions are compared: a bar missing at the waiting close latches the data kill
        # switch, which cancels every fallback: the replayed close is complete, the ledger's waited
        _perturb_inputs(monkeypatch, carry, lambda a, p: a[1]["valid"].__setitem__(1, False))
        r = replay_hour(led, carry)
        assert not r.ok and r.replayed
        assert r.first_diff == "decision[carry]: replayed none (the close was complete) != ledger 6 rows", r.first_diff
        monkeypatch.undo()
        # ... row by row: a fallback quantity the machine would size otherwise is named
        import dataclasses

        import live_bridge.cycle as cycle

        real = cycle.decision_records

        def more(hour, res, pairs, tag="close"):
            out = real(hour, res, pairs, tag)
            return [dataclasses.replace(x, qty=x.qty + 1) if x.qty is not None and tag == "carry" else x for x in out]

        monkeypatch.setattr(cycle, "decision_records", more)
        r = replay_hour(led, carry)
        assert r.first_diff == "decision[carry][3] ORDER:ENTRY AAA qty: replayed 2.4 != ledger 1.4", r.first_diff
        monkeypatch.undo()
        assert replay_hour(led, carry).ok
        # the close after finish_bar is compared too: bearish predictions there decide otherwise
        bear = lambda a, p: a[2]["exp_ret"].__setitem__(slice(None), -0.05)  # noqa: E731
        _perturb_inputs(monkeypatch, carry, bear)
        r = replay_hour(led, carry)
        assert not r.ok and r.first_diff is not None and r.first_diff.startswith("decision[close]"), r.first_diff
        # under the kill switch (the unexpected fill) nothing is decided, yet the changed input is
        # named: the machine keeps the bar's predictions in its snapshot
        monkeypatch.undo()
        _perturb_inputs(monkeypatch, carry + 1, bear)
        r = replay_hour(led, carry + 1)
        assert r.first_diff == "pred[AAA].exp_ret: replayed -0.05 != ledger 0.05", r.first_diff
