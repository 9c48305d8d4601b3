"""Plain pandas/numpy reference implementation of every feature in engine.features.featureset.

Written independently of the numba kernels, by direct window computations (numpy
``sliding_window_view``, ``np.std``/``np.median`` on each window, pandas' exact rolling max/min and
integer counts, scipy's average linkage for the clusters). pandas' online rolling mean/std are NOT
used: they drift (up to 3e-7 relative on raw prices, docs/MODEL_ASSUMPTIONS.md).

The tests (tests/test_features_reference.py) compare the kernels with this module on real data to
1e-9 relative; benchmarks/bench_features.py times both. The spread estimate itself is B's kernel
(engine.features.spread, checked in tests/test_spread.py); here it is an input to ``spread_widen``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from engine.features.config import FeaturesConfig
from engine.pairs import split_pair
from engine.store.panel import Panel

BREADTH_RETURN_BARS = 24


def _windows(a: np.ndarray, w: int) -> np.ndarray:
    """(n, w) trailing windows of a 1-D array, NaN-padded at the start: row t = a[t-w+1 .. t]."""
    pad = np.concatenate([np.full(w - 1, np.nan), a])
    return sliding_window_view(pad, w)


def _all_present(a: np.ndarray, w: int) -> np.ndarray:
    """True where a[t-w+1 .. t] are all non-NaN (exact integer rolling count)."""
    return pd.Series(np.isfinite(a).astype(np.int64)).rolling(w, min_periods=w).sum().to_numpy() == w


def _count(a: np.ndarray, w: int) -> np.ndarray:
    return pd.Series(np.isfinite(a).astype(np.int64)).rolling(w, min_periods=1).sum().to_numpy()


def log_return(c: np.ndarray, k: int) -> np.ndarray:
    out = np.log(c / pd.Series(c).shift(k).to_numpy())
    return np.where(_all_present(c, k + 1), out, np.nan)


def slope(y: np.ndarray, w: int) -> np.ndarray:
    W = _windows(y, w)
    x = np.arange(w, dtype=float)
    xc = x - x.mean()
    my = W.mean(axis=1, keepdims=True)
    out = ((W - my) @ xc) / (xc @ xc)
    return np.where(_all_present(y, w), out, np.nan)


def mean_std(x: np.ndarray, w: int, ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
    W = _windows(x, w)
    ok = _all_present(x, w)
    with np.errstate(invalid="ignore"):
        mu = W.mean(axis=1)
        sd = W.std(axis=1, ddof=ddof)
    return np.where(ok, mu, np.nan), np.where(ok, sd, np.nan)


def atr(h: np.ndarray, lo: np.ndarray, c: np.ndarray, w: int) -> np.ndarray:
    pc = pd.Series(c).shift(1).to_numpy()
    tr = np.maximum.reduce([h - lo, np.abs(h - pc), np.abs(lo - pc)])
    tr = np.where(np.isfinite(h) & np.isfinite(lo) & np.isfinite(c) & np.isfinite(pc), tr, np.nan)
    out = np.full_like(tr, np.nan)
    ok = np.isfinite(tr)
    # contiguous runs of true ranges: seed = mean of the first w, then Wilder's recursion
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return out
    breaks = np.flatnonzero(np.diff(idx) > 1) + 1
    for run in np.split(idx, breaks):
        if run.size < w:
            continue
        v = tr[run]
        a = v[:w].mean()
        res = np.empty(run.size - w + 1)
        res[0] = a
        for i in range(w, run.size):
            a = (a * (w - 1) + v[i]) / w
            res[i - w + 1] = a
        out[run[w - 1 :]] = res
    return out


def pct_rank(x: np.ndarray, w: int, min_periods: int) -> np.ndarray:
    W = _windows(x, w)
    cur = x[:, None]
    n = np.isfinite(W).sum(axis=1)
    less = (cur > W).sum(axis=1)
    eq = (cur == W).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (less + 0.5 * (eq + 1)) / n
    return np.where(np.isfinite(x) & (n >= min_periods), out, np.nan)


def median(x: np.ndarray, w: int, min_periods: int) -> np.ndarray:
    W = _windows(x, w)
    n = np.isfinite(W).sum(axis=1)
    ok = np.isfinite(x) & (n >= min_periods)
    out = np.full(x.shape, np.nan)
    if ok.any():
        out[ok] = np.nanmedian(W[ok], axis=1)
    return out


def ratio_to_prev(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    prev = pd.Series(ref).shift(1).to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isfinite(x) & np.isfinite(prev) & (prev > 0), x / prev, np.nan)


def breakout(c, h, lo, w):
    hi_prev = pd.Series(h).rolling(w, min_periods=w).max().shift(1).to_numpy()
    lo_prev = pd.Series(lo).rolling(w, min_periods=w).min().shift(1).to_numpy()
    ok = _all_present(c, w + 1) & _all_present(h, w + 1) & _all_present(lo, w + 1)
    out = np.where(c > hi_prev, 1.0, np.where(c < lo_prev, -1.0, 0.0))
    return np.where(ok, out, np.nan)


def hh_ll(h, lo, w):
    hmax = pd.Series(h).rolling(w, min_periods=w).max()
    lmin = pd.Series(lo).rolling(w, min_periods=w).min()
    ok = _all_present(h, 2 * w) & _all_present(lo, 2 * w)
    hh = (hmax > hmax.shift(w)).to_numpy().astype(float)
    ll = (lmin < lmin.shift(w)).to_numpy().astype(float)
    return np.where(ok, hh, np.nan), np.where(ok, ll, np.nan)


def beta_corr(x: np.ndarray, y: np.ndarray, w: int, min_periods: int):
    X, Y = _windows(x, w), _windows(y, w)
    M = np.isfinite(X) & np.isfinite(Y)
    n = M.sum(axis=1)
    Xz, Yz = np.where(M, X, 0.0), np.where(M, Y, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = Xz.sum(axis=1) / n
        my = Yz.sum(axis=1) / n
        dx = np.where(M, X - mx[:, None], 0.0)
        dy = np.where(M, Y - my[:, None], 0.0)
        sxx, syy, sxy = (dx * dx).sum(1), (dy * dy).sum(1), (dx * dy).sum(1)
        beta = sxy / syy
        corr = sxy / np.sqrt(sxx * syy)
    ok = np.isfinite(x) & np.isfinite(y) & (n >= max(min_periods, 3))
    return np.where(ok & (syy > 0), beta, np.nan), np.where(ok & (syy > 0) & (sxx > 0), corr, np.nan)


def clusters(
    r: np.ndarray, ts: np.ndarray, member: np.ndarray, w: int, min_periods: int, every: int, threshold: float
) -> np.ndarray:
    """Average linkage (scipy) on 1 - corr (pandas pairwise-complete corr), labels by lowest column."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    n, m = r.shape
    out = np.full((n, m), -1, dtype=np.int64)
    cur = None
    frame = pd.DataFrame(r)
    for t in range(n):
        if (ts[t] // 3600) % every == 0:
            lo = max(0, t - w + 1)
            win = frame.iloc[lo : t + 1]
            cnt = win.notna().sum().to_numpy()
            elig = member[t] & (cnt >= min_periods)
            cur = np.full(m, -1, dtype=np.int64)
            idx = np.flatnonzero(elig)
            if idx.size == 1:
                cur[idx] = 0
            elif idx.size > 1:
                c = win.iloc[:, idx].corr(min_periods=max(min_periods, 3)).to_numpy()
                d = 1.0 - np.nan_to_num(c, nan=0.0)
                np.fill_diagonal(d, 0.0)
                d = np.clip((d + d.T) / 2, 0.0, None)
                z = linkage(squareform(d, checks=False), method="average")
                flat = fcluster(z, t=1.0 - threshold, criterion="distance")
                seen: dict[int, int] = {}
                for k, j in enumerate(idx):
                    seen.setdefault(int(flat[k]), len(seen))
                    cur[j] = seen[int(flat[k])]
        if cur is not None:
            out[t] = cur
    return out


def reference_features(
    panel: Panel,
    cfg: FeaturesConfig,
    spread: np.ndarray | None = None,
    universe_mask: np.ndarray | None = None,
    with_clusters: bool = True,
) -> dict[str, np.ndarray]:
    """Every feature as an (n, m) array, same names and rules as build_features."""
    n, m = panel.n_bars, panel.n_pairs
    v = panel.valid
    C = np.where(v, panel.close, np.nan)
    H = np.where(v, panel.high, np.nan)
    L = np.where(v, panel.low, np.nan)
    V = np.where(v, panel.volume, np.nan)
    member = np.ones((n, m), bool) if universe_mask is None else np.asarray(universe_mask, bool)
    cols: dict[str, list] = {}

    def put(name, j, arr):
        cols.setdefault(name, [None] * m)[j] = arr

    jb = next((j for j, p in enumerate(panel.pairs) if split_pair(p)[0] == "BTC"), -1)
    r1_all = np.column_stack([log_return(C[:, j], 1) for j in range(m)])
    sma_all = np.empty((n, m))
    r24_all = np.empty((n, m))
    for j in range(m):
        c, h, lo, vol_ = C[:, j], H[:, j], L[:, j], V[:, j]
        for k in cfg.mom_horizons:
            put(f"ret_{k}h", j, log_return(c, k))
        r1 = r1_all[:, j]
        put("mom_slope", j, slope(np.log(c), cfg.slope_window))
        put("atr", j, atr(h, lo, c, cfg.atr_window))
        sd = mean_std(r1, cfg.vol_window)[1]
        put("vol", j, sd)
        vp = pct_rank(sd, cfg.vol_pct_window, cfg.vol_pct_min_periods)
        put("vol_pct", j, vp)
        put("vol_regime", j, np.where(np.isnan(vp), np.nan, (vp >= cfg.vol_regime_pct).astype(float)))
        put(
            "volume_surge",
            j,
            ratio_to_prev(vol_, median(vol_, cfg.volume_median_window, cfg.volume_median_min_periods)),
        )
        if cfg.spread_method != "none":
            s = spread[:, j]
            put("spread", j, s)
            put("spread_widen", j, ratio_to_prev(s, median(s, cfg.spread_median_window, cfg.spread_median_min_periods)))
        put("breakout", j, breakout(c, h, lo, cfg.breakout_window))
        mu, sdp = mean_std(c, cfg.mr_window)
        with np.errstate(invalid="ignore", divide="ignore"):
            put("mr_z", j, np.where(sdp > 0, (c - mu) / sdp, np.nan))
        hh, ll = hh_ll(h, lo, cfg.hhll_window)
        put("higher_high", j, hh)
        put("lower_low", j, ll)
        if jb >= 0:
            b, co = beta_corr(r1, r1_all[:, jb], cfg.beta_window, cfg.beta_min_periods)
        else:
            b = co = np.full(n, np.nan)
        put("beta_btc", j, b)
        put("corr_btc", j, co)
        sma_all[:, j] = mean_std(c, cfg.breadth_window)[0]
        r24_all[:, j] = log_return(c, BREADTH_RETURN_BARS)
    with np.errstate(invalid="ignore"):
        has_a = member & np.isfinite(C) & np.isfinite(sma_all)
        has_u = member & np.isfinite(r24_all)
        na, nu = has_a.sum(1), has_u.sum(1)
        above = np.where(na > 0, (has_a & (C - sma_all > 1e-12 * np.abs(sma_all))).sum(1) / np.maximum(na, 1), np.nan)
        up = np.where(nu > 0, (has_u & (r24_all > 0)).sum(1) / np.maximum(nu, 1), np.nan)
        has_b = has_a & has_u
        nbb = has_b.sum(1)
        is_b = has_b & (C - sma_all > 1e-12 * np.abs(sma_all)) & (r24_all > 0)
        both = np.where(nbb > 0, is_b.sum(1) / np.maximum(nbb, 1), np.nan)
    out = {k: np.column_stack(v_) for k, v_ in cols.items()}
    out["breadth_above"] = np.repeat(above[:, None], m, axis=1)
    out["breadth_up"] = np.repeat(up[:, None], m, axis=1)
    out["breadth"] = np.repeat(both[:, None], m, axis=1)
    if not with_clusters:
        return out
    cl = clusters(
        r1_all, panel.ts, member, cfg.corr_window, cfg.corr_min_periods, cfg.cluster_every, cfg.cluster_threshold
    )
    out["cluster"] = np.where(cl >= 0, cl.astype(float), np.nan)
    return out


def compare(values: dict[str, np.ndarray], ref: dict[str, np.ndarray], cfg: FeaturesConfig) -> dict[str, float]:
    """Max relative difference per feature (kernel vs reference) under the documented rules.

    * NaN patterns must match exactly (reported as inf otherwise).
    * ``mr_z`` crosses 0: differences below 1e-12 absolute count as 0.
    * ``vol_pct``/``vol_regime`` are exact ranks of ``vol``; a one-ulp difference between two ways of
      computing ``vol`` can flip an exact tie, so the rank is checked on the kernel's own ``vol``
      (``vol`` itself is checked to 1e-9 like everything else).
    """
    out: dict[str, float] = {}
    ref = dict(ref)
    if "vol_pct" in ref:
        vol = values["vol"]
        vp = np.column_stack(
            [pct_rank(vol[:, j], cfg.vol_pct_window, cfg.vol_pct_min_periods) for j in range(vol.shape[1])]
        )
        ref["vol_pct"] = vp
        ref["vol_regime"] = np.where(np.isnan(vp), np.nan, (vp >= cfg.vol_regime_pct).astype(float))
    for name, b in ref.items():
        a = values[name]
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            out[name] = float("inf")
            continue
        ok = np.isfinite(b)
        d = np.abs(a[ok] - b[ok])
        if name == "mr_z":
            d = np.where(d <= 1e-12, 0.0, d)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.where(d == 0, 0.0, d / np.abs(b[ok]))
        out[name] = float(rel.max()) if rel.size else 0.0
    return out
