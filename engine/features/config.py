"""[features] config section: window lengths for every feature kernel (owned by engine.features).

Short windows use the strict gap rule (every bar of the window present, see engine/features/nb.py);
the long windows (a week or a month) have their own ``*_min_periods``. Windows are in bars (hours).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from engine.config_base import Frozen


class FeaturesConfig(Frozen):
    # momentum
    mom_horizons: tuple[int, ...] = Field((1, 4, 24), description="log-return horizons in bars")
    slope_window: int = Field(24, ge=3, le=5000, description="least-squares slope of log close")
    # volatility
    atr_window: int = Field(14, ge=2, le=1000, description="Wilder ATR period")
    vol_window: int = Field(24, ge=2, le=5000, description="std of 1h log returns")
    vol_pct_window: int = Field(672, ge=2, le=20000, description="trailing window of the volatility percentile")
    vol_pct_min_periods: int = Field(600, ge=1, le=20000)
    vol_regime_pct: float = Field(0.8, gt=0.0, lt=1.0, description="volatility percentile at or above which regime = 1")
    # liquidity
    volume_median_window: int = Field(168, ge=2, le=20000, description="trailing median volume (current bar excluded)")
    volume_median_min_periods: int = Field(150, ge=1, le=20000)
    spread_method: Literal["corwin_schultz", "abdi_ranaldo", "none"] = Field(
        "corwin_schultz", description="OHLC spread estimator (engine.features.spread); none = leave out"
    )
    spread_window: int = Field(24, ge=1, le=5000, description="two-bar spread estimates averaged")
    spread_median_window: int = Field(
        168, ge=2, le=20000, description="trailing median of the spread (current excluded)"
    )
    spread_median_min_periods: int = Field(150, ge=1, le=20000)
    # structure
    breakout_window: int = Field(24, ge=2, le=5000, description="previous N-bar high/low, current bar excluded")
    mr_window: int = Field(48, ge=3, le=5000, description="rolling mean/std of close for the mean-reversion z")
    hhll_window: int = Field(12, ge=1, le=5000, description="block length of the higher-high / lower-low flags")
    # cross-asset
    beta_window: int = Field(168, ge=4, le=20000, description="rolling beta / correlation to BTC (1h returns)")
    beta_min_periods: int = Field(150, ge=3, le=20000)
    breadth_window: int = Field(72, ge=2, le=20000, description="N-bar mean of close for breadth")
    corr_window: int = Field(720, ge=4, le=20000, description="correlation-matrix window (1h returns)")
    corr_min_periods: int = Field(600, ge=3, le=20000)
    cluster_every: int = Field(24, ge=1, le=5000, description="recompute clusters at UTC hours divisible by this")
    cluster_threshold: float = Field(
        0.7, gt=-1.0, lt=1.0, description="average correlation at or above which clusters merge"
    )
    # live bridge
    warmup_bars: int = Field(768, ge=24, le=20000, description="bars of history the live bridge keeps")

    @model_validator(mode="after")
    def _check(self) -> FeaturesConfig:
        h = self.mom_horizons
        if not h or any(x < 1 or x > 5000 for x in h) or list(h) != sorted(set(h)):
            raise ValueError("mom_horizons must be strictly increasing whole numbers of bars in 1..5000")
        for w, mp in (
            ("vol_pct_window", "vol_pct_min_periods"),
            ("volume_median_window", "volume_median_min_periods"),
            ("spread_median_window", "spread_median_min_periods"),
            ("beta_window", "beta_min_periods"),
            ("corr_window", "corr_min_periods"),
        ):
            if getattr(self, mp) > getattr(self, w):
                raise ValueError(f"{mp} must be <= {w}")
        return self
