"""Market-regime classifier: every bar is trending, range, high-volatility or crash, from PAST data.

Input is the close price series of ONE pair in time order (``(n,)`` or ``(n, 1)``, NaN for a
missing bar). Three causal features at bar t (rows ``<= t`` only):

* ``trend``   = log(close[t] / close[t - trend_bars]) (trailing return),
* ``vol``     = standard deviation (ddof 0) of the hourly log returns of rows ``t-vol_bars+1 .. t``,
* ``dd``      = 1 - close[t] / max(close[t-trend_bars+1 .. t]) (drawdown from the trailing high),
* ``strength``= |trend| / (vol * sqrt(trend_bars)) (a trend's size in units of its own noise).

``fit`` learns three thresholds from the TRAINING window only: ``vol_hi_`` (the
``high_vol_quantile`` of vol), ``strength_hi_`` (the ``trend_quantile`` of strength) and
``crash_ret_`` (the ``crash_return_quantile`` of trend, capped at 0). ``predict`` then applies fixed
rules in this priority order (the mapping from states to names is by construction, identical in
every fold; only the thresholds move with the window):

====  ============  ========================================================================
code  name          rule
====  ============  ========================================================================
3     crash         trend <= crash_ret_ and dd >= crash_drawdown (a deep fall off the recent high)
2     high_vol      otherwise, vol >= vol_hi_
1     trending      otherwise, strength >= strength_hi_ (up or down)
0     range         otherwise
-1    (unknown)     any feature undefined: warm-up, or a missing bar inside the windows
====  ============  ========================================================================

Several pairs pooled: pass ``segments`` (one id per row, each pair's rows one contiguous block in
time order) to ``fit``/``predict``/``transform``; features are then computed within each segment
and the thresholds are fitted over all segments' bars.

A label at t depends only on closes at rows ``<= t`` and on the fitted thresholds (tested by
perturbing later rows). ``transform`` gives the one-hot (n, 4) used by the meta-learner (all zeros
for unknown rows); ``predict_proba`` is that one-hot (the rules are hard).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError

from engine.errors import InputError

__all__ = [
    "CRASH",
    "HIGH_VOL",
    "RANGE",
    "REGIME_NAMES",
    "TRENDING",
    "UNKNOWN",
    "RegimeClassifier",
    "regime_features",
]

RANGE, TRENDING, HIGH_VOL, CRASH, UNKNOWN = 0, 1, 2, 3, -1
REGIME_NAMES: tuple[str, ...] = ("range", "trending", "high_vol", "crash")


def _close(X: Any) -> np.ndarray:
    if hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):
        X = X.to_numpy()
    a = np.asarray(X, dtype=np.float64)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1 or a.shape[0] == 0:
        raise InputError(
            f"RegimeClassifier: X must be the close prices of one pair, (n,) or (n, 1); got shape {a.shape}"
        )
    if (a[np.isfinite(a)] <= 0).any() or np.isinf(a).any():
        raise InputError("RegimeClassifier: close prices must be positive and finite (NaN = missing bar)")
    return a


def regime_features(close: Any, trend_bars: int, vol_bars: int) -> dict[str, np.ndarray]:
    """The causal features (NaN where undefined): trend, vol, dd, strength."""
    c = _close(close)
    s = pd.Series(c)
    logc = np.log(s)
    r = logc.diff()
    trend = (logc - logc.shift(trend_bars)).to_numpy()
    # a window with a missing bar is undefined (min_periods = the full window)
    vol = r.rolling(vol_bars, min_periods=vol_bars).std(ddof=0).to_numpy()
    high = s.rolling(trend_bars, min_periods=trend_bars).max().to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        dd = 1.0 - c / high
        strength = np.abs(trend) / (vol * np.sqrt(trend_bars))
    strength[~np.isfinite(strength)] = np.nan
    return {"trend": trend, "vol": vol, "dd": dd, "strength": strength}


class RegimeClassifier(ClassifierMixin, BaseEstimator):
    """Rule-based regime labels with thresholds fitted on the training window (see module doc)."""

    def __init__(
        self,
        trend_bars: int = 168,
        vol_bars: int = 72,
        high_vol_quantile: float = 0.85,
        trend_quantile: float = 0.7,
        crash_drawdown: float = 0.15,
        crash_return_quantile: float = 0.05,
    ) -> None:
        self.trend_bars = trend_bars
        self.vol_bars = vol_bars
        self.high_vol_quantile = high_vol_quantile
        self.trend_quantile = trend_quantile
        self.crash_drawdown = crash_drawdown
        self.crash_return_quantile = crash_return_quantile

    def _feats(self, X: Any, segments: Any = None) -> dict[str, np.ndarray]:
        if int(self.trend_bars) < 2 or int(self.vol_bars) < 2:
            raise InputError("RegimeClassifier: trend_bars and vol_bars must be >= 2")
        c = _close(X)
        if segments is None:
            return regime_features(c, int(self.trend_bars), int(self.vol_bars))
        from research.models.sequences import segment_starts

        st = segment_starts(segments, c.shape[0])
        assert st is not None  # segments is not None here
        cuts = np.concatenate([[0], np.flatnonzero(st), [c.shape[0]]])
        parts = [regime_features(c[a:b], int(self.trend_bars), int(self.vol_bars)) for a, b in itertools.pairwise(cuts)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def fit(self, X: Any, y: Any = None, segments: Any = None) -> RegimeClassifier:
        f = self._feats(X, segments)
        ok = np.isfinite(f["trend"]) & np.isfinite(f["vol"]) & np.isfinite(f["strength"])
        if ok.sum() < 10:
            raise InputError(
                f"RegimeClassifier: only {int(ok.sum())} bars with a full "
                f"{max(self.trend_bars, self.vol_bars)}-bar history; need more data to fit"
            )
        self.vol_hi_ = float(np.quantile(f["vol"][ok], self.high_vol_quantile))
        self.strength_hi_ = float(np.quantile(f["strength"][ok], self.trend_quantile))
        self.crash_ret_ = float(min(np.quantile(f["trend"][ok], self.crash_return_quantile), 0.0))
        self.classes_ = np.arange(4)
        self.n_features_in_ = 1
        return self

    def _check(self) -> None:
        if not hasattr(self, "vol_hi_"):
            raise NotFittedError("RegimeClassifier is not fitted yet: call fit(close) first")

    def predict(self, X: Any, segments: Any = None) -> np.ndarray:
        """int8 codes (n,): 0 range, 1 trending, 2 high_vol, 3 crash, -1 unknown."""
        self._check()
        from engine.strategy.nb import regime_rule_nb  # the one implementation of the rule

        f = self._feats(X, segments)
        a = {k: np.ascontiguousarray(f[k], dtype=np.float64) for k in ("trend", "vol", "dd", "strength")}
        return regime_rule_nb(
            a["trend"],
            a["vol"],
            a["dd"],
            a["strength"],
            float(self.crash_ret_),
            float(self.crash_drawdown),
            float(self.vol_hi_),
            float(self.strength_hi_),
        )

    def predict_names(self, X: Any, segments: Any = None) -> np.ndarray:
        """Names per bar (``"unknown"`` where undefined)."""
        codes = self.predict(X, segments)
        names = np.array(REGIME_NAMES + ("unknown",), dtype=object)
        return names[np.where(codes < 0, 4, codes)]

    def transform(self, X: Any, segments: Any = None) -> np.ndarray:
        """One-hot float64 (n, 4) in code order; all zeros for unknown rows."""
        codes = self.predict(X, segments)
        out = np.zeros((codes.shape[0], 4))
        k = codes >= 0
        out[np.flatnonzero(k), codes[k]] = 1.0
        return out

    def predict_proba(self, X: Any, segments: Any = None) -> np.ndarray:
        """The one-hot of :meth:`transform` (hard rules; unknown rows are all zero)."""
        return self.transform(X, segments)
