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
