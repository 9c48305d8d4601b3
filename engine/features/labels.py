"""Labels: the ONLY module that reads the future. Nothing on the feature path imports it.

Every function here is named for what it does with the future (``forward_*``, ``future_*``).
A label at bar ``t`` depends only on bars ``t .. t+h`` (never on bars before ``t``, never after
``t+h``); the last ``h`` bars of a panel have NaN labels.

* ``forward_log_return_nb(close, h)``: ``log(c[t+h] / c[t])``; NaN unless bars ``t .. t+h`` are all
  present (a forward return never spans a missing hour, the same rule as the backward returns).
* ``future_up_label_nb(fwd, threshold)``: 1.0 if the forward return is strictly above ``threshold``,
  0.0 if not, NaN where the forward return is NaN. With the cost option the threshold is the round
  trip cost (two fees plus two slippages, :attr:`engine.config.FeesConfig.round_trip_cost`), so a 1
  means "a long entry at the close of t and exit at the close of t+h would have paid its costs".
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from engine.config import FeesConfig, LabelsConfig
from engine.errors import InputError
from engine.store.panel import Panel


@njit(cache=True)
def forward_log_return_nb(close, h):
    """log(c[t+h] / c[t]); NaN unless bars t .. t+h all exist; the last h bars are NaN."""
    n, m = close.shape
    out = np.full((n, m), np.nan)
    for j in range(m):
        run = 0  # consecutive present bars ending at t+h
        for s in range(n):
            if np.isnan(close[s, j]):
                run = 0
                continue
            run += 1
            if run > h:
                out[s - h, j] = math.log(close[s, j] / close[s - h, j])
    return out


@njit(cache=True)
def future_up_label_nb(fwd, threshold):
    """1.0 where fwd > threshold, 0.0 where fwd <= threshold, NaN where fwd is NaN."""
    n, m = fwd.shape
    out = np.full((n, m), np.nan)
    for t in range(n):
        for j in range(m):
            f = fwd[t, j]
            if not np.isnan(f):
                out[t, j] = 1.0 if f > threshold else 0.0
    return out


def future_labels(
    panel: Panel, labels: LabelsConfig | None = None, fees: FeesConfig | None = None, with_cost: bool = False
) -> dict[str, np.ndarray]:
    """Forward log returns and up labels for every horizon: ``{"fwd_ret_{h}h": ..., "future_up_{h}h": ...}``.

    ``with_cost``: an up label needs the forward return to clear ``fees.round_trip_cost``
    (default fees if none are given); otherwise the threshold is 0.
    """
    labels = labels or LabelsConfig()
    threshold = (fees or FeesConfig()).round_trip_cost if with_cost else 0.0
    close = np.where(panel.valid, panel.close, np.nan)
    if close.ndim != 2:
        raise InputError("panel close must be 2-D")
    out: dict[str, np.ndarray] = {}
    for h in labels.horizons:
        fwd = forward_log_return_nb(close, int(h))
        out[f"fwd_ret_{h}h"] = fwd
        out[f"future_up_{h}h"] = future_up_label_nb(fwd, float(threshold))
    return out
