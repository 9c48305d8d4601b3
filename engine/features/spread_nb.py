"""Bid-ask spread estimators from OHLC bars alone (numba kernels over (bars x pairs) arrays).

Both estimators are *two-bar* estimators: one estimate per pair of adjacent bars (t-1, t), reported
at bar t, i.e. once bar t has closed. Nothing at or after t+1 is ever read. The value at t is the
plain mean of the two-bar estimates at t-window+1 .. t.

Gaps and min-periods (same rule for both): a bar counts only if ``valid`` is True and its high, low
and close are finite and positive. A two-bar estimate at t exists only if bars t-1 and t both count,
so no estimate ever spans a missing hour. The windowed value at t exists only if all ``window``
two-bar estimates in it exist, i.e. bars t-window .. t (``window + 1`` contiguous bars) all count;
otherwise it is NaN (min_periods = window: a hole is never averaged over). The first ``window``
bars of a panel are therefore NaN. Because each window is summed afresh (no running sums), a value at
t depends only on bars t-window .. t, bit for bit: history before that, or any bar after t, cannot
change it.

Output is a fraction of price (0.001 = 10 bp), floored at 0.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_CS_K = 3.0 - 2.0 * np.sqrt(2.0)


@njit(cache=True)
def _bar_ok_nb(high, low, close, valid, t, j):
    if not valid[t, j]:
        return False
    h = high[t, j]
    lo = low[t, j]
    c = close[t, j]
    # NaN compares False, so this also rejects NaN prices.
    return h > 0.0 and lo > 0.0 and c > 0.0 and h < np.inf and c < np.inf and h >= lo


@njit(cache=True)
def _window_mean_nb(est, window):
    """Mean of est[t-window+1 .. t] per column; NaN if any of them is NaN or t < window - 1."""
    n, m = est.shape
    out = np.full((n, m), np.nan)
    for j in range(m):
        run = 0  # number of consecutive non-NaN estimates ending at t
        for t in range(n):
            if np.isnan(est[t, j]):
                run = 0
                continue
            run += 1
            if run >= window:
                s = 0.0
                for k in range(t - window + 1, t + 1):
                    s += est[k, j]
                out[t, j] = s / window
    return out


@njit(cache=True)
def corwin_schultz_nb(high, low, close, valid, window):
    """Corwin & Schultz (2012) high-low spread, two-bar estimates averaged over ``window`` bars.

    Two-bar estimate at t from bars t-1 and t: first the paper's overnight adjustment with the
    previous close c = close[t-1]: if low[t] > c (gap up) the high and low of bar t are both lowered
    by low[t] - c; if high[t] < c (gap down) both are raised by c - high[t]. Then
    beta = ln(H1/L1)^2 + ln(H2/L2)^2, gamma = ln(max(H1, H2) / min(L1, L2))^2,
    alpha = (sqrt(2 beta) - sqrt(beta)) / (3 - 2 sqrt 2) - sqrt(gamma / (3 - 2 sqrt 2)),
    S = 2 (e^alpha - 1) / (1 + e^alpha), negative S set to 0 (as in the paper). Returns (n, m).
    """
    n, m = high.shape
    est = np.full((n, m), np.nan)
    for j in range(m):
        for t in range(1, n):
            if not (_bar_ok_nb(high, low, close, valid, t - 1, j) and _bar_ok_nb(high, low, close, valid, t, j)):
                continue
            h1 = high[t - 1, j]
            l1 = low[t - 1, j]
            h2 = high[t, j]
            l2 = low[t, j]
            c = close[t - 1, j]
            if l2 > c:
                h2 -= l2 - c
                l2 = c
            elif h2 < c:
                l2 += c - h2
                h2 = c
            b = np.log(h1 / l1) ** 2 + np.log(h2 / l2) ** 2
            g = np.log(max(h1, h2) / min(l1, l2)) ** 2
            a = (np.sqrt(2.0 * b) - np.sqrt(b)) / _CS_K - np.sqrt(g / _CS_K)
            ea = np.exp(a)
            s = 2.0 * (ea - 1.0) / (1.0 + ea)
            est[t, j] = s if s > 0.0 else 0.0
    return _window_mean_nb(est, window)


@njit(cache=True)
def abdi_ranaldo_nb(high, low, close, valid, window):
    """Abdi & Ranaldo (2017) close/mid-range spread, causal two-bar form, averaged over ``window``.

    With log prices, eta = (ln high + ln low) / 2 (mid-range) and c = ln close, the paper's two-day
    estimate for days (t, t+1) is sqrt(max(4 (c_t - eta_t)(c_t - eta_{t+1}), 0)). The causal form
    shifts it by one bar: the estimate for bars (t-1, t),
    sqrt(max(4 (c_{t-1} - eta_{t-1}) (c_{t-1} - eta_t), 0)), is reported at t, when bar t has closed;
    it reads bars t-1 and t only. Negative products are floored at 0 before the square root, then the
    estimates are averaged over ``window``. Returns (n, m).
    """
    n, m = high.shape
    est = np.full((n, m), np.nan)
    for j in range(m):
        for t in range(1, n):
            if not (_bar_ok_nb(high, low, close, valid, t - 1, j) and _bar_ok_nb(high, low, close, valid, t, j)):
                continue
            c = np.log(close[t - 1, j])
            eta0 = 0.5 * (np.log(high[t - 1, j]) + np.log(low[t - 1, j]))
            eta1 = 0.5 * (np.log(high[t, j]) + np.log(low[t, j]))
            p = 4.0 * (c - eta0) * (c - eta1)
            est[t, j] = np.sqrt(p) if p > 0.0 else 0.0
    return _window_mean_nb(est, window)
