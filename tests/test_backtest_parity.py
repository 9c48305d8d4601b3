"""ORACLE: with configs/vectorbt_parity.toml our backtester equals vectorbt Portfolio.from_signals
(same real bars, signals, fees and slippage): every fill and the equity curve to 1e-9 relative."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.backtest.demo import ma_signal
from engine.backtest.runner import make_inputs, run_backtest
from engine.config import load_config
from engine.paths import configs_dir
from engine.risk.params import params_from_config
from engine.store.panel import load_shared_panel

PAIRS10 = [
    "binance_BTCUSDT_1h",
    "binance_ETHUSDT_1h",
    "binance_SOLUSDT_1h",
    "binance_XRPUSDT_1h",
    "binance_ADAUSDT_1h",
    "binance_LTCUSDT_1h",
    "binance_DOTUSDT_1h",
    "binance_LINKUSDT_1h",
    "binance_AVAXUSDT_1h",
    "binance_DOGEUSDT_1h",
]


def _complete_window(panel, n_bars):
    """First n_bars-long stretch where every pair has every bar (the parity config keeps the
    data-integrity kill switch on, and vectorbt cannot trade a missing bar)."""
    ok = panel.valid.all(axis=1)
    run = 0
    for t, v in enumerate(ok):
        run = run + 1 if v else 0
        if run == n_bars:
            return panel.slice(int(panel.ts[t - n_bars + 1]), int(panel.ts[t]))
    raise AssertionError("no complete window")


@pytest.fixture(scope="module")
def parity_run(request):
    from tests.conftest import require_shared

    require_shared()
    import vectorbt as vbt

    vbt.settings["engine"] = "numba"  # explicit: vectorbt-rust would switch the default engine
    # from 2021-09-29 (1632906000) the ten pairs have 12,988 complete hours; take the first 3,000
    panel = _complete_window(load_shared_panel(PAIRS10, start=1632906000, end=1632906000 + 3600 * 4000), 3000)
    cfg = load_config(configs_dir() / "vectorbt_parity.toml")
    p_up, _ = ma_signal(panel.close, 12, 48, 50.0)
    exp_ret = np.ones_like(p_up)  # above the hurdle: entries follow p_up alone, as in vectorbt
    inp = make_inputs(panel, p_up, exp_ret, cfg)
    res = run_backtest(inp, params_from_config(cfg))

    idx = pd.to_datetime(panel.ts, unit="s")  # timezone-naive UTC index (fast path in vectorbt)
    cols = list(panel.pairs)
    close = pd.DataFrame(panel.close, index=idx, columns=cols)
    open_ = pd.DataFrame(panel.open, index=idx, columns=cols)
    sig = pd.DataFrame(p_up, index=idx, columns=cols)
    entries = (sig >= cfg.risk.p_up_entry).shift(1, fill_value=False)
    exits = (sig < cfg.risk.p_up_exit).shift(1, fill_value=False)
    pf = vbt.Portfolio.from_signals(
        close=close,
        entries=entries,
        exits=exits,
        price=open_,
        size=cfg.risk.fixed_fraction,
        size_type="percent",
        fees=cfg.fees.fee_rate,
        slippage=cfg.execution.min_slippage_bps * 1e-4,
        init_cash=cfg.backtest.init_cash,
        cash_sharing=True,
        group_by=True,
        call_seq="auto",
        direction="longonly",
        freq="1h",
    )
    return panel, res, pf


def test_fills_equal_vectorbt(parity_run):
    panel, res, pf = parity_run
    ours = res.trades
    vo = pf.orders.values
    assert len(ours) > 100, "the oracle must compare a real number of fills"
    assert len(ours) == len(vo)
    a = pd.DataFrame(
        {
            "bar": ours["bar"],
            "col": ours["pair"],
            "side": np.where(ours["side"] > 0, 0, 1),
            "size": ours["qty"],
            "price": ours["price"],
            "fees": ours["fee"],
        }
    )
    b = pd.DataFrame(
        {
            "bar": vo["idx"],
            "col": vo["col"],
            "side": vo["side"],
            "size": vo["size"],
            "price": vo["price"],
            "fees": vo["fees"],
        }
    )
    a = a.sort_values(["bar", "side", "col"], kind="mergesort").reset_index(drop=True)
    b = b.sort_values(["bar", "side", "col"], kind="mergesort").reset_index(drop=True)
    assert (a[["bar", "col", "side"]].to_numpy() == b[["bar", "col", "side"]].to_numpy()).all()
    for f in ("size", "price", "fees"):
        np.testing.assert_allclose(a[f].to_numpy(), b[f].to_numpy(), rtol=1e-9, atol=0)


def test_equity_curve_equals_vectorbt(parity_run):
    panel, res, pf = parity_run
    ours = res.equity["equity"]
    theirs = pf.value().to_numpy()
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=0)
    np.testing.assert_allclose(res.equity["cash"], pf.cash().to_numpy(), rtol=1e-9, atol=1e-6)
    # and the curve actually moves: not a trivially flat comparison
    assert np.ptp(ours) / ours[0] > 0.01
