"""Regime-aware strategy layer: six strategy profiles and a selector per regime, shared by the
backtester and the daemon (docs/MODEL_ASSUMPTIONS.md, "Strategy profiles and the regime selector").

The layer works at the INPUT layer: :func:`apply_strategy` turns the meta-learner's P(up) into the
P(up) the unchanged risk step reads (parked below the entry threshold wherever no selected profile
has a candidate), so every capital rule still applies. ``engine.backtest.runner.make_inputs``
calls it when ``[strategy] enabled``; the daemon's cycle builds its inputs with ``make_inputs``,
so live and backtest share it. The exit parameters (stop and take-profit ATR multiples, size scale,
and capital preservation's stop floor) ride along per bar and pair (:func:`bar_exits`,
``BacktestInputs.bar_exits``) and the risk step applies them (R26 in docs/RISK_RULES.md): an entry's
order carries its profile's stop and take-profit multiples and its wanted notional is scaled by
the size scale (never above 1); a held position's stop is raised to the preservation floor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.strategy.enums import (
    N_PROFILES,
    N_REGIMES,
    PROFILE_NAMES,
    REGIME_NAMES,
    Profile,
    Regime,
    selection_dt,
    strategy_params_dt,
)

__all__ = [
    "PROFILE_NAMES",
    "REASON_CODES",
    "REGIME_NAMES",
    "STRATEGY_EVENT",
    "Profile",
    "Regime",
    "RegimeRule",
    "StrategySelection",
    "apply_strategy",
    "bar_exits",
    "params_from_config",
    "profile_candidates",
    "reason_code",
    "regime_labels",
    "regime_raw",
    "regime_rule",
    "regime_rule_of",
    "selection_records",
    "selector_tables",
]

_INT_FIELDS = (
    "trend_bars",
    "vol_bars",
    "hysteresis_bars",
    "hysteresis_lookback",
    "trend_mom_bars",
    "trend_sma_bars",
    "breakout_bars",
    "mr_bars",
    "vx_short_bars",
    "vx_long_bars",
)


def params_from_config(scfg, p_up_entry: float) -> np.ndarray:
    """One ``strategy_params_dt`` record (shape (1,)) from a StrategyConfig and the entry gate."""
    sp = np.zeros(1, dtype=strategy_params_dt)
    sp[0]["p_up_entry"] = float(p_up_entry)
    for name in strategy_params_dt.names or ():
        if name != "p_up_entry":
            v = getattr(scfg, name)
            sp[0][name] = int(v) if name in _INT_FIELDS else float(v)
    return sp


def selector_tables(scfg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(table_p (N_REGIMES + 1, 2) int64, table_w (.., 2) float64, exits (N_PROFILES, 3) float64)
    of a StrategyConfig for :func:`engine.strategy.nb.select_nb`."""
    tp = np.full((N_REGIMES + 1, 2), -1, dtype=np.int64)
    tw = np.zeros((N_REGIMES + 1, 2))
    for r, name in enumerate(REGIME_NAMES + ("unknown",)):
        for s, slot in enumerate(getattr(scfg.selector, name)):
            tp[r, s] = PROFILE_NAMES.index(slot.profile)
            tw[r, s] = float(slot.weight)
    ex = np.zeros((N_PROFILES, 3))
    for q, name in enumerate(PROFILE_NAMES):
        e = getattr(scfg.exits, name)
        ex[q] = (e.stop_atr_mult, e.take_profit_atr_mult, e.size_scale)
    return tp, tw, ex


def _arr(a, dtype) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=dtype)


@dataclass(frozen=True)
class RegimeRule:
    """The regime rule's windows and thresholds (``research.models.regime``'s module doc): the
    ``[strategy]`` values (:func:`regime_rule`) or a fitted RegimeClassifier's (:func:`regime_rule_of`)."""

    trend_bars: int
    vol_bars: int
    vol_hi: float
    strength_hi: float
    crash_ret: float
    crash_drawdown: float


def regime_rule(scfg) -> RegimeRule:
    """The rule of a StrategyConfig's fixed windows and thresholds (``regime_thresholds = "config"``)."""
    return RegimeRule(
        int(scfg.trend_bars),
        int(scfg.vol_bars),
        float(scfg.vol_hi),
        float(scfg.strength_hi),
        float(scfg.crash_ret),
        float(scfg.crash_drawdown),
    )


def regime_rule_of(classifier) -> RegimeRule:
    """The rule of a FITTED ``research.models.regime.RegimeClassifier`` (its windows, its fixed crash
    drawdown and the thresholds fitted on its training window); InputError when it is not fitted."""
    from engine.errors import InputError

    if classifier is None or not hasattr(classifier, "vol_hi_"):
        raise InputError("the regime classifier is missing or not fitted (no fitted regime thresholds)")
    return RegimeRule(
        int(classifier.trend_bars),
        int(classifier.vol_bars),
        float(classifier.vol_hi_),
        float(classifier.strength_hi_),
        float(classifier.crash_ret_),
        float(classifier.crash_drawdown),
    )


def regime_raw(close, valid, rule: RegimeRule) -> np.ndarray:
    """The rule's regime code per bar and pair before hysteresis, (n, m) int8 (-1 unknown); causal
    (row t reads rows <= t only)."""
    from engine.strategy.nb import regime_features_nb, regime_rule_nb

    c = _arr(close, np.float64)
    v = _arr(valid, np.bool_)
    tr, vo, dd, st = regime_features_nb(c, v, int(rule.trend_bars), int(rule.vol_bars))
    return regime_rule_nb(
        tr.ravel(),
        vo.ravel(),
        dd.ravel(),
        st.ravel(),
        float(rule.crash_ret),
        float(rule.crash_drawdown),
        float(rule.vol_hi),
        float(rule.strength_hi),
    ).reshape(c.shape)


def regime_labels(close, valid, sp: np.ndarray, raw: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(raw, label): the rule's regime code per bar and pair and the code after hysteresis, (n, m)
    int8 each (-1 unknown); causal. ``raw`` given (e.g. a fitted classifier's codes,
    ``regime_thresholds = "model"``): only the hysteresis runs, on it."""
    from engine.strategy.nb import hysteresis_nb

    p = sp[0]
    if raw is None:
        rule = RegimeRule(
            int(p["trend_bars"]),
            int(p["vol_bars"]),
            float(p["vol_hi"]),
            float(p["strength_hi"]),
            float(p["crash_ret"]),
            float(p["crash_drawdown"]),
        )
        raw = regime_raw(close, valid, rule)
    else:
        from engine.errors import InputError

        shape = np.shape(close)
        if np.shape(raw) != shape:
            raise InputError(f"raw_regime: shape {np.shape(raw)}, expected {shape}")
        raw = _arr(raw, np.int8)
        if ((raw < -1) | (raw >= N_REGIMES)).any():
            raise InputError(f"raw_regime: codes must be -1 .. {N_REGIMES - 1}")
    return raw, hysteresis_nb(raw, int(p["hysteresis_bars"]), int(p["hysteresis_lookback"]))


def profile_candidates(high, close, volume, valid, p_up, sp: np.ndarray) -> np.ndarray:
    """(N_PROFILES, n, m) bool: each profile's entry candidates, gated by P(up) >= the threshold."""
    from engine.strategy.nb import profile_candidates_nb

    return profile_candidates_nb(
        _arr(high, np.float64),
        _arr(close, np.float64),
        _arr(volume, np.float64),
        _arr(valid, np.bool_),
        _arr(p_up, np.float64),
        sp[0],
    )


@dataclass(frozen=True, eq=False)
class StrategySelection:
    """What the selector chose per bar and pair (all (n, m))."""

    regime: np.ndarray  # int8, after hysteresis (-1 unknown)
    profile: np.ndarray  # int8, the selected profile (Profile ids)
    candidate: np.ndarray  # bool: the selected profile has an entry candidate (P(up) gate included)
    p_up: np.ndarray  # float64: the meta-learner's P(up) before the gate
    p_up_gated: np.ndarray  # float64: what the risk step reads
    stop_atr_mult: np.ndarray
    take_profit_atr_mult: np.ndarray
    size_scale: np.ndarray

    def rows(self, sl: slice) -> StrategySelection:
        """The selection of bar rows ``sl`` (every field cut the same way, C-contiguous)."""
        import dataclasses

        return dataclasses.replace(
            self, **{f.name: np.ascontiguousarray(getattr(self, f.name)[sl]) for f in dataclasses.fields(self)}
        )


def apply_strategy(high, close, volume, valid, p_up, cfg, raw_regime=None) -> StrategySelection:
    """Regime, profiles and selector on the bars and the meta-learner's P(up), with the thresholds
    of ``cfg.risk`` (entry gate; the parked value is ``cfg.risk.p_up_exit``: below the entry
    threshold, not below the signal-exit one).

    ``raw_regime`` (n, m) int8: the regime codes before hysteresis from the fitted classifier
    (:func:`regime_raw` with :func:`regime_rule_of`); required when ``[strategy] regime_thresholds
    = "model"`` and refused when it is "config" (the rule then uses the ``[strategy]`` thresholds)."""
    from engine.errors import InputError
    from engine.strategy.nb import gate_p_up_nb, select_nb

    scfg = cfg.strategy
    model = scfg.regime_thresholds == "model"
    if model and raw_regime is None:
        raise InputError(
            '[strategy] regime_thresholds = "model" needs the fitted regime classifier\'s labels '
            "(raw_regime); they come from a walk-forward fold or an approved bundle"
        )
    if not model and raw_regime is not None:
        raise InputError('raw_regime given but [strategy] regime_thresholds is "config"')
    sp = params_from_config(scfg, cfg.risk.p_up_entry)
    pu = _arr(p_up, np.float64)
    _, label = regime_labels(close, valid, sp, raw_regime)
    cand = profile_candidates(high, close, volume, valid, pu, sp)
    tp, tw, ex = selector_tables(scfg)
    prof, ok, stop, take, size = select_nb(label, cand, tp, tw, ex)
    gated = gate_p_up_nb(pu, ok, float(cfg.risk.p_up_entry), float(cfg.risk.p_up_exit))
    return StrategySelection(label, prof, ok, pu, gated, stop, take, size)


def bar_exits(sel: StrategySelection, close, atr, valid) -> np.ndarray:
    """The risk step's per-bar exit parameters (n, m, BX_N) float64 (``engine.risk.enums.bar_exit_dt``
    fields) from a selection: the selected profile's stop and take-profit ATR multiples and size
    scale, and the stop floor ``close - stop_atr_mult x ATR`` where the selected profile is capital
    preservation (a held position's stop is raised to it, never lowered; R26), NaN elsewhere and
    where the bar is invalid, the ATR missing, the multiple 0 (no stop) or the floor not above 0 (a
    stop at or below 0 protects nothing; the live machine refuses such a floor)."""
    from engine.risk.enums import BX_FLOOR, BX_N, BX_SIZE, BX_STOP, BX_TP

    c = _arr(close, np.float64)
    a = _arr(atr, np.float64)
    n, m = c.shape
    out = np.empty((n, m, BX_N))
    out[:, :, BX_STOP] = sel.stop_atr_mult
    out[:, :, BX_TP] = sel.take_profit_atr_mult
    out[:, :, BX_SIZE] = sel.size_scale
    k = sel.stop_atr_mult
    with np.errstate(invalid="ignore"):
        floor = c - k * a
        keep = (sel.profile == Profile.PRESERVATION) & _arr(valid, np.bool_) & (k > 0.0) & (a > 0.0) & (floor > 0.0)
        out[:, :, BX_FLOOR] = np.where(keep, floor, np.nan)
    return out


def selection_records(sel: StrategySelection, p_up_entry: float, rows=None) -> np.ndarray:
    """``selection_dt`` rows of every (bar, pair) whose P(up) passed the entry threshold (where the
    selector's choice decides: candidate True lets the entry through to the risk step, False parks
    it), in (bar, pair) order; ``rows``: only these bar rows."""
    pu = sel.p_up
    hit = (pu >= p_up_entry) & ~np.isnan(pu)
    if rows is not None:
        keep = np.zeros(pu.shape[0], dtype=bool)
        keep[np.asarray(rows)] = True
        hit &= keep[:, None]
    t, j = np.nonzero(hit)
    out = np.zeros(t.shape[0], dtype=selection_dt)
    out["bar"], out["pair"] = t, j
    out["regime"] = sel.regime[t, j]
    out["profile"] = sel.profile[t, j]
    out["candidate"] = sel.candidate[t, j]
    out["p_up"] = pu[t, j]
    out["stop_atr_mult"] = sel.stop_atr_mult[t, j]
    out["take_profit_atr_mult"] = sel.take_profit_atr_mult[t, j]
    out["size_scale"] = sel.size_scale[t, j]
    return out


def reason_code(profile: int, candidate: bool) -> str:
    """The ledger's reason code of a selection row: ``strategy_<profile>_entry`` (the candidate goes
    on to the risk step) or ``strategy_<profile>_no_entry`` (parked)."""
    name = PROFILE_NAMES[profile] if 0 <= profile < N_PROFILES else "none"
    return f"strategy_{name}_{'entry' if candidate else 'no_entry'}"


#: every code :func:`reason_code` gives (each profile, and -1 "none", x entry / no_entry)
REASON_CODES: tuple[str, ...] = tuple(reason_code(q, c) for q in (*range(N_PROFILES), -1) for c in (True, False))
#: the event name of a selection row in a backtest's event log (engine.backtest.io, events.parquet)
STRATEGY_EVENT = "STRATEGY"
