"""Numba kernels of the regime-aware strategy layer: regime features and rule, hysteresis, the six
strategy profiles, the selector and the P(up) gate.

Every kernel is causal: the value at row t reads rows <= t only (tests/test_strategy.py perturbs
the rows after t on real data). Arrays are (n bars, m pairs) in time order; a bar with
``valid`` False (or a non-finite close) is missing, and any window that contains a missing bar is
undefined (no regime: -1; no candidate). Windows are summed directly (no running sums), so a value
never depends on where the array starts beyond its own window (the daemon's 1,000-bar window and a
full-history backtest agree at every row where the window holds the full lookback).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from engine.strategy.enums import N_PROFILES, N_REGIMES

UNKNOWN = -1
RANGE, TRENDING, HIGH_VOL, CRASH = 0, 1, 2, 3
P_TREND, P_BREAKOUT, P_MEAN_REV, P_VOL_EXP, P_DEFENSIVE, P_PRESERVE = 0, 1, 2, 3, 4, 5


@njit(cache=True)
def _px(close, valid, t, j):
    """The close of row t, NaN where the bar is missing."""
    c = close[t, j]
    if not valid[t, j] or not (c > 0.0) or not math.isfinite(c):
        return np.nan
    return c


@njit(cache=True)
def regime_features_nb(close, valid, trend_bars, vol_bars):
    """(trend, vol, dd, strength), each (n, m), NaN where undefined; the formulas of
    ``research.models.regime`` (module doc there): trailing log return over ``trend_bars``, the
    ddof-0 standard deviation of the last ``vol_bars`` hourly log returns, the drawdown from the
    highest close of the last ``trend_bars`` rows, and |trend| / (vol * sqrt(trend_bars))."""
    n, m = close.shape
    trend = np.full((n, m), np.nan)
    vol = np.full((n, m), np.nan)
    dd = np.full((n, m), np.nan)
    strength = np.full((n, m), np.nan)
    sq = math.sqrt(trend_bars)
    for j in range(m):
        for t in range(n):
            c = _px(close, valid, t, j)
            if c != c:
                continue
            if t >= trend_bars:
                c0 = _px(close, valid, t - trend_bars, j)
                if c0 == c0:
                    trend[t, j] = math.log(c) - math.log(c0)
            if t >= vol_bars:
                s = 0.0
                ok = True
                for k in range(t - vol_bars + 1, t + 1):
                    a = _px(close, valid, k, j)
                    b = _px(close, valid, k - 1, j)
                    if a != a or b != b:
                        ok = False
                        break
                    s += math.log(a) - math.log(b)
                if ok:
                    mu = s / vol_bars
                    v = 0.0
                    for k in range(t - vol_bars + 1, t + 1):
                        d = math.log(_px(close, valid, k, j)) - math.log(_px(close, valid, k - 1, j)) - mu
                        v += d * d
                    vol[t, j] = math.sqrt(v / vol_bars)
            if t >= trend_bars - 1:
                hi = -np.inf
                ok = True
                for k in range(t - trend_bars + 1, t + 1):
                    a = _px(close, valid, k, j)
                    if a != a:
                        ok = False
                        break
                    if a > hi:
                        hi = a
                if ok:
                    dd[t, j] = 1.0 - c / hi
            tr = trend[t, j]
            vo = vol[t, j]
            if tr == tr and vo == vo:
                x = abs(tr) / (vo * sq)
                if math.isfinite(x):
                    strength[t, j] = x
    return trend, vol, dd, strength


@njit(cache=True)
def regime_rule_nb(trend, vol, dd, strength, crash_ret, crash_drawdown, vol_hi, strength_hi):
    """The regime rule on 1-D feature arrays (int8 codes), in priority order: crash (trend <=
    crash_ret and dd >= crash_drawdown), high_vol (vol >= vol_hi), trending (strength >=
    strength_hi), range; -1 where a feature is not finite. The one implementation of the rule:
    ``research.models.regime.RegimeClassifier.predict`` calls it with its fitted thresholds."""
    n = trend.shape[0]
    out = np.full(n, UNKNOWN, dtype=np.int8)
    for i in range(n):
        a, b, c, d = trend[i], vol[i], dd[i], strength[i]
        if not (math.isfinite(a) and math.isfinite(b) and math.isfinite(c) and math.isfinite(d)):
            continue
        if a <= crash_ret and c >= crash_drawdown:
            out[i] = CRASH
        elif b >= vol_hi:
            out[i] = HIGH_VOL
        elif d >= strength_hi:
            out[i] = TRENDING
        else:
            out[i] = RANGE
    return out


@njit(cache=True)
def hysteresis_nb(raw, min_bars, lookback):
    """Regime labels with hysteresis, (n, m) int8: the label at row t is the raw label of the
    latest row s in [t - lookback, t] that ends a run of at least ``min_bars`` equal raw labels
    (raw[s - min_bars + 1 .. s] all equal); -1 when no such row. A label therefore changes only
    when a new raw label has held ``min_bars`` rows (no label lasts fewer than ``min_bars`` rows,
    except by expiring to -1 after ``lookback`` rows without a settled run), and it is a function
    of raw rows t - lookback - min_bars + 1 .. t only. ``min_bars`` 1: the raw labels."""
    n, m = raw.shape
    out = np.full((n, m), UNKNOWN, dtype=np.int8)
    for j in range(m):
        run = 0
        last_s = -(1 << 62)
        last_lab = UNKNOWN
        for t in range(n):
            if t > 0 and raw[t, j] == raw[t - 1, j]:
                run += 1
            else:
                run = 1
            if run >= min_bars:
                last_s = t
                last_lab = raw[t, j]
            if t - last_s <= lookback:
                out[t, j] = last_lab
    return out


@njit(cache=True)
def _mean_std(x, valid, t, j, w):
    """(mean, ddof-0 std) of x[t-w+1 .. t, j]; NaN when a bar in the window is missing."""
    if t < w - 1:
        return np.nan, np.nan
    s = 0.0
    for k in range(t - w + 1, t + 1):
        a = _px(x, valid, k, j)
        if a != a:
            return np.nan, np.nan
        s += a
    mu = s / w
    v = 0.0
    for k in range(t - w + 1, t + 1):
        d = x[k, j] - mu
        v += d * d
    return mu, math.sqrt(v / w)


@njit(cache=True)
def _ret_std(close, valid, a, b, j):
    """ddof-0 std of the hourly log returns of rows a..b (return of row k: close k over close k-1);
    NaN when a bar in a..b or row a-1 is missing."""
    if a < 1 or b < a:
        return np.nan
    w = b - a + 1
    s = 0.0
    for k in range(a, b + 1):
        x = _px(close, valid, k, j)
        y = _px(close, valid, k - 1, j)
        if x != x or y != y:
            return np.nan
        s += math.log(x / y)
    mu = s / w
    v = 0.0
    for k in range(a, b + 1):
        d = math.log(close[k, j] / close[k - 1, j]) - mu
        v += d * d
    return math.sqrt(v / w)


@njit(cache=True)
def profile_rule_nb(prof, t, j, high, close, volume, valid, pu, sp):
    """The rule of profile ``prof`` at (t, j) WITHOUT the P(up) gate (see profile_candidates_nb)."""
    c = _px(close, valid, t, j)
    if c != c:
        return False
    if prof == P_TREND:
        # momentum over trend_mom_bars, a rising SMA and the close above it
        w = sp.trend_mom_bars
        if t < w:
            return False
        c0 = _px(close, valid, t - w, j)
        if c0 != c0 or not (c > c0):
            return False
        L = sp.trend_sma_bars
        if t < L:
            return False
        mu, _ = _mean_std(close, valid, t, j, L)
        mu0, _ = _mean_std(close, valid, t - 1, j, L)
        return mu == mu and mu0 == mu0 and mu > mu0 and c > mu
    if prof == P_BREAKOUT:
        # a close above the highest high of the previous breakout_bars, on volume above
        # breakout_volume_mult x their mean volume
        B = sp.breakout_bars
        if t < B:
            return False
        hh = -np.inf
        vs = 0.0
        for k in range(t - B, t):
            if _px(close, valid, k, j) != _px(close, valid, k, j):
                return False
            h = high[k, j]
            if not math.isfinite(h) or not math.isfinite(volume[k, j]):
                return False
            if h > hh:
                hh = h
            vs += volume[k, j]
        vb = vs / B
        v = volume[t, j]
        return vb > 0.0 and math.isfinite(v) and c > hh and v >= sp.breakout_volume_mult * vb
    if prof == P_MEAN_REV:
        # the close stretched mr_z standard deviations below its mr_bars mean (long only: back up)
        mu, sd = _mean_std(close, valid, t, j, sp.mr_bars)
        return sd == sd and sd > 0.0 and (c - mu) / sd <= -sp.mr_z
    if prof == P_VOL_EXP:
        # a quiet spell (short return std <= vx_contract x long std, both up to t-1) broken by an up
        # move of at least vx_expand long stds at t
        S = sp.vx_short_bars
        L = sp.vx_long_bars
        if t < L + 1:
            return False
        s_short = _ret_std(close, valid, t - S, t - 1, j)
        s_long = _ret_std(close, valid, t - L, t - 1, j)
        c1 = _px(close, valid, t - 1, j)
        if s_short != s_short or s_long != s_long or c1 != c1 or not (s_long > 0.0):
            return False
        return s_short <= sp.vx_contract * s_long and math.log(c / c1) >= sp.vx_expand * s_long
    if prof == P_DEFENSIVE:
        # only the most confident entries: P(up) at least defensive_margin above the gate
        return pu == pu and pu >= sp.p_up_entry + sp.defensive_margin
    return False  # P_PRESERVE: no entries


@njit(cache=True)
def profile_candidates_nb(high, close, volume, valid, p_up, sp):
    """Entry candidates of the six profiles, (N_PROFILES, n, m) bool: each profile's rule AND the
    meta-learner's gate P(up) >= sp.p_up_entry (NaN P(up): never). No profile enters on its own."""
    n, m = close.shape
    out = np.zeros((N_PROFILES, n, m), dtype=np.bool_)
    for t in range(n):
        for j in range(m):
            pu = p_up[t, j]
            if not (pu == pu and pu >= sp.p_up_entry):
                continue  # the gate: checked before any rule
            for q in range(N_PROFILES):
                out[q, t, j] = profile_rule_nb(q, t, j, high, close, volume, valid, pu, sp)
    return out


@njit(cache=True)
def select_nb(regime, cand, table_p, table_w, exits):
    """The selector per (t, j). ``table_p`` (N_REGIMES + 1, 2) int64: the active profiles of each
    regime row (row N_REGIMES: unknown; -1: an unused slot), ``table_w`` their weights, ``exits``
    (N_PROFILES, 3): stop ATR multiple, take-profit ATR multiple, size scale of each profile.

    Among the row's active profiles that have a candidate, the heaviest (ties: the first listed)
    is selected: candidate True, its exit parameters, size scale x weight / the row's largest
    weight. No candidate: the row's first profile, candidate False, its exit parameters.
    Returns (profile int8, candidate bool, stop, take_profit, size_scale), each (n, m)."""
    n, m = regime.shape
    prof = np.full((n, m), -1, dtype=np.int8)
    ok = np.zeros((n, m), dtype=np.bool_)
    stop = np.full((n, m), np.nan)
    tp = np.full((n, m), np.nan)
    size = np.full((n, m), np.nan)
    for t in range(n):
        for j in range(m):
            r = regime[t, j]
            row = N_REGIMES if r < 0 else r
            wmax = table_w[row, 0]
            if table_p[row, 1] >= 0 and table_w[row, 1] > wmax:
                wmax = table_w[row, 1]
            best = -1
            bw = -1.0
            for s in range(2):
                q = table_p[row, s]
                if q >= 0 and cand[q, t, j] and table_w[row, s] > bw:
                    best = q
                    bw = table_w[row, s]
            if best >= 0:
                ok[t, j] = True
                w = bw
            else:
                best = table_p[row, 0]
                w = table_w[row, 0]
            prof[t, j] = best
            stop[t, j] = exits[best, 0]
            tp[t, j] = exits[best, 1]
            size[t, j] = exits[best, 2] * w / wmax
    return prof, ok, stop, tp, size


@njit(cache=True)
def gate_p_up_nb(p_up, candidate, p_up_entry, parked):
    """The P(up) the risk step reads: unchanged where the selected profile has a candidate or P(up)
    is below the entry threshold (or NaN); ``parked`` (the signal-exit threshold: below entry, not
    below exit) where P(up) would pass the threshold but no selected profile has a candidate, so
    the unchanged risk step makes no entry there and no signal exit that it would not make anyway."""
    n, m = p_up.shape
    out = p_up.copy()
    for t in range(n):
        for j in range(m):
            pu = p_up[t, j]
            if pu == pu and pu >= p_up_entry and not candidate[t, j]:
                out[t, j] = parked
    return out
