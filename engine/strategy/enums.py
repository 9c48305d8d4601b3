"""Ids and record dtypes of the regime-aware strategy layer (docs/MODEL_ASSUMPTIONS.md, "Strategy
profiles and the regime selector").

Regime codes are the research regime classifier's (``research.models.regime``): 0 range,
1 trending, 2 high_vol, 3 crash, -1 unknown (warm-up or a missing bar in the windows). Profile ids
0..5 are the six rule sets of :mod:`engine.strategy.nb`; -1 means "no profile selected" (the
selector found no candidate, or the layer is off).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

__all__ = [
    "N_PROFILES",
    "N_REGIMES",
    "PROFILE_NAMES",
    "REGIME_NAMES",
    "Profile",
    "Regime",
    "selection_dt",
    "strategy_params_dt",
]


class Regime(IntEnum):
    UNKNOWN = -1
    RANGE = 0
    TRENDING = 1
    HIGH_VOL = 2
    CRASH = 3


REGIME_NAMES: tuple[str, ...] = ("range", "trending", "high_vol", "crash")
N_REGIMES = 4  # the selector table has one more row: index N_REGIMES is "unknown"


class Profile(IntEnum):
    NONE = -1
    TREND = 0
    BREAKOUT = 1
    MEAN_REVERSION = 2
    VOL_EXPANSION = 3
    DEFENSIVE = 4
    PRESERVATION = 5


PROFILE_NAMES: tuple[str, ...] = (
    "trend",
    "breakout",
    "mean_reversion",
    "vol_expansion",
    "defensive",
    "preservation",
)
N_PROFILES = 6

# every number the profile and regime kernels read (one record; engine.strategy.params_from_config)
strategy_params_dt = np.dtype(
    [
        # entry gate (the meta-learner's threshold; every profile ANDs its rule with P(up) >= this)
        ("p_up_entry", np.float64),
        # regime rule (research.models.regime's features and rule, fixed thresholds)
        ("trend_bars", np.int64),
        ("vol_bars", np.int64),
        ("vol_hi", np.float64),
        ("strength_hi", np.float64),
        ("crash_ret", np.float64),
        ("crash_drawdown", np.float64),
        ("hysteresis_bars", np.int64),
        ("hysteresis_lookback", np.int64),
        # trend-following
        ("trend_mom_bars", np.int64),
        ("trend_sma_bars", np.int64),
        # breakout
        ("breakout_bars", np.int64),
        ("breakout_volume_mult", np.float64),
        # mean reversion
        ("mr_bars", np.int64),
        ("mr_z", np.float64),
        # volatility contraction -> expansion
        ("vx_short_bars", np.int64),
        ("vx_long_bars", np.int64),
        ("vx_contract", np.float64),
        ("vx_expand", np.float64),
        # defensive
        ("defensive_margin", np.float64),
    ],
    align=True,
)

# one row per (bar, pair) the selector chose a profile for: what backtest reports and the daemon's
# ledger log (engine.strategy.selection_records)
selection_dt = np.dtype(
    [
        ("bar", np.int64),
        ("pair", np.int64),
        ("regime", np.int8),
        ("profile", np.int8),
        ("candidate", np.bool_),
        ("p_up", np.float64),  # the meta-learner's P(up) before the gate
        ("stop_atr_mult", np.float64),
        ("take_profit_atr_mult", np.float64),
        ("size_scale", np.float64),
    ],
    align=True,
)
