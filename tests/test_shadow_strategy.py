"""A shadow under ``[strategy] enabled`` follows the approved model's rules: the candidate's P(up)
goes through the regime selector on the hour's window (parked where no selected profile has a
candidate) and the bar's profile exits and preservation floor reach its machine, so the shadow is
a backtest of the candidate under the same strategy layer, not of its raw P(up)."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import numpy as np
import pytest

from engine.paths import configs_dir
from live_bridge.ledger import Kind
from tests.live_harness import P0, H, sim_panel
from tests.test_shadow import (  # noqa: F401  (module fixtures: the approved model and the registry)
    HOURS,
    REF,
    START,
    START_USD,
    _backtest_of_the_ledger,
    _env,
    approved,
    registry,
    start,
)


@pytest.mark.parametrize("thresholds", ["config", "model"])
def test_shadow_steps_the_candidate_through_the_selector(tmp_path, approved, registry, thresholds):  # noqa: F811
    from engine.backtest.runner import run_backtest
    from engine.config import load_config
    from engine.strategy import apply_strategy, bar_exits
    from live_bridge.cycle import live_params, strategy_raw_regime
    from live_bridge.ledger.canonical import exact_decimal

    eng = tmp_path / "engine.toml"
    eng.write_text(
        f'extends = "{configs_dir() / "default.toml"}"\n[strategy]\nenabled = true\n'
        f'regime_thresholds = "{thresholds}"\n'
    )
    run = start(tmp_path / "run", approved, HOURS, shadow={"model": REF}, engine_config=str(eng))
    try:
        reps = run.advance(HOURS)
        assert all(r.status == "completed" for r in reps)
        assert not [e for e in run.ledger.entries(kind=Kind.EVENT) if e.code == "shadow_failed"]
        led = run.ledger
        first, last = START // H, START // H + HOURS - 1
        raw, _ = _backtest_of_the_ledger(led, first, last, Decimal(START_USD))
        # the selector on the candidate's P(up), over the whole history (causal: the hour's window
        # gives the same labels, tests/test_strategy.py), exits from the ledgered ATR
        cfg = load_config(eng)
        panel = sim_panel((START - P0) // H + HOURS + 10)
        rows = np.searchsorted(panel.ts, raw.ts)
        assert (panel.ts[rows] == raw.ts).all()
        pu = np.full(panel.close.shape, np.nan)
        pu[rows] = raw.p_up
        # "model": the CANDIDATE's fitted regime rule (the one it would trade by)
        codes = strategy_raw_regime(cfg, run.daemon.shadow.model, panel)
        assert (codes is None) == (thresholds == "config")
        sel = apply_strategy(panel.high, panel.close, panel.volume, panel.valid, pu, cfg, codes)
        win = dataclasses.replace(sel, **{f.name: getattr(sel, f.name)[rows] for f in dataclasses.fields(sel)})
        inp = dataclasses.replace(
            raw, p_up=sel.p_up_gated[rows], bar_exits=bar_exits(win, raw.close, raw.atr, panel.valid[rows])
        )
        parked = (raw.p_up >= cfg.risk.p_up_entry) & (inp.p_up < cfg.risk.p_up_entry)
        assert parked.any() and (~parked & (raw.p_up >= cfg.risk.p_up_entry)).any()  # both sides
        bt = run_backtest(inp, live_params(cfg, Decimal(START_USD)))
        states = [
            e for e in led.entries(kind=Kind.EVENT) if e.code == "shadow_decision" and e.payload["code"][:6] == "STATE:"
        ]
        d = lambda x: exact_decimal(float(x))  # noqa: E731
        assert [Decimal(e.payload["equity"]) for e in states] == [d(x) for x in bt.equity["equity"]]
        fills = [e for e in led.entries(kind=Kind.EVENT) if e.code == "shadow_fill"]
        assert len(fills) == len(bt.trades) > 0
        assert [Decimal(e.payload["qty"]) for e in fills] == [d(x) for x in bt.trades["qty"]]
        plain = run_backtest(raw, live_params(cfg, Decimal(START_USD)))
        assert plain.trades.tobytes() != bt.trades.tobytes()  # the layer changed what the shadow did
    finally:
        run.close()
