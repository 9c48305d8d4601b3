"""The API's response and request bodies (pydantic), so the OpenAPI description is typed.

Money, quantities, prices and fractions are strings holding exact decimals (``None``: not defined);
``hour`` is unix seconds // 3600 (the bar's open) with ``hour_utc`` ISO beside it; other times are
ISO 8601 UTC strings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Dec = str | None  # an exact decimal as text, or None


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class ErrorBody(BaseModel):
    detail: str


class PositionOut(BaseModel):
    pair: str
    qty: str
    entry_price: Dec
    entry_hour: int | None
    entry_hour_utc: str | None
    stop: Dec
    take_profit: Dec
    mark: Dec
    value: Dec
    unrealised_pnl: Dec  # qty x (mark - entry_price), before exit fees
    unrealised_return: Dec  # mark / entry_price - 1


class PendingAction(BaseModel):
    seq: int
    action: str
    reason: str | None
    actor: str | None
    recorded_utc: str


class Overview(BaseModel):
    ledger: str
    head_seq: int
    portfolio: bool
    last_completed: int | None
    last_completed_utc: str | None
    next_hour: int | None
    snapshot_hour: int | None
    snapshot_hour_utc: str | None
    snapshot_seq: int | None
    state: str | None
    tier: int | None
    halted: bool
    kill_switch: bool
    kill_reason: str | None
    paused: bool
    latch_next: list[str]
    init_cash: Dec
    equity: Dec
    cash: Dec
    peak: Dec
    drawdown: Dec
    exposure: Dec
    exposure_frac: Dec
    n_positions: int
    fills: int
    fees: str  # sum of the ledger's fill fees
    model_id: str | None
    manifest_sha256: str | None
    capital_ceiling: str | None
    cap_base: Dec
    pending_actions: list[PendingAction]


class EquityPoint(BaseModel):
    hour: int
    hour_utc: str
    equity: Dec
    cash: Dec
    drawdown: Dec
    state: str | None


class EquityCurve(BaseModel):
    points: list[EquityPoint]
    total: int


class Latch(BaseModel):
    latched: bool
    reason: str | None
    hour: int | None = None
    hour_utc: str | None = None
    recorded_utc: str | None = None
    trigger: str | None = None


class RiskOut(BaseModel):
    state: str | None
    tier: int | None
    drawdown: Dec
    peak: Dec
    equity: Dec
    halted: bool
    halt: Latch
    kill_switch: Latch
    paused: bool
    latch_next: list[str]
    snapshot_hour: int | None
    snapshot_hour_utc: str | None


class PredictionOut(BaseModel):
    pair: str
    model_id: str | None
    values: dict[str, str]
    # the strategy selector's choice for this pair (``[strategy]`` enabled and P(up) past the entry
    # threshold); None otherwise
    regime: str | None = None
    profile: str | None = None
    strategy_entry: bool | None = None  # True: the candidate went on to the risk step; False: parked


class Predictions(BaseModel):
    hour: int | None
    hour_utc: str | None
    model_id: str | None
    manifest_sha256: str | None
    regime: str | None  # the hour's regime when every selected pair agrees ("mixed" if not; None: no selection)
    profile: str | None  # the selected strategy profile, likewise
    predictions: list[PredictionOut]


class FillOut(BaseModel):
    seq: int
    hour: int | None
    hour_utc: str | None
    recorded_utc: str
    trade_id: str | None
    cl_ord_id: str | None
    txid: str | None
    pair: str | None
    side: str | None
    qty: Dec
    price: Dec
    fee: Dec
    cost: Dec
    origin: str | None  # own | external


class FillTotals(BaseModel):
    count: int
    fees: str
    buys: int
    sells: int
    bought_notional: str
    sold_notional: str


class Fills(BaseModel):
    totals: FillTotals
    fills: list[FillOut]
    total: int


class OrderOut(BaseModel):
    seq: int
    hour: int | None
    hour_utc: str | None
    cl_ord_id: str
    pair: str | None
    side: str | None
    qty: Dec
    limit_price: Dec
    order_type: str | None
    outcome: str | None  # the order_final code; None: still open
    filled_qty: Dec
    fills: int
    fees: str


class Orders(BaseModel):
    orders: list[OrderOut]
    total: int


class ReconciliationOut(BaseModel):
    seq: int
    hour: int | None
    hour_utc: str | None
    recorded_utc: str
    status: str
    problems: list[str]
    payload: dict[str, Any]


class Reconciliations(BaseModel):
    reconciliations: list[ReconciliationOut]
    total: int
    mismatches: int


class AlertOut(BaseModel):
    seq: int
    ts: str
    severity: Literal["info", "warning", "critical"]
    kind: str
    hour: int | None
    hour_utc: str | None
    pair: str | None
    message: str


class Alerts(BaseModel):
    alerts: list[AlertOut]
    total: int


class OperatorActionOut(BaseModel):
    seq: int
    action: str
    reason: str | None
    actor: str | None
    recorded_utc: str
    outcome: str  # applied | refused | pending
    applied_hour: int | None
    applied_hour_utc: str | None


class OperatorActions(BaseModel):
    actions: list[OperatorActionOut]


class OperatorRequest(BaseModel):
    reason: str = Field(..., max_length=500, description="why: ledgered with the action")
    confirm: str = Field(..., max_length=64, description="the typed confirmation: the action's word")


class OperatorResult(BaseModel):
    seq: int
    action: str
    actor: str
    reason: str
    apply_hour: int | None
    apply_hour_utc: str | None
    warnings: list[str]


class RunSummary(BaseModel):
    id: str
    kind: Literal["backtest", "walkforward", "sweep", "study"]
    modified_utc: str
    headline: dict[str, float | int | str | bool | None]


class Runs(BaseModel):
    runs_dir: str
    runs: list[RunSummary]


class ChartPoint(BaseModel):
    ts: int
    utc: str
    equity: float | None
    drawdown: float | None


class BenchmarkMetrics(BaseModel):
    total_return: float | None
    annual_return: float | None  # CAGR, 8,760 bars a year
    max_drawdown: float | None
    sharpe: float | None
    trades: int
    fees: float | None
    final_equity: float | None = None


class Benchmark(BaseModel):
    """Buy-and-hold of the run's pairs over its hours (benchmark.json; engine.report_html.buy_and_hold)."""

    definition: str
    metrics: BenchmarkMetrics
    curve: list[ChartPoint]  # the strategy curve's hours, downsampled the same way


class RunDetail(BaseModel):
    id: str
    kind: str
    modified_utc: str
    metrics: dict[str, Any]
    equity: list[ChartPoint]  # downsampled to at most 2,000 points
    benchmark: Benchmark | None  # None: the run was written without the market's prices
    table: list[dict[str, Any]]  # sweep results / study trials (first rows)
    files: list[str]


class ReplayHours(BaseModel):
    hours: list[int]
    total: int


class ReplayStatus(BaseModel):
    hour: int
    hour_utc: str
    status: Literal["reproduced", "differs", "not replayed"]
    ok: bool
    replayed: bool
    first_diff: str | None
    details: dict[str, Any]
