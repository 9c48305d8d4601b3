"""[risk] config section: every capital rule's number (owned by engine.risk).

docs/RISK_RULES.md lists each rule, its number and where the code enforces it.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from engine.config import Frozen


class RiskConfig(Frozen):
    base_risk: float = Field(0.02, gt=0.0, le=0.05, description="equity fraction risked per trade at the stop")
    max_positions: int = Field(10, ge=1, le=50)
    max_exposure: float = Field(0.20, gt=0.0, le=1.0, description="total exposure cap, fraction of equity")
    dd_reduce_risk: float = Field(0.10, gt=0.0, lt=1.0, description="drawdown at which risk per trade is cut")
    dd_reduce_exposure: float = Field(0.15, gt=0.0, lt=1.0, description="drawdown at which exposure and positions are cut")
    dd_halt: float = Field(0.20, gt=0.0, lt=1.0, description="drawdown at which new entries halt until manual reset")

    @model_validator(mode="after")
    def _tiers(self) -> "RiskConfig":
        if not (self.dd_reduce_risk < self.dd_reduce_exposure < self.dd_halt):
            raise ValueError("drawdown tiers must satisfy dd_reduce_risk < dd_reduce_exposure < dd_halt")
        return self
