"""The generic rolling primitives (reused by other modules) against direct window loops, with
random holes, ties and min_periods < window."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.features import nb


def _direct(x, window, min_periods, fn, need_current=True):
    n, m = x.shape
    out = np.full((n, m), np.nan)
    for j in range(m):
        for t in range(n):
            if need_current and np.isnan(x[t, j]):
                continue
            w = x[max(0, t - window + 1) : t + 1, j]
            idx = np.flatnonzero(~np.isnan(w))
            if idx.size >= min_periods and idx.size > 0:
                out[t, j] = fn(w[idx], idx)  # values and their positions in the window
    return out


@st.composite
def arrays(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(1, 60))
    m = draw(st.integers(1, 3))
    x = rng.normal(size=(n, m)) * 10 ** draw(st.integers(-3, 4)) + draw(st.sampled_from([0.0, 100.0]))
    if draw(st.booleans()):
        x = np.round(x, 0)  # ties
    x[rng.random((n, m)) < draw(st.sampled_from([0.0, 0.1, 0.4]))] = np.nan
    window = draw(st.integers(1, 12))
    mp = draw(st.integers(1, window))
    return x, window, mp


@settings(max_examples=60, deadline=None)
@given(arrays())
def test_mean_std_median_rank_slope_match_direct_windows(case):
    x, w, mp = case
    mean, std = nb.rolling_mean_std_nb(x, w, mp, 1)
    np.testing.assert_allclose(mean, _direct(x, w, max(mp, 2), lambda v, i: v.mean()), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(std, _direct(x, w, max(mp, 2), lambda v, i: v.std(ddof=1)), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        nb.rolling_mean_nb(x, w, mp), _direct(x, w, mp, lambda v, i: v.mean()), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_array_equal(nb.rolling_median_nb(x, w, mp), _direct(x, w, mp, lambda v, i: np.median(v)))

    def rank(v, i):
        cur = v[-1]
        return ((v < cur).sum() + 0.5 * ((v == cur).sum() + 1)) / v.size

    np.testing.assert_array_equal(nb.rolling_pct_rank_nb(x, w, mp), _direct(x, w, mp, rank))

    def slope(v, i):
        xi = i.astype(float)
        return ((xi - xi.mean()) * (v - v.mean())).sum() / ((xi - xi.mean()) ** 2).sum()

    np.testing.assert_allclose(nb.rolling_slope_nb(x, w, mp), _direct(x, w, max(mp, 2), slope), rtol=1e-9, atol=1e-9)

    def z(v, i):
        s = v.std(ddof=1)
        return (v[-1] - v.mean()) / s if s > 0 else np.nan

    got = nb.rolling_zscore_nb(x, w, mp, 1)
    want = _direct(x, w, max(mp, 2), z)
    ok = np.isfinite(want) & (np.abs(want) > 1e-6)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-8)


@settings(max_examples=40, deadline=None)
@given(arrays(), st.integers(0, 3), st.booleans())
def test_rolling_extreme_with_lag(case, lag, is_max):
    x, w, mp = case
    got = nb.rolling_extreme_nb(x, w, mp, lag, is_max)
    n, m = x.shape
    for j in range(m):
        for t in range(n):
            hi = t - lag
            lo = hi - w + 1
            if lo < 0 or (lag == 0 and np.isnan(x[t, j])):
                assert np.isnan(got[t, j])
                continue
            v = x[lo : hi + 1, j]
            v = v[~np.isnan(v)]
            want = (v.max() if is_max else v.min()) if v.size >= mp else np.nan
            np.testing.assert_array_equal(got[t, j], want)


@settings(max_examples=40, deadline=None)
@given(arrays(), st.integers(0, 23))
def test_block_beta_corr_matches_direct_two_pass(case, h0):
    x, w, mp = case
    n, m = x.shape
    rng = np.random.default_rng(n * 7 + m)
    y = rng.normal(size=n) * 0.01
    y[rng.random(n) < 0.1] = np.nan
    scale = np.nanmax(np.abs(x)) if np.isfinite(x).any() else 0.0
    x = x * 1e-3 / scale if scale > 0 else x  # return-sized values
    w = max(w, 2)
    hour = h0 + np.arange(n, dtype=np.int64)
    beta, corr = nb.rolling_beta_corr_nb(x, y, hour, w, mp)
    for j in range(m):
        for t in range(n):
            lo = max(0, t - w + 1)
            a, b = x[lo : t + 1, j], y[lo : t + 1]
            ok = ~(np.isnan(a) | np.isnan(b))
            if np.isnan(x[t, j]) or np.isnan(y[t]) or ok.sum() < max(mp, 3):
                assert np.isnan(beta[t, j]) and np.isnan(corr[t, j])
                continue
            da, db = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
            vb = (db * db).sum()
            if vb <= 1e-30:
                continue
            np.testing.assert_allclose(beta[t, j], (da * db).sum() / vb, rtol=1e-6, atol=1e-9)
            # truncating the history to the window itself gives the same bits (pure function)
            if t - w + 1 >= 0:
                b2, c2 = nb.rolling_beta_corr_nb(
                    np.ascontiguousarray(x[t - w + 1 : t + 1]),
                    np.ascontiguousarray(y[t - w + 1 : t + 1]),
                    hour[t - w + 1 : t + 1],
                    w,
                    mp,
                )
                assert b2[-1, j].tobytes() == beta[t, j].tobytes()


@settings(max_examples=40, deadline=None)
@given(arrays(), st.integers(0, 23))
def test_blocked_moments_match_direct_and_are_pure(case, h0):
    x, w, mp = case
    scale = np.nanmax(np.abs(x)) if np.isfinite(x).any() else 0.0
    x = np.ascontiguousarray(x * 1e-2 / scale if scale > 0 else x)  # return-sized values
    w = max(w, 2)
    hour = h0 + np.arange(x.shape[0], dtype=np.int64)
    mean, std = nb.rolling_moments_blocked_nb(x, hour, w, mp, 1)
    np.testing.assert_allclose(mean, _direct(x, w, max(mp, 2), lambda v, i: v.mean()), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(std, _direct(x, w, max(mp, 2), lambda v, i: v.std(ddof=1)), rtol=1e-6, atol=1e-9)
    for t in range(w - 1, x.shape[0]):  # the window alone reproduces every value bit for bit
        m2, s2 = nb.rolling_moments_blocked_nb(
            np.ascontiguousarray(x[t - w + 1 : t + 1]), hour[t - w + 1 : t + 1], w, mp, 1
        )
        assert m2[-1].tobytes() == mean[t].tobytes() and s2[-1].tobytes() == std[t].tobytes()
