import numpy as np
import pandas as pd
import pytest

from engine.errors import InputError
from engine.store.panel import load_shared_panel, panel_from_frames


def _frame(ts, px):
    ts = np.asarray(ts, dtype=np.int64)
    px = np.asarray(px, dtype=float)
    return pd.DataFrame({"ts": ts, "open": px, "high": px * 1.01, "low": px * 0.99, "close": px, "volume": 1.0})


def test_missing_hours_are_nan_and_invalid_never_filled():
    f = _frame([0, 3600, 3 * 3600], [1.0, 2.0, 4.0])
    p = panel_from_frames({"BTC/USD": f}, "kraken")
    assert p.ts.tolist() == [0, 3600, 7200, 10800]
    assert p.valid[:, 0].tolist() == [True, True, False, True]
    assert np.isnan(p.close[2, 0]) and p.close[3, 0] == 4.0


def test_pairs_align_on_one_grid():
    p = panel_from_frames({"BTC/USD": _frame([0, 3600], [1, 2]), "ETH/USD": _frame([3600, 7200], [5, 6])}, "kraken")
    assert p.n_bars == 3
    assert p.valid.tolist() == [[True, False], [True, True], [False, True]]
    assert p.slice(3600, 3600).close.tolist() == [[2.0, 5.0]]
    back = p.to_long()
    assert len(back) == 4 and set(back["pair"]) == {"BTC/USD", "ETH/USD"}


def test_off_grid_timestamps_are_rejected():
    with pytest.raises(InputError, match="off the hourly grid"):
        panel_from_frames({"BTC/USD": _frame([0, 1800], [1, 2])}, "kraken")


def test_shared_binance_panel_matches_provenance(shared_dir):
    # PROVENANCE.md: all 10 Binance pairs overlap from 2020-09-22 06:00 to 2025-11-15 23:00 (45,138 slots);
    # AVAX/USDT has 45,118 rows there (20 missing hours).
    names = ["binance_BTCUSDT_1h", "binance_AVAXUSDT_1h"]
    p = load_shared_panel(names, start=1600754400, end=1763247600)
    assert p.pairs == ("BTC/USDT", "AVAX/USDT")
    assert p.n_bars == 45138
    assert int(p.valid[:, 1].sum()) == 45118
    assert p.venue == "binance"
    assert np.all(np.isnan(p.close[~p.valid]))
