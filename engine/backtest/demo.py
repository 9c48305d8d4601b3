"""A simple built-in signal for demos and tests (``kq backtest`` without ``--signals``).

Moving-average crossover turned into a probability: with ``g = SMA_fast / SMA_slow - 1`` (causal
simple moving averages of close; bar t uses bars t-slow+1 .. t),
``p_up = 0.5 + 0.5 * tanh(scale * g)`` and ``exp_return = g``. NaN until both windows are full or
when a bar in the window is missing. It is a demo, not a model: it has no claim to skill.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def sma_nb(x, window):
    """Causal simple moving average per column; NaN unless the last ``window`` values are all finite."""
    out = np.empty(x.shape)
    sma_into_nb(x, window, out)
    return out


@njit(cache=True)
def sma_into_nb(x, window, out):
    """:func:`sma_nb` written into ``out`` (the shape of ``x``)."""
    n, m = x.shape
    for j in range(m):
        s = 0.0
        run = 0
        for t in range(n):
            v = x[t, j]
            out[t, j] = np.nan
            if v == v:
                s += v
                run += 1
                if run > window:
                    s -= x[t - window, j]
                if run >= window:
                    out[t, j] = s / window
            else:
                s = 0.0
                run = 0


# tanh(x) rounds to exactly +-1.0 in float64 for |x| >= 20 (1 - tanh(20) = 8.5e-18, below half an ulp
# of 1.0), so the library call is skipped there; tests/test_backtest_speedpath.py checks the shortcut
# and the whole signal against the plain two-SMA formula bit for bit.
_TANH_SAT = 20.0


@njit(cache=True, inline="always")
def _tanh_nb(x: float) -> float:
    if x >= _TANH_SAT:
        return 1.0
    if x <= -_TANH_SAT:
        return -1.0
    return np.tanh(x)


@njit(cache=True)
def ma_signal_nb(close, fast, slow, scale):
    """(p_up, exp_return) from a fast/slow SMA ratio (see the module docstring).

    One pass per column with both running sums; the same operations in the same order as
    :func:`sma_nb` for each window, so the values are those of ``sma_nb(close, fast) / sma_nb(close,
    slow) - 1``."""
    n, m = close.shape
    p_up = np.empty((n, m))
    er = np.empty((n, m))
    ma_signal_into_nb(close, fast, slow, scale, p_up, er)
    return p_up, er


@njit(cache=True)
def ma_signal_into_nb(close, fast, slow, scale, p_up, er):
    """:func:`ma_signal_nb` written into ``p_up`` and ``er`` (the shape of ``close``)."""
    n, m = close.shape
    for j in range(m):
        sf = 0.0
        rf = 0
        ss = 0.0
        rs = 0
        for t in range(n):
            v = close[t, j]
            a = np.nan
            b = np.nan
            if v == v:
                sf += v
                rf += 1
                if rf > fast:
                    sf -= close[t - fast, j]
                if rf >= fast:
                    a = sf / fast
                ss += v
                rs += 1
                if rs > slow:
                    ss -= close[t - slow, j]
                if rs >= slow:
                    b = ss / slow
            else:
                sf = 0.0
                rf = 0
                ss = 0.0
                rs = 0
            p_up[t, j], er[t, j] = _ratio_signal_nb(a, b, scale)


@njit(cache=True, inline="always")
def _ratio_signal_nb(a: float, b: float, scale: float):
    """(p_up, exp_return) at one bar from its fast and slow SMA ``a`` and ``b``."""
    if a == a and b == b and b > 0.0:
        g = a / b - 1.0
        return 0.5 + 0.5 * _tanh_nb(scale * g), g
    return np.nan, np.nan


@njit(cache=True)
def ma_signal_from_sma_nb(fast_sma, slow_sma, scale, p_up, er):
    """:func:`ma_signal_into_nb` from the two SMAs (``sma_nb`` of each window, e.g. one table shared by
    the sets of a sweep): the same values bit for bit, one division per bar instead of three."""
    n, m = fast_sma.shape
    for t in range(n):
        for j in range(m):
            p_up[t, j], er[t, j] = _ratio_signal_nb(fast_sma[t, j], slow_sma[t, j], scale)


def ma_signal(close: np.ndarray, fast: int = 12, slow: int = 48, scale: float = 50.0):
    return ma_signal_nb(np.ascontiguousarray(close, dtype=np.float64), int(fast), int(slow), float(scale))
