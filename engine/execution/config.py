"""[execution] config section: the fill model's numbers (owned by engine.execution).

docs/MODEL_ASSUMPTIONS.md ("Fills") states the model in words.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from engine.config_base import Frozen


class ExecutionConfig(Frozen):
    entry_order: Literal["limit_first", "market"] = Field(
        "limit_first",
        description="limit at an offset for one bar, market fallback at that bar's close; or market at next open",
    )
    exit_order: Literal["limit_first", "market"] = Field(
        "limit_first", description="order kind of signal and time exits (stops and take-profits are always market)"
    )
    limit_offset_bps: float = Field(5.0, ge=0.0, le=500.0, description="limit price offset from the decision close")
    impact_coef: float = Field(
        0.1, ge=0.0, le=10.0, description="market impact: coef x volatility x sqrt(participation)"
    )
    spread_in_slippage: bool = Field(True, description="half the spread estimate is part of market slippage")
    min_slippage_bps: float = Field(1.0, ge=0.0, le=500.0, description="floor of every market fill's slippage")
    slip_buffer_bps: float = Field(50.0, ge=0.0, le=1000.0, description="cash kept back per entry for slippage")
    enforce_precision: bool = Field(
        True, description="Kraken lot/price rounding and ordermin/costmin (off only for parity)"
    )
