"""Causal feature kernels: numba functions over (bars x pairs) float64 arrays.

Every kernel reads bars ``<= t`` only to produce the value at bar ``t`` (a bar at ``ts`` is known
after ``ts + 3600``, so the value at ``t`` is usable from the close of bar ``t``). The future is
read in exactly one module, :mod:`engine.features.labels`; nothing here imports it.

Missing bars and gaps (the rule, one for all kernels)
-----------------------------------------------------
A missing hour is NaN in the input (the Panel has NaN prices where ``valid`` is False). Nothing is
ever carried forward and nothing is computed across a hole as if the bars were contiguous:

* **current bar**: a value at ``t`` is NaN when the input at ``t`` is NaN (for windowed
  primitives: when ``x[t]`` is NaN). Exception: :func:`rolling_extreme_nb` with ``lag > 0``
  (a window that ends before ``t``) and the cluster ids (a property of the recent past).
* **returns** over ``k`` bars are NaN unless all ``k + 1`` bars ``t-k .. t`` are present, so a
  return never spans a hole.
* **windowed statistics** (``window`` bars ``t-window+1 .. t``) use the non-NaN values of the
  window and are NaN unless at least ``min_periods`` of them exist. ``min_periods == window`` is the
  strict rule (any hole in the window gives NaN): the feature layer uses it for every short window
  and allows a smaller ``min_periods`` only for the long (week/month) windows, where one missing
  hour would otherwise blank a month.
* **Wilder's ATR** (recursive) restarts after every hole: see :func:`wilder_atr_nb`.

Exactness and warm-up
---------------------
Windowed kernels recompute each window from its values (no running float sums that drift or carry
history); only integer counts are kept online. A windowed value is therefore a pure function of the
bars in its window, bit for bit: the same value comes out whether the history starts one window or
ten years earlier. Means and standard deviations are two-pass (mean first, then the centred sum of
squares); the z-score sums deviations from the current value; medians come from a sorted window;
percentile ranks from exact integer counts (Fenwick tree over the column's distinct values). The
moment sums of *returns* (vol, beta/corr to BTC, the correlation matrix) and the breadth's mean of
closes are added from blocks anchored to UTC hours (``ts // 3600``), each block summed in a fixed
order: still a pure function of the window, at O(1) per bar (raw second moments only for returns,
whose mean is small against their spread; never for prices). Window sums use four interleaved
accumulators fixed by the position in the window (deterministic, and faster than one dependency chain).

Ties (percentile rank)
----------------------
:func:`rolling_pct_rank_nb` returns the *average-rank* percentile of ``x[t]`` within the valid values
of its window (``x[t]`` included): ``(n_less + (n_equal + 1) / 2) / n_valid`` where ``n_equal`` counts
the window values equal to ``x[t]`` (itself included). This equals pandas' ``rank(method="average",
pct=True)`` on the window, lies in ``(0, 1]``, and is 1 for a strict new maximum.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

#: "close above its mean" needs a margin of this much (relative): exact ties are not "above".
BREADTH_TIE_REL = 1e-12

# --------------------------------------------------------------------------------------------
# helpers


@njit(cache=True)
def _finite_count_window_nb(x, t, j, window):
    lo = t - window + 1
    if lo < 0:
        lo = 0
    c = 0
    for i in range(lo, t + 1):
        if not np.isnan(x[i, j]):
            c += 1
    return c


# --------------------------------------------------------------------------------------------
# window sums over a contiguous 1-D column. Four interleaved accumulators (fixed by the position in
# the window, combined in a fixed order) keep the result a pure function of the window's values
# while breaking the floating-point dependency chain.


@njit(cache=True)
def _sum_full(a, lo, hi):
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    i = lo
    while i + 4 <= hi:
        s0 += a[i]
        s1 += a[i + 1]
        s2 += a[i + 2]
        s3 += a[i + 3]
        i += 4
    while i < hi:
        s0 += a[i]
        i += 1
    return (s0 + s1) + (s2 + s3)


@njit(cache=True)
def _ssd_full(a, lo, hi, mu):
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    i = lo
    while i + 4 <= hi:
        d0 = a[i] - mu
        d1 = a[i + 1] - mu
        d2 = a[i + 2] - mu
        d3 = a[i + 3] - mu
        s0 += d0 * d0
        s1 += d1 * d1
        s2 += d2 * d2
        s3 += d3 * d3
        i += 4
    while i < hi:
        d0 = a[i] - mu
        s0 += d0 * d0
        i += 1
    return (s0 + s1) + (s2 + s3)


@njit(cache=True)
def _sum_nan(a, lo, hi):
    s = 0.0
    for i in range(lo, hi):
        v = a[i]
        if not np.isnan(v):
            s += v
    return s


@njit(cache=True)
def _ssd_nan(a, lo, hi, mu):
    s = 0.0
    for i in range(lo, hi):
        v = a[i]
        if not np.isnan(v):
            d = v - mu
            s += d * d
    return s


# --------------------------------------------------------------------------------------------
# generic causal rolling primitives (2-D, column by column)


@njit(cache=True)
def rolling_mean_std_nb(x, window, min_periods, ddof):
    """Rolling mean and standard deviation over x[t-window+1 .. t], two-pass, exact per window.

    NaN at t if x[t] is NaN or fewer than ``max(min_periods, ddof + 1)`` values of the window exist.
    """
    n, m = x.shape
    mean = np.full((n, m), np.nan)
    std = np.full((n, m), np.nan)
    need = min_periods if min_periods > ddof + 1 else ddof + 1
    col = np.empty(n)
    for j in range(m):
        for t in range(n):
            col[t] = x[t, j]
        cnt = 0
        for t in range(n):
            if not np.isnan(col[t]):
                cnt += 1
            if t >= window and not np.isnan(col[t - window]):
                cnt -= 1
            if np.isnan(col[t]) or cnt < need:
                continue
            lo = t - window + 1
            if lo < 0:
                lo = 0
            if cnt == t + 1 - lo:
                mu = _sum_full(col, lo, t + 1) / cnt
                ss = _ssd_full(col, lo, t + 1, mu)
            else:
                mu = _sum_nan(col, lo, t + 1) / cnt
                ss = _ssd_nan(col, lo, t + 1, mu)
            mean[t, j] = mu
            std[t, j] = math.sqrt(ss / (cnt - ddof))
    return mean, std


@njit(cache=True)
def rolling_zscore_nb(x, window, min_periods, ddof):
    """(x[t] - mean) / std over x[t-window+1 .. t] (the mean-reversion distance in volatility units).

    One pass over deviations from the current value ``d = x[i] - x[t]``: mean = x[t] + sum(d)/n,
    std from sum(d^2) - sum(d)^2/n. Shifting by a value inside the window keeps raw prices free of
    the cancellation of plain moment sums; the result is a pure function of the window. NaN if x[t]
    is NaN, fewer than ``max(min_periods, ddof + 1)`` values exist or the std is 0.
    """
    n, m = x.shape
    out = np.full((n, m), np.nan)
    need = min_periods if min_periods > ddof + 1 else ddof + 1
    col = np.empty(n)
    for j in range(m):
        for t in range(n):
            col[t] = x[t, j]
        cnt = 0
        for t in range(n):
            if not np.isnan(col[t]):
                cnt += 1
            if t >= window and not np.isnan(col[t - window]):
                cnt -= 1
            c = col[t]
            if np.isnan(c) or cnt < need:
                continue
            lo = t - window + 1
            if lo < 0:
                lo = 0
            s0 = 0.0
            s1 = 0.0
            q0 = 0.0
            q1 = 0.0
            if cnt == t + 1 - lo:
                i = lo
                while i + 2 <= t + 1:
                    d0 = col[i] - c
                    d1 = col[i + 1] - c
                    s0 += d0
                    s1 += d1
                    q0 += d0 * d0
                    q1 += d1 * d1
                    i += 2
                if i <= t:
                    d0 = col[i] - c
                    s0 += d0
                    q0 += d0 * d0
            else:
                for i in range(lo, t + 1):
                    v = col[i]
                    if not np.isnan(v):
                        d0 = v - c
                        s0 += d0
                        q0 += d0 * d0
            sd = s0 + s1
            ss = (q0 + q1) - sd * sd / cnt
            if ss > 0.0:
                # x[t] - mean = -sum(d) / n
                out[t, j] = (-sd / cnt) / math.sqrt(ss / (cnt - ddof))
    return out


@njit(cache=True)
def rolling_mean_nb(x, window, min_periods):
    """Rolling mean over x[t-window+1 .. t] (the window summed afresh at every bar)."""
    n, m = x.shape
    out = np.full((n, m), np.nan)
    need = min_periods if min_periods > 1 else 1
    col = np.empty(n)
    for j in range(m):
        for t in range(n):
            col[t] = x[t, j]
        cnt = 0
        for t in range(n):
            if not np.isnan(col[t]):
                cnt += 1
            if t >= window and not np.isnan(col[t - window]):
                cnt -= 1
            if np.isnan(col[t]) or cnt < need:
                continue
            lo = t - window + 1
            if lo < 0:
                lo = 0
            if cnt == t + 1 - lo:
                out[t, j] = _sum_full(col, lo, t + 1) / cnt
            else:
                out[t, j] = _sum_nan(col, lo, t + 1) / cnt
    return out


@njit(cache=True)
def _lower_bound(buf, k, v):
    """First index in buf[:k] (sorted) whose value is >= v (k if none). Branch-free halving."""
    if k == 0:
        return 0
    base = 0
    n = k
    while n > 1:
        half = n >> 1
        base = base + half if buf[base + half] < v else base
        n -= half
    return base + 1 if buf[base] < v else base


@njit(cache=True)
def _sort_key_nb(v):
    """uint64 whose unsigned order is the float order of v (v not NaN; -0.0 and 0.0 map alike)."""
    b = np.array([v + 0.0]).view(np.uint64)[0]
    if b >> np.uint64(63):
        return ~b
    return b | np.uint64(0x8000000000000000)


@njit(cache=True)
def _radix_argsort_nb(keys):
    """Stable LSD radix argsort of uint64 keys (8 passes of 8 bits; constant bytes skipped)."""
    n = keys.shape[0]
    order = np.arange(n)
    tmp = np.empty(n, dtype=np.int64)
    cnt = np.empty(257, dtype=np.int64)
    for shift in range(0, 64, 8):
        sh = np.uint64(shift)
        cnt[:] = 0
        for i in range(n):
            cnt[((keys[i] >> sh) & np.uint64(255)) + 1] += 1
        if cnt.max() == n:
            continue
        for d in range(256):
            cnt[d + 1] += cnt[d]
        for i in range(n):
            o = order[i]
            d = (keys[o] >> sh) & np.uint64(255)
            tmp[cnt[d]] = o
            cnt[d] += 1
        order, tmp = tmp, order
    return order


@njit(cache=True)
def _dense_codes_nb(col):
    """1-based dense rank of each non-NaN value of col among its distinct values (0 for NaN) and
    the distinct values in increasing order (``uniq[code - 1]``). Exact (radix sort of the bits)."""
    n = col.shape[0]
    nv = 0
    for t in range(n):
        if not np.isnan(col[t]):
            nv += 1
    idx = np.empty(nv, dtype=np.int64)
    keys = np.empty(nv, dtype=np.uint64)
    q = 0
    for t in range(n):
        if not np.isnan(col[t]):
            idx[q] = t
            keys[q] = _sort_key_nb(col[t])
            q += 1
    order = _radix_argsort_nb(keys)
    codes = np.zeros(n, dtype=np.int32)
    uniq = np.empty(nv)
    u = 0
    prev = np.uint64(0)
    for k in range(nv):
        key = keys[order[k]]
        if k == 0 or key != prev:
            uniq[u] = col[idx[order[k]]] + 0.0
            u += 1
            prev = key
        codes[idx[order[k]]] = u
    return codes, uniq[:u]


@njit(cache=True)
def _shift_left_nb(buf, p, q):
    """buf[p:q] = buf[p+1:q+1] (slice views + 0-based index: numba vectorizes the copy)."""
    dst = buf[p:q]
    src = buf[p + 1 : q + 1]
    for i in range(q - p):
        dst[i] = src[i]


@njit(cache=True)
def _shift_right_nb(buf, q, p):
    """buf[q+1:p+1] = buf[q:p], copied from the top down."""
    dst = buf[q + 1 : p + 1]
    src = buf[q:p]
    L = p - q
    for k in range(L):
        i = L - 1 - k
        dst[i] = src[i]


@njit(cache=True)
def rolling_median_nb(x, window, min_periods):
    """Rolling median of the non-NaN values of x[t-window+1 .. t] (sorted window, exact).

    Even counts give the mean of the two middle values. NaN at t if x[t] is NaN or fewer than
    ``min_periods`` values exist. The sorted window holds exactly the window's values, so the
    result is a pure function of the window.
    """
    n, m = x.shape
    out = np.full((n, m), np.nan)
    buf = np.empty(window + 1)
    mp = min_periods if min_periods > 1 else 1
    col = np.empty(n)
    for j in range(m):
        for t in range(n):
            col[t] = x[t, j]
        k = 0
        for t in range(n):
            old = col[t - window] if t >= window else np.nan
            v = col[t]
            if not np.isnan(old):
                p = _lower_bound(buf, k, old)
                if not np.isnan(v):
                    # replace old by v, moving only the values between their positions
                    if v >= old:
                        q = _lower_bound(buf, k, v) - 1  # last slot < v (>= p)
                        if q < p:
                            q = p
                        _shift_left_nb(buf, p, q)
                        buf[q] = v
                    else:
                        q = _lower_bound(buf, p, v)  # first slot >= v (<= p)
                        _shift_right_nb(buf, q, p)
                        buf[q] = v
                else:
                    _shift_left_nb(buf, p, k - 1)
                    k -= 1
            elif not np.isnan(v):
                p = _lower_bound(buf, k, v)
                _shift_right_nb(buf, p, k)
                buf[p] = v
                k += 1
            if np.isnan(v) or k < mp:
                continue
            h = k // 2
            if k % 2 == 1:
                out[t, j] = buf[h]
            else:
                out[t, j] = (buf[h - 1] + buf[h]) * 0.5
    return out


@njit(cache=True)
def rolling_pct_rank_nb(x, window, min_periods):
    """Average-rank percentile of x[t] among the non-NaN values of x[t-window+1 .. t].

    ``(n_less + (n_equal + 1) / 2) / n_valid``; ties share the average rank (see module doc).
    NaN at t if x[t] is NaN or fewer than ``min_periods`` values exist. Exact integer counts
    (a Fenwick tree over the column's sorted distinct values).
    """
    n, m = x.shape
    out = np.full((n, m), np.nan)
    mp = min_periods if min_periods > 1 else 1
    col = np.empty(n)
    for j in range(m):
        nv = 0
        for t in range(n):
            col[t] = x[t, j]
            if not np.isnan(col[t]):
                nv += 1
        if nv == 0:
            continue
        codes, uniq = _dense_codes_nb(col)
        u = uniq.shape[0]
        tree = np.zeros(u + 1, dtype=np.int32)
        same = np.zeros(u + 1, dtype=np.int32)
        cnt = 0
        for t in range(n):
            if t >= window:
                c0 = codes[t - window]
                if c0 > 0:
                    i = c0
                    while i <= u:
                        tree[i] -= 1
                        i += i & (-i)
                    same[c0] -= 1
                    cnt -= 1
            c = codes[t]
            if c == 0:
                continue
            i = c
            while i <= u:
                tree[i] += 1
                i += i & (-i)
            same[c] += 1
            cnt += 1
            if cnt < mp:
                continue
            n_lt = 0
            i = c - 1
            while i > 0:
                n_lt += tree[i]
                i -= i & (-i)
            out[t, j] = (n_lt + 0.5 * (same[c] + 1)) / cnt
    return out


@njit(cache=True)
def rolling_extreme_nb(x, window, min_periods, lag, is_max):
    """Max (``is_max``) or min of the non-NaN values of x[t-lag-window+1 .. t-lag].

    ``lag=1`` excludes the current bar (the previous ``window`` bars: breakouts). NaN unless at
    least ``min_periods`` values of that window exist. The current bar's own value is not required
    when ``lag > 0``.
    """
    n, m = x.shape
    out = np.full((n, m), np.nan)
    mp = min_periods if min_periods > 1 else 1
    for j in range(m):
        for t in range(lag + window - 1, n):
            hi = t - lag
            if lag == 0 and np.isnan(x[t, j]):
                continue
            c = 0
            best = np.nan
            for i in range(hi - window + 1, hi + 1):
                v = x[i, j]
                if np.isnan(v):
                    continue
                if c == 0:
                    best = v
                elif is_max:
                    if v > best:
                        best = v
                elif v < best:
                    best = v
                c += 1
            if c >= mp:
                out[t, j] = best
    return out


@njit(cache=True)
def rolling_slope_nb(y, window, min_periods):
    """Least-squares slope of y against the bar index over y[t-window+1 .. t] (per bar).

    Uses the non-NaN points of the window (their true bar positions, so a hole is not closed up);
    NaN if y[t] is NaN or fewer than ``max(min_periods, 2)`` points exist. Two-pass.
    """
    n, m = y.shape
    out = np.full((n, m), np.nan)
    need = min_periods if min_periods > 2 else 2
    col = np.empty(n)
    for j in range(m):
        for t in range(n):
            col[t] = y[t, j]
        cnt = 0
        for t in range(n):
            if not np.isnan(col[t]):
                cnt += 1
            if t >= window and not np.isnan(col[t - window]):
                cnt -= 1
            if np.isnan(col[t]) or cnt < need:
                continue
            lo = t - window + 1
            if lo < 0:
                lo = 0
            if cnt == t + 1 - lo:
                mx = (cnt - 1) * 0.5
                my = _sum_full(col, lo, t + 1) / cnt
                s0 = 0.0
                s1 = 0.0
                s2 = 0.0
                s3 = 0.0
                i = lo
                while i + 4 <= t + 1:
                    k = i - lo
                    s0 += (k - mx) * (col[i] - my)
                    s1 += (k + 1 - mx) * (col[i + 1] - my)
                    s2 += (k + 2 - mx) * (col[i + 2] - my)
                    s3 += (k + 3 - mx) * (col[i + 3] - my)
                    i += 4
                while i <= t:
                    s0 += (i - lo - mx) * (col[i] - my)
                    i += 1
                sxy = (s0 + s1) + (s2 + s3)
                sxx = cnt * (cnt * cnt - 1.0) / 12.0
            else:
                sx = 0.0
                sy = 0.0
                for i in range(lo, t + 1):
                    v = col[i]
                    if not np.isnan(v):
                        sx += i - lo
                        sy += v
                mx = sx / cnt
                my = sy / cnt
                sxy = 0.0
                sxx = 0.0
                for i in range(lo, t + 1):
                    v = col[i]
                    if not np.isnan(v):
                        dx = (i - lo) - mx
                        sxy += dx * (v - my)
                        sxx += dx * dx
            out[t, j] = sxy / sxx
    return out


@njit(cache=True)
def _cov3_nan(a, b, lo, hi):
    """(count, aa, bb, ab) over the bars of [lo, hi) where both a and b are non-NaN; two-pass."""
    cnt = 0
    sa = 0.0
    sb = 0.0
    for i in range(lo, hi):
        x = a[i]
        y = b[i]
        if not (np.isnan(x) or np.isnan(y)):
            cnt += 1
            sa += x
            sb += y
    if cnt == 0:
        return 0, 0.0, 0.0, 0.0
    ma = sa / cnt
    mb = sb / cnt
    aa = 0.0
    bb = 0.0
    ab = 0.0
    for i in range(lo, hi):
        x = a[i]
        y = b[i]
        if not (np.isnan(x) or np.isnan(y)):
            dx = x - ma
            dy = y - mb
            aa += dx * dx
            bb += dy * dy
            ab += dx * dy
    return cnt, aa, bb, ab


@njit(cache=True)
def _block_prefix_suffix_nb(v, pos, w, pre, suf):
    """Within blocks of ``w`` bars (``pos`` = position of each bar in its block, anchored to UTC
    hours): pre[t] = v[block start .. t], suf[t] = v[t .. block end] (complete blocks only)."""
    n = v.shape[0]
    for t in range(n):
        if t == 0 or pos[t] == 0:
            pre[t] = v[t]
        else:
            pre[t] = pre[t - 1] + v[t]
    for t in range(n - 1, -1, -1):
        if pos[t] == w - 1:
            suf[t] = v[t]
        elif t + 1 < n:
            suf[t] = v[t] + suf[t + 1]
        else:
            suf[t] = np.nan  # block not complete yet: never read


@njit(cache=True)
def _block_window_sum_nb(pre, suf, pos, t, w):
    """Sum over [max(0, t-w+1), t] from block prefix/suffix sums: a pure function of the window."""
    lo = t - w + 1
    if lo < 0:
        lo = 0
    if lo >= t - pos[t]:
        return pre[t]  # the window lies inside t's block (or the array starts inside it)
    return suf[lo] + pre[t]


@njit(cache=True)
def rolling_moments_blocked_nb(x, hour, window, min_periods, ddof):
    """Rolling mean and std of x over x[t-window+1 .. t] from UTC-anchored block sums (O(1) per bar).

    Same NaN rules as :func:`rolling_mean_std_nb`. The std comes from the raw moments
    ``sum(x^2) - sum(x)^2 / n``: use this only for series whose mean is small against their spread
    (returns), never for raw prices. Pure function of the window (see :func:`rolling_beta_corr_nb`).
    """
    n, m = x.shape
    mean = np.full((n, m), np.nan)
    std = np.full((n, m), np.nan)
    need = min_periods if min_periods > ddof + 1 else ddof + 1
    pos = np.empty(n, dtype=np.int64)
    for t in range(n):
        pos[t] = hour[t] % window
    v1 = np.empty(n)
    v2 = np.empty(n)
    p1 = np.empty(n)
    s1 = np.empty(n)
    p2 = np.empty(n)
    s2 = np.empty(n)
    for j in range(m):
        for t in range(n):
            a = x[t, j]
            if np.isnan(a):
                v1[t] = 0.0
                v2[t] = 0.0
            else:
                v1[t] = a
                v2[t] = a * a
        _block_prefix_suffix_nb(v1, pos, window, p1, s1)
        _block_prefix_suffix_nb(v2, pos, window, p2, s2)
        cnt = 0
        for t in range(n):
            if not np.isnan(x[t, j]):
                cnt += 1
            if t >= window and not np.isnan(x[t - window, j]):
                cnt -= 1
            if np.isnan(x[t, j]) or cnt < need:
                continue
            sx = _block_window_sum_nb(p1, s1, pos, t, window)
            ss = _block_window_sum_nb(p2, s2, pos, t, window) - sx * sx / cnt
            mean[t, j] = sx / cnt
            std[t, j] = math.sqrt(ss / (cnt - ddof)) if ss > 0.0 else 0.0
    return mean, std


@njit(cache=True)
def rolling_beta_corr_nb(x, y, hour, window, min_periods):
    """Rolling beta of each column of x on the series y, and their correlation.

    Over the bars of x[t-window+1 .. t] where both x and y are non-NaN (pairwise complete);
    NaN if x[t] or y[t] is NaN, or fewer than ``max(min_periods, 3)`` joint points exist, or a
    variance is 0. beta = cov(x, y) / var(y); corr = cov / sqrt(var(x) var(y)).

    For returns (mean far below their spread) the five window sums (x, y, xx, yy, xy) are taken in
    O(1) per bar from blocks of ``window`` bars anchored to UTC hours (``hour = ts // 3600``): the
    window is the tail of one block plus the head of the next, each summed in a fixed order, so the
    value stays a pure function of the window's bars (bit-identical whatever the history start).
    Not for raw prices (moment cancellation): use the two-pass kernels there.
    """
    n, m = x.shape
    beta = np.full((n, m), np.nan)
    corr = np.full((n, m), np.nan)
    need = min_periods if min_periods > 3 else 3
    pos = np.empty(n, dtype=np.int64)
    for t in range(n):
        pos[t] = hour[t] % window
    v = np.empty((5, n))
    pre = np.empty((5, n))
    suf = np.empty((5, n))
    for j in range(m):
        for t in range(n):
            a = x[t, j]
            b = y[t]
            if np.isnan(a) or np.isnan(b):
                v[0, t] = 0.0
                v[1, t] = 0.0
                v[2, t] = 0.0
                v[3, t] = 0.0
                v[4, t] = 0.0
            else:
                v[0, t] = a
                v[1, t] = b
                v[2, t] = a * a
                v[3, t] = b * b
                v[4, t] = a * b
        for q in range(5):
            _block_prefix_suffix_nb(v[q], pos, window, pre[q], suf[q])
        cnt = 0
        for t in range(n):
            if not (np.isnan(x[t, j]) or np.isnan(y[t])):
                cnt += 1
            if t >= window and not (np.isnan(x[t - window, j]) or np.isnan(y[t - window])):
                cnt -= 1
            if np.isnan(x[t, j]) or np.isnan(y[t]) or cnt < need:
                continue
            sx = _block_window_sum_nb(pre[0], suf[0], pos, t, window)
            sy = _block_window_sum_nb(pre[1], suf[1], pos, t, window)
            sxx = _block_window_sum_nb(pre[2], suf[2], pos, t, window) - sx * sx / cnt
            syy = _block_window_sum_nb(pre[3], suf[3], pos, t, window) - sy * sy / cnt
            sxy = _block_window_sum_nb(pre[4], suf[4], pos, t, window) - sx * sy / cnt
            if syy > 0.0:
                beta[t, j] = sxy / syy
                if sxx > 0.0:
                    corr[t, j] = sxy / math.sqrt(sxx * syy)
    return beta, corr


# --------------------------------------------------------------------------------------------
# features


@njit(cache=True)
def log_return_nb(close, k):
    """k-bar log return log(c[t] / c[t-k]); NaN unless bars t-k .. t are all present."""
    n, m = close.shape
    out = np.full((n, m), np.nan)
    for j in range(m):
        run = 0
        for t in range(n):
            c = close[t, j]
            if np.isnan(c):
                run = 0
                continue
            run += 1
            if run > k:
                out[t, j] = math.log(c / close[t - k, j])
    return out


@njit(cache=True)
def wilder_atr_nb(high, low, close, window):
    """Average true range, Wilder's smoothing, restarted after every hole.

    True range at t (bars t-1 and t both present): ``max(h - l, |h - c[t-1]|, |l - c[t-1]|)``;
    NaN otherwise. Within a contiguous run of true ranges the ATR is NaN for the first
    ``window - 1`` of them, equals their plain mean at the ``window``-th (the seed), and afterwards
    ``atr[t] = (atr[t-1] * (window - 1) + tr[t]) / window``. A NaN true range (a missing bar, or
    the bar after one) makes the ATR NaN and the next run starts over with a fresh seed. The seed's
    weight after ``k`` steps is ``((window - 1) / window) ** k``: this is why a short history gives
    a slightly different value (see ``warmup_table``).
    """
    n, m = close.shape
    out = np.full((n, m), np.nan)
    w = float(window)
    for j in range(m):
        run = 0
        s = 0.0
        atr = np.nan
        for t in range(1, n):
            h = high[t, j]
            lo = low[t, j]
            c = close[t, j]
            pc = close[t - 1, j]
            if np.isnan(h) or np.isnan(lo) or np.isnan(c) or np.isnan(pc):
                run = 0
                s = 0.0
                continue
            tr = h - lo
            a = abs(h - pc)
            if a > tr:
                tr = a
            b = abs(lo - pc)
            if b > tr:
                tr = b
            run += 1
            if run < window:
                s += tr
            elif run == window:
                s += tr
                atr = s / w
                out[t, j] = atr
            else:
                atr = (atr * (w - 1.0) + tr) / w
                out[t, j] = atr
    return out


@njit(cache=True)
def breakout_nb(close, high, low, window):
    """+1 if close[t] > max(high[t-window .. t-1]), -1 if close[t] < min(low[t-window .. t-1]), else 0.

    The current bar is excluded from the range. NaN unless bars t-window .. t are all present.
    """
    n, m = close.shape
    out = np.full((n, m), np.nan)
    for j in range(m):
        run = 0
        for t in range(n):
            if np.isnan(close[t, j]) or np.isnan(high[t, j]) or np.isnan(low[t, j]):
                run = 0
                continue
            run += 1
            if run <= window:
                continue
            hh = high[t - window, j]
            ll = low[t - window, j]
            for i in range(t - window + 1, t):
                if high[i, j] > hh:
                    hh = high[i, j]
                if low[i, j] < ll:
                    ll = low[i, j]
            c = close[t, j]
            out[t, j] = 1.0 if c > hh else (-1.0 if c < ll else 0.0)
    return out


@njit(cache=True)
def higher_high_lower_low_nb(high, low, window):
    """Structure flags from two consecutive blocks of ``window`` bars.

    higher_high[t] = 1 if max(high[t-window+1 .. t]) > max(high[t-2window+1 .. t-window]) else 0;
    lower_low[t]   = 1 if min(low[t-window+1 .. t])  < min(low[t-2window+1 .. t-window])  else 0.
    NaN unless bars t-2window+1 .. t are all present.
    """
    n, m = high.shape
    hh = np.full((n, m), np.nan)
    ll = np.full((n, m), np.nan)
    for j in range(m):
        run = 0
        for t in range(n):
            if np.isnan(high[t, j]) or np.isnan(low[t, j]):
                run = 0
                continue
            run += 1
            if run < 2 * window:
                continue
            h_new = high[t, j]
            l_new = low[t, j]
            for i in range(t - window + 1, t):
                if high[i, j] > h_new:
                    h_new = high[i, j]
                if low[i, j] < l_new:
                    l_new = low[i, j]
            h_old = high[t - window, j]
            l_old = low[t - window, j]
            for i in range(t - 2 * window + 1, t - window):
                if high[i, j] > h_old:
                    h_old = high[i, j]
                if low[i, j] < l_old:
                    l_old = low[i, j]
            hh[t, j] = 1.0 if h_new > h_old else 0.0
            ll[t, j] = 1.0 if l_new < l_old else 0.0
    return hh, ll


@njit(cache=True)
def ratio_to_prev_nb(x, ref):
    """x[t] / ref[t-1] where both are finite and ref[t-1] > 0 (ref: a trailing statistic of x).

    Used for the volume surge (volume against the median of the previous window, current bar
    excluded) and the spread widening. NaN otherwise.
    """
    n, m = x.shape
    out = np.full((n, m), np.nan)
    for j in range(m):
        for t in range(1, n):
            v = x[t, j]
            r = ref[t - 1, j]
            if not (np.isnan(v) or np.isnan(r)) and r > 0.0:
                out[t, j] = v / r
    return out


@njit(cache=True)
def breadth_nb(close, sma, ret_long, member):
    """Market breadth per bar over the pairs with ``member[t, j]`` (the tradable universe).

    Returns (above, up, both): the share of members whose close is above its moving average by
    more than ``BREADTH_TIE_REL`` (1e-12) relative; the share whose ``ret_long`` (24h return) is
    strictly positive; the share meeting both. Tie rule: a close equal to its mean up to 1e-12
    relative is NOT above (prices on a tick grid often equal their mean exactly, and a one-ulp
    difference in how the mean is summed must not flip the flag). A member whose input for a share
    is NaN at t is left out of that share's denominator (``both`` needs both inputs); NaN if no
    member has a value.
    """
    n, m = close.shape
    above = np.full(n, np.nan)
    up = np.full(n, np.nan)
    both = np.full(n, np.nan)
    for t in range(n):
        na = 0
        ka = 0
        nu = 0
        ku = 0
        nb_ = 0
        kb = 0
        for j in range(m):
            if not member[t, j]:
                continue
            c = close[t, j]
            s = sma[t, j]
            r = ret_long[t, j]
            has_a = not (np.isnan(c) or np.isnan(s))
            has_u = not np.isnan(r)
            is_a = has_a and c - s > BREADTH_TIE_REL * abs(s)
            is_u = has_u and r > 0.0
            if has_a:
                na += 1
                if is_a:
                    ka += 1
            if has_u:
                nu += 1
                if is_u:
                    ku += 1
            if has_a and has_u:
                nb_ += 1
                if is_a and is_u:
                    kb += 1
        if na > 0:
            above[t] = ka / na
        if nu > 0:
            up[t] = ku / nu
        if nb_ > 0:
            both[t] = kb / nb_
    return above, up, both


@njit(cache=True)
def all_present_nb(bar_valid, store):
    """bar_valid[t, j] and no NaN in store[:, t, j] (the complete-row mask of a feature set)."""
    k, n, m = store.shape
    out = np.empty((n, m), dtype=np.bool_)
    for t in range(n):
        for j in range(m):
            ok = bar_valid[t, j]
            i = 0
            while ok and i < k:
                if np.isnan(store[i, t, j]):
                    ok = False
                i += 1
            out[t, j] = ok
    return out


# --------------------------------------------------------------------------------------------
# correlation matrix and clusters


@njit(cache=True)
def corr_matrix_nb(r, t, window, min_periods):
    """Pearson correlation matrix of the columns of r over r[t-window+1 .. t], pairwise complete.

    Entry (a, b) uses the bars where both columns are non-NaN; NaN if fewer than
    ``max(min_periods, 3)`` of them or a variance is 0. Diagonal is 1 where the column has enough
    values. Two-pass per pair (columns with no NaN in the window share their own mean).
    """
    n, m = r.shape
    out = np.full((m, m), np.nan)
    lo = t - window + 1
    if lo < 0:
        lo = 0
    hi = t + 1
    w = hi - lo
    need = min_periods if min_periods > 3 else 3
    cols = np.empty((m, w))
    dev = np.empty((m, w))
    full = np.zeros(m, dtype=np.bool_)
    ss = np.zeros(m)
    for a in range(m):
        c = 0
        for i in range(w):
            v = r[lo + i, a]
            cols[a, i] = v
            if not np.isnan(v):
                c += 1
        if c == w:
            full[a] = True
            mu = _sum_full(cols[a], 0, w) / w
            for i in range(w):
                dev[a, i] = cols[a, i] - mu
            ss[a] = _ssd_full(cols[a], 0, w, mu)
    for a in range(m):
        for b in range(a, m):
            if full[a] and full[b]:
                if w < need:
                    continue
                saa = ss[a]
                sbb = ss[b]
                s0 = 0.0
                s1 = 0.0
                s2 = 0.0
                s3 = 0.0
                i = 0
                while i + 4 <= w:
                    s0 += dev[a, i] * dev[b, i]
                    s1 += dev[a, i + 1] * dev[b, i + 1]
                    s2 += dev[a, i + 2] * dev[b, i + 2]
                    s3 += dev[a, i + 3] * dev[b, i + 3]
                    i += 4
                while i < w:
                    s0 += dev[a, i] * dev[b, i]
                    i += 1
                sab = (s0 + s1) + (s2 + s3)
            else:
                cnt, saa, sbb, sab = _cov3_nan(cols[a], cols[b], 0, w)
                if cnt < need:
                    continue
            if saa > 0.0 and sbb > 0.0:
                c = 1.0 if a == b else sab / math.sqrt(saa * sbb)
                out[a, b] = c
                out[b, a] = c
    return out


@njit(cache=True)
def average_linkage_labels_nb(corr, eligible, threshold):
    """Deterministic average-linkage clustering on distance ``1 - corr``; returns int64 labels.

    Only ``eligible`` columns take part (others get -1). A NaN correlation between two eligible
    columns counts as 0 (distance 1). Clusters merge while the smallest average distance between
    two clusters is ``<= 1 - threshold``; exact ties go to the pair (a, b), a < b, met first in
    row-major scan order (cluster slots are indexed by their lowest column). Labels are 0, 1, ...
    in the order of each cluster's lowest column index, so the same matrix always gives the same
    labels and label 0 is the cluster of the first eligible column.
    """
    m = corr.shape[0]
    dist = np.full((m, m), np.inf)
    for a in range(m):
        for b in range(m):
            if eligible[a] and eligible[b] and a != b:
                c = corr[a, b]
                dist[a, b] = 1.0 - (0.0 if np.isnan(c) else c)
    owner = np.arange(m)  # cluster slot of each column
    size = np.ones(m, dtype=np.int64)
    active = eligible.copy()
    limit = 1.0 - threshold
    while True:
        best = np.inf
        ba = -1
        bb = -1
        for a in range(m):
            if not active[a]:
                continue
            for b in range(a + 1, m):
                if active[b] and dist[a, b] < best:
                    best = dist[a, b]
                    ba = a
                    bb = b
        if ba < 0 or best > limit:
            break
        na = float(size[ba])
        nb = float(size[bb])
        for k in range(m):
            if active[k] and k != ba and k != bb:
                d = (na * dist[ba, k] + nb * dist[bb, k]) / (na + nb)
                dist[ba, k] = d
                dist[k, ba] = d
        size[ba] += size[bb]
        active[bb] = False
        for k in range(m):
            if owner[k] == bb:
                owner[k] = ba
    labels = np.full(m, -1, dtype=np.int64)
    slot_label = np.full(m, -1, dtype=np.int64)
    nxt = 0
    for k in range(m):
        if not eligible[k]:
            continue
        s = owner[k]
        if slot_label[s] < 0:
            slot_label[s] = nxt
            nxt += 1
        labels[k] = slot_label[s]
    return labels


@njit(cache=True)
def corr_clusters_nb(r, hour, member, window, min_periods, every, threshold):
    """Correlation-cluster id per (bar, pair), recomputed at bars whose UTC hour index
    (``ts // 3600``) is a multiple of ``every`` from the returns r[t-window+1 .. t] only.

    At a refresh bar t the eligible pairs are those with ``member[t, j]`` and at least
    ``min_periods`` non-NaN returns in the window; the pairwise-complete correlation matrix of the
    window is clustered by :func:`average_linkage_labels_nb`; the ids hold for bars
    t .. (next refresh - 1). Bars before the first refresh in the array, and ineligible pairs, get
    -1. Anchoring refreshes to absolute hours (not array positions) makes the ids independent of
    where the history starts once it covers ``window + every`` bars.

    When ``window`` is a multiple of ``every`` the window is exactly the last ``window // every``
    blocks of ``every`` bars ending at refresh bars; per-block joint sums (count, x, y, xx, yy, xy
    for every pair) are added oldest block first, so the matrix is still a pure function of the
    window's bars, at O(m^2) per bar instead of O(m^2 window) per refresh. Otherwise each refresh
    calls :func:`corr_matrix_nb` (two-pass).
    """
    n, m = r.shape
    out = np.full((n, m), -1, dtype=np.int64)
    cur = np.full(m, -1, dtype=np.int64)
    elig = np.zeros(m, dtype=np.bool_)
    blocked = window % every == 0
    nblk = window // every if blocked else 1
    ring = np.zeros((nblk, 6, m, m))
    acc = np.zeros((6, m, m))
    filled = 0  # blocks stored in the ring (at most nblk)
    head = 0  # ring slot of the next block
    need = min_periods if min_periods > 3 else 3
    tot = np.zeros((6, m, m))
    corr = np.full((m, m), np.nan)
    for t in range(n):
        if blocked:
            for a in range(m):
                x = r[t, a]
                if np.isnan(x):
                    continue
                for b in range(a, m):
                    y = r[t, b]
                    if np.isnan(y):
                        continue
                    acc[0, a, b] += 1.0
                    acc[1, a, b] += x
                    acc[2, a, b] += y
                    acc[3, a, b] += x * x
                    acc[4, a, b] += y * y
                    acc[5, a, b] += x * y
        if hour[t] % every != 0:
            continue
        if blocked:
            ring[head] = acc
            acc[:] = 0.0
            head = (head + 1) % nblk
            if filled < nblk:
                filled += 1
            tot[:] = 0.0
            for k in range(filled):  # oldest block first
                slot = (head - filled + k) % nblk
                for q in range(6):
                    for a in range(m):
                        for b in range(a, m):
                            tot[q, a, b] += ring[slot, q, a, b]
            for a in range(m):
                elig[a] = member[t, a] and tot[0, a, a] >= min_periods
                for b in range(a, m):
                    c = np.nan
                    cnt = tot[0, a, b]
                    if cnt >= need:
                        saa = tot[3, a, b] - tot[1, a, b] * tot[1, a, b] / cnt
                        sbb = tot[4, a, b] - tot[2, a, b] * tot[2, a, b] / cnt
                        if saa > 0.0 and sbb > 0.0:
                            c = (
                                1.0
                                if a == b
                                else (tot[5, a, b] - tot[1, a, b] * tot[2, a, b] / cnt) / math.sqrt(saa * sbb)
                            )
                    corr[a, b] = c
                    corr[b, a] = c
        else:
            for j in range(m):
                elig[j] = member[t, j] and _finite_count_window_nb(r, t, j, window) >= min_periods
            corr = corr_matrix_nb(r, t, window, min_periods)
        any_e = False
        for j in range(m):
            any_e = any_e or elig[j]
        if any_e:
            cur = average_linkage_labels_nb(corr, elig, threshold)
        else:
            cur = np.full(m, -1, dtype=np.int64)
        for j in range(m):
            out[t, j] = cur[j]
    # hold each refresh's ids until the next refresh (bars before the first one stay -1)
    last = np.full(m, -1, dtype=np.int64)
    seen = False
    for t in range(n):
        if hour[t] % every == 0:
            seen = True
            for j in range(m):
                last[j] = out[t, j]
        elif seen:
            for j in range(m):
                out[t, j] = last[j]
    return out
