"""[backtest] config section (owned by engine.backtest)."""

from __future__ import annotations

from pydantic import Field

from engine.config_base import Frozen


class BacktestConfig(Frozen):
    init_cash: float = Field(10_000.0, gt=0.0, le=1e12, description="starting cash in the quote currency")
    kill_reset_bars: int = Field(
        24,
        ge=0,
        le=1_000_000,
        description="backtest only: emulate an operator reactivating the kill switch after N bars; 0 = never",
    )
    halt_reset_bars: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="backtest only: emulate an operator lifting the drawdown halt after N bars; 0 = never",
    )
    apply_universe: bool = Field(
        True, description="kq backtest: block entries of pairs outside configs/universe.toml's universe at that bar"
    )
    spread_window: int = Field(24, ge=2, le=5000, description="window of the spread estimate when none is given")
