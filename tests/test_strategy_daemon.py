"""The regime selector in the paper daemon: with ``[strategy] enabled`` the daemon builds its risk
inputs with the same ``make_inputs`` as the backtester (so the selector runs inside them), ledgers
the selector's choice per pair and hour as an event whose code names the profile
(``strategy_<profile>_entry`` / ``_no_entry``), and every hour still replays from the ledger alone."""

from __future__ import annotations

import pytest

from engine.paths import configs_dir
from live_bridge.ledger import Kind
from tests.live_harness import BundleModel, H, tiny_model_dir
from tests.test_live_daemon import PAPER_FIRST, advance, start_run

HOURS = 40


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("strategy")
    eng = tmp / "engine.toml"
    # defensive everywhere: only P(up) >= 0.65 passes, so the selector both passes and parks entries
    eng.write_text(
        f'extends = "{configs_dir() / "default.toml"}"\n[strategy]\nenabled = true\n'
        "[strategy.selector]\n"
        + "".join(f'{r} = [{{profile = "defensive"}}]\n' for r in ("range", "trending", "high_vol", "unknown"))
    )
    r = start_run(
        tmp,
        BundleModel(tiny_model_dir()),
        first=PAPER_FIRST,
        hours_after=(PAPER_FIRST - 1_654_041_600) // H + HOURS + 10,
        engine_config=str(eng),
    )
    advance(r, HOURS, first=PAPER_FIRST)
    yield r
    r.close()


def test_daemon_ledgers_the_selectors_choice_and_replays(run):
    from live_bridge.replay import replay_window

    ev = [e for e in run.ledger.entries(kind=Kind.EVENT) if e.code.startswith("strategy_")]
    assert ev, "no selector rows ledgered"
    codes = {e.code for e in ev}
    assert codes <= {"strategy_defensive_entry", "strategy_defensive_no_entry", "strategy_preservation_no_entry"}
    for e in ev:
        assert e.pair and float(e.payload["p_up"]) >= 0.55
        assert e.payload["candidate"] == (not e.code.endswith("_no_entry"))
    preds = {(e.hour, e.pair): e for e in run.ledger.entries(kind=Kind.PREDICTION)}
    for e in ev:  # the ledgered prediction is what the risk step read: parked where no candidate
        p = float(preds[(e.hour, e.pair)].payload["values"]["p_up"])
        assert (p == float(e.payload["p_up"])) if e.payload["candidate"] else (p == 0.45)
    first = PAPER_FIRST // H
    s = replay_window(run.ledger, first, first + HOURS - 1)
    assert s.ok and s.reproduced == HOURS, s.first_failure
    print(f"\n{len(ev)} selector rows: " + ", ".join(f"{c} {sum(e.code == c for e in ev)}" for c in sorted(codes)))


def test_a_history_window_too_short_for_the_selector_is_refused_at_start(tmp_path):
    """[strategy] windows that need more bars than cycle.history_bars: a one-line ConfigError when the
    daemon is built, before anything runs (not a stop at its first close with positions open)."""
    from engine.config import load_config
    from engine.errors import ConfigError
    from live_bridge.config import live_config_from_dict
    from live_bridge.daemon import Daemon
    from live_bridge.simulator.testing import KEY, SECRET
    from tests.live_harness import paper_dict

    eng = tmp_path / "engine.toml"
    eng.write_text(
        f'extends = "{configs_dir() / "default.toml"}"\n[strategy]\nenabled = true\n'
        "trend_bars = 720\nhysteresis_lookback = 720\n"
    )
    cfg = load_config(eng)
    assert cfg.strategy.lookback_bars > 1000
    live = live_config_from_dict(paper_dict("http://127.0.0.1:1", tmp_path, engine_config=str(eng)))
    with pytest.raises(ConfigError, match=r"below the \d+ bars \[strategy\] needs"):
        Daemon.from_config(live, environ={"KRAKEN_API_KEY": KEY, "KRAKEN_API_SECRET": SECRET}, model=object())
    assert not (tmp_path / "state").exists()  # refused before any state was touched
