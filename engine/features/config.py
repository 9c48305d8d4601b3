"""[features] config section: window lengths for every feature kernel (owned by engine.features)."""

from __future__ import annotations

from pydantic import Field

from engine.config import Frozen


class FeaturesConfig(Frozen):
    atr_window: int = Field(14, ge=2, le=1000)
    vol_window: int = Field(24, ge=2, le=5000)
    warmup_bars: int = Field(720, ge=24, le=20000, description="bars of history the live bridge keeps")
