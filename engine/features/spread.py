"""Spread estimate from OHLC alone: the thin layer over :mod:`engine.features.spread_nb`.

Used by the liquidity features, the universe filter and the exchange simulator (Ticker / Depth
spreads). The value at bar t uses bars t-window .. t only and is NaN unless all of them are valid
(see the kernel module for the exact rule).
"""

from __future__ import annotations

import numpy as np

from engine.errors import InputError
from engine.features.spread_nb import abdi_ranaldo_nb, corwin_schultz_nb
from engine.store.panel import Panel

SPREAD_METHODS = {"corwin_schultz": corwin_schultz_nb, "abdi_ranaldo": abdi_ranaldo_nb}


def spread_arrays(
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    valid: np.ndarray,
    window: int = 24,
    method: str = "corwin_schultz",
) -> np.ndarray:
    """Estimated spread (fraction of price) per (bar, pair) from (n, m) arrays."""
    kernel = SPREAD_METHODS.get(method)
    if kernel is None:
        raise InputError(f"unknown spread method {method!r} (choose: {', '.join(SPREAD_METHODS)})")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise InputError(f"spread window must be a whole number of bars >= 1, got {window!r}")
    arrs = [np.ascontiguousarray(a, dtype=np.float64) for a in (high, low, close)]
    v = np.ascontiguousarray(valid, dtype=np.bool_)
    if arrs[0].ndim != 2 or any(a.shape != arrs[0].shape for a in (*arrs, v)):
        raise InputError("high, low, close and valid must be 2-D arrays of one shape")
    return kernel(arrs[0], arrs[1], arrs[2], v, int(window))


def spread_estimate(panel: Panel, window: int = 24, method: str = "corwin_schultz") -> np.ndarray:
    """Estimated bid-ask spread as a fraction of price (0.001 = 10 bp), (n_bars, n_pairs) float64.

    ``method`` is ``corwin_schultz`` (Corwin & Schultz 2012) or ``abdi_ranaldo`` (Abdi & Ranaldo
    2017, causal form); ``window`` is the number of two-bar estimates averaged. NaN where the last
    ``window + 1`` bars are not all valid.
    """
    return spread_arrays(panel.high, panel.low, panel.close, panel.valid, window, method)
