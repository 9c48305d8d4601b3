"""Build the numba parameter record and per-pair Kraken rule arrays from typed config."""

from __future__ import annotations

import numpy as np

from engine.pairs import instrument
from engine.risk.enums import SIZING_FIXED_FRACTION, SIZING_RISK, SIZING_VOL_TARGET, OrderKind, params_dt

SIZING_MODES = {"vol_target": SIZING_VOL_TARGET, "risk": SIZING_RISK, "fixed_fraction": SIZING_FIXED_FRACTION}


def params_from_config(cfg, **overrides) -> np.ndarray:
    """One ``params_dt`` record (shape (1,)) from a :class:`engine.config.Config`.

    ``overrides`` set fields of the record directly (sweeps); unknown names raise KeyError.
    """
    r, x, b, fees = cfg.risk, cfg.execution, cfg.backtest, cfg.fees
    p = np.zeros(1, dtype=params_dt)
    kind = {"market": int(OrderKind.MARKET), "limit_first": int(OrderKind.LIMIT_FIRST)}
    vals = dict(
        init_cash=b.init_cash,
        p_up_entry=r.p_up_entry,
        p_up_exit=r.p_up_exit,
        min_edge=fees.round_trip_cost,
        sizing=SIZING_MODES[r.sizing],
        base_risk=r.base_risk,
        fixed_fraction=r.fixed_fraction,
        position_size=r.position_size,
        vol_target=r.vol_target,
        vol_adj_min=r.vol_adj_min,
        vol_adj_max=r.vol_adj_max,
        stop_atr_mult=r.stop_atr_mult,
        tp_atr_mult=r.take_profit_atr_mult,
        max_hold_bars=r.max_hold_bars,
        max_positions=r.max_positions,
        max_exposure=r.max_exposure,
        max_cluster_exposure=r.max_cluster_exposure,
        capital_ceiling=r.capital_ceiling,
        dd_tier1=r.dd_reduce_risk,
        dd_tier2=r.dd_reduce_exposure,
        dd_halt=r.dd_halt,
        tier1_risk_mult=r.tier1_risk_mult,
        tier2_exposure_mult=r.tier2_exposure_mult,
        tier2_max_positions=r.tier2_max_positions,
        spread_max=r.spread_max,
        spread_anomaly_mult=r.spread_anomaly_mult,
        spread_alpha=2.0 / (r.spread_baseline_bars + 1.0),
        spread_min_obs=r.spread_baseline_bars,
        vol_spike_mult=r.vol_spike_mult,
        fee_rate=fees.fee_rate,
        entry_kind=kind[x.entry_order],
        exit_kind=kind[x.exit_order],
        limit_offset=x.limit_offset_bps * 1e-4,
        impact_coef=x.impact_coef,
        spread_slip=1 if x.spread_in_slippage else 0,
        min_slip=x.min_slippage_bps * 1e-4,
        slip_buffer=x.slip_buffer_bps * 1e-4,
        enforce_precision=1 if x.enforce_precision else 0,
        kill_reset_bars=b.kill_reset_bars,
        halt_reset_bars=b.halt_reset_bars,
    )
    names = params_dt.names or ()
    for k, v in overrides.items():
        if k not in names:
            raise KeyError(f"unknown parameter {k!r}")
        vals[k] = v
    for k in names:
        p[0][k] = vals[k]
    return p


def instrument_arrays(pairs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ordermin, costmin, lot_decimals, pair_decimals, quote_decimals) per pair from
    engine.pairs.INSTRUMENTS; quote_decimals (the quote currency's, ``engine.pairs.asset_decimals``)
    is what fees are rounded to."""
    ins = [instrument(p) for p in pairs]
    ordermin = np.array([float(i.ordermin) for i in ins], dtype=np.float64)
    costmin = np.array([float(i.costmin) for i in ins], dtype=np.float64)
    lot = np.array([i.lot_decimals for i in ins], dtype=np.int64)
    price = np.array([i.pair_decimals for i in ins], dtype=np.int64)
    quote = np.array([i.quote_decimals for i in ins], dtype=np.int64)
    return ordermin, costmin, lot, price, quote


# per-bar exit parameter bounds (R26): NaN or within; a value outside could loosen a rule
_BX_BOUNDS = (("stop_mult", 0.0, 50.0), ("tp_mult", 0.0, 100.0), ("size_scale", 0.0, 1.0))


def bar_exits_problem(bx: np.ndarray) -> tuple[tuple[int, ...], str, float] | None:
    """The first bad value of per-bar exit parameters ``bx`` (float64, last axis ``bar_exit_dt``'s
    four fields: stop_mult, tp_mult, size_scale, stop_floor) as (index without the last axis, field,
    value), or None. Each field is NaN or: a stop or take-profit multiple in 0..50 / 0..100, a size
    scale in 0..1 (a profile can shrink an entry, never enlarge it), a stop floor finite and > 0.
    Shared by ``BacktestInputs`` and ``RiskMachine.on_bar``, so a backtest can never run exits the
    live machine would refuse."""
    from engine.risk.enums import BX_FLOOR, BX_N

    a = np.asarray(bx, dtype=np.float64)
    if a.size == 0:
        return None
    with np.errstate(invalid="ignore"):
        bad = np.zeros(a.shape[:-1] + (BX_N,), dtype=bool)
        for k, (_, lo, hi) in enumerate(_BX_BOUNDS):
            v = a[..., k]
            bad[..., k] = ~np.isnan(v) & ~((v >= lo) & (v <= hi))
        v = a[..., BX_FLOOR]
        bad[..., BX_FLOOR] = ~np.isnan(v) & ~(np.isfinite(v) & (v > 0.0))
    if not bad.any():
        return None
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    names = [n for n, _, _ in _BX_BOUNDS] + ["stop_floor"]
    return idx[:-1], names[idx[-1]], float(a[idx])
