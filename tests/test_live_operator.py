"""Operator commands (issue 17): `kq live status`, `kq live reactivate`, `kq live reset-halt`
through the real CLI entry point (``kq.cli.main``), with typed input fed by typer's CliRunner
isolation (stdin, stdout, the environment).

The daemon test runs a paper daemon against the simulator replaying Kraken's real BTC/USD and
ETH/USD bars (tests/live_harness.py) and latches its kill switch the way an outage would: every
OHLC call of one hour's data step fails (``EService:Busy``) with ``cycle.max_api_failures`` 1.
The operator's commands then act on that ledger while the daemon holds it open, and the hour the
reactivation is applied in must replay from the ledger alone. The halt test builds a ledger whose
last snapshot is a halted machine (a 20% drawdown is not reachable in a short real window).
"""

from __future__ import annotations

import json
import sys
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from engine.risk.enums import KillReason, TradingState
from kq.cli import main
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

HOURS_AFTER = 48
HOUR0 = P0 // H + 29  # 2022-06-02 05:00 UTC: BTC/USD would be bought at this close (tests/test_live_faults.py)


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.delenv("KQ_LEDGER_DSN", raising=False)
    monkeypatch.delenv("KQ_LEDGER_HMAC_KEY", raising=False)
    monkeypatch.setenv("KQ_OPERATOR", "alice")


def kq(args: list[str], input: str | None = None, env: dict[str, Any] | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``kq ARGS`` with ``input`` on stdin."""
    with CliRunner().isolation(input=input, env=env) as (out, err, _):
        rc = main(args)
        sys.stdout.flush()
        sys.stderr.flush()
        return rc, out.getvalue().decode(), err.getvalue().decode()


def one_error(err: str, needle: str) -> None:
    e = err.strip()
    assert "\n" not in e and "Traceback" not in e and e.startswith("kq: error: ") and needle in e, err


def status_json(dsn: str) -> dict:
    rc, out, err = kq(["live", "status", "--dsn", dsn, "--json"])
    assert rc == 0, err
    return json.loads(out)


def actions(led: Ledger) -> list:
    return led.entries(kind=Kind.OPERATOR_ACTION)


# ---- the daemon: kill switch latched by an outage, reactivated by the operator -----------------


def test_reactivate_after_an_api_outage_is_confirmed_ledgered_applied_and_replays(tmp_path):
    h = HOUR0
    frames = shared_frames(HOURS_AFTER)
    kraken_store(tmp_path / "m.duckdb", frames, upto=(h - 2) * H)
    sim = start_sim(sim_panel(HOURS_AFTER), start=float((h - 1) * H + SETTLE))
    model = BundleModel(tiny_model_dir())
    d = make_daemon(sim.url, tmp_path, model, cycle={"max_api_failures": 1})
    dsn = str(tmp_path / "ledger.sqlite")
    led = d.ledger

    def run(hour: int):
        sim.ex.advance(to=float((hour + 1) * H + SETTLE))
        (rep,) = d.run_once()
        return rep

    try:
        d.start()
        assert run(h - 1).state == "ACTIVE"
        win = {"endpoint": "OHLC", "from_ts": (h + 1) * H, "until_ts": (h + 1) * H + SETTLE + 1}
        code, body = sim.admin("/admin/faults", {"kind": "error", "message": "EService:Busy", "count": None, **win})
        assert code == 200, body
        rep = run(h)
        assert rep.state == "KILL_SWITCH"

        # status, from the ledger only: the latch, its reason, what is asked for the next bar
        s = status_json(dsn)
        assert s["state"] == "KILL_SWITCH" and s["kill_switch"] is True
        assert s["kill_reason"] == KillReason.API_INSTABILITY.name
        assert s["last_completed"] == h and s["next_hour"] == h + 1 and s["snapshot_hour"] == h
        assert s["latch_next"] and "failed" in s["latch_next"][0]
        assert s["model_id"] == "tiny/1" and s["manifest_sha256"] == str(model.manifest_sha256)
        assert D(s["equity"]) == D(repr(float(d.cycle.machine.state[0]["equity"])))
        assert s["halted"] is False and s["positions"] == [] and s["pending_actions"] == []
        assert s["open_intents"] == []
        rc, out, err = kq(["live", "status", "--dsn", dsn])
        assert rc == 0 and "KILL_SWITCH" in out and "latched: API_INSTABILITY" in out, out + err

        # the data is back: the switch stays latched, nothing more is asked for the next bar
        assert run(h + 1).state == "KILL_SWITCH"
        assert status_json(dsn)["latch_next"] == []

        # refused without the typed word: a wrong word, an empty answer, end of input
        n = led.count()
        for typed in ("nope\n", "\n", ""):
            rc, out, err = kq(["live", "reactivate", "--dsn", dsn, "--reason", "OHLC back"], input=typed)
            assert rc == 2, (typed, out, err)
            assert "kill reason API_INSTABILITY" in out
        one_error(err, "no confirmation typed: nothing written")
        rc, out, err = kq(["live", "reactivate", "--dsn", dsn, "--reason", "x", "--confirm", "reset-halt"])
        assert rc == 2
        one_error(err, "is not 'reactivate': nothing written")
        assert led.count() == n and actions(led) == []

        # typed: one operator_action row, applied at the next close
        rc, out, err = kq(["live", "reactivate", "--dsn", dsn, "--reason", "OHLC back"], input="reactivate\n")
        assert rc == 0, err
        assert f"applied at the next bar close (hour 2022-06-02 {(h + 2) % 24:02d}:00 UTC" in out, out
        assert led.count() == n + 1
        (act,) = actions(led)
        assert act.code == "reactivate"
        assert act.payload["reason"] == "OHLC back" and act.payload["actor"] == "alice"
        assert act.payload["confirmation"] == "reactivate"
        assert act.payload["params"]["seen"]["kill_reason"] == "API_INSTABILITY"
        pend = status_json(dsn)["pending_actions"]
        assert [(a["seq"], a["action"], a["actor"]) for a in pend] == [(act.seq, "reactivate", "alice")]
        # the same action again while one is pending: refused
        rc, out, err = kq(["live", "reactivate", "--dsn", dsn, "--reason", "again", "--yes-reactivate"])
        assert rc == 2
        one_error(err, f"a reactivate is already pending (seq {act.seq}, by alice)")
        assert len(actions(led)) == 1

        # the next close applies it through the operator input
        rep = run(h + 2)
        (applied,) = led.entries(hour=h + 2, kind=Kind.OPERATOR_APPLIED)
        assert applied.ref_seq == act.seq and applied.code == "applied"
        (ri,) = [e for e in led.entries(hour=h + 2, kind=Kind.EVENT) if e.code == "risk_inputs"]
        assert ri.payload["operator"] == 1
        assert rep.state == "ACTIVE"
        s = status_json(dsn)
        assert s["state"] == "ACTIVE" and s["kill_switch"] is False and s["kill_reason"] == "NONE"
        assert s["pending_actions"] == [] and s["last_completed"] == h + 2

        # the hour it was applied in (and the latch hour) replay from the ledger alone
        for hour in (h, h + 2):
            r = replay_hour(led, hour)
            assert r.ok, r.first_diff

        # nothing to reset now: both refused, nothing written
        n = led.count()
        rc, out, err = kq(["live", "reactivate", "--dsn", dsn, "--reason", "x", "--confirm", "reactivate"])
        assert rc == 2
        one_error(err, "the kill switch is not latched (state ACTIVE")
        rc, out, err = kq(["live", "reset-halt", "--dsn", dsn, "--reason", "x"], input="reset-halt\n")
        assert rc == 2 and "drawdown 0.00% from peak" in out, out
        one_error(err, "the drawdown halt is not latched")
        assert led.count() == n

        # --force writes it anyway; the machine ignores a reset of what is not latched, and the
        # hour still replays
        force = ["--reason", "drill", "--confirm", "reset-halt", "--force"]
        rc, out, err = kq(["live", "reset-halt", "--dsn", dsn, *force])
        assert rc == 0, err
        rep = run(h + 3)
        (applied,) = led.entries(hour=h + 3, kind=Kind.OPERATOR_APPLIED)
        assert applied.code == "applied" and rep.state == "ACTIVE"
        (ri,) = [e for e in led.entries(hour=h + 3, kind=Kind.EVENT) if e.code == "risk_inputs"]
        assert ri.payload["operator"] == 2
        assert replay_hour(led, h + 3).ok
        assert led.verify().ok
    finally:
        d.close()
        sim.stop()


# ---- the drawdown halt: shown, confirmed, ledgered ---------------------------------------------


def halted_ledger(path: Path, hour: int) -> str:
    """A ledger whose last completed hour left the machine halted: equity 90,000 from a peak of
    120,000 (drawdown 25%), one BTC/USD position."""
    from engine.config import load_config
    from engine.risk.machine import RiskMachine
    from live_bridge.cycle import live_params

    m = RiskMachine(["BTC/USD", "ETH/USD"], live_params(load_config(), D("100000")))
    st = m.state[0]
    st["bar"], st["cash"], st["equity"], st["exposure"] = hour, 60_000.0, 90_000.0, 30_000.0
    st["peak"], st["drawdown"], st["tier"], st["halted"], st["halt_bar"] = 120_000.0, 0.25, 2, 1, hour
    st["trading_state"], st["n_positions"] = int(TradingState.HALTED), 1
    p = m.positions[0]
    p["qty"], p["entry_price"], p["entry_bar"], p["mark"] = 1.5, 21_000.0, hour - 5, 20_000.0
    p["stop"], p["take_profit"] = 19_500.0, np.nan
    dsn = str(path)
    with Ledger.open(dsn) as led:
        led.append(
            rec.model(hour, "tiny/1", "ab" * 32),
            rec.risk_snapshot(hour, "after", m.snapshot(), payload={"init_cash": D("100000"), "pairs": list(m.pairs)}),
            rec.cycle_end(hour, "completed", payload={"latch_next": []}),
        )
    return dsn


def test_reset_halt_shows_the_drawdown_and_peak_then_ledgers_one_confirmed_action(tmp_path):
    hour = P0 // H + 10
    dsn = halted_ledger(tmp_path / "ledger.sqlite", hour)
    s = status_json(dsn)
    assert (s["state"], s["halted"], s["tier"], s["kill_switch"]) == ("HALTED", True, 2, False)
    assert (s["equity"], s["cash"], s["peak"], s["drawdown"]) == ("90000.0", "60000.0", "120000.0", "0.25")
    assert s["exposure"] == "30000.0" and D(s["exposure_frac"]) == D(repr(30_000.0 / 90_000.0))
    (pos,) = s["positions"]
    assert pos == {
        "pair": "BTC/USD",
        "qty": "1.5",
        "entry_price": "21000.0",
        "stop": "19500.0",
        "take_profit": None,
        "entry_hour": hour - 5,
        "mark": "20000.0",
        "value": "30000.0",
    }
    assert s["next_hour"] == hour + 1 and s["model_id"] == "tiny/1" and s["manifest_sha256"] == "ab" * 32
    rc, out, err = kq(["live", "status", "--dsn", dsn])
    assert rc == 0 and "HALTED (drawdown tier 2)" in out and "120,000.00" in out and "BTC/USD" in out, out + err

    with Ledger.open(dsn, migrate=False) as led:
        n = led.count()
        # the kill switch is not latched here: reactivate is refused before any prompt
        rc, out, err = kq(["live", "reactivate", "--dsn", dsn, "--reason", "x"], input="reactivate\n")
        assert rc == 2 and "type 'reactivate'" not in out
        one_error(err, "the kill switch is not latched (state HALTED")
        for typed in ("reset_halt\n", "reactivate\n", ""):
            rc, out, err = kq(["live", "reset-halt", "--dsn", dsn, "--reason", "reviewed"], input=typed)
            assert rc == 2, (typed, out, err)
            assert "drawdown 25.00% from peak 120,000.00 (equity 90,000.00)" in out, out
        assert led.count() == n

        rc, out, err = kq(
            ["live", "reset-halt", "--dsn", dsn, "--reason", "reviewed: model ok"],
            input="reset-halt\n",
            env={"KQ_OPERATOR": None},
        )
        assert rc == 0, err
        assert "applied at the next bar close (hour " in out and f"seq {n + 1}" in out, out
        (act,) = led.entries(kind=Kind.OPERATOR_ACTION)
        assert act.seq == n + 1 and act.code == "reset_halt" and act.payload["confirmation"] == "reset-halt"
        assert act.payload["actor"] not in ("", "alice")  # the OS user without KQ_OPERATOR
        assert act.payload["params"]["seen"]["peak"] == "120000.0"
        assert act.payload["params"]["seen"]["drawdown"] == "0.25"
        assert led.pending_operator_actions()[0].seq == act.seq
        rc, out, err = kq(["live", "reset-halt", "--dsn", dsn, "--reason", "again", "--yes-reset-halt"])
        assert rc == 2
        one_error(err, "a reset-halt is already pending")
        assert led.count() == n + 1


def test_status_and_requests_on_an_empty_or_missing_ledger(tmp_path):
    missing = str(tmp_path / "nope.sqlite")
    rc, out, err = kq(["live", "status", "--dsn", missing])
    assert rc == 2
    one_error(err, "no ledger at")
    assert not Path(missing).exists()
    rc, out, err = kq(["live", "status", "--dsn", missing, "--config", "x.toml"])
    assert rc == 2
    one_error(err, "give --config or --dsn, not both")

    dsn = str(tmp_path / "ledger.sqlite")
    Ledger.open(dsn).close()
    s = status_json(dsn)
    assert s["portfolio"] is False and s["state"] is None and s["next_hour"] is None and s["last_completed"] is None
    rc, out, err = kq(["live", "status", "--dsn", dsn])
    assert rc == 0 and "none yet" in out
    rc, out, err = kq(["live", "reactivate", "--dsn", dsn, "--reason", "x", "--confirm", "reactivate"])
    assert rc == 2
    one_error(err, "the ledger holds no completed hour yet")
    with Ledger.open(dsn, migrate=False) as led:
        assert led.count() == 0
