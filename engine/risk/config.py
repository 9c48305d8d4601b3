"""[risk] config section: every capital rule's number (owned by engine.risk).

docs/RISK_RULES.md lists each rule, its number and where the code enforces it.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from engine.config_base import Frozen, InfOff


class RiskConfig(Frozen):
    # entry signal
    p_up_entry: float = Field(0.55, ge=0.0, le=1.0, description="enter only if P(up) >= this")
    p_up_exit: float = Field(0.45, ge=0.0, le=1.0, description="signal-reversal exit if P(up) < this")
    # sizing
    sizing: Literal["vol_target", "risk", "fixed_fraction"] = Field(
        "vol_target",
        description="vol_target: position_size of equity x clamp(vol_target / (ATR / close)); "
        "risk: base_risk of equity at the ATR stop; fixed_fraction: a fraction of cash (parity)",
    )
    position_size: float = Field(
        0.02,
        gt=0.0,
        le=0.25,
        description="vol_target sizing: notional per position, fraction of equity, at the "
        "target volatility (before the tier-1 multiplier and the caps)",
    )
    vol_target: float = Field(
        0.012, gt=0.0, le=0.5, description="vol_target sizing: target volatility, Wilder ATR / close of the bar"
    )
    vol_adj_min: float = Field(
        0.5, gt=0.0, le=1.0, description="vol_target sizing: lower clamp of vol_target / (ATR / close)"
    )
    vol_adj_max: float = Field(
        2.0, ge=1.0, le=10.0, description="vol_target sizing: upper clamp of vol_target / (ATR / close)"
    )
    base_risk: float = Field(
        0.02, gt=0.0, le=0.05, description="risk sizing: equity fraction risked per trade at the stop"
    )
    fixed_fraction: float = Field(0.1, gt=0.0, le=1.0, description="fixed_fraction sizing: fraction of cash per entry")
    # exits
    stop_atr_mult: float = Field(2.0, ge=0.0, le=50.0, description="stop distance in ATRs below entry; 0 = no stop")
    take_profit_atr_mult: float = Field(4.0, ge=0.0, le=100.0, description="take-profit in ATRs above entry; 0 = none")
    max_hold_bars: int = Field(72, ge=0, le=100_000, description="time exit after this many bars; 0 = none")
    # portfolio caps
    max_positions: int = Field(10, ge=1, le=50)
    max_exposure: float = Field(0.20, gt=0.0, le=1.0, description="total exposure cap, fraction of equity")
    max_cluster_exposure: float = Field(
        0.10, gt=0.0, le=1.0, description="exposure cap per correlation cluster, fraction of equity"
    )
    capital_ceiling: InfOff = Field(
        math.inf,
        gt=0.0,
        description="the most quote currency the caps may commit: position size, total and cluster "
        "exposure caps (and their tier cuts) apply to min(equity, capital_ceiling); inf = off",
    )
    # drawdown tiers
    dd_reduce_risk: float = Field(0.10, gt=0.0, lt=1.0, description="drawdown at which the entry size is cut")
    dd_reduce_exposure: float = Field(
        0.15, gt=0.0, lt=1.0, description="drawdown at which exposure and positions are cut"
    )
    dd_halt: float = Field(0.20, gt=0.0, lt=1.0, description="drawdown at which new entries halt until manual reset")
    tier1_risk_mult: float = Field(0.5, gt=0.0, le=1.0, description="risk fraction multiplier from tier 1")
    tier2_exposure_mult: float = Field(0.5, gt=0.0, le=1.0, description="exposure cap multiplier from tier 2")
    tier2_max_positions: int = Field(5, ge=1, le=50, description="position count cap from tier 2")
    # kill switch
    spread_max: InfOff = Field(
        0.02, gt=0.0, description="spread estimate above this (fraction) trips the kill switch; inf = off"
    )
    spread_anomaly_mult: float = Field(
        5.0, ge=0.0, le=1000.0, description="spread > mult x its EWMA baseline trips it; 0 = off"
    )
    spread_baseline_bars: int = Field(168, ge=2, le=100_000, description="EWMA span of the spread baseline")
    vol_spike_mult: float = Field(
        8.0, ge=0.0, le=1000.0, description="true range > mult x previous ATR trips it; 0 = off"
    )
    # scheduled entry block (R25): no new positions whose order would execute in a bar opening in it
    training_window_utc: tuple[str, ...] = Field(
        ("03:00", "05:00"),
        description="UTC [start, end) 'HH:MM' of the maintenance/retraining window in which "
        "no new positions are opened (exits allowed); [] or equal times = none; may wrap midnight",
    )

    @field_validator("training_window_utc")
    @classmethod
    def _window(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from engine.risk.schedule import parse_window

        parse_window(v)  # ValueError (named by the config loader) when malformed
        return tuple(s.strip() for s in v)

    @model_validator(mode="after")
    def _tiers(self) -> RiskConfig:
        if not (self.dd_reduce_risk < self.dd_reduce_exposure < self.dd_halt):
            raise ValueError("drawdown tiers must satisfy dd_reduce_risk < dd_reduce_exposure < dd_halt")
        if self.p_up_exit >= self.p_up_entry:
            raise ValueError("p_up_exit must be below p_up_entry")
        if self.sizing == "risk" and self.stop_atr_mult <= 0.0:
            raise ValueError("sizing = 'risk' needs stop_atr_mult > 0 (the stop distance)")
        if self.max_cluster_exposure > self.max_exposure and not math.isclose(
            self.max_cluster_exposure, self.max_exposure
        ):
            raise ValueError("max_cluster_exposure must not exceed max_exposure")
        return self
