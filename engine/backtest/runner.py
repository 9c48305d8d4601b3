"""Python entry points of the backtester: inputs from a Panel, one run with records, many-set sweeps.

The kernels live in :mod:`engine.backtest.nb` (which runs :func:`engine.risk.nb.step_nb` per bar).
Inputs the state machine needs beyond prices (ATR, spread estimate, cluster ids) come from the
feature kernels unless given: Wilder ATR (``engine.features.nb.wilder_atr_nb``), the Corwin-Schultz
spread estimate (``engine.features.spread.spread_arrays``) and correlation clusters
(``engine.features.nb.corr_clusters_nb``), all causal (bar t uses bars <= t only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from engine.errors import InputError
from engine.risk.enums import (
    BX_N,
    N_REASONS,
    N_STATES,
    SIZING_FIXED_FRACTION,
    Reason,
    TradingState,
    equity_dt,
    event_dt,
    metrics_dt,
    params_dt,
    trade_dt,
)
from engine.risk.nb import N_CNT
from engine.risk.params import bar_exits_problem, instrument_arrays

if TYPE_CHECKING:
    from engine.strategy import StrategySelection


@dataclass(frozen=True, eq=False)
class BacktestInputs:
    pairs: tuple[str, ...]
    ts: np.ndarray  # int64 (n,) bar open times, UTC seconds
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    valid: np.ndarray  # bool (n, m)
    p_up: np.ndarray  # (n, m) float64, NaN = no signal
    exp_ret: np.ndarray  # (n, m) float64
    atr: np.ndarray  # (n, m) float64, price units
    spread: np.ndarray  # (n, m) float64, fraction of price
    cluster: np.ndarray  # (n, m) int64, -1 = no cluster
    api_fault: np.ndarray  # bool (n,)
    operator: np.ndarray  # int64 (n,): OP_RESET_KILL | OP_RESET_HALT bit flags (manual resets)
    # the three below: None is filled in by __post_init__, so they are arrays once constructed
    month_id: np.ndarray | None = None  # int64 (n,)
    tradable: np.ndarray | None = None  # bool (n, m): universe member at bar t (R9); None = all
    entry_block: np.ndarray | None = None  # bool (n,): entries decided at t refused (R25); None = none
    # what the regime selector chose ([strategy] enabled: an engine.strategy.StrategySelection, and
    # ``p_up`` is then the gated P(up) the risk step reads); None when the layer is off
    strategy: StrategySelection | None = None
    # per-bar exit parameters (n, m, BX_N) float64, engine.risk.enums.bar_exit_dt's fields: the
    # selected profile's stop and take-profit ATR multiples, size scale and stop floor, which the risk
    # step applies (R26); [strategy] off: no rows ((0, m, BX_N), filled in by __post_init__)
    bar_exits: np.ndarray | None = None
    # the bars right before ts[0] the strategy layer warmed up on (make_inputs ``history``; a Panel),
    # kept so that a rebuild under another [strategy] table warms up the same way; None: none
    strategy_history: Any = None
    # kill-switch triggers per bar (kill_triggers_nb), memoised per kill-switch parameter tuple: like
    # ATR and the spread estimate they are a function of these arrays only, so the arrays must not be
    # modified in place after construction (build new inputs, e.g. dataclasses.replace, which starts
    # an empty memo)
    _kill_memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    # the entry masks (engine.backtest.nb.entry_masks_nb), memoised the same way per entry parameters
    _mask_memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        n, m = self.close.shape
        if self.month_id is None:
            object.__setattr__(self, "month_id", month_ids(self.ts))
        if self.tradable is None:
            object.__setattr__(self, "tradable", np.ones((n, m), dtype=np.bool_))
        if self.entry_block is None:
            object.__setattr__(self, "entry_block", np.zeros(n, dtype=np.bool_))
        if self.bar_exits is None or (self.bar_exits.shape[0] == 0 and self.bar_exits.shape != (0, m, BX_N)):
            object.__setattr__(self, "bar_exits", np.zeros((0, m, BX_N)))
        bx = self.bar_exits
        if bx.dtype != np.float64 or not bx.flags.c_contiguous or bx.shape not in ((0, m, BX_N), (n, m, BX_N)):
            raise InputError(f"bar_exits: shape {bx.shape}, expected {(n, m, BX_N)} or no rows (C-contiguous float64)")
        bad = bar_exits_problem(bx)
        if bad is not None:  # the values the live machine refuses (R26): never run them in a backtest
            (t, j), f, v = bad
            raise InputError(f"bar_exits[bar {t}, {self.pairs[j]}].{f} = {v!r}: out of bounds (docs/RISK_RULES.md R26)")

    @property
    def shape(self) -> tuple[int, int]:
        return self.close.shape


def _f64(a, shape, name):
    a = np.ascontiguousarray(a, dtype=np.float64)
    if a.shape != shape:
        raise InputError(f"{name}: shape {a.shape}, expected {shape}")
    return a


def default_atr(high, low, close, window: int) -> np.ndarray:
    from engine.features.nb import wilder_atr_nb

    return wilder_atr_nb(
        np.ascontiguousarray(high, dtype=np.float64),
        np.ascontiguousarray(low, dtype=np.float64),
        np.ascontiguousarray(close, dtype=np.float64),
        int(window),
    )


def default_spread(high, low, close, valid, window: int) -> np.ndarray:
    from engine.features.spread import spread_arrays

    return spread_arrays(high, low, close, valid, int(window))


def default_clusters(ts, close, valid, fcfg) -> np.ndarray:
    from engine.features.nb import corr_clusters_nb, log_return_nb

    r = log_return_nb(np.ascontiguousarray(close, dtype=np.float64), 1)
    hour = np.ascontiguousarray(ts // 3600, dtype=np.int64)
    return corr_clusters_nb(
        r,
        hour,
        np.ascontiguousarray(valid, dtype=np.bool_),
        int(fcfg.corr_window),
        int(fcfg.corr_min_periods),
        int(fcfg.cluster_every),
        float(fcfg.cluster_threshold),
    )


def month_ids(ts: np.ndarray) -> np.ndarray:
    d = pd.to_datetime(np.asarray(ts, dtype=np.int64), unit="s")
    return d.year.to_numpy().astype(np.int64) * 12 + d.month.to_numpy().astype(np.int64) - 1


def make_inputs(
    panel,
    p_up,
    exp_ret,
    cfg=None,
    *,
    atr=None,
    spread=None,
    cluster=None,
    api_fault=None,
    operator=None,
    tradable=None,
    entry_block=None,
    raw_regime=None,
    history=None,
) -> BacktestInputs:
    """Assemble kernel inputs from a Panel and (n, m) signal arrays; missing ATR/spread/clusters are
    computed with the feature kernels (windows from ``cfg``).

    ``tradable`` (n, m) bool: the pair is a universe member at that bar (R9; e.g.
    ``engine.universe.universe_mask``); the risk step refuses entries elsewhere with
    ``REFUSE_NOT_TRADABLE`` and leaves exits alone. None: every pair is tradable.
    ``entry_block`` (n,) bool: entries decided at the close of bar t are refused
    (``REFUSE_TRAINING_WINDOW``, R25). None: from ``cfg.risk.training_window_utc``
    (:func:`engine.risk.schedule.entry_block_for_bars`: the execution bar opens in the window).
    ``cfg.strategy.enabled``: ``p_up`` goes through the regime selector
    (:func:`engine.strategy.apply_strategy`: parked below the entry threshold where no selected
    profile has a candidate) and the selection rides along as ``strategy``; off: unchanged.
    ``raw_regime`` (n, m) int8: the fitted regime classifier's codes before hysteresis, required
    with ``[strategy] regime_thresholds = "model"`` (not read when the layer is off).
    ``history``: a Panel of the bars right before ``panel``'s first (same pairs, the hour before it
    last): with the layer on, the regime and profile windows warm up on them and the selection is
    cut to ``panel``'s rows, as ATR, spread and clusters are when a caller cuts a span out of a longer
    panel; so a span's first rows are labelled as in a full-history run (a ``raw_regime`` of
    ``panel``'s rows is padded with "unknown" there). Kept on the inputs (``strategy_history``)."""
    from engine.config import load_config
    from engine.risk.schedule import entry_block_for_bars

    cfg = cfg or load_config()
    n, m = panel.close.shape
    shape = (n, m)
    if tradable is None:
        trd = np.ones(shape, dtype=np.bool_)
    else:
        trd = np.ascontiguousarray(tradable, dtype=np.bool_)
        if trd.shape != shape:
            raise InputError(f"tradable: shape {trd.shape}, expected {shape}")
    if entry_block is None:
        blk = entry_block_for_bars(panel.ts, cfg.risk.training_window_utc)
    else:
        blk = np.ascontiguousarray(entry_block, dtype=np.bool_)
        if blk.shape != (n,):
            raise InputError(f"entry_block: shape {blk.shape}, expected {(n,)}")
    hi, lo, cl = panel.high, panel.low, panel.close
    if atr is None:
        atr = default_atr(hi, lo, cl, cfg.features.atr_window)
    if spread is None:
        spread = default_spread(hi, lo, cl, panel.valid, cfg.backtest.spread_window)
    if cluster is None:
        cluster = default_clusters(panel.ts, cl, panel.valid, cfg.features)
    cluster = np.ascontiguousarray(cluster, dtype=np.int64)
    if cluster.shape != shape:
        raise InputError(f"cluster: shape {cluster.shape}, expected {shape}")
    api = np.zeros(n, dtype=np.bool_) if api_fault is None else np.ascontiguousarray(api_fault, dtype=np.bool_)
    op = np.zeros(n, dtype=np.int64) if operator is None else np.ascontiguousarray(operator, dtype=np.int64)
    if api.shape != (n,) or op.shape != (n,):
        raise InputError("api_fault and operator must be (n_bars,) arrays")
    ts = np.ascontiguousarray(panel.ts, dtype=np.int64)
    sel = None
    bx = None
    if cfg.strategy.enabled:
        from engine.strategy import apply_strategy, bar_exits

        pu = _f64(p_up, shape, "p_up")
        k = 0 if history is None else int(history.close.shape[0])
        if k == 0:
            sel = apply_strategy(hi, cl, panel.volume, panel.valid, pu, cfg, raw_regime)
        else:
            sel = _warm_selection(history, panel, pu, cfg, raw_regime)
        p_up = sel.p_up_gated
        bx = bar_exits(sel, cl, atr, panel.valid)
    return BacktestInputs(
        tuple(panel.pairs),
        ts,
        _f64(panel.open, shape, "open"),
        _f64(hi, shape, "high"),
        _f64(lo, shape, "low"),
        _f64(cl, shape, "close"),
        _f64(panel.volume, shape, "volume"),
        np.ascontiguousarray(panel.valid, dtype=np.bool_),
        _f64(p_up, shape, "p_up"),
        _f64(exp_ret, shape, "exp_ret"),
        _f64(atr, shape, "atr"),
        _f64(spread, shape, "spread"),
        cluster,
        api,
        op,
        month_ids(ts),
        trd,
        np.ascontiguousarray(blk, dtype=np.bool_),
        sel,
        bx,
        history if sel is not None else None,
    )


def history_before(panel, lo: int, keep: int | None = None):
    """The bars of ``panel`` before row ``lo`` (a Panel; None when ``lo`` is 0): ``make_inputs``'
    ``history`` for inputs cut at ``lo``; ``keep``: only the last ``keep`` of them (the strategy
    layer's ``lookback_bars``: the kernels read each window directly, so the labels are the same)."""
    lo = int(lo)
    first = 0 if keep is None else max(lo - int(keep), 0)
    return panel.slice(int(panel.ts[first]), int(panel.ts[lo - 1])) if lo > first else None


def _warm_selection(history, panel, p_up, cfg, raw_regime):
    """``apply_strategy`` over ``history`` + ``panel`` (P(up) NaN on the history), cut to ``panel``'s rows."""
    from engine.strategy import apply_strategy

    k, (n, m) = int(history.close.shape[0]), panel.close.shape
    if tuple(history.pairs) != tuple(panel.pairs) or int(history.ts[-1]) + 3600 != int(panel.ts[0]):
        raise InputError("history: the bars right before the panel's first bar, for the same pairs")

    def cat(f):
        return np.concatenate([np.asarray(getattr(history, f)), np.asarray(getattr(panel, f))])

    pu = np.concatenate([np.full((k, m), np.nan), p_up])
    rr = raw_regime
    if rr is not None and np.shape(rr) == (n, m):
        rr = np.concatenate([np.full((k, m), -1, dtype=np.int8), np.asarray(rr, dtype=np.int8)])
    return apply_strategy(cat("high"), cat("close"), cat("volume"), cat("valid"), pu, cfg, rr).rows(slice(k, None))


@dataclass(frozen=True, eq=False)
class BacktestResult:
    pairs: tuple[str, ...]
    ts: np.ndarray
    metrics: np.ndarray  # one metrics_dt record, shape (1,)
    refusals: np.ndarray  # int64 (N_REASONS,)
    trades: np.ndarray  # trade_dt
    events: np.ndarray  # event_dt
    equity: np.ndarray  # equity_dt, one row per bar
    # the regime selector's rows (selection_dt, engine.strategy.selection_records: each (bar, pair)
    # whose P(up) passed the entry threshold) when [strategy] is enabled and records are kept; else None
    selection: np.ndarray | None = None

    def metrics_dict(self) -> dict:
        out = {k: _py(self.metrics[0][k]) for k in metrics_dt.names or ()}
        out["bars_in_state"] = {
            TradingState(i).name: int(self.metrics[0][f])
            for i, f in enumerate(
                ("bars_active", "bars_reducing_1", "bars_reducing_2", "bars_halted", "bars_kill_switch")
            )
        }
        out["refusals_by_reason"] = {
            Reason(i).name: int(c) for i, c in enumerate(self.refusals) if c and i in Reason._value2member_map_
        }
        return out

    def trades_frame(self) -> pd.DataFrame:
        t = self.trades
        pairs = np.asarray(self.pairs, dtype=object)
        return pd.DataFrame(
            {
                "ts": self.ts[t["bar"]],
                "pair": pairs[t["pair"]],
                "side": np.where(t["side"] > 0, "buy", "sell"),
                "quantity": t["qty"],
                "price": t["price"],
                "notional": t["notional"],
                "fee": t["fee"],
                "reason": [Reason(int(r)).name for r in t["reason"]],
                "fill": [("", "market_open", "limit", "market_close")[int(h)] for h in t["how"]],
                "pnl": t["pnl"],
                "cash_after": t["cash_after"],
                "exposure_after": t["exposure_after"],
            }
        )

    def equity_frame(self) -> pd.DataFrame:
        e = self.equity
        return pd.DataFrame(
            {
                "ts": self.ts[e["bar"]],
                "equity": e["equity"],
                "cash": e["cash"],
                "exposure": e["exposure"],
                "drawdown": e["drawdown"],
                "trading_state": [TradingState(int(s)).name for s in e["trading_state"]],
                "n_positions": e["n_positions"],
                "kill_reason": e["kill_reason"],
            }
        )

    def events_frame(self) -> pd.DataFrame:
        from engine.risk.enums import EventCode

        v = self.events
        pairs = np.asarray(("",) + tuple(self.pairs), dtype=object)
        df = pd.DataFrame(
            {
                "ts": self.ts[v["bar"]],
                "pair": pairs[v["pair"] + 1],
                "event": [EventCode(int(c)).name for c in v["code"]],
                "reason": [Reason(int(r)).name for r in v["reason"]],
                "value": v["value"],
            }
        )
        if self.selection is None:
            return df
        from engine.backtest.io import with_selection_events

        return with_selection_events(df, self)


def _py(x):
    """A numpy scalar as a Python value; a non-finite float (NaN, or a profit factor of inf when no
    trade lost) as None, so metrics.json stays strict JSON."""
    x = x.item() if hasattr(x, "item") else x
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _rules(inp: BacktestInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return instrument_arrays(inp.pairs)


KILL_PARAM_FIELDS = ("spread_max", "spread_anomaly_mult", "spread_min_obs", "spread_alpha", "vol_spike_mult")


def kill_triggers(inp: BacktestInputs, p) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(code, pair, value) of the data/spread/volatility kill-switch trigger of every bar of ``inp``
    under the kill-switch parameters of ``p`` (one ``params_dt`` record), memoised on ``inp``.

    The triggers depend on the bars and those five parameters only (never on the portfolio), so a
    second backtest of the same inputs with the same kill-switch parameters reuses them; the state
    machine still latches, refuses and resets on them bar by bar exactly as ``step_nb`` does
    (tests/test_backtest_speedpath.py)."""
    from engine.risk.nb import kill_triggers_nb

    key = tuple(p[f].item() for f in KILL_PARAM_FIELDS)
    hit = inp._kill_memo.get(key)
    if hit is None:
        n = inp.shape[0]
        code, pair, val = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64), np.empty(n)
        kill_triggers_nb(inp.open, inp.high, inp.low, inp.close, inp.valid, inp.atr, inp.spread, p, code, pair, val)
        if len(inp._kill_memo) >= 8:  # a sweep over kill parameters keeps memory flat
            inp._kill_memo.clear()
        hit = inp._kill_memo[key] = (code, pair, val)
    return hit


def entry_masks(inp: BacktestInputs, p) -> np.ndarray:
    """The entry masks of ``inp`` under ``p`` (one ``params_dt`` record):
    ``engine.backtest.nb.entry_masks_nb``, memoised on ``inp`` like :func:`kill_triggers` (a function
    of the bars, the signal, the entry threshold, the minimum edge and whether the sizing needs an
    ATR, never of the portfolio)."""
    from engine.backtest.nb import EM_N, entry_masks_nb, mask_words

    key = (p["p_up_entry"].item(), p["min_edge"].item(), int(p["sizing"]) == SIZING_FIXED_FRACTION)
    hit = inp._mask_memo.get(key)
    if hit is None:
        n, m = inp.shape
        hit = np.empty((n, EM_N, mask_words(m)), dtype=np.uint64)
        entry_masks_nb(inp.p_up, inp.exp_ret, inp.atr, inp.valid, inp.close, inp.tradable, p, hit)
        if len(inp._mask_memo) >= 8:  # a run over many entry parameters keeps memory flat
            inp._mask_memo.clear()
        inp._mask_memo[key] = hit
    return hit


def run_backtest(inp: BacktestInputs, params: np.ndarray, record: bool = True) -> BacktestResult:
    """One parameter set (a ``params_dt`` record array of shape (1,)), with full records."""
    from engine.backtest.nb import EM_N, simulate_core_nb

    if params.dtype != params_dt or params.shape != (1,):
        raise InputError("params must be a params_dt array of shape (1,)")
    n, m = inp.shape
    ordermin, costmin, lot, price, quote = _rules(inp)
    trades = np.zeros(n * m + 1 if record else 0, dtype=trade_dt)
    events = np.zeros(n * (2 * m + 6) + 1 if record else 0, dtype=event_dt)
    eqrows = np.zeros(n if record else 0, dtype=equity_dt)
    metrics = np.zeros(1, dtype=metrics_dt)
    refusals = np.zeros(N_REASONS, dtype=np.int64)
    cnt = np.zeros(N_CNT, dtype=np.int64)
    kcode, kpair, kval = kill_triggers(inp, params[0])
    # records on: the loop reads no entry masks
    em = np.zeros((0, EM_N, 1), dtype=np.uint64) if record else entry_masks(inp, params[0])
    simulate_core_nb(
        inp.open,
        inp.high,
        inp.low,
        inp.close,
        inp.volume,
        inp.valid,
        inp.p_up,
        inp.exp_ret,
        inp.bar_exits,
        inp.atr,
        inp.spread,
        inp.cluster,
        inp.tradable,
        inp.entry_block,
        inp.api_fault,
        inp.operator,
        inp.month_id,
        ordermin,
        costmin,
        lot,
        price,
        quote,
        params[0],
        record,
        trades,
        events,
        eqrows,
        metrics[0],
        refusals,
        cnt,
        True,
        kcode,
        kpair,
        kval,
        em,
    )
    if metrics[0]["records_overflow"]:
        raise RuntimeError("record buffers overflowed (bug: capacities are upper bounds)")
    sel = None
    if record and inp.strategy is not None:
        from engine.strategy import selection_records

        if inp.strategy.p_up.shape != inp.shape:  # e.g. inputs sliced without their selection
            raise InputError("the inputs' strategy selection is not on the inputs' bars")
        sel = selection_records(inp.strategy, float(params[0]["p_up_entry"]))
    return BacktestResult(
        inp.pairs, inp.ts, metrics, refusals, trades[: cnt[0]].copy(), events[: cnt[1]].copy(), eqrows, sel
    )


def _check_params_1d(params: np.ndarray) -> None:
    if params.dtype != params_dt or params.ndim != 1:
        raise InputError("params must be a 1-D params_dt array")


def run_sweep(
    inp: BacktestInputs,
    params: np.ndarray,
    p_up_sets: np.ndarray | None = None,
    exp_ret_sets: np.ndarray | None = None,
    sig_of_set: np.ndarray | None = None,
):
    """Many parameter sets in one parallel call; returns (metrics (S,), refusals (S, N_REASONS)).

    Signal sets: ``p_up_sets``/``exp_ret_sets`` of shape (K, n, m) and ``sig_of_set`` (S,) picking one
    per parameter set; by default every set reads ``inp.p_up``/``inp.exp_ret``.
    """
    from engine.backtest.nb import run_sets_nb

    _check_params_1d(params)
    S = params.shape[0]
    own_signal = p_up_sets is None
    if p_up_sets is None:
        p_up_sets = inp.p_up[None]
        exp_ret_sets = inp.exp_ret[None]
    elif inp.bar_exits is not None and inp.bar_exits.shape[0] != 0:
        raise InputError("signal sets cannot be swept with per-bar exits (they follow the inputs' own signal)")
    if sig_of_set is None:
        sig_of_set = np.zeros(S, dtype=np.int64)
    sig_of_set = np.ascontiguousarray(sig_of_set, dtype=np.int64)
    if sig_of_set.shape != (S,) or sig_of_set.min() < 0 or sig_of_set.max() >= p_up_sets.shape[0]:
        raise InputError("sig_of_set must map every parameter set to a signal set")
    ordermin, costmin, lot, price, quote = _rules(inp)
    metrics = np.zeros(S, dtype=metrics_dt)
    refusals = np.zeros((S, N_REASONS), dtype=np.int64)
    p_up_sets = np.ascontiguousarray(p_up_sets, dtype=np.float64)
    exp_ret_sets = np.ascontiguousarray(exp_ret_sets, dtype=np.float64)
    em_all, em_of_set = _sweep_entry_masks(inp, params, p_up_sets, exp_ret_sets, sig_of_set, own_signal)
    run_sets_nb(
        inp.open,
        inp.high,
        inp.low,
        inp.close,
        inp.volume,
        inp.valid,
        p_up_sets,
        exp_ret_sets,
        sig_of_set,
        inp.bar_exits,
        inp.atr,
        inp.spread,
        inp.cluster,
        inp.tradable,
        inp.entry_block,
        inp.api_fault,
        inp.operator,
        inp.month_id,
        ordermin,
        costmin,
        lot,
        price,
        quote,
        params,
        metrics,
        refusals,
        em_all,
        em_of_set,
    )
    return metrics, refusals


def _sweep_entry_masks(inp, params, p_up_sets, exp_ret_sets, sig_of_set, own_signal, budget_mb: float = 256.0):
    """(masks (G, n, EM_N, words), group of each set): the entry masks once per distinct signal set
    and entry parameters (``entry_masks``' key) of the sets of a sweep, memoised on ``inp`` for its own
    signal. Over ``budget_mb`` each set computes its own in the kernel (group -1; same results)."""
    from engine.backtest.nb import EM_N, entry_masks_nb, mask_words

    n, m = inp.shape
    S = params.shape[0]
    keys: dict[tuple, int] = {}
    group = np.empty(S, dtype=np.int64)
    for s in range(S):
        p = params[s]
        key = (
            int(sig_of_set[s]),
            p["p_up_entry"].item(),
            p["min_edge"].item(),
            int(p["sizing"]) == SIZING_FIXED_FRACTION,
        )
        group[s] = keys.setdefault(key, len(keys))
    words = mask_words(m)
    if len(keys) * n * EM_N * words * 8 > budget_mb * 2**20:
        return np.zeros((0, n, EM_N, words), dtype=np.uint64), np.full(S, -1, dtype=np.int64)
    em_all = np.empty((len(keys), n, EM_N, words), dtype=np.uint64)
    first = {g: s for s, g in reversed(list(enumerate(group.tolist())))}
    for g, s in first.items():
        k = int(sig_of_set[s])
        if own_signal:
            em_all[g] = entry_masks(inp, params[s])
        else:
            entry_masks_nb(
                p_up_sets[k], exp_ret_sets[k], inp.atr, inp.valid, inp.close, inp.tradable, params[s], em_all[g]
            )
    return em_all, group


def run_ma_sweep(inp: BacktestInputs, fasts, slows, scale: float, params: np.ndarray, table_budget_mb: float = 512.0):
    """The SMA-crossover signal sweep through the whole pipeline (``engine.backtest.nb.ma_sweep_nb``):
    set s reads the signal ``ma_signal(close, fasts[s], slows[s], scale)`` and ``params[s]``; returns
    (metrics (S,), refusals (S, N_REASONS)). Only ``inp``'s market data is read (not its signal).
    Each distinct window's SMA is computed once for all sets when the table (windows x bars x pairs
    float64) fits ``table_budget_mb``; otherwise each set computes its own (same results either way)."""
    import numba

    from engine.backtest.nb import ma_sweep_nb

    _check_params_1d(params)
    if inp.bar_exits is not None and inp.bar_exits.shape[0] != 0:
        raise InputError("the MA signal sweep cannot use per-bar exits (they follow the inputs' own signal)")
    S = params.shape[0]
    fasts = np.ascontiguousarray(fasts, dtype=np.int64)
    slows = np.ascontiguousarray(slows, dtype=np.int64)
    if fasts.shape != (S,) or slows.shape != (S,) or (S and (fasts.min() < 1 or slows.min() < 1)):
        raise InputError("fasts and slows must give one window >= 1 per parameter set")
    metrics = np.zeros(S, dtype=metrics_dt)
    refusals = np.zeros((S, N_REASONS), dtype=np.int64)
    # one SMA per distinct window, shared by every set, when the table fits the budget
    windows = np.unique(np.concatenate([fasts, slows]))
    if windows.size * inp.close.size * 8 > table_budget_mb * 2**20:
        windows = np.zeros(0, dtype=np.int64)
    fast_w = np.searchsorted(windows, fasts) if windows.size else np.zeros(S, dtype=np.int64)
    slow_w = np.searchsorted(windows, slows) if windows.size else np.zeros(S, dtype=np.int64)
    ma_sweep_nb(
        inp.open,
        inp.high,
        inp.low,
        inp.close,
        inp.volume,
        inp.valid,
        inp.atr,
        inp.spread,
        inp.cluster,
        inp.tradable,
        inp.entry_block,
        inp.api_fault,
        inp.operator,
        inp.month_id,
        *_rules(inp),
        fasts,
        slows,
        float(scale),
        params,
        metrics,
        refusals,
        numba.get_num_threads(),
        windows,
        fast_w,
        slow_w,
    )
    return metrics, refusals


assert len(TradingState) == N_STATES
