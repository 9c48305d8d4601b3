"""Universe rule R9 in the risk step: pairs outside the universe never enter (each refused entry is an
event with reason REFUSE_NOT_TRADABLE and counted in the metrics); exits are unchanged."""

import numpy as np

from engine.backtest.runner import make_inputs, run_backtest
from engine.config import load_config
from engine.risk.enums import EventCode, Reason
from engine.risk.params import params_from_config
from engine.store.panel import load_shared_panel
from engine.universe import universe_mask


def _real(require):
    require()
    # DOGE is a meme coin: its bars are real and stored, the universe keeps it out of trading.
    return load_shared_panel(
        ["binance_BTCUSDT_1h", "binance_DOGEUSDT_1h"], start=1609459200, end=1609459200 + 3000 * 3600
    )


def test_doge_never_enters_and_btc_trades_the_same_as_alone(shared_dir):
    from conftest import require_shared

    panel = _real(require_shared)
    cfg = load_config()
    n, m = panel.close.shape
    p_up = np.full((n, m), 0.9)  # a signal that wants both pairs all the time
    er = np.full((n, m), 0.05)
    tradable = universe_mask(panel)
    assert not tradable[:, 1].any() and tradable[:, 0].any()
    res = run_backtest(make_inputs(panel, p_up, er, cfg, tradable=tradable), params_from_config(cfg))
    pairs = set(res.trades_frame()["pair"])
    assert "DOGE/USDT" not in pairs
    assert "BTC/USDT" in pairs
    # every DOGE entry the signal wanted is a reason-coded refusal, counted in the metrics
    ev = res.events
    doge = ev[(ev["pair"] == 1) & (ev["code"] == EventCode.REFUSAL)]
    assert len(doge) > 0
    assert set(doge["reason"].tolist()) <= {int(Reason.REFUSE_NOT_TRADABLE), int(Reason.REFUSE_NO_DATA)}
    assert (doge["reason"] == Reason.REFUSE_NOT_TRADABLE).sum() > 0
    nt = ev[ev["reason"] == Reason.REFUSE_NOT_TRADABLE]
    assert res.refusals[Reason.REFUSE_NOT_TRADABLE] == len(nt)
    assert res.metrics_dict()["refusals_by_reason"]["REFUSE_NOT_TRADABLE"] == len(nt)
    # BTC is refused only at bars where it is not (yet) a universe member
    btc_bars = nt[nt["pair"] == 0]["bar"]
    assert not tradable[btc_bars, 0].any()
    ungated = run_backtest(make_inputs(panel, p_up, er, cfg), params_from_config(cfg))
    assert "DOGE/USDT" in set(ungated.trades_frame()["pair"])


def test_everything_tradable_changes_nothing(shared_dir):
    from conftest import require_shared

    panel = _real(require_shared)
    cfg = load_config()
    n, m = panel.close.shape
    p_up = np.random.default_rng(5).uniform(0.3, 0.7, size=(n, m))
    er = np.full((n, m), 0.05)
    a = run_backtest(make_inputs(panel, p_up, er, cfg, tradable=np.ones((n, m), dtype=bool)), params_from_config(cfg))
    b = run_backtest(make_inputs(panel, p_up, er, cfg), params_from_config(cfg))
    assert a.trades.tobytes() == b.trades.tobytes() and a.equity.tobytes() == b.equity.tobytes()


def test_a_pair_leaving_the_universe_still_exits_exactly_as_before(shared_dir):
    """Entries stop when the pair leaves the universe; the open position's exit is unchanged."""
    from conftest import require_shared

    panel = _real(require_shared).slice(None, 1609459200 + 1500 * 3600)
    cfg = load_config()
    n, m = panel.close.shape
    p_up = np.full((n, m), 0.9)
    er = np.full((n, m), 0.05)
    ungated = run_backtest(make_inputs(panel, p_up, er, cfg), params_from_config(cfg)).trades_frame()
    btc = ungated[ungated["pair"] == "BTC/USDT"]
    first_buy = btc[btc["side"] == "buy"]["ts"].min()
    k = int(np.searchsorted(panel.ts, first_buy)) + 1  # BTC leaves the universe right after its entry
    tradable = np.zeros((n, m), dtype=bool)
    tradable[:k, 0] = True
    gated = run_backtest(make_inputs(panel, p_up, er, cfg, tradable=tradable), params_from_config(cfg)).trades_frame()
    assert set(gated["pair"]) == {"BTC/USDT"}
    assert (gated["side"] == "buy").sum() == 1
    sells = gated[gated["side"] == "sell"]
    assert len(sells) == 1 and int(sells["ts"].iloc[0]) > int(panel.ts[k])
    # every gated trade is the same row, to the bit, as in the run without the gate
    cols = ["ts", "pair", "side", "quantity", "price", "fee"]
    merged = gated[cols].merge(btc[cols], how="left", indicator=True)
    assert (merged["_merge"] == "both").all()


def test_bad_gate_shapes_are_one_line_input_errors(shared_dir):
    import pytest
    from conftest import require_shared

    from engine.errors import InputError

    panel = _real(require_shared).slice(None, 1609459200 + 100 * 3600)
    cfg = load_config()
    n, m = panel.close.shape
    p_up = np.full((n, m), 0.9)
    with pytest.raises(InputError, match="tradable"):
        make_inputs(panel, p_up, p_up, cfg, tradable=np.ones((n, m + 1), dtype=bool))
    with pytest.raises(InputError, match="entry_block"):
        make_inputs(panel, p_up, p_up, cfg, entry_block=np.zeros(n + 1, dtype=bool))
    inp = make_inputs(panel, p_up, p_up, cfg)
    assert inp.tradable.all() and inp.entry_block.any()
    hours = (inp.ts + 3600) % 86400 // 3600
    assert (inp.entry_block == np.isin(hours, [3, 4])).all()  # default window, execution-bar open
