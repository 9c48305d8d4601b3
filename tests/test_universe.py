"""The tradable universe: exclusions, causal joining, liquidity filters on real data, config errors."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from conftest import require_shared

from engine.errors import ConfigError, InputError
from engine.features.spread import spread_estimate
from engine.store.panel import load_shared_panel, panel_from_frames
from engine.synth import generate_market
from engine.universe import (
    UniverseConfig,
    daily_quote_volume,
    liquidity_mask,
    liquidity_stats,
    load_universe,
    member_mask,
    universe_from_dict,
    universe_mask,
)

CFG = UniverseConfig()
HIST = 23 + 30 * 24 - 1  # first possible join = first bar + 742, i.e. 743 bars of history (documented)


@pytest.fixture(scope="module")
def binance():
    require_shared()
    # BTC, DOGE and AVAX (listed 2020-09-22 06:00) from 2020-06-01 to 2021-12-31
    return load_shared_panel(
        ["binance_BTCUSDT_1h", "binance_DOGEUSDT_1h", "binance_AVAXUSDT_1h"], start=1590969600, end=1640995200 - 3600
    )


def test_toml_matches_the_defaults_and_loads():
    cfg = load_universe()
    assert cfg == CFG
    assert cfg.candidates == ("BTC", "ETH", "SOL", "XRP", "ADA", "LTC", "DOT", "LINK", "AVAX")
    assert "DOGE" in cfg.exclude.meme and {"USDT", "USDC", "DAI"} <= set(cfg.exclude.stablecoins)
    assert cfg.quotes == {"kraken": "USD", "synthetic": "USD", "binance": "USDT"}


def test_doge_is_in_the_data_but_never_tradable():
    require_shared()
    binance = load_shared_panel(["binance_BTCUSDT_1h", "binance_DOGEUSDT_1h"])  # full histories
    j_btc, j_doge = binance.column("BTC/USDT"), binance.column("DOGE/USDT")
    assert binance.valid[:, j_doge].sum() == 55_768  # DOGE's bars ARE in the shared data (PROVENANCE)
    mask = universe_mask(binance, CFG)
    assert not mask[:, j_doge].any()
    assert mask[:, j_btc].sum() > 0.8 * binance.valid[:, j_btc].sum()
    # on liquidity alone DOGE would qualify on most of these bars: the exclusion is what keeps it out
    liq = liquidity_mask(binance, CFG)
    assert liq[:, j_doge].sum() > 0.5 * binance.valid[:, j_doge].sum()
    # even listed as a candidate, the meme-coin list wins ...
    with_doge = CFG.model_copy(update={"candidates": CFG.candidates + ("DOGE",)})
    assert not universe_mask(binance, with_doge)[:, j_doge].any()
    # ... and only without it would DOGE get in
    no_meme = universe_from_dict({"candidates": list(CFG.candidates) + ["DOGE"], "exclude": {"meme": []}})
    assert np.array_equal(universe_mask(binance, no_meme)[:, j_doge], liq[:, j_doge])


def test_newly_listed_pair_needs_30_days_of_qualifying_history(binance):
    j = binance.column("AVAX/USDT")
    first = int(np.argmax(binance.valid[:, j]))
    assert pd.Timestamp(binance.ts[first], unit="s") == pd.Timestamp("2020-09-22 06:00")
    mask = universe_mask(binance, CFG)
    assert not mask[: first + HIST, j].any()  # nothing before 743 bars (about 31 days) of history
    vol_med, spread_med = liquidity_stats(binance, CFG)
    assert np.isnan(vol_med[first + HIST - 1, j]) and np.isfinite(vol_med[first + HIST, j])
    join = int(np.argmax(mask[:, j]))
    assert mask[join, j] and join >= first + HIST
    # it joins exactly at the first bar where its own past qualifies it
    ok = (
        binance.valid[:, j]
        & (vol_med[:, j] >= CFG.liquidity.min_median_daily_quote_volume)
        & (spread_med[:, j] <= CFG.liquidity.max_spread)
    )
    assert join == int(np.argmax(ok))
    assert pd.Timestamp(binance.ts[join], unit="s") < pd.Timestamp("2020-12-01")
    # BTC, with a long history before the panel start, still needs the panel's own 743 bars
    jb = binance.column("BTC/USDT")
    assert not mask[:HIST, jb].any() and mask[HIST : HIST + 100, jb].any()


def test_quote_volume_median_equals_pandas_reference(binance):
    vol_med, _ = liquidity_stats(binance, CFG)
    for j in range(binance.n_pairs):
        qv = pd.Series(np.where(binance.valid[:, j], binance.close[:, j] * binance.volume[:, j], 0.0))
        first = int(np.argmax(binance.valid[:, j]))
        qv[:first] = np.nan
        want = qv.rolling(24, min_periods=24).sum().rolling(720, min_periods=720).median().to_numpy()
        got = vol_med[:, j]
        assert np.array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-9)
    d = daily_quote_volume(binance)
    jb = binance.column("BTC/USDT")
    assert 1e8 < np.nanmedian(d[:, jb]) < 1e11  # BTC/USDT trades hundreds of millions a day


def test_causal_perturbing_the_future_leaves_the_past_unchanged(binance):
    full = universe_mask(binance, CFG)
    rng = np.random.default_rng(1)
    for t in (800, 3000, binance.n_bars - 2):
        cut = universe_mask(binance.slice(end=int(binance.ts[t])), CFG)
        assert np.array_equal(cut, full[: t + 1])
        arrays = {}
        for f in ("open", "high", "low", "close", "volume", "trades", "vwap"):
            a = getattr(binance, f).copy()
            a[t + 1 :] *= rng.uniform(0.01, 100.0, a[t + 1 :].shape)
            arrays[f] = a
        valid = binance.valid.copy()
        valid[t + 1 :] = rng.random(valid[t + 1 :].shape) < 0.5
        pert = dataclasses.replace(binance, valid=valid, **arrays)
        assert np.array_equal(universe_mask(pert, CFG)[: t + 1], full[: t + 1])


def test_volume_and_spread_filters_bind_on_real_kraken_data():
    require_shared()
    k = load_shared_panel(["XBTUSD_1h", "LTCUSD_1h", "XRPUSD_1h"], start=1498867200, end=1576450800)  # 2017-07..2019-12
    mask = universe_mask(k, CFG)
    vol_med, spread_med = liquidity_stats(k, CFG)
    j = k.column("LTC/USD")
    after = np.arange(k.n_bars) >= int(np.argmax(mask[:, j]))
    low_volume = k.valid[:, j] & after & (vol_med[:, j] < 1e6)
    assert low_volume.sum() > 500 and not mask[low_volume, j].any()  # LTC/USD 2018H2: < $1M a day
    jx = k.column("XRP/USD")
    wide = k.valid[:, jx] & (spread_med[:, jx] > CFG.liquidity.max_spread)
    assert wide.sum() > 500 and not mask[wide, jx].any()  # XRP/USD late 2017 / early 2018 turmoil
    jb = k.column("BTC/USD")
    assert mask[:, jb].mean() > 0.9


def test_missing_hour_takes_a_pair_out_until_its_spread_estimate_is_back():
    fr = generate_market(["BTC/USD", "ETH/USD"], n_bars=1200, seed=3)
    hole = 1000
    fr["ETH/USD"] = fr["ETH/USD"].drop(index=hole).reset_index(drop=True)
    p = panel_from_frames(fr, "synthetic")
    mask = universe_mask(p, CFG)
    w = CFG.liquidity.spread_window
    assert mask[HIST:hole, :].all()  # synthetic majors qualify after the warm-up
    assert not mask[hole : hole + w + 1, 1].any() and mask[hole + w + 1 :, 1].all()
    assert mask[hole:, 0].all()
    assert np.isnan(spread_estimate(p, w)[hole + w, 1])


def test_membership_by_venue_quote():
    p = panel_from_frames(generate_market(["BTC/USD", "DOGE/USD", "AVAX/USD"], n_bars=30), "synthetic")
    assert member_mask(p, CFG).tolist() == [True, False, True]
    p2 = dataclasses.replace(p, venue="binance")  # USD pairs are not the binance quote
    assert member_mask(p2, CFG).tolist() == [False, False, False]
    assert not universe_mask(p2, CFG).any()
    with pytest.raises(InputError, match="venue 'coinbase'"):
        member_mask(dataclasses.replace(p, venue="coinbase"), CFG)
    mixed = dataclasses.replace(p, venue="binance+kraken")
    assert member_mask(mixed, CFG).tolist() == [True, False, True]
    usdt = universe_from_dict({"candidates": ["BTC", "USDT"]})
    assert not usdt.is_member("USDT/USD", "kraken")  # a stablecoin is never a traded base


@pytest.mark.parametrize(
    "body,key",
    [
        ("[liquidity]\nmax_sprad = 0.01\n", "liquidity.max_sprad"),
        ("[liquidity]\nmin_median_daily_quote_volume = -5.0\n", "liquidity.min_median_daily_quote_volume"),
        ("[liquidity]\nmax_spread = -0.001\n", "liquidity.max_spread"),
        ("[liquidity]\nvolume_days = 0\n", "liquidity.volume_days"),
        ("colour = 'red'\n", "colour"),
        ("candidates = ['BTC', 'FOO']\n", "candidates"),
        ("[exclude]\nmeme = ['DOGE', 'DOGE']\n", "exclude.meme"),
        ("[quotes]\nkraken = 'XYZ'\n", "quotes"),
    ],
)
def test_bad_config_is_rejected_naming_the_key(tmp_path, body, key):
    f = tmp_path / "u.toml"
    f.write_text(body)
    with pytest.raises(ConfigError) as e:
        load_universe(f)
    msg = str(e.value)
    assert str(f) in msg and f"{key}:" in msg, msg
    assert "\n" not in msg


def test_extends_and_missing_file(tmp_path):
    f = tmp_path / "u.toml"
    f.write_text(
        'extends = "{}"\n[liquidity]\nmax_spread = 0.01\n'.format(
            (__import__("engine.paths").paths.configs_dir() / "universe.toml").as_posix()
        )
    )
    cfg = load_universe(f)
    assert cfg.liquidity.max_spread == 0.01 and cfg.candidates == CFG.candidates
    with pytest.raises(ConfigError, match="not found"):
        load_universe(tmp_path / "nope.toml")
