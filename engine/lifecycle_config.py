"""[lifecycle] config section: the model-promotion gates' thresholds and where approvals live.

Read by ``research/lifecycle`` (``kq models validate|promote|rollback|audit``) and by the live
bridge's model loader (``live_bridge/models.py``), which is why it is an engine section: the live
bridge reads engine config only. docs/MODEL_LIFECYCLE.md explains every gate.

The scheduled retraining window is NOT here: it is ``risk.training_window_utc`` (the same window in
which the backtester and the live bridge open no new positions), so there is one clock rule.
"""

from __future__ import annotations

from pydantic import Field

from engine.config_base import Frozen


class LifecycleConfig(Frozen):
    # gate 3: out-of-sample quality of the candidate's walk-forward backtest
    min_sharpe: float = Field(0.5, ge=-10.0, le=20.0,
                              description="gate 3: annualised Sharpe of the OOS meta strategy must be >= this")
    max_drawdown: float = Field(0.15, gt=0.0, le=1.0,
                                description="gate 3: max drawdown (fraction of peak equity) must be <= this")
    # gate 4: risk
    max_daily_turnover: float = Field(
        2.0, gt=0.0, le=1000.0,
        description="gate 4: traded notional (buys + sells) / mean equity PER DAY must be <= this "
                    "(metrics.json 'turnover' is the same ratio per year: divide by 365)")
    exposure_tolerance: float = Field(
        0.05, ge=0.0, le=0.5,
        description="gate 4 audit: relative slack on the exposure cap at the close of an entry's bar "
                    "(prices move between the fill and the close); 0.05 = 20% cap checked at 21%")
    # where approvals live
    approvals_dir: str | None = Field(
        None, description="approvals store (state per environment + hash-chained approvals.log); "
                          "default data/approvals; a relative path is relative to the working directory")
