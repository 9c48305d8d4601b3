"""[strategy] config section: the regime-aware strategy layer (owned by engine.strategy).

Off by default (``enabled = false``): the inputs the backtester and the daemon build are then the
same arrays as without the layer, bit for bit. docs/MODEL_ASSUMPTIONS.md documents each profile.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from engine.config_base import Frozen
from engine.strategy.enums import PROFILE_NAMES, REGIME_NAMES

__all__ = ["ProfileExit", "ProfileExits", "SelectorConfig", "Slot", "StrategyConfig"]


class ProfileExit(Frozen):
    stop_atr_mult: float = Field(
        2.0, ge=0.0, le=50.0, description="stop distance in ATRs, used when tighter than [risk]'s; 0 = [risk]'s"
    )
    take_profit_atr_mult: float = Field(4.0, ge=0.0, le=100.0, description="take-profit in ATRs; 0 = none")
    size_scale: float = Field(1.0, ge=0.0, le=1.0, description="multiplier of the risk step's entry size")


# each profile's exits when its table is absent or partial (a partial table keeps the other fields)
_EXIT_DEFAULTS: dict[str, dict[str, float]] = {
    "trend": {"stop_atr_mult": 2.0, "take_profit_atr_mult": 4.0, "size_scale": 1.0},
    "breakout": {"stop_atr_mult": 2.0, "take_profit_atr_mult": 4.0, "size_scale": 1.0},
    "mean_reversion": {"stop_atr_mult": 1.5, "take_profit_atr_mult": 1.5, "size_scale": 0.75},
    "vol_expansion": {"stop_atr_mult": 1.5, "take_profit_atr_mult": 3.0, "size_scale": 1.0},
    "defensive": {"stop_atr_mult": 1.0, "take_profit_atr_mult": 2.0, "size_scale": 0.5},
    "preservation": {"stop_atr_mult": 1.0, "take_profit_atr_mult": 0.0, "size_scale": 0.0},
}


class ProfileExits(Frozen):
    """Exit parameters of each profile, carried per bar and pair and applied by the risk step (R26):
    an entry's stop and take-profit ATR multiples and size scale; preservation's stop multiple is
    the floor its held positions' stops are raised to. A partial table (``[strategy.exits.defensive]
    stop_atr_mult = 1.2``) keeps that profile's other defaults (half size stays half size)."""

    trend: ProfileExit = ProfileExit(**_EXIT_DEFAULTS["trend"])
    breakout: ProfileExit = ProfileExit(**_EXIT_DEFAULTS["breakout"])
    mean_reversion: ProfileExit = ProfileExit(**_EXIT_DEFAULTS["mean_reversion"])
    vol_expansion: ProfileExit = ProfileExit(**_EXIT_DEFAULTS["vol_expansion"])
    defensive: ProfileExit = ProfileExit(**_EXIT_DEFAULTS["defensive"])
    preservation: ProfileExit = ProfileExit(**_EXIT_DEFAULTS["preservation"])

    @model_validator(mode="before")
    @classmethod
    def _partial(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, d in _EXIT_DEFAULTS.items():
            v = out.get(name)
            if isinstance(v, dict):
                out[name] = {**d, **v}
        return out


class Slot(Frozen):
    profile: str = Field(description="one of " + ", ".join(PROFILE_NAMES))
    weight: float = Field(1.0, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _name(self) -> Slot:
        if self.profile not in PROFILE_NAMES:
            raise ValueError(f"unknown profile {self.profile[:40]!r} (known: {', '.join(PROFILE_NAMES)})")
        return self


def _slots(*pw: tuple[str, float]) -> tuple[Slot, ...]:
    return tuple(Slot(profile=p, weight=w) for p, w in pw)


class SelectorConfig(Frozen):
    """One or two active profiles per regime (weights summing to 1 when two)."""

    range: tuple[Slot, ...] = _slots(("mean_reversion", 0.6), ("vol_expansion", 0.4))
    trending: tuple[Slot, ...] = _slots(("trend", 0.7), ("breakout", 0.3))
    high_vol: tuple[Slot, ...] = _slots(("defensive", 1.0))
    crash: tuple[Slot, ...] = _slots(("preservation", 1.0))
    unknown: tuple[Slot, ...] = _slots(("defensive", 1.0))

    @model_validator(mode="after")
    def _rows(self) -> SelectorConfig:
        for name in REGIME_NAMES + ("unknown",):
            row = getattr(self, name)
            if not 1 <= len(row) <= 2:
                raise ValueError(f"{name}: one or two profiles, got {len(row)}")
            if len({s.profile for s in row}) != len(row):
                raise ValueError(f"{name}: the same profile twice")
            if not math.isclose(sum(s.weight for s in row), 1.0, abs_tol=1e-9):
                raise ValueError(f"{name}: weights must sum to 1")
        return self


class StrategyConfig(Frozen):
    enabled: bool = Field(False, description="regime-aware profiles gate the entries; false: inputs unchanged")
    # regime: research.models.regime's rule with fixed thresholds (its rule-based form)
    trend_bars: int = Field(168, ge=2, le=2000, description="regime trend and drawdown window, bars")
    vol_bars: int = Field(72, ge=2, le=2000, description="regime volatility window, bars")
    vol_hi: float = Field(0.012, gt=0.0, le=1.0, description="high_vol at hourly return std >= this")
    strength_hi: float = Field(1.07, gt=0.0, le=100.0, description="trending at |trend|/(vol sqrt(bars)) >= this")
    crash_ret: float = Field(-0.15, ge=-1.0, le=0.0, description="crash needs the trend return <= this")
    crash_drawdown: float = Field(0.15, gt=0.0, lt=1.0, description="and the drawdown off the high >= this")
    regime_thresholds: Literal["config", "model"] = Field(
        "config",
        description='"config": the windows and thresholds above; "model": the regime classifier fitted on '
        "each walk-forward fold's training window (the approved bundle's in the daemon)",
    )
    hysteresis_bars: int = Field(6, ge=1, le=720, description="a new regime must hold this many bars")
    hysteresis_lookback: int = Field(168, ge=1, le=2000, description="no settled run in this many bars: regime unknown")
    # profiles
    trend_mom_bars: int = Field(24, ge=1, le=2000)
    trend_sma_bars: int = Field(48, ge=2, le=2000)
    breakout_bars: int = Field(48, ge=1, le=2000)
    breakout_volume_mult: float = Field(1.5, ge=0.0, le=100.0)
    mr_bars: int = Field(24, ge=2, le=2000)
    mr_z: float = Field(2.0, gt=0.0, le=20.0)
    vx_short_bars: int = Field(12, ge=2, le=2000)
    vx_long_bars: int = Field(168, ge=3, le=2000)
    vx_contract: float = Field(0.6, gt=0.0, le=10.0)
    vx_expand: float = Field(1.5, gt=0.0, le=100.0)
    defensive_margin: float = Field(0.1, ge=0.0, le=1.0, description="defensive: P(up) >= gate + this")
    exits: ProfileExits = ProfileExits()
    selector: SelectorConfig = SelectorConfig()

    @model_validator(mode="after")
    def _windows(self) -> StrategyConfig:
        if self.vx_short_bars >= self.vx_long_bars:
            raise ValueError("vx_short_bars must be below vx_long_bars")
        if self.hysteresis_lookback < self.hysteresis_bars:
            raise ValueError("hysteresis_lookback must be at least hysteresis_bars")
        return self

    @property
    def lookback_bars(self) -> int:
        """Rows of history the last row's regime and profiles need to equal a full-history run."""
        return self.lookback_for(self.trend_bars, self.vol_bars)

    def lookback_for(self, trend_bars: int, vol_bars: int) -> int:
        """:attr:`lookback_bars` with the regime rule's windows ``trend_bars`` and ``vol_bars``
        (``regime_thresholds = "model"``: the fitted classifier's)."""
        regime = max(int(trend_bars), int(vol_bars) + 1) + self.hysteresis_lookback + self.hysteresis_bars
        prof = max(
            self.trend_mom_bars, self.trend_sma_bars + 1, self.breakout_bars, self.mr_bars, self.vx_long_bars + 1
        )
        return max(regime, prof) + 1
