"""Operator pause, resume and flatten (issue 17) on a paper daemon: the simulator replays Kraken's
real BTC/USD and ETH/USD bars (tests/live_harness.py); the tiny model buys BTC/USD at the close of
2022-06-02 05:00 UTC. ``kq live flatten`` is refused without its typed word, then ledgered; the
next close sells the position through the executor (EXIT_OPERATOR), the machine and the
simulator's account are flat, and that hour replays from the ledger alone. ``kq live pause`` and
``resume`` then latch and lift the pause through the same operator input."""

from __future__ import annotations

from decimal import Decimal as D

from live_bridge.ledger import Kind
from live_bridge.replay import replay_hour
from live_bridge.simulator.testing import KEY, start_sim
from tests.live_harness import (
    SETTLE,
    BundleModel,
    H,
    kraken_store,
    make_daemon,
    shared_frames,
    sim_panel,
    tiny_model_dir,
)
from tests.test_live_operator import HOUR0, HOURS_AFTER, _env, kq, one_error, status_json  # noqa: F401

BTC = ("XXBT", "XBT", "BTC")


def btc_balance(acct) -> D:
    return sum((D(acct.balances.get(k, D(0))) for k in BTC), D(0))


def test_flatten_sells_through_the_executor_then_pause_and_resume_replay(tmp_path):
    h = HOUR0
    frames = shared_frames(HOURS_AFTER)
    kraken_store(tmp_path / "m.duckdb", frames, upto=(h - 2) * H)
    sim = start_sim(sim_panel(HOURS_AFTER), start=float((h - 1) * H + SETTLE))
    acct = sim.ex.accounts[KEY]
    d = make_daemon(sim.url, tmp_path, BundleModel(tiny_model_dir()))
    dsn = str(tmp_path / "ledger.sqlite")
    led = d.ledger

    def run(hour: int):
        sim.ex.advance(to=float((hour + 1) * H + SETTLE))
        (rep,) = d.run_once()
        return rep

    try:
        d.start()
        run(h - 1)
        run(h)
        # the entry decided at the close of h is bought through the executor
        hour = h
        while float(d.cycle.machine.positions[0]["qty"]) == 0.0 and hour < h + 3:
            hour += 1
            run(hour)
        assert float(d.cycle.machine.positions[0]["qty"]) > 0.0
        assert btc_balance(acct) > 0
        s = status_json(dsn)
        assert [p["pair"] for p in s["positions"]] == ["BTC/USD"] and s["paused"] is False

        # refused without the typed word; nothing written
        n = led.count()
        for typed in ("flat\n", ""):
            rc, out, err = kq(["live", "flatten", "--dsn", dsn, "--reason", "drill"], input=typed)
            assert rc == 2 and "open positions: BTC/USD" in out, (typed, out, err)
        rc, out, err = kq(["live", "flatten", "--dsn", dsn, "--reason", "drill", "--confirm", "pause"])
        assert rc == 2
        one_error(err, "is not 'flatten': nothing written")
        assert led.count() == n

        rc, out, err = kq(["live", "flatten", "--dsn", dsn, "--reason", "drill"], input="flatten\n")
        assert rc == 0, err
        (act,) = led.entries(kind=Kind.OPERATOR_ACTION)
        assert act.code == "flatten" and act.payload["params"]["seen"]["positions"] == ["BTC/USD"]

        # the next close: exit at market with EXIT_OPERATOR, no entry decided, sold by the executor
        hf = hour + 1
        run(hf)
        (applied,) = led.entries(hour=hf, kind=Kind.OPERATOR_APPLIED)
        assert applied.ref_seq == act.seq and applied.code == "applied"
        (ri,) = [e for e in led.entries(hour=hf, kind=Kind.EVENT) if e.code == "risk_inputs"]
        assert ri.payload["operator"] == 16
        codes = [(e.code, e.pair) for e in led.entries(hour=hf, kind=Kind.DECISION)]
        assert ("ORDER:EXIT_OPERATOR", "BTC/USD") in codes, codes
        assert not any(c == "ORDER:ENTRY" for c, _ in codes), codes
        assert float(d.cycle.machine.positions[0]["qty"]) == 0.0 and int(d.cycle.machine.state[0]["n_positions"]) == 0
        assert btc_balance(acct) == 0
        fills = led.entries(hour=hf, kind=Kind.FILL)
        assert fills and all(e.side == "sell" and e.pair == "BTC/USD" for e in fills)
        r = replay_hour(led, hf)
        assert r.ok, r.first_diff

        # nothing left to flatten: refused before the prompt
        rc, out, err = kq(["live", "flatten", "--dsn", dsn, "--reason", "x", "--confirm", "flatten"])
        assert rc == 2
        one_error(err, "no open position to flatten")

        # pause: refused when not paused is for resume; pause latches at the next close
        rc, out, err = kq(["live", "resume", "--dsn", dsn, "--reason", "x", "--confirm", "resume"])
        assert rc == 2
        one_error(err, "trading is not paused")
        rc, out, err = kq(["live", "pause", "--dsn", dsn, "--reason", "review"], input="pause\n")
        assert rc == 0, err
        run(hf + 1)
        assert int(d.cycle.machine.state[0]["paused"]) == 1
        s = status_json(dsn)
        assert s["paused"] is True
        codes = [e.code for e in led.entries(hour=hf + 1, kind=Kind.DECISION)]
        assert "PAUSE:OPERATOR_PAUSE" in codes and "ORDER:ENTRY" not in codes, codes
        assert replay_hour(led, hf + 1).ok
        rc, out, err = kq(["live", "pause", "--dsn", dsn, "--reason", "x", "--confirm", "pause"])
        assert rc == 2
        one_error(err, "trading is already paused")
        rc, out, err = kq(["live", "status", "--dsn", dsn])
        assert rc == 0 and "paused (no new entries)" in out, out
        rc, out, err = kq(["live", "resume", "--dsn", dsn, "--reason", "ok", "--confirm", "resume"])
        assert rc == 0, err
        run(hf + 2)
        assert int(d.cycle.machine.state[0]["paused"]) == 0 and status_json(dsn)["paused"] is False
        assert "RESUME:OPERATOR_RESUME" in [e.code for e in led.entries(hour=hf + 2, kind=Kind.DECISION)]
        assert replay_hour(led, hf + 2).ok
        assert led.verify().ok
    finally:
        d.close()
        sim.stop()
