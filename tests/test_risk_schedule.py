"""The entry-block window helpers (rule R25, engine.risk.schedule) shared by the backtester and the
live bridge: UTC wall clock, start inclusive, end exclusive, wrapping midnight, and config errors."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import config_from_dict
from engine.errors import ConfigError
from engine.risk.schedule import entry_block_for_bars, in_training_window, parse_window, training_window_mask

DAY0 = 1_700_006_400  # 2023-11-15 00:00 UTC (a multiple of 86400)


def _minutes(day=DAY0):
    return day + 60 * np.arange(24 * 60, dtype=np.int64)


def test_plain_window_start_inclusive_end_exclusive():
    ts = _minutes()
    m = training_window_mask(ts, ["03:00", "05:00"])
    assert m.dtype == np.bool_ and m.shape == ts.shape
    assert m.sum() == 120
    assert m[3 * 60] and m[5 * 60 - 1] and not m[5 * 60] and not m[3 * 60 - 1]
    # any day, also before 1970 (floor modulo)
    assert (training_window_mask(_minutes(DAY0 - 400 * 86400), ["03:00", "05:00"]) == m).all()
    assert (training_window_mask(_minutes(-86400 * 3), ["03:00", "05:00"]) == m).all()


def test_window_wrapping_midnight():
    ts = _minutes()
    m = training_window_mask(ts, ["23:30", "01:15"])
    assert m.sum() == 30 + 75
    assert m[23 * 60 + 30] and m[0] and m[75 - 1] and not m[75] and not m[23 * 60 + 29]
    # across a day boundary the bars of 23:30..01:14 form one block
    hours = DAY0 + 3600 * np.arange(48, dtype=np.int64)
    assert training_window_mask(hours, ["22:00", "02:00"]).nonzero()[0].tolist() == [0, 1, 22, 23, 24, 25, 46, 47]


def test_no_window():
    ts = _minutes()
    for w in ([], (), None, ["04:00", "04:00"]):
        assert parse_window(w) is None
        assert not training_window_mask(ts, w).any()
        assert not in_training_window(int(ts[200]), w)


def test_scalar_helper_agrees_with_the_mask():
    ts = _minutes() + 17  # off the minute too
    for w in (["03:00", "05:00"], ["23:30", "01:15"], ["00:00", "23:59"], ["12:01", "12:02"]):
        m = training_window_mask(ts, w)
        assert [in_training_window(int(x), w) for x in ts] == m.tolist()


def test_entry_block_is_the_execution_bar_open():
    """entry_block[t] is about bar t+1 (opening at ts[t] + 3600), where a decision at t's close executes."""
    hours = DAY0 + 3600 * np.arange(24, dtype=np.int64)
    blk = entry_block_for_bars(hours, ["03:00", "05:00"])
    assert blk.nonzero()[0].tolist() == [2, 3]  # decisions at the close of the 02:00 and 03:00 bars


@pytest.mark.parametrize(
    "bad",
    [
        ["03:00"],
        ["3:00", "05:00"],
        ["03:00", "24:00"],
        ["03:00", "05:60"],
        ["03:00", "05:00", "06:00"],
        ["ab:cd", "05:00"],
    ],
)
def test_bad_windows_are_one_line_config_errors_naming_the_key(bad):
    with pytest.raises(ConfigError, match=r"risk\.training_window_utc"):
        config_from_dict({"risk": {"training_window_utc": bad}})
    with pytest.raises(ValueError):
        parse_window(bad)


def test_config_default_and_off():
    assert config_from_dict({}).risk.training_window_utc == ("03:00", "05:00")
    assert config_from_dict({"risk": {"training_window_utc": []}}).risk.training_window_utc == ()
    with pytest.raises(ValueError):
        training_window_mask(np.array([1.5]), ["03:00", "05:00"])


def test_backtest_never_buys_in_a_bar_opening_in_the_window():
    """On real bars with a signal that always wants in: no buy fills in a bar opening at 03:00 or 04:00
    UTC (default window), sells still do, every skipped entry is a REFUSE_TRAINING_WINDOW refusal;
    with the window off ([]), buys do happen in those hours."""
    from engine.backtest.runner import make_inputs, run_backtest
    from engine.config import load_config
    from engine.risk.enums import Reason
    from engine.risk.params import params_from_config
    from engine.store.panel import load_shared_panel
    from tests.conftest import require_shared

    require_shared()
    p = load_shared_panel(["binance_BTCUSDT_1h", "binance_ETHUSDT_1h"], start=1632906000, end=1632906000 + 3600 * 1500)
    cfg = load_config()
    n, m = p.close.shape
    rng = np.random.default_rng(3)
    p_up = rng.choice([0.9, 0.3], size=(n, m), p=[0.6, 0.4])  # in and out often, at every hour
    er = np.full((n, m), 0.05)
    par = params_from_config(cfg, halt_reset_bars=48, max_hold_bars=3)
    res = run_backtest(make_inputs(p, p_up, er, cfg), par)
    hour = (res.ts[res.trades["bar"]] % 86400) // 3600
    buys = res.trades["side"] > 0
    assert buys.sum() > 20 and not np.isin(hour[buys], [3, 4]).any()
    assert np.isin(hour[~buys], [3, 4]).any()  # exits go on inside the window
    ev = res.events[res.events["reason"] == Reason.REFUSE_TRAINING_WINDOW]
    assert len(ev) > 0 and res.refusals[Reason.REFUSE_TRAINING_WINDOW] == len(ev)
    assert set(((res.ts[ev["bar"]] % 86400) // 3600).tolist()) <= {2, 3}  # decided at the 02:00/03:00 closes
    off = load_config().model_copy(update={"risk": cfg.risk.model_copy(update={"training_window_utc": ()})})
    res_off = run_backtest(make_inputs(p, p_up, er, off), par)
    h_off = (res_off.ts[res_off.trades["bar"]] % 86400) // 3600
    assert np.isin(h_off[res_off.trades["side"] > 0], [3, 4]).any()
    assert res_off.refusals[Reason.REFUSE_TRAINING_WINDOW] == 0
