"""Warm-up stability: a short history (what the live bridge keeps) gives the full-history values:
bit-identical for windowed features once the history covers warmup_table(cfg)[name].bars, within
rel_tol for the recursive Wilder ATR."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_shared

from engine.features.config import FeaturesConfig
from engine.features.featureset import ATR_REL_TOL, build_features, warmup_table
from engine.store.panel import load_shared_panel

FILES = ["binance_BTCUSDT_1h", "binance_ETHUSDT_1h", "binance_SOLUSDT_1h", "binance_XRPUSDT_1h"]
START = 1617235200  # 2021-04-01 .. +2,600 bars, real gaps included
END = START + 2600 * 3600
TAIL = 150  # bars compared after the warm-up point


@pytest.fixture(scope="module")
def real():
    require_shared()
    p = load_shared_panel(FILES, START, END)
    return p, build_features(p)


def _check(full, short, name: str, rule, first: int) -> None:
    """Compare short (history starts at bar s) with full at full-bars first .. end."""
    i = full.names.index(name)
    a = full.values[first:, :, i]
    b = short.values[-a.shape[0] :, :, i]
    assert np.array_equal(np.isnan(a), np.isnan(b)), f"{name}: NaN pattern differs after warm-up"
    ok = np.isfinite(a)
    assert ok.any(), f"{name}: nothing to compare"
    if rule.rel_tol == 0.0:
        assert a[ok].tobytes() == b[ok].tobytes(), f"{name}: not bit-identical after {rule.bars} bars"
    else:
        rel = np.max(np.abs(a[ok] - b[ok]) / np.abs(a[ok]))
        assert rel <= rule.rel_tol, f"{name}: relative difference {rel:.3g} > {rule.rel_tol}"


def test_each_feature_is_final_after_its_documented_warmup(real):
    p, full = real
    cfg = full.config
    table = warmup_table(cfg)
    n = p.n_bars
    for bars in sorted({r.bars for r in table.values()}):
        s = n - TAIL - bars + 1  # the short history starts here; bar s+bars-1 has exactly `bars` bars
        short = build_features(p.slice(start=int(p.ts[s])), cfg)
        for name, rule in table.items():
            if rule.bars == bars:
                _check(full, short, name, rule, s + bars - 1)


def test_last_720_bars_reproduce_full_history(real):
    # the live bridge's view: only the last 720 bars
    p, full = real
    cfg = full.config
    short = build_features(p.slice(start=int(p.ts[-720])), cfg)
    checked = []
    for name, rule in warmup_table(cfg).items():
        if rule.bars <= 720:
            _check(full, short, name, rule, p.n_bars - 720 + rule.bars - 1)
            checked.append(name)
    assert len(checked) == len(full.names) - 1 and "cluster" not in checked  # clusters need 744 (documented)
    # the ATR after 720 bars is far inside its tolerance
    i = full.names.index("atr")
    a, b = full.values[-1, :, i], short.values[-1, :, i]
    assert np.all(np.abs(a - b) <= 1e-12 * np.abs(a))


def test_live_bridge_default_history_covers_every_feature():
    cfg = FeaturesConfig()
    need = max(r.bars for r in warmup_table(cfg).values())
    assert cfg.warmup_bars >= need
    assert warmup_table(cfg)["atr"].rel_tol == ATR_REL_TOL


def test_atr_tolerance_is_not_vacuous(real):
    # a too-short history does differ for the recursive ATR (the seed has not washed out)
    p, full = real
    cfg = full.config
    short = build_features(p.slice(start=int(p.ts[-40])), cfg)
    i = full.names.index("atr")
    a, b = full.values[-1, :, i], short.values[-1, :, i]
    ok = np.isfinite(a) & np.isfinite(b)
    assert ok.any() and np.max(np.abs(a[ok] - b[ok]) / a[ok]) > 1e-9
