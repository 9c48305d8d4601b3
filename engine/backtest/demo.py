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
    n, m = x.shape
    out = np.full((n, m), np.nan)
    for j in range(m):
        s = 0.0
        run = 0
        for t in range(n):
            v = x[t, j]
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
    return out


@njit(cache=True)
def ma_signal_nb(close, fast, slow, scale):
    """(p_up, exp_return) from a fast/slow SMA ratio (see the module docstring)."""
    f = sma_nb(close, fast)
    s = sma_nb(close, slow)
    n, m = close.shape
    p_up = np.full((n, m), np.nan)
    er = np.full((n, m), np.nan)
    for t in range(n):
        for j in range(m):
            a = f[t, j]
            b = s[t, j]
            if a == a and b == b and b > 0.0:
                g = a / b - 1.0
                p_up[t, j] = 0.5 + 0.5 * np.tanh(scale * g)
                er[t, j] = g
    return p_up, er


def ma_signal(close: np.ndarray, fast: int = 12, slow: int = 48, scale: float = 50.0):
    return ma_signal_nb(np.ascontiguousarray(close, dtype=np.float64), int(fast), int(slow), float(scale))
