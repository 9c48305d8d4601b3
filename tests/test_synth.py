"""The synthetic market: invariants, determinism, stylised facts, and the Panel contract."""

import numpy as np
import pandas as pd
import pytest

from engine.errors import InputError
from engine.store.panel import HOUR, panel_from_frames
from engine.synth import (
    CRASH,
    DEFAULT_START_TS,
    DEFAULT_SYNTH_PAIRS,
    PAIR_PARAMS,
    SYNTH_VENUE,
    TREND_UP,
    generate_market,
    regime_path,
)

N = 20_000  # ~2.3 years: enough regime episodes for the statistical checks


@pytest.fixture(scope="module")
def market():
    return generate_market(n_bars=N, seed=7, return_regimes=True)


def _rets(f: pd.DataFrame) -> np.ndarray:
    return np.diff(np.log(f["close"].to_numpy()))


def test_defaults_columns_and_grid():
    fr = generate_market(n_bars=48)
    assert tuple(fr) == DEFAULT_SYNTH_PAIRS
    for f in fr.values():
        assert list(f.columns) == ["ts", "open", "high", "low", "close", "volume", "trades", "vwap"]
        assert f["ts"].dtype == np.int64
        assert f["ts"].iloc[0] == DEFAULT_START_TS == 1640995200  # 2022-01-01 00:00 UTC
        assert (np.diff(f["ts"].to_numpy()) == HOUR).all()
        for c in ("open", "high", "low", "close", "volume", "trades", "vwap"):
            assert f[c].dtype == np.float64


def test_ohlc_invariants(market):
    fr, _ = market
    for p, f in fr.items():
        o, h, l, c = (f[k].to_numpy() for k in ("open", "high", "low", "close"))
        assert (l > 0).all(), p
        assert (l <= np.minimum(o, c)).all() and (np.maximum(o, c) <= h).all(), p
        assert (o[1:] == c[:-1]).all(), p  # open is the previous close, exactly
        v, tr, vw = f["volume"].to_numpy(), f["trades"].to_numpy(), f["vwap"].to_numpy()
        assert (v > 0).all() and (tr >= 1).all() and (tr == np.round(tr)).all(), p
        assert ((vw >= l) & (vw <= h)).all(), p
        assert np.isfinite(f.drop(columns="ts").to_numpy()).all(), p


def test_price_levels_start_realistic(market):
    fr, _ = market
    for p, f in fr.items():
        p0 = PAIR_PARAMS[p.split("/")[0]].price0
        assert abs(f["open"].iloc[0] / p0 - 1) < 1e-12
        assert abs(np.log(f["close"].iloc[0] / p0)) < 0.1
    assert 10_000 < fr["BTC/USD"]["close"].median() < 500_000
    assert 0.01 < fr["DOGE/USD"]["close"].median() < 5


def test_deterministic_bit_identical():
    a, ra = generate_market(n_bars=2000, seed=3, return_regimes=True)
    b, rb = generate_market(n_bars=2000, seed=3, return_regimes=True)
    assert (ra == rb).all()
    for p in a:
        pd.testing.assert_frame_equal(a[p], b[p], check_exact=True)
    # a pair's path does not depend on the other pairs requested
    solo = generate_market(["ETH/USD"], n_bars=2000, seed=3)
    pd.testing.assert_frame_equal(solo["ETH/USD"], a["ETH/USD"], check_exact=True)


def test_seed_sensitivity():
    a = generate_market(["BTC/USD", "ETH/USD"], n_bars=500, seed=7)
    b = generate_market(["BTC/USD", "ETH/USD"], n_bars=500, seed=8)
    for p in a:
        assert not np.array_equal(a[p]["close"].to_numpy(), b[p]["close"].to_numpy())
        assert not np.array_equal(a[p]["volume"].to_numpy(), b[p]["volume"].to_numpy())


def test_volatility_clustering(market):
    fr, _ = market
    for p, f in fr.items():
        r2 = _rets(f) ** 2
        ac1 = np.corrcoef(r2[1:], r2[:-1])[0, 1]
        ac24 = np.corrcoef(r2[24:], r2[:-24])[0, 1]
        assert ac1 > 0.05 and ac24 > 0.02, (p, ac1, ac24)
        # and the returns themselves are close to uncorrelated
        r = _rets(f)
        assert abs(np.corrcoef(r[1:], r[:-1])[0, 1]) < 0.1, p  # fat tails make this noisy


def test_correlation_to_btc_in_range(market):
    fr, _ = market
    btc = _rets(fr["BTC/USD"])
    for p, f in fr.items():
        if p == "BTC/USD":
            continue
        rho = np.corrcoef(_rets(f), btc)[0, 1]
        assert 0.5 <= rho <= 0.9, (p, rho)


def test_volume_tracks_abs_return_and_volatility(market):
    fr, _ = market
    for p, f in fr.items():
        qv = np.log((f["close"] * f["volume"]).to_numpy()[1:])
        r = np.abs(_rets(f))
        assert np.corrcoef(qv, r)[0, 1] > 0.2, p
        vol24 = pd.Series(_rets(f)).rolling(24).std().to_numpy()
        ok = np.isfinite(vol24)
        assert np.corrcoef(qv[ok], vol24[ok])[0, 1] > 0.2, p


def _episodes(reg):
    starts = np.r_[0, np.nonzero(np.diff(reg))[0] + 1]
    ends = np.r_[starts[1:], reg.shape[0]]
    return list(zip(starts, ends, reg[starts]))


def test_crash_regime_has_larger_drawdowns_than_trend(market):
    fr, reg = market
    counts = np.bincount(reg, minlength=4)
    assert (counts > 0).all(), counts  # every regime visited
    for p, f in fr.items():
        r = np.r_[np.log(f["close"].iloc[0] / f["open"].iloc[0]), _rets(f)]
        assert r[reg == CRASH].mean() < 0 < r[reg == TREND_UP].mean(), p
    lo, lc = np.log(fr["BTC/USD"]["open"].to_numpy()), np.log(fr["BTC/USD"]["close"].to_numpy())
    dd = {CRASH: [], TREND_UP: []}
    for s, e, g in _episodes(reg):
        if g in dd:
            path = np.r_[lo[s], lc[s:e]]
            dd[g].append((np.maximum.accumulate(path) - path).max())
    assert len(dd[CRASH]) >= 5 and len(dd[TREND_UP]) >= 5
    assert np.mean(dd[CRASH]) > 1.5 * np.mean(dd[TREND_UP]), dd


def test_regime_path_matches_market_and_is_persistent(market):
    _, reg = market
    assert (regime_path(N, seed=7) == reg).all()
    switches = np.count_nonzero(np.diff(reg))
    assert 20 < switches < N / 50  # regimes persist for many bars


def test_frames_pass_the_panel_contract():
    fr = generate_market(n_bars=300, seed=5)
    p = panel_from_frames(fr, SYNTH_VENUE)
    assert p.venue == "synthetic" and p.pairs == DEFAULT_SYNTH_PAIRS
    assert p.n_bars == 300 and p.valid.all()
    assert (np.diff(p.ts) == HOUR).all() and p.ts[0] == DEFAULT_START_TS
    assert np.array_equal(p.close[:, 0], fr["BTC/USD"]["close"].to_numpy())
    assert np.array_equal(p.vwap[:, 3], fr["XRP/USD"]["vwap"].to_numpy())


def test_bad_arguments_are_input_errors():
    with pytest.raises(InputError, match="no synthetic model"):
        generate_market(["USDT/USD"], n_bars=10)
    with pytest.raises(InputError, match="unknown pair"):
        generate_market(["FOO/USD"], n_bars=10)
    with pytest.raises(InputError, match="n_bars"):
        generate_market(n_bars=0)
    with pytest.raises(InputError, match="hourly grid"):
        generate_market(start_ts=DEFAULT_START_TS + 1, n_bars=10)
    with pytest.raises(InputError, match="twice"):
        generate_market(["BTC/USD", "XBTUSD"], n_bars=10)
