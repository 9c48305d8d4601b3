"""No lookahead: changing, adding or removing bars after t leaves every feature at bars <= t
bit-identical (real data and hypothesis-generated panels)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_shared
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.features.config import FeaturesConfig
from engine.features.featureset import build_features
from engine.store.panel import FIELDS, Panel, load_shared_panel

FILES = ["binance_BTCUSDT_1h", "binance_ETHUSDT_1h", "binance_SOLUSDT_1h", "binance_XRPUSDT_1h"]
START = 1617235200  # 2021-04-01, 3,000 bars incl. real gaps
END = START + 3000 * 3600

# small windows so that every feature (clusters included) has values within a few dozen bars
SMALL = FeaturesConfig(
    mom_horizons=(1, 2, 4),
    slope_window=4,
    atr_window=3,
    vol_window=4,
    vol_pct_window=10,
    vol_pct_min_periods=5,
    volume_median_window=6,
    volume_median_min_periods=4,
    spread_window=3,
    spread_median_window=6,
    spread_median_min_periods=4,
    breakout_window=4,
    mr_window=5,
    hhll_window=3,
    beta_window=8,
    beta_min_periods=5,
    breadth_window=5,
    corr_window=12,
    corr_min_periods=8,
    cluster_every=3,
    cluster_threshold=0.3,
    warmup_bars=24,
)


def same_bits(a: np.ndarray, b: np.ndarray, what: str) -> None:
    assert a.shape == b.shape, what
    na = np.isnan(a) if a.dtype.kind == "f" else np.zeros(a.shape, bool)
    assert np.array_equal(na, np.isnan(b) if b.dtype.kind == "f" else na), f"{what}: NaN pattern changed"
    assert a[~na].tobytes() == b[~na].tobytes(), f"{what}: values changed"


def assert_prefix_equal(fs_a, fs_b, t: int) -> None:
    for i, name in enumerate(fs_a.names):
        same_bits(fs_a.values[: t + 1, :, i], fs_b.values[: t + 1, :, i], f"{name} at bars <= {t}")
    same_bits(fs_a.clusters[: t + 1], fs_b.clusters[: t + 1], f"cluster ids at bars <= {t}")


def perturbed_after(p: Panel, t: int, rng: np.random.Generator, drop: float = 0.1) -> Panel:
    """Bars after t: prices scaled by random factors, volumes redrawn, some bars removed (invalid)."""
    arrs = {f: getattr(p, f).copy() for f in FIELDS}
    valid = p.valid.copy()
    n, m = valid.shape
    k = n - t - 1
    if k > 0:
        fac = np.exp(rng.normal(0.0, 0.05, size=(k, m)))
        for f in ("open", "high", "low", "close", "vwap"):
            arrs[f][t + 1 :] *= fac
        arrs["high"][t + 1 :] *= 1.01
        arrs["volume"][t + 1 :] = rng.lognormal(3.0, 1.0, size=(k, m))
        gone = rng.random((k, m)) < drop
        valid[t + 1 :][gone] = False
        for f in FIELDS:
            arrs[f][t + 1 :][gone] = np.nan
    return Panel(p.venue, p.pairs, p.ts.copy(), *(arrs[f] for f in FIELDS), valid)


def extended(p: Panel, extra: int, rng: np.random.Generator) -> Panel:
    """p with ``extra`` random bars appended."""
    n, m = p.valid.shape
    ts = np.concatenate([p.ts, p.ts[-1] + 3600 * np.arange(1, extra + 1, dtype=np.int64)])
    last = np.nan_to_num(p.close[-1], nan=100.0)
    walk = last * np.exp(np.cumsum(rng.normal(0, 0.02, size=(extra, m)), axis=0))
    new = {
        "open": walk,
        "high": walk * 1.01,
        "low": walk * 0.99,
        "close": walk,
        "volume": rng.lognormal(3.0, 1.0, size=(extra, m)),
        "trades": np.full((extra, m), np.nan),
        "vwap": np.full((extra, m), np.nan),
    }
    arrs = [np.concatenate([getattr(p, f), new[f]]) for f in FIELDS]
    return Panel(p.venue, p.pairs, ts, *arrs, np.concatenate([p.valid, np.ones((extra, m), bool)]))


@pytest.fixture(scope="module")
def real():
    require_shared()
    p = load_shared_panel(FILES, START, END)
    return p, build_features(p)


@pytest.mark.parametrize("t", [700, 1500, 2300, 2998])
def test_no_lookahead_on_real_data(real, t):
    p, full = real
    rng = np.random.default_rng(t)
    assert_prefix_equal(full, build_features(perturbed_after(p, t, rng)), t)  # change later bars
    assert_prefix_equal(full, build_features(p.slice(end=int(p.ts[t]))), t)  # remove later bars
    assert_prefix_equal(full, build_features(extended(p, 50, rng)), t)  # add later bars
    # the perturbation is real: later values do change
    later = build_features(perturbed_after(p, t, rng)).values[t + 1 :]
    if later.size:
        assert not np.array_equal(later, full.values[t + 1 :], equal_nan=True)


def test_universe_mask_after_t_does_not_leak(real):
    p, full = real
    t = 2000
    mask = np.ones(p.valid.shape, bool)
    mask[t + 1 :, 1] = False
    assert_prefix_equal(full, build_features(p, universe_mask=mask), t)


@st.composite
def panels(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(20, 90))
    gap = draw(st.sampled_from([0.0, 0.03, 0.15]))
    ties = draw(st.booleans())
    rng = np.random.default_rng(seed)
    m = 3
    logp = np.cumsum(rng.normal(0, 0.02, size=(n, m)) + rng.normal(0, 0.02, size=(n, 1)), axis=0)
    close = 100.0 * np.exp(logp)
    if ties:  # coarse prices and volumes: many exact ties in ranks, medians, breakouts
        close = np.round(close)
    high = np.maximum(close, np.roll(close, 1)) * (1 + rng.random((n, m)) * 0.01)
    low = np.minimum(close, np.roll(close, 1)) * (1 - rng.random((n, m)) * 0.01)
    vol = rng.integers(0, 4, size=(n, m)).astype(float) if ties else rng.lognormal(2, 1, size=(n, m))
    valid = rng.random((n, m)) >= gap
    arrs = {
        "open": close.copy(),
        "high": high,
        "low": low,
        "close": close,
        "volume": vol,
        "trades": np.full((n, m), np.nan),
        "vwap": np.full((n, m), np.nan),
    }
    for a in arrs.values():
        a[~valid] = np.nan
    t0 = draw(st.integers(0, 23)) * 3600 + 1_700_000_000 // 86400 * 86400
    ts = t0 + 3600 * np.arange(n, dtype=np.int64)
    p = Panel("synthetic", ("BTC/USD", "ETH/USD", "SOL/USD"), ts, *(arrs[f] for f in FIELDS), valid)
    t = draw(st.integers(0, n - 1))
    return p, t, seed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(panels())
def test_no_lookahead_hypothesis(case):
    p, t, seed = case
    rng = np.random.default_rng(seed + 1)
    full = build_features(p, SMALL)
    assert_prefix_equal(full, build_features(perturbed_after(p, t, rng, drop=0.3), SMALL), t)
    assert_prefix_equal(full, build_features(p.slice(end=int(p.ts[t])), SMALL), t)
    assert_prefix_equal(full, build_features(extended(p, 7, rng), SMALL), t)


def test_small_config_gives_values_for_every_feature():
    # guards the hypothesis test against comparing all-NaN arrays
    rng = np.random.default_rng(0)
    n = 80
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, size=(n, 3)), axis=0))
    ts = 1_700_006_400 + 3600 * np.arange(n, dtype=np.int64)
    p = Panel(
        "synthetic",
        ("BTC/USD", "ETH/USD", "SOL/USD"),
        ts,
        close,
        close * 1.01,
        close * 0.99,
        close,
        rng.lognormal(2, 1, size=(n, 3)),
        np.full((n, 3), np.nan),
        np.full((n, 3), np.nan),
        np.ones((n, 3), bool),
    )
    fs = build_features(p, SMALL)
    for i, name in enumerate(fs.names):
        assert np.isfinite(fs.values[-20:, :, i]).any(), name
