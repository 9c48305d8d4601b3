"""The feature set: names and assembles the causal kernels of :mod:`engine.features.nb`.

``build_features(panel, cfg, universe_mask=None) -> FeatureSet`` computes every feature for every
(bar, pair) from bars ``<= t`` only; ``FeatureSet.to_long()`` gives the long frame
(ts, pair, one column per feature) that ``kq features`` writes. ``warmup_table(cfg)`` says how many
bars of history each feature needs before its value equals the full-history value (exactly, or
within ``rel_tol`` for the recursive ATR): the live bridge keeps at least the largest of them.

Feature definitions (windows from :class:`~engine.features.config.FeaturesConfig`):

=================  ==========================================================================
ret_{h}h           log(c[t] / c[t-h]) for h in ``mom_horizons``; NaN across a hole
mom_slope          least-squares slope of log close per bar over ``slope_window`` bars
atr                Wilder ATR(``atr_window``) in price units, restarted after holes
vol                sample std (ddof 1) of 1h log returns over ``vol_window`` returns
vol_pct            average-rank percentile of ``vol`` in its trailing ``vol_pct_window`` values
vol_regime         1 if ``vol_pct >= vol_regime_pct`` else 0 (high-volatility regime)
volume_surge       volume[t] / median(volume[t-w .. t-1]), w = ``volume_median_window``
spread             OHLC spread estimate (``spread_method``, engine.features.spread), fraction
spread_widen       spread[t] / median(spread[t-w .. t-1]), w = ``spread_median_window``
breakout           +1 close > previous N-bar high, -1 close < previous N-bar low, else 0
mr_z               (close - mean) / std of close over ``mr_window`` bars (volatility units)
higher_high        1 if the high of the last ``hhll_window`` bars beats the block before
lower_low          1 if the low of the last ``hhll_window`` bars undercuts the block before
beta_btc           beta of 1h returns to the panel's BTC pair over ``beta_window``
                   (NaN everywhere if the panel has no BTC/* pair)
corr_btc           correlation of 1h returns to the BTC pair over ``beta_window``
breadth_above      share of the universe (``universe_mask``, default every pair) whose close
                   is above its ``breadth_window``-bar mean by more than 1e-12 relative
breadth_up         share of the universe with a positive 24h log return
breadth            share of the universe meeting both (above its mean and up over 24h)
cluster            correlation-cluster id (``corr_window`` returns, refreshed every
                   ``cluster_every`` UTC hours); NaN where none (int copy in ``clusters``)
=================  ==========================================================================

``spread`` and ``spread_widen`` are left out when ``spread_method = "none"``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from engine.errors import InputError
from engine.features import nb
from engine.features.config import FeaturesConfig
from engine.pairs import split_pair
from engine.store.panel import Panel

#: Relative tolerance at the ATR's minimum warm-up (``ATR_WARMUP_BARS``); windowed features are exact.
ATR_WARMUP_BARS = 400
ATR_REL_TOL = 1e-9
BREADTH_RETURN_BARS = 24


@dataclass(frozen=True)
class WarmupRule:
    bars: int  # history (bars up to and including t) after which the value at t is final
    rel_tol: float  # 0.0: bit-identical; > 0: |a - b| <= rel_tol * |b|
    kind: str  # "windowed" or "recursive"


def feature_names(cfg: FeaturesConfig) -> tuple[str, ...]:
    names = [f"ret_{h}h" for h in cfg.mom_horizons]
    names += ["mom_slope", "atr", "vol", "vol_pct", "vol_regime", "volume_surge"]
    if cfg.spread_method != "none":
        names += ["spread", "spread_widen"]
    names += [
        "breakout",
        "mr_z",
        "higher_high",
        "lower_low",
        "beta_btc",
        "corr_btc",
        "breadth_above",
        "breadth_up",
        "breadth",
        "cluster",
    ]
    return tuple(names)


def warmup_table(cfg: FeaturesConfig) -> dict[str, WarmupRule]:
    """Minimum history per feature (the live bridge reads this). See docs/MODEL_ASSUMPTIONS.md."""
    w: dict[str, WarmupRule] = {}

    def win(name: str, bars: int) -> None:
        w[name] = WarmupRule(int(bars), 0.0, "windowed")

    for h in cfg.mom_horizons:
        win(f"ret_{h}h", h + 1)
    win("mom_slope", cfg.slope_window)
    w["atr"] = WarmupRule(max(ATR_WARMUP_BARS, cfg.atr_window + 1), ATR_REL_TOL, "recursive")
    win("vol", cfg.vol_window + 1)
    win("vol_pct", cfg.vol_pct_window + cfg.vol_window)
    win("vol_regime", cfg.vol_pct_window + cfg.vol_window)
    win("volume_surge", cfg.volume_median_window + 1)
    if cfg.spread_method != "none":
        win("spread", cfg.spread_window + 1)
        win("spread_widen", cfg.spread_median_window + cfg.spread_window + 1)
    win("breakout", cfg.breakout_window + 1)
    win("mr_z", cfg.mr_window)
    win("higher_high", 2 * cfg.hhll_window)
    win("lower_low", 2 * cfg.hhll_window)
    win("beta_btc", cfg.beta_window + 1)
    win("corr_btc", cfg.beta_window + 1)
    win("breadth_above", cfg.breadth_window)
    win("breadth_up", BREADTH_RETURN_BARS + 1)
    win("breadth", max(cfg.breadth_window, BREADTH_RETURN_BARS + 1))
    win("cluster", cfg.corr_window + cfg.cluster_every)
    assert set(w) == set(feature_names(cfg))
    return w


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """(bars x pairs x features) values with names, masks, the config that made them and a hash.

    ``values`` is an (n, m, k) view of feature-major storage (each feature's (n, m) block is
    contiguous: ``feature(name)`` is free). ``content_hash`` (sha256 over names, config, venue,
    pairs, ts, values, valid and cluster ids) is computed on first use.
    """

    venue: str
    pairs: tuple[str, ...]
    ts: np.ndarray  # int64 (n,), bar open times
    names: tuple[str, ...]
    values: np.ndarray  # float64 (n, m, k)
    bar_valid: np.ndarray  # bool (n, m): the panel's bar exists
    valid: np.ndarray  # bool (n, m): bar exists and no feature is NaN
    clusters: np.ndarray  # int64 (n, m): correlation cluster id, -1 where none
    config: FeaturesConfig

    @cached_property
    def content_hash(self) -> str:
        return content_hash(
            self.names, self.config, self.venue, self.pairs, self.ts, self.values, self.valid, self.clusters
        )

    def feature(self, name: str) -> np.ndarray:
        try:
            return self.values[:, :, self.names.index(name)]
        except ValueError:
            raise InputError(f"no feature {name!r} (have: {', '.join(self.names)})") from None

    def slice(self, start: int | None = None, end: int | None = None) -> FeatureSet:
        """Bars with start <= ts <= end (values unchanged: they were computed with all earlier history)."""
        lo = 0 if start is None else int(np.searchsorted(self.ts, start, side="left"))
        hi = len(self.ts) if end is None else int(np.searchsorted(self.ts, end, side="right"))
        vals = np.ascontiguousarray(self.values.transpose(2, 0, 1)[:, lo:hi]).transpose(1, 2, 0)
        return FeatureSet(
            self.venue,
            self.pairs,
            self.ts[lo:hi].copy(),
            self.names,
            vals,
            self.bar_valid[lo:hi].copy(),
            self.valid[lo:hi].copy(),
            self.clusters[lo:hi].copy(),
            self.config,
        )

    def to_long(self, complete_only: bool = False) -> pd.DataFrame:
        """Rows (ts, pair, features...) for every existing bar (or only complete rows)."""
        mask = self.valid if complete_only else self.bar_valid
        rows, cols = np.nonzero(mask)
        out = {"ts": self.ts[rows], "pair": np.asarray(self.pairs, dtype=object)[cols]}
        for i, name in enumerate(self.names):
            out[name] = self.values[rows, cols, i]
        return pd.DataFrame(out)


def content_hash(names, cfg: FeaturesConfig, venue, pairs, ts, values, valid, clusters) -> str:
    h = hashlib.sha256()
    meta = {
        "names": list(names),
        "config": cfg.model_dump(mode="json"),
        "venue": venue,
        "pairs": list(pairs),
        "shape": list(values.shape),
    }
    h.update(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    for a in (ts, valid, clusters):
        h.update(np.ascontiguousarray(a).tobytes())
    for i in range(values.shape[2]):  # feature by feature, each (n, m) block in C order
        h.update(np.ascontiguousarray(values[:, :, i]).tobytes())
    return h.hexdigest()


def feature_schema_sha256(cfg: FeaturesConfig) -> str:
    """SHA-256 of the model INPUT SCHEMA: the feature names in order plus the features config JSON.

    Two feature sets with the same schema hash have the same columns computed the same way, so a
    model trained on one can read the other. Data values are not part of it (that is
    :func:`content_hash`)."""
    blob = json.dumps(
        {"names": list(feature_names(cfg)), "config": cfg.model_dump(mode="json")},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def btc_column(pairs: tuple[str, ...]) -> int:
    """Index of the panel's BTC pair (BTC/USD, BTC/USDT, ...), or -1 if it has none."""
    for j, p in enumerate(pairs):
        if split_pair(p)[0] == "BTC":
            return j
    return -1


def compute_feature_arrays(
    panel: Panel, cfg: FeaturesConfig, universe_mask: np.ndarray | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every feature as an (n, m) float64 array, plus the int64 cluster ids."""
    n, m = panel.n_bars, panel.n_pairs
    valid = np.ascontiguousarray(panel.valid, dtype=np.bool_)
    if valid.shape != (n, m):
        raise InputError("panel arrays do not match its ts and pairs")
    if universe_mask is None:
        member = np.ones((n, m), dtype=np.bool_)
    else:
        member = np.ascontiguousarray(universe_mask, dtype=np.bool_)
        if member.shape != (n, m):
            raise InputError(f"universe_mask has shape {member.shape}, panel is {(n, m)}")

    def field(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.where(valid, a, np.nan), dtype=np.float64)

    high, low, close, volume = field(panel.high), field(panel.low), field(panel.close), field(panel.volume)
    f: dict[str, np.ndarray] = {}
    rets = {h: nb.log_return_nb(close, h) for h in sorted(set(cfg.mom_horizons) | {1, BREADTH_RETURN_BARS})}
    for h in cfg.mom_horizons:
        f[f"ret_{h}h"] = rets[h]
    r1 = rets[1]
    with np.errstate(divide="ignore", invalid="ignore"):  # a non-positive price gives NaN/-inf, never a value
        logc = np.log(close)
    f["mom_slope"] = nb.rolling_slope_nb(logc, cfg.slope_window, cfg.slope_window)
    f["atr"] = nb.wilder_atr_nb(high, low, close, cfg.atr_window)
    hour = np.ascontiguousarray(panel.ts // 3600, dtype=np.int64)
    vol = nb.rolling_moments_blocked_nb(r1, hour, cfg.vol_window, cfg.vol_window, 1)[1]
    f["vol"] = vol
    vpct = nb.rolling_pct_rank_nb(vol, cfg.vol_pct_window, cfg.vol_pct_min_periods)
    f["vol_pct"] = vpct
    f["vol_regime"] = np.where(np.isnan(vpct), np.nan, (vpct >= cfg.vol_regime_pct).astype(np.float64))
    vmed = nb.rolling_median_nb(volume, cfg.volume_median_window, cfg.volume_median_min_periods)
    f["volume_surge"] = nb.ratio_to_prev_nb(volume, vmed)
    if cfg.spread_method != "none":
        from engine.features.spread import spread_arrays

        spr = np.ascontiguousarray(
            spread_arrays(high, low, close, valid, cfg.spread_window, cfg.spread_method), dtype=np.float64
        )
        f["spread"] = spr
        smed = nb.rolling_median_nb(spr, cfg.spread_median_window, cfg.spread_median_min_periods)
        f["spread_widen"] = nb.ratio_to_prev_nb(spr, smed)
    f["breakout"] = nb.breakout_nb(close, high, low, cfg.breakout_window)
    f["mr_z"] = nb.rolling_zscore_nb(close, cfg.mr_window, cfg.mr_window, 1)
    f["higher_high"], f["lower_low"] = nb.higher_high_lower_low_nb(high, low, cfg.hhll_window)
    jb = btc_column(panel.pairs)
    if jb >= 0:
        f["beta_btc"], f["corr_btc"] = nb.rolling_beta_corr_nb(
            r1, np.ascontiguousarray(r1[:, jb]), hour, cfg.beta_window, cfg.beta_min_periods
        )
    else:
        f["beta_btc"] = np.full((n, m), np.nan)
        f["corr_btc"] = np.full((n, m), np.nan)
    # the mean of a window of positive prices is safe from block sums (only its std would not be)
    sma = nb.rolling_moments_blocked_nb(close, hour, cfg.breadth_window, cfg.breadth_window, 0)[0]
    above, up, both = nb.breadth_nb(close, sma, rets[BREADTH_RETURN_BARS], member)
    for name, share in (("breadth_above", above), ("breadth_up", up), ("breadth", both)):
        f[name] = np.ascontiguousarray(np.broadcast_to(share[:, None], (n, m)))
    clusters = nb.corr_clusters_nb(
        r1, hour, member, cfg.corr_window, cfg.corr_min_periods, cfg.cluster_every, float(cfg.cluster_threshold)
    )
    f["cluster"] = np.where(clusters >= 0, clusters.astype(np.float64), np.nan)
    return f, clusters


def build_features(
    panel: Panel, cfg: FeaturesConfig | None = None, universe_mask: np.ndarray | None = None
) -> FeatureSet:
    """All features of ``panel`` (bars x pairs x features), causal, with names, mask and hash."""
    cfg = cfg or FeaturesConfig()
    names = feature_names(cfg)
    arrays, clusters = compute_feature_arrays(panel, cfg, universe_mask)
    n, m = panel.n_bars, panel.n_pairs
    store = np.empty((len(names), n, m), dtype=np.float64)  # feature-major; values is a view
    bar_valid = np.ascontiguousarray(panel.valid, dtype=np.bool_)
    for i, name in enumerate(names):
        store[i] = arrays[name]
    valid = nb.all_present_nb(bar_valid, store)
    return FeatureSet(
        panel.venue,
        tuple(panel.pairs),
        panel.ts.copy(),
        names,
        store.transpose(1, 2, 0),
        bar_valid,
        valid,
        clusters,
        cfg,
    )
