"""``kq live set-ceiling`` (issue 17): the capital ceiling (R3b) changed by a ledgered operator
action, applied by the daemon at the next bar close, restored after a restart and replayed.

The daemon test runs a paper daemon against the simulator replaying Kraken's real BTC/USD and
ETH/USD bars (tests/live_harness.py): at the close of 2022-06-02 05:00 UTC the model buys BTC/USD
(tests/test_live_faults.py). The operator lowers the ceiling to 10,000 (equity about 100,000) the
hour before: that entry must be about a tenth of the one the same close decides without it (the
hour's ledgered inputs re-run on the snapshot before, ceiling off).
"""

from __future__ import annotations

import math
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.errors import InputError
from live_bridge.ledger import Kind, Ledger
from live_bridge.ledger import records as rec
from live_bridge.replay import replay_hour
from live_bridge.simulator.testing import start_sim
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
from tests.test_live_operator import kq, one_error, status_json

HOURS_AFTER = 40
ENTRY = P0 // H + 29  # 2022-06-02 05:00 UTC: BTC/USD is bought at this close


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.delenv("KQ_LEDGER_DSN", raising=False)
    monkeypatch.delenv("KQ_LEDGER_HMAC_KEY", raising=False)
    monkeypatch.setenv("KQ_OPERATOR", "alice")


def machine_ceiling(blob: bytes) -> float:
    from engine.risk.machine import RiskMachine

    return float(RiskMachine.restore(blob).params[0]["capital_ceiling"])


def after_snapshot(led: Ledger, hour: int):
    (e,) = [x for x in led.entries(hour=hour, kind=Kind.RISK_SNAPSHOT) if x.code == "after"]
    return e


def buys(led: Ledger, hour: int) -> list:
    rows = led.entries(hour=hour, kind=Kind.DECISION)
    return [e for e in rows if str(e.code).startswith("ORDER:") and e.side == "buy"]


def test_set_ceiling_is_confirmed_ledgered_applied_at_the_next_close_restored_and_replayed(tmp_path):
    h = ENTRY
    frames = shared_frames(HOURS_AFTER)
    kraken_store(tmp_path / "m.duckdb", frames, upto=(h - 2) * H)
    sim = start_sim(sim_panel(HOURS_AFTER), start=float((h - 1) * H + SETTLE))
    model = BundleModel(tiny_model_dir())
    d = make_daemon(sim.url, tmp_path, model)
    dsn = str(tmp_path / "ledger.sqlite")

    def run(daemon: Any, hour: int):
        sim.ex.advance(to=float((hour + 1) * H + SETTLE))
        (rep,) = daemon.run_once()
        assert rep.status == "completed", rep.line()
        return rep

    d2 = None
    try:
        d.start()
        led = d.ledger
        assert run(d, h - 1).state == "ACTIVE"
        s = status_json(dsn)
        equity = D(s["equity"])
        assert s["capital_ceiling"] == "inf" and s["ceiling_source"] == "config" and D(s["cap_base"]) == equity
        assert s["pending_ceiling"] is None and s["ceiling_set"] is None

        # refused, nothing written: bad amounts, the ceiling in force, no or a wrong confirmation
        n = led.count()
        for to, needle in (
            ("0", "must be a positive amount"),
            ("-5", "must be a positive amount"),
            ("abc", "not a number"),
            ("NaN", "must be a positive amount"),
            ("off", "the capital ceiling is already off"),
        ):
            rc, out, err = kq(["live", "set-ceiling", "--dsn", dsn, "--to", to, "--reason", "r"], input="set-ceiling\n")
            assert rc == 2, (to, out, err)
            one_error(err, needle)
        for typed in ("set_ceiling\n", "\n", ""):
            rc, out, err = kq(["live", "set-ceiling", "--dsn", dsn, "--to", "10000", "--reason", "r"], input=typed)
            assert rc == 2, (typed, out, err)
            assert "capital ceiling off (config)" in out and "new capital ceiling 10,000.00" in out, out
            assert f"equity {float(equity):,.2f}" in out, out
        one_error(err, "no confirmation typed: nothing written")
        rc, out, err = kq(["live", "set-ceiling", "--dsn", dsn, "--to", "10000", "--reason", "r", "--confirm", "pause"])
        assert rc == 2
        one_error(err, "is not 'set-ceiling': nothing written")
        assert led.count() == n

        # confirmed: one operator_action carrying the exact value, pending until the next close
        rc, out, err = kq(
            ["live", "set-ceiling", "--dsn", dsn, "--to", "10000.00", "--reason", "drill: cap the risk"],
            input="set-ceiling\n",
        )
        assert rc == 0, err
        assert "set-ceiling to 10000.00 ledgered" in out and f"2022-06-02 {h % 24:02d}:00 UTC" in out, out
        (act,) = led.entries(kind=Kind.OPERATOR_ACTION)
        assert act.code == "set_ceiling" and act.payload["params"]["ceiling"] == "10000.00"
        assert act.payload["confirmation"] == "set-ceiling" and act.payload["actor"] == "alice"
        assert act.payload["params"]["seen"]["capital_ceiling"] == "inf"
        s = status_json(dsn)
        assert s["pending_ceiling"] == "10000.00" and s["capital_ceiling"] == "inf"
        rc, out, err = kq(
            ["live", "set-ceiling", "--dsn", dsn, "--to", "9000", "--reason", "r", "--confirm", "set-ceiling"]
        )
        assert rc == 2
        one_error(err, "a set-ceiling to 10000.00 is already pending")

        # the next close applies it before its risk step
        rep = run(d, h)
        (ap,) = led.entries(hour=h, kind=Kind.OPERATOR_APPLIED)
        assert ap.ref_seq == act.seq and ap.code == "applied"
        assert ap.payload == {"old": "off", "new": "10000.00", "param": "10000.0"}
        (ri,) = [e for e in led.entries(hour=h, kind=Kind.EVENT) if e.code == "risk_inputs"]
        assert ap.seq < ri.seq  # part of the hour's input batch
        (before,) = [e for e in led.entries(hour=h, kind=Kind.RISK_SNAPSHOT) if e.code == "before"]
        assert machine_ceiling(before.blob) == math.inf  # the close starts under the old ceiling
        assert machine_ceiling(after_snapshot(led, h).blob) == 10_000.0
        assert float(d.cycle.machine.params[0]["capital_ceiling"]) == 10_000.0

        # the entry is sized on min(equity, 10,000): the same close without the change buys ~10x more
        (buy,) = buys(led, h)
        assert buy.pair == "BTC/USD" and rep.fills >= 1
        from engine.risk.machine import RiskMachine
        from live_bridge.cycle import recorded_inputs

        ref = RiskMachine.restore(before.blob)
        args, _ = recorded_inputs(led, h, ref.pairs)
        res = ref.on_bar(*args)
        (j,) = [int(j) for o, j in zip(res.orders, res.order_pairs, strict=True) if int(o["side"]) > 0]
        base_qty = float(res.orders[[int(x) for x in res.order_pairs].index(j)]["qty"])
        eq_before = float(RiskMachine.restore(before.blob).state[0]["equity"])
        assert float(buy.qty) < base_qty
        assert float(buy.qty) / base_qty == pytest.approx(10_000.0 / eq_before, rel=0.02)
        pos_value = float(d.cycle.machine.positions[0]["qty"]) * float(d.cycle.machine.positions[0]["mark"])
        assert 0 < pos_value <= 10_000.0

        # replay reproduces the hour it was applied in (and the one before)
        for hour in (h - 1, h):
            r = replay_hour(led, hour)
            assert r.ok, r.first_diff
        assert replay_hour(led, h).details["capital_ceiling"] == {"old": "off", "new": "10000.00", "param": "10000.0"}
        rc, out, err = kq(["replay", "hour", "--dsn", dsn, "--hour", "2022-06-02T05:00"])
        assert rc == 0 and "reproduced" in out, out + err

        s = status_json(dsn)
        assert s["capital_ceiling"] == "10000.0" and s["cap_base"] == "10000.0" and s["pending_ceiling"] is None
        assert s["ceiling_set"]["new"] == "10000.00" and s["ceiling_source"].startswith(f"set_ceiling seq {act.seq}")
        rc, out, err = kq(["live", "status", "--dsn", dsn])
        assert rc == 0 and "10,000.00 (set_ceiling seq" in out and "cap base" in out, out + err
        rc, out, err = kq(
            ["live", "set-ceiling", "--dsn", dsn, "--to", "10000", "--reason", "r", "--confirm", "set-ceiling"]
        )
        assert rc == 2
        one_error(err, "the capital ceiling is already 10000.0")

        # a restart under a config whose ceiling was edited since: the ledger's stays in force
        d.close()
        d2 = make_daemon(sim.url, tmp_path, model, capital_ceiling="50000")
        srep = d2.start()
        # the edited config is not silently ignored: the start says which ceiling is in force
        (note,) = srep.notes
        assert "capital_ceiling 50000" in note and "NOT in force" in note and "set_ceiling 10000" in note
        run(d2, h + 1)
        led2 = d2.ledger
        assert machine_ceiling(after_snapshot(led2, h + 1).blob) == 10_000.0
        from live_bridge.operator import status

        st = status(led2, d2.live)
        assert st.config_ceiling == "50000" and st.capital_ceiling == "10000.0"
        assert st.ceiling_warning is not None and "the ledger's is in force" in st.ceiling_warning

        # raised back (off) by the same path: applied at the next close, replayed
        rc, out, err = kq(
            ["live", "set-ceiling", "--dsn", dsn, "--to", "off", "--reason", "drill over"], input="set-ceiling\n"
        )
        assert rc == 0, err
        run(d2, h + 2)
        (ap2,) = led2.entries(hour=h + 2, kind=Kind.OPERATOR_APPLIED)
        assert ap2.payload == {"old": "10000.00", "new": "off", "param": "inf"}
        assert machine_ceiling(after_snapshot(led2, h + 2).blob) == math.inf
        for hour in (h + 1, h + 2):
            r = replay_hour(led2, hour)
            assert r.ok, r.first_diff
        assert led2.verify().ok
    finally:
        d.close()
        if d2 is not None:
            d2.close()
        sim.stop()


# ---- without a daemon -----------------------------------------------------------------------------


def snapshot_ledger(path: Path, hour: int, ceiling: D | None = None) -> str:
    from engine.config import load_config
    from engine.risk.machine import RiskMachine
    from live_bridge.cycle import live_params

    m = RiskMachine(["BTC/USD", "ETH/USD"], live_params(load_config(), D("100000"), ceiling))
    m.state[0]["bar"] = hour
    dsn = str(path)
    with Ledger.open(dsn) as led:
        led.append(
            rec.risk_snapshot(hour, "after", m.snapshot(), payload={"init_cash": D("100000"), "pairs": list(m.pairs)}),
            rec.cycle_end(hour, "completed", payload={"latch_next": []}),
        )
    return dsn


def test_set_ceiling_refusals_without_a_portfolio_and_the_machine_method(tmp_path):
    from engine.config import load_config
    from engine.risk.machine import RiskMachine
    from live_bridge.ceiling import parse_ceiling
    from live_bridge.cycle import live_params
    from live_bridge.operator import request_ceiling

    dsn = str(tmp_path / "empty.sqlite")
    Ledger.open(dsn).close()
    rc, out, err = kq(
        ["live", "set-ceiling", "--dsn", dsn, "--to", "5000", "--reason", "r", "--confirm", "set-ceiling"]
    )
    assert rc == 2
    one_error(err, "the ledger holds no completed hour yet")
    rc, out, err = kq(["live", "set-ceiling", "--dsn", dsn, "--to", "5000", "--confirm", "set-ceiling"])
    assert rc == 2 and "--reason" in err  # required
    with Ledger.open(dsn, migrate=False) as led:
        assert led.count() == 0

    dsn = snapshot_ledger(tmp_path / "l.sqlite", P0 // H, D("25000"))
    s = status_json(dsn)
    assert s["capital_ceiling"] == "25000.0" and s["cap_base"] == "25000.0" and s["equity"] == "100000.0"
    rc, out, err = kq(
        ["live", "set-ceiling", "--dsn", dsn, "--to", "25000", "--reason", "r", "--confirm", "set-ceiling"]
    )
    assert rc == 2
    one_error(err, "the capital ceiling is already 25000.0")
    with Ledger.open(dsn, migrate=False) as led:
        n = led.count()
        with pytest.raises(InputError, match="not 'set-ceiling'"):
            request_ceiling(led, "1000", "r", "alice", "pause")
        with pytest.raises(InputError, match="--reason is empty"):
            request_ceiling(led, "1000", " ", "alice", "set-ceiling")
        # --force writes the same value anyway
        r = request_ceiling(led, "25000", "drill", "alice", "set-ceiling", force=True)
        assert r.entry.payload["params"]["ceiling"] == "25000" and led.count() == n + 1

    assert parse_ceiling("off") is None and parse_ceiling(" OFF ") is None
    assert parse_ceiling("1e3") == D("1000") and str(parse_ceiling("2500.50")) == "2500.50"
    for bad in ("", "inf", "-1", "0.0", "1,000", "x"):
        with pytest.raises(InputError):
            parse_ceiling(bad)

    m = RiskMachine(["BTC/USD"], live_params(load_config(), D("1000")))
    m.set_capital_ceiling(500.0)
    assert float(RiskMachine.restore(m.snapshot()).params[0]["capital_ceiling"]) == 500.0
    for bad in (0.0, -1.0, float("nan"), "x"):
        with pytest.raises(InputError):
            m.set_capital_ceiling(bad)  # type: ignore[arg-type]
    m.set_capital_ceiling(math.inf)
    assert np.isinf(m.params[0]["capital_ceiling"])

    # kq parity does not run set_ceiling operations: refused in one line
    from live_bridge.parity import Operation

    with pytest.raises(InputError, match="operator action 'set_ceiling': one of reactivate"):
        Operation(P0 // H, "set_ceiling")


def test_amounts_the_risk_step_cannot_hold_are_refused_before_the_ledger():
    """An amount whose float underflows to 0 (or overflows to inf, which reads as 'off') is refused
    by the command: once ledgered, it would stop the daemon at the close that applies it, at every
    restart."""
    from decimal import Decimal

    from engine.errors import InputError
    from live_bridge.ceiling import parse_ceiling

    for bad in ("1e-350", "0.001"):
        with pytest.raises(InputError, match="out of range"):
            parse_ceiling(bad)
    with pytest.raises(InputError, match="digits"):  # the ledger's own limit comes first
        parse_ceiling("1e400")
    assert parse_ceiling("0.01") == Decimal("0.01") and parse_ceiling("2500.5") == Decimal("2500.5")
