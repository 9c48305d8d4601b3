"""Optuna parameter studies over sweeps (strategy and risk parameters) or walk-forward runs.

Spec
----
A ``[study]`` table in the config (or in a separate file, ``kq study --study FILE``)::

    [study]
    name = "ci-risk"                 # default: the config file's stem
    mode = "sweep"                   # "sweep": backtests over a fixed signal; "walkforward": a run per trial
    signal = "ma"                    # sweep mode: "ma" (SMA crossover of the close) or "walkforward"
                                     #   (the meta signals of ONE walk-forward of the base config)
    objectives = ["sharpe"]          # sharpe | calmar | dsr | dd_return | total_return | max_drawdown
    dd_penalty = 2.0                 # dd_return = total_return - dd_penalty x max_drawdown
    min_trades = 5                   # fewer closed trades over the study span: the trial is PRUNED
    n_folds = 4                      # sweep mode: the study span in contiguous blocks ("folds")
    pruning = true                   # prune a trial weak after a fold (MedianPruner); default:
                                     #   true in sweep mode, false in walk-forward mode
    holdout_start = "2024-04-01"     # the study never sees a bar at or after this (the hold-out)
    seed = 7                         # worker k's sampler: seed + k
    [study.space]
    "risk.p_up_entry" = { low = 0.5, high = 0.6 }
    "risk.max_positions" = { low = 1, high = 4, type = "int" }
    "execution.entry_order" = { choices = ["market", "limit_first"] }
    "signal.fast" = { low = 4, high = 24, type = "int" }      # sweep mode with signal = "ma"

Space keys are dotted config keys (applied with :meth:`research.pipeline.RunSpec.with_overrides`,
so a value the typed config refuses fails that trial with its one-line reason) or ``signal.*``
(``fast``, ``slow``, ``scale`` of the MA signal). Sweep mode accepts ``risk``, ``execution``,
``fees``, ``backtest``, ``strategy`` and ``signal`` keys (anything else changes the signal:
walk-forward mode). ``strategy.*`` keys (``[strategy] enabled = true`` required; the keys of
:data:`research.sweep.STRATEGY_KEYS`, ``strategy.selector.<regime>`` as choices of row strings such
as ``"trend:0.7,breakout:0.3"``) are tuned on the same cached signal: each fold's inputs are built
with the trial's config (:meth:`Evaluator.backtest`, ``make_inputs``), no model is retrained; with
the layer on ``risk.take_profit_atr_mult`` is refused (each bar's profile multiple replaces it, R26;
``risk.stop_atr_mult`` caps the profile stops and stays). Strategy trials count as configurations
tried like any other.

Objectives (per fold, then the mean over folds; ``dsr`` on the concatenated daily returns):
the backtester's annualised ``sharpe`` and ``calmar``, ``total_return``, ``max_drawdown``
(minimised), ``dd_return`` and ``dsr`` (deflated Sharpe ratio of the trial's daily returns with
n_trials = the trials requested and the variance of the finished trials' daily Sharpe ratios).
One objective: TPE (``sampler = "tpe"``); several: NSGA-II (return against drawdown).

Pruning
-------
With ``pruning = true`` and ONE objective, a trial reports a value after each fold but the last
(``trial.report(value, fold)``) and stops when Optuna's MedianPruner (``pruner_startup_trials``
complete trials first) finds it below the median of the other trials at that fold: state PRUNED,
user attribute ``pruned_reason = "weak after fold k"``. Sweep mode: the running mean of the
per-block objective values. Walk-forward mode: the objective of the meta strategy's backtest over
the test blocks of folds 0..k (the ``fold_oos`` event of :func:`research.walkforward.run_walkforward`;
after the last fold it is the trial's own value; ``dsr`` reports the Sharpe ratio); a pruned trial
trains no later fold, which is the time saved (``folds_run`` records the folds trained). Walk-forward
pruning is serial only: with ``[research.fanout]`` workers > 1 or a scheduler every fold is trained
before the first is scored, so ``pruning = true`` is refused there. A pruned trial is a
configuration tried: it counts in the DSR's number of trials like any other.

Storage and workers
-------------------
:func:`open_study` creates the study ONCE (creation races: a second creator loads it and waits
for the first to finish) and queues every requested trial as a WAITING "ticket" (a trial with no
fixed parameter: the sampler chooses them when it starts). A worker (:func:`run_worker`) pops a
ticket atomically (``SELECT ... FOR UPDATE`` on PostgreSQL), so N requested trials are exactly N
trials whatever the number of workers and machines; it stops when no ticket is WAITING and no
trial is RUNNING. Each worker has its own seeded sampler (seed + worker index), a heartbeat
(RDB storages) and the stale-trial rule: a RUNNING trial whose heartbeat is older than the grace
period (or, on any storage, whose worker process on this host is gone) is marked FAIL and queued
again once with the same parameters (``max_retry``; the retry carries ``failed_trial``). A trial
that raises is recorded FAIL with its error (``catch``) and never stops the study. A study killed
midway continues where it stopped: its remaining tickets are still queued.

Storage URLs: ``sqlite:///path`` (one process), ``journal:PATH`` or ``PATH.journal`` (Optuna's
journal file: several local processes), ``postgresql://...`` (any number of machines; a small
pool per worker with ``pool_pre_ping``). Default: ``data/optuna/studies.db`` (sqlite) with one
worker, ``data/optuna/<name>.journal`` with several.

Report (:func:`write_report`): ``trials.parquet``, ``study.json``, ``report.html`` (+ a copy of
``plotly.min.js`` beside it). Every configuration tried (COMPLETE, PRUNED and FAIL; a retried
stale trial counts once) is counted and fed into the deflated Sharpe ratio and the probability
of backtest overfitting (CSCV over the complete trials' daily returns) of the best trial, which is
then re-run on the hold-out span; both figures are reported side by side.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import read_toml
from engine.errors import ConfigError, InputError, one_line
from engine.timeutil import HOUR, parse_utc
from research.pipeline import DataSelection, RunSpec, spec_from_dict
from research.sweep import config_overrides

__all__ = [
    "OBJECTIVES",
    "Evaluator",
    "StudySpec",
    "count_configurations",
    "load_study_spec",
    "make_storage",
    "open_study",
    "overfitting_figures",
    "run_worker",
    "write_report",
]

OBJECTIVES = {
    "sharpe": "maximize",
    "calmar": "maximize",
    "dsr": "maximize",
    "dd_return": "maximize",
    "total_return": "maximize",
    "max_drawdown": "minimize",
}
SWEEP_PREFIXES = ("risk.", "execution.", "fees.", "backtest.", "signal.", "strategy.")
SIGNAL_KEYS = ("fast", "slow", "scale")
STUDY_KEYS = {
    "name",
    "mode",
    "signal",
    "objectives",
    "dd_penalty",
    "min_trades",
    "n_folds",
    "pruning",
    "pruner_startup_trials",
    "holdout_start",
    "holdout_end",
    "seed",
    "sampler",
    "population_size",
    "heartbeat_interval",
    "grace_period",
    "max_retry",
    "space",
}
DAY = 86400


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "float" | "int" | "cat"
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        if self.kind == "cat":
            return trial.suggest_categorical(self.name, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def sample_value(self) -> Any:
        return self.choices[0] if self.kind == "cat" else self.low

    def to_json(self) -> dict:
        d: dict[str, Any] = {"type": self.kind}
        if self.kind == "cat":
            d["choices"] = list(self.choices)
        else:
            d |= {"low": self.low, "high": self.high, "step": self.step, "log": self.log}
        return d


@dataclass(frozen=True, eq=False)
class StudySpec:
    name: str
    base: RunSpec
    space: tuple[Param, ...]
    objectives: tuple[str, ...] = ("sharpe",)
    mode: str = "sweep"
    signal: str = "ma"
    dd_penalty: float = 2.0
    min_trades: int = 5
    n_folds: int = 4
    pruning: bool = True
    pruner_startup_trials: int = 5
    start: int = 0  # first bar of the study span (unix seconds)
    holdout_start: int = 0  # first bar of the hold-out span
    holdout_end: int = 0  # last bar of the hold-out span
    seed: int = 0
    sampler: str = "tpe"
    population_size: int | None = None
    heartbeat_interval: int = 30
    grace_period: int = 120
    max_retry: int = 1
    table: dict = field(default_factory=dict, repr=False)  # the [study] table as given

    @property
    def directions(self) -> list[Any]:
        return [OBJECTIVES[o] for o in self.objectives]

    @property
    def study_end(self) -> int:
        """Last bar the study may read (the hour before the hold-out)."""
        return self.holdout_start - HOUR

    def fingerprint(self) -> str:
        """What every worker of one study must agree on: the config (hash), the study table, the span."""
        doc = {
            "config_sha256": self.base.config.content_hash(),
            "research": self.base.research.model_dump(mode="json"),
            "study": _jsonable(self.table),
            "data": [self.base.data.venue, self.base.data.pairs],
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _jsonable(v: Any) -> Any:
    return json.loads(json.dumps(v, sort_keys=True, default=str))


def _param(key: str, v: Any) -> Param:
    where = f"study.space.{key}"
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: must be a table such as {{ low = 1, high = 4 }} or {{ choices = [...] }}")
    unknown = set(v) - {"low", "high", "step", "log", "type", "choices"}
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    if "choices" in v:
        ch = v["choices"]
        if not isinstance(ch, list) or not ch or any(isinstance(c, (dict, list)) for c in ch):
            raise ConfigError(f"{where}.choices: a non-empty list of plain values")
        return Param(key, "cat", choices=tuple(ch))
    if "low" not in v or "high" not in v:
        raise ConfigError(f"{where}: needs low and high (or choices)")
    lo, hi = v["low"], v["high"]
    whole = all(isinstance(x, int) and not isinstance(x, bool) for x in (lo, hi, v.get("step", 1)))
    kind = v.get("type") or ("int" if whole else "float")
    if kind not in ("int", "float"):
        raise ConfigError(f"{where}.type: 'int' or 'float', got {kind!r}")
    for nm, x in (("low", lo), ("high", hi), ("step", v.get("step"))):
        if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x)):
            raise ConfigError(f"{where}.{nm}: must be a finite number")
    if not lo < hi:
        raise ConfigError(f"{where}: low ({lo}) must be below high ({hi})")
    step = v.get("step")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}.step: must be > 0")
    log = bool(v.get("log", False))
    if log and (lo <= 0 or step is not None):
        raise ConfigError(f"{where}: log ranges need low > 0 and no step")
    if kind == "int" and (int(lo) != lo or int(hi) != hi):
        raise ConfigError(f"{where}: an int range needs whole low and high")
    return Param(key, kind, lo, hi, step, log)


def _check_strategy_space(base: RunSpec, keys: Mapping[str, Any]) -> None:
    """``strategy.*`` space keys need ``[strategy] enabled = true`` (with the layer off they change
    nothing); with it on, ``risk.take_profit_atr_mult`` is refused (each bar's profile multiple
    replaces it for entries, R26: a trial varying it would be a configuration tried in vain, yet
    counted in the deflated Sharpe ratio)."""
    from research.sweep import STRATEGY_EXIT_KEYS

    strat = [k for k in keys if k.startswith("strategy.")]
    on = base.config.strategy.enabled
    if strat and not on:
        raise ConfigError(
            f"study.space.{strat[0]}: strategy keys need [strategy] enabled = true in the config "
            "(with the layer off they change nothing)"
        )
    exits = [k for k in STRATEGY_EXIT_KEYS if k in keys]
    if exits and on:
        raise ConfigError(
            f"study.space.{exits[0]}: not tunable with [strategy] enabled (each bar's profile take-profit "
            "multiple replaces it, R26); use strategy.exits.<profile>.take_profit_atr_mult"
        )


def _int(t: dict, key: str, default: int, lo: int, hi: int) -> int:
    v = t.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(f"study.{key}: an integer in [{lo}, {hi}], got {v!r}")
    return v


def load_study_spec(
    config: str | Path,
    study_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    data: DataSelection | None = None,
) -> StudySpec:
    """The :class:`StudySpec` of ``config`` (its ``[study]`` table, or ``study_file``'s)."""
    raw = dict(read_toml(Path(config)))
    table = raw.pop("study", None)
    if study_file is not None:
        doc = read_toml(Path(study_file))
        table = doc.get("study", doc)
    if not isinstance(table, dict):
        raise ConfigError(f"{config}: no [study] table (add one or pass --study FILE)")
    base = spec_from_dict(raw, str(config), overrides, data)
    unknown = set(table) - STUDY_KEYS
    if unknown:
        raise ConfigError(f"study.{sorted(unknown)[0]}: unknown key")
    mode = table.get("mode", "sweep")
    if mode not in ("sweep", "walkforward"):
        raise ConfigError(f"study.mode: 'sweep' or 'walkforward', got {mode!r}")
    signal = table.get("signal", "ma")
    if signal not in ("ma", "walkforward"):
        raise ConfigError(f"study.signal: 'ma' or 'walkforward', got {signal!r}")
    objs = table.get("objectives", ["sharpe"])
    if isinstance(objs, str):
        objs = [objs]
    if not isinstance(objs, list) or not objs or any(o not in OBJECTIVES for o in objs) or len(set(objs)) != len(objs):
        raise ConfigError(f"study.objectives: distinct names from {sorted(OBJECTIVES)}, got {objs!r}")
    space_t = table.get("space")
    if not isinstance(space_t, dict) or not space_t:
        raise ConfigError("study.space: a table of at least one parameter range")
    space = tuple(_param(k, v) for k, v in space_t.items())
    cfg_keys = {}
    for p in space:
        if p.name.startswith("signal."):
            if mode != "sweep" or signal != "ma" or p.name[7:] not in SIGNAL_KEYS:
                raise ConfigError(
                    f"study.space.{p.name}: signal keys are signal.fast/slow/scale of the MA signal (sweep mode)"
                )
            continue
        if mode == "sweep" and not p.name.startswith(SWEEP_PREFIXES):
            raise ConfigError(
                f"study.space.{p.name}: sweep mode varies risk/execution/fees/backtest/strategy/signal keys "
                'only (use mode = "walkforward" for model and feature parameters)'
            )
        cfg_keys[p.name] = p.sample_value()
    sc = base.config.strategy
    if mode == "sweep" and sc.enabled and sc.regime_thresholds == "model":
        raise ConfigError(
            'study.mode: [strategy] regime_thresholds = "model" needs the folds\' fitted regime rules, which a '
            'sweep over a stored signal has none of; use mode = "walkforward" or regime_thresholds = "config"'
        )
    _check_strategy_space(base, cfg_keys)
    try:
        base.with_overrides(config_overrides(cfg_keys))  # unknown keys and wrong types fail now, not in every trial
    except ConfigError as e:
        raise ConfigError(f"study.space: {e}") from None
    rc = base.research
    t0 = parse_utc(base.data.start if base.data.start is not None else rc.start)
    t1 = parse_utc(base.data.end if base.data.end is not None else rc.end, end=True)
    if t0 is None or t1 is None:
        raise ConfigError("a study needs research.start and research.end (the study span plus the hold-out)")
    hs = table.get("holdout_start")
    if hs is None:
        raise ConfigError("study.holdout_start: required (the study never sees a bar from it on)")
    try:
        h0 = parse_utc(hs)
        h1 = parse_utc(table["holdout_end"], end=True) if table.get("holdout_end") is not None else t1
    except (InputError, ValueError) as e:
        raise ConfigError(f"study.holdout_start/holdout_end: {e}") from None
    assert h0 is not None and h1 is not None
    t0 += (-t0) % HOUR
    h0 += (-h0) % HOUR
    if not t0 + 48 * HOUR <= h0 < h1:
        raise ConfigError(
            f"study.holdout_start: must fall at least 48 h after the start and before the end "
            f"({parse_ts(t0)} .. {parse_ts(t1)})"
        )
    pruning = table.get("pruning", mode == "sweep")
    if not isinstance(pruning, bool):
        raise ConfigError(f"study.pruning: true or false, got {pruning!r}")
    fo = base.research.fanout
    fanout = fo.workers > 1 or fo.scheduler is not None or any(p.name.startswith("research.fanout.") for p in space)
    if pruning and mode == "walkforward" and fanout:
        raise ConfigError(
            "study.pruning: walk-forward fold pruning trains folds one by one; "
            "set pruning = false or [research.fanout] workers = 1 without a scheduler"
        )
    layout = [p.name for p in space if p.name.startswith("research.folds.")]
    if pruning and mode == "walkforward" and layout:
        # fold k must cover the same hours in every trial, or the pruner compares unlike spans
        raise ConfigError(
            f"study.pruning: {', '.join(layout)} change the fold layout, so fold k differs between trials; "
            "set pruning = false to search them"
        )
    n_folds = _int(table, "n_folds", 4 if mode == "sweep" else 1, 1, 64)
    if mode != "sweep" and n_folds != 1:
        raise ConfigError("study.n_folds: walk-forward mode uses the walk-forward's own folds (leave it out)")
    sampler = table.get("sampler", "tpe" if len(objs) == 1 else "nsga2")
    if sampler not in ("tpe", "nsga2", "random"):
        raise ConfigError(f"study.sampler: 'tpe', 'nsga2' or 'random', got {sampler!r}")
    dd_pen = table.get("dd_penalty", 2.0)
    if isinstance(dd_pen, bool) or not isinstance(dd_pen, (int, float)) or not 0 <= dd_pen <= 100:
        raise ConfigError(f"study.dd_penalty: a number in [0, 100], got {dd_pen!r}")
    pop = table.get("population_size")
    if pop is not None:
        pop = _int(table, "population_size", 0, 2, 10000)
    name = table.get("name") or Path(config).stem
    if not isinstance(name, str) or not 1 <= len(name) <= 120:
        raise ConfigError("study.name: a string of 1 to 120 characters")
    hb = _int(table, "heartbeat_interval", 30, 1, 3600)
    return StudySpec(
        name=name,
        base=base,
        space=space,
        objectives=tuple(objs),
        mode=mode,
        signal=signal,
        dd_penalty=float(dd_pen),
        min_trades=_int(table, "min_trades", 5, 0, 10**9),
        n_folds=n_folds,
        pruning=pruning,
        pruner_startup_trials=_int(table, "pruner_startup_trials", 5, 0, 10**6),
        start=int(t0),
        holdout_start=int(h0),
        holdout_end=int(h1),
        seed=_int(table, "seed", int(base.config.seed), 0, 2**31 - 1),
        sampler=sampler,
        population_size=pop,
        heartbeat_interval=hb,
        grace_period=_int(table, "grace_period", max(120, 2 * hb), hb + 1, 86400),
        max_retry=_int(table, "max_retry", 1, 0, 100),
        table=dict(table),
    )


def parse_ts(ts: int) -> str:
    import datetime as _dt

    return _dt.datetime.fromtimestamp(int(ts), _dt.UTC).strftime("%Y-%m-%d %H:%M")


# ------------------------------------------------------------------------------------------------
# evaluation


def daily_returns(ts: np.ndarray, equity: np.ndarray, init: float) -> np.ndarray:
    """Returns of the equity at each UTC day's last bar (the first against ``init``)."""
    day = np.asarray(ts, dtype=np.int64) // DAY
    last = np.r_[day[1:] != day[:-1], True]
    e = np.r_[float(init), np.asarray(equity, dtype=np.float64)[last]]
    return np.diff(e) / e[:-1]


def _sharpe(r: np.ndarray) -> float:
    from research.stats import sharpe_ratio

    try:
        return float(sharpe_ratio(r))
    except InputError:
        return 0.0


class Evaluator:
    """One worker's evaluation context: the bars (warm-up to the hold-out's end), the causal ATR,
    spread and cluster arrays and the base signal, built once; :meth:`backtest` runs one
    parameter set over ``[lo, hi)`` (bar indices). Sweep mode only; walk-forward mode runs
    :func:`research.pipeline.run` per trial."""

    def __init__(self, ss: StudySpec, signals_path: str | Path | None = None) -> None:
        from engine.backtest.runner import default_atr, default_clusters, default_spread
        from engine.store.market import MarketStore

        self.ss = ss
        spec = ss.base
        cfg, rc = spec.config, spec.research
        v = spec.data.venue or cfg.data.venue
        names = list(spec.data.pairs) if spec.data.pairs is not None else (list(rc.pairs) if rc.pairs else None)
        with MarketStore(spec.data.store or cfg.data.store, read_only=True) as s:
            if names is None:
                names = [i.pair for i in s.list_pairs(v)]
                if not names:
                    raise InputError(f"no pairs stored for venue {v!r}")
            panel = s.load_panel(names, v, ss.start - rc.warmup_bars * HOUR, ss.holdout_end)
        self.panel = panel
        ts = panel.ts
        self.i0 = int(np.searchsorted(ts, ss.start))
        self.i1 = int(np.searchsorted(ts, ss.holdout_start))
        self.i2 = int(np.searchsorted(ts, ss.holdout_end, side="right"))
        if self.i1 - self.i0 < 48 * ss.n_folds or self.i2 - self.i1 < 48:
            raise InputError(
                f"too few bars: {self.i1 - self.i0} in the study span, {self.i2 - self.i1} in the hold-out "
                f"(need 48 per fold and 48 in the hold-out)"
            )
        self.atr = default_atr(panel.high, panel.low, panel.close, cfg.features.atr_window)
        self.spread = np.asarray(
            default_spread(panel.high, panel.low, panel.close, panel.valid, cfg.backtest.spread_window)
        )
        self.cluster = default_clusters(panel.ts, panel.close, panel.valid, cfg.features)
        self.blocks = [(int(b[0]), int(b[-1]) + 1) for b in np.array_split(np.arange(self.i0, self.i1), ss.n_folds)]
        self.base_sig: tuple[np.ndarray, np.ndarray] | None = None
        if ss.signal == "walkforward":
            import pandas as pd

            from engine.backtest.io import signals_to_arrays

            if signals_path is None:
                raise InputError("walk-forward signals missing (prepare_signals first)")
            self.base_sig = signals_to_arrays(pd.read_parquet(signals_path), panel.ts, panel.pairs)
        # compile (or load) the backtest kernels now, so no trial's time includes the JIT
        self.backtest(cfg, self.signal({}), self.i0, self.i0 + 48)

    def signal(self, sig: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        if self.base_sig is not None:
            return self.base_sig
        from engine.backtest.demo import ma_signal

        fast, slow = int(sig.get("fast", 12)), int(sig.get("slow", 48))
        if fast >= slow:
            raise InputError(f"signal.fast ({fast}) must be below signal.slow ({slow})")
        return ma_signal(self.panel.close, fast, slow, float(sig.get("scale", 50.0)))

    def backtest(self, cfg, sigarr: tuple[np.ndarray, np.ndarray], lo: int, hi: int):
        from engine.backtest.runner import history_before, make_inputs, run_backtest
        from engine.risk.params import params_from_config

        sub = self.panel.slice(int(self.panel.ts[lo]), int(self.panel.ts[hi - 1]))
        p_up, er = sigarr
        inp = make_inputs(
            sub,
            p_up[lo:hi],
            er[lo:hi],
            cfg,
            atr=self.atr[lo:hi],
            spread=self.spread[lo:hi],
            cluster=self.cluster[lo:hi],
            history=history_before(self.panel, lo, cfg.strategy.lookback_bars),  # warm, as ATR is
        )
        return run_backtest(inp, params_from_config(cfg))


def _objective_values(ss: StudySpec, m: dict, objs: tuple[str, ...]) -> list[float]:
    out = []
    for o in objs:
        if o == "dd_return":
            tr, dd = m.get("total_return"), m.get("max_drawdown")
            v = None if tr is None or dd is None else tr - ss.dd_penalty * abs(dd)
        elif o == "max_drawdown":
            v = None if m.get("max_drawdown") is None else abs(m["max_drawdown"])
        elif o == "dsr":
            v = m.get("sharpe")  # per fold (pruning); the trial's value is the DSR of all folds
        else:
            v = m.get(o)
        out.append(float("nan") if v is None else float(v))
    return out


def weak_after_fold(trial, value: float, k: int) -> bool:
    """Report ``value`` after fold ``k`` and ask the pruner; a value that is not defined yet (no
    trade so far: NaN) is neither reported nor judged, since Optuna's MedianPruner prunes a NaN
    report unconditionally and would discard a configuration that trades late as "weak"."""
    if not math.isfinite(value):
        return False
    trial.report(value, k)
    return bool(trial.should_prune())


def _trial_sharpes(trials) -> list[float]:
    """The daily Sharpe ratios the deflated Sharpe ratio's variance reads: every complete AND pruned
    trial's (a pruned trial's over the folds it ran), so pruning the weak tail does not shrink the
    variance and inflate the DSR of the best."""
    out = []
    for t in trials:
        x = t.user_attrs.get("daily_sharpe")
        if x is not None and math.isfinite(float(x)):
            out.append(float(x))
    return out


def _dsr_value(study, ss: StudySpec, r: np.ndarray, n_requested: int) -> float:
    """DSR of ``r`` against the expected best of ``n_requested`` trials with the variance of the
    daily Sharpe ratios of the trials finished so far (0 before two)."""
    from optuna.trial import TrialState

    from research.stats import deflated_sharpe_ratio

    srs = _trial_sharpes(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    var = float(np.var(srs, ddof=1)) if len(srs) > 1 else 0.0
    try:
        return float(deflated_sharpe_ratio(r, n_trials=max(1, n_requested), sr_variance=var).dsr)
    except InputError:
        return float("nan")


def sweep_objective(ss: StudySpec, ev: Evaluator, study, trial, n_requested: int) -> list[float]:
    """One sweep-mode trial: the parameters, the folds (pruned when weak), the min-trades rule."""
    import optuna

    params = {p.name: p.suggest(trial) for p in ss.space}
    cfg_over = config_overrides({k: v for k, v in params.items() if not k.startswith("signal.")})
    sig = {k[7:]: v for k, v in params.items() if k.startswith("signal.")}
    spec = ss.base.with_overrides(cfg_over) if cfg_over else ss.base
    sigarr = ev.signal(sig)
    per_fold: list[list[float]] = []
    rets: list[np.ndarray] = []
    n_trades = 0
    init = float(spec.config.backtest.init_cash)
    prune_on = ss.pruning and len(ss.objectives) == 1
    for k, (lo, hi) in enumerate(ev.blocks):
        res = ev.backtest(spec.config, sigarr, lo, hi)
        m = res.metrics_dict()
        n_trades += int(m["n_trades"])
        rets.append(daily_returns(res.ts, res.equity["equity"], init))
        per_fold.append(_objective_values(ss, m, ss.objectives))
        if prune_on and k < len(ev.blocks) - 1:
            vals = [f[0] for f in per_fold if math.isfinite(f[0])]
            if weak_after_fold(trial, float(np.mean(vals)) if vals else float("nan"), k):
                trial.set_user_attr("pruned_reason", f"weak after fold {k}")
                trial.set_user_attr("n_trades", n_trades)
                trial.set_user_attr("daily_sharpe", _sharpe(np.concatenate(rets)))  # its spread counts
                raise optuna.TrialPruned()
    r = np.concatenate(rets)
    trial.set_user_attr("n_trades", n_trades)
    trial.set_user_attr("daily_sharpe", _sharpe(r))
    trial.set_user_attr("daily_returns", [float(x) for x in r])
    trial.set_user_attr("fold_values", per_fold)
    if n_trades < ss.min_trades:
        trial.set_user_attr("pruned_reason", f"min_trades: {n_trades} < {ss.min_trades}")
        raise optuna.TrialPruned()
    out = []
    for j, o in enumerate(ss.objectives):
        if o == "dsr":
            out.append(_dsr_value(study, ss, r, n_requested))
        else:
            vals = [f[j] for f in per_fold]
            if not all(math.isfinite(v) for v in vals):
                raise InputError(f"objective {o} is undefined on a fold (values {vals})")
            out.append(float(np.mean(vals)))
    return out


def walkforward_objective(ss: StudySpec, study, trial, n_requested: int) -> list[float]:
    """One walk-forward-mode trial: a walk-forward over the study span (never the hold-out), its
    folds run one by one; with pruning, after each fold but the last the objective of the
    out-of-sample backtest so far is reported and a weak trial stops there (no later fold trained)."""
    import optuna

    from research.pipeline import run

    params = {p.name: p.suggest(trial) for p in ss.space}
    spec = ss.base.with_overrides(config_overrides(params)).with_data(start=ss.start, end=ss.study_end)
    prune_on = ss.pruning and len(ss.objectives) == 1
    done: list[int] = []  # folds back (trained and predicted), in order

    def on_event(event: str, **kw: Any) -> None:
        if event != "fold_oos":
            return
        k = int(kw["fold"])
        done.append(k)
        trial.set_user_attr("folds_run", len(done))
        if not prune_on or k >= int(kw["n_folds"]) - 1:
            return
        bt = kw["backtest"]()
        m = bt.metrics_dict()
        if weak_after_fold(trial, _objective_values(ss, m, ss.objectives)[0], k):
            trial.set_user_attr("pruned_reason", f"weak after fold {k}")
            trial.set_user_attr("n_trades", int(m["n_trades"]))
            init0 = float(spec.config.backtest.init_cash)
            trial.set_user_attr("daily_sharpe", _sharpe(daily_returns(bt.ts, bt.equity["equity"], init0)))
            raise optuna.TrialPruned()

    o = run(spec, None, track=False, progress=on_event)
    bt = o.result.backtest
    m = bt.metrics_dict()
    init = float(spec.config.backtest.init_cash)
    r = daily_returns(bt.ts, bt.equity["equity"], init)
    trial.set_user_attr("n_trades", int(m["n_trades"]))
    trial.set_user_attr("summary", _clean(_strategy_summary(m)))
    trial.set_user_attr("daily_sharpe", _sharpe(r))
    trial.set_user_attr("daily_returns", [float(x) for x in r])
    if int(m["n_trades"]) < ss.min_trades:
        trial.set_user_attr("pruned_reason", f"min_trades: {m['n_trades']} < {ss.min_trades}")
        raise optuna.TrialPruned()
    vals = _objective_values(ss, m, ss.objectives)
    out = []
    for o_name, v in zip(ss.objectives, vals, strict=True):
        out.append(_dsr_value(study, ss, r, n_requested) if o_name == "dsr" else v)
    if not all(math.isfinite(v) for v in out):
        raise InputError(f"an objective is undefined ({dict(zip(ss.objectives, out, strict=True))})")
    return out


def prepare_signals(ss: StudySpec, path: str | Path) -> Path | None:
    """Sweep mode with ``signal = "walkforward"``: ONE walk-forward of the base config over the study
    span and the hold-out (every prediction out of sample), its meta signals written to ``path``."""
    if ss.mode != "sweep" or ss.signal != "walkforward":
        return None
    from research.pipeline import run

    o = run(ss.base.with_data(start=ss.start, end=ss.holdout_end), None, track=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    o.result.signals.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------------
# storage, creation, workers


def default_storage(name: str, workers: int) -> str:
    from engine.paths import default_store_path

    d = default_store_path().expanduser().resolve().parent / "optuna"
    if workers > 1:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return f"journal:{d / (safe + '.journal')}"
    return f"sqlite:///{d / 'studies.db'}"


def make_storage(url: str, ss: StudySpec | None = None, *, heartbeat: bool = True):
    """An Optuna storage for ``url`` (see the module doc) with the heartbeat and stale-trial retry."""
    import optuna
    from optuna.storages import RDBStorage

    if url.startswith("journal:") or url.endswith(".journal"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        p = Path(url[len("journal:") :] if url.startswith("journal:") else url).expanduser()
        p.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(p)))
    kw: dict[str, Any] = {}
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("postgresql"):
        # PostgreSQL drops idle connections: test each on checkout, recycle, keep the pool small
        kw = {
            "pool_pre_ping": True,
            "pool_size": 2,
            "max_overflow": 2,
            "pool_recycle": 300,
            "connect_args": {"connect_timeout": 10},
        }
    elif url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kw = {"connect_args": {"timeout": 60}}
    elif "://" not in url:
        raise InputError(f"--storage {url!r}: expected sqlite:///PATH, journal:PATH or postgresql://...")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        hb: dict[str, Any] = {}
        if heartbeat and ss is not None:
            hb = {
                "heartbeat_interval": ss.heartbeat_interval,
                "grace_period": ss.grace_period,
                "heartbeat_stale_trial_callback": _Retry(ss.max_retry),
            }
        try:
            return RDBStorage(url, engine_kwargs=kw, **hb)
        except Exception as e:  # unreachable server, bad URL
            raise InputError(f"study storage {_redact(url)}: {type(e).__name__}: {one_line(str(e))[:300]}") from None


class _Retry:
    """Queue a stale (failed) trial again with the same parameters, up to ``max_retry`` times; the
    copy carries ``failed_trial`` (the ORIGINAL trial's number) and ``retry_history`` like Optuna's
    RetryHeartbeatStaleTrialCallback, but none of the dead trial's user attributes (its error,
    worker and MLflow run belong to the dead attempt)."""

    def __init__(self, max_retry: int) -> None:
        self.max_retry = max_retry

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState, create_trial

        sa = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
        sa["retry_history"] = [*sa["retry_history"], trial.number]
        if len(sa["retry_history"]) > self.max_retry:
            return
        sa["fixed_params"] = dict(trial.params)
        study.add_trial(
            create_trial(
                state=TrialState.WAITING, params=trial.params, distributions=trial.distributions, system_attrs=sa
            )
        )


def _redact(url: str) -> str:
    from research.tracking import redact_uri

    return redact_uri(url)


def _quiet_optuna() -> None:
    import logging
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*Heartbeat of storage.*")


def open_study(ss: StudySpec, storage, n_trials: int, name: str | None = None, wait_s: float = 120.0):
    """Create the study ONCE with ``n_trials`` queued tickets, or load it (checking it is the same
    study: same config, space and span) and queue more tickets if ``n_trials`` grew. Returns the
    study. A concurrent creator is waited for (``kq_n_trials`` is set after the tickets)."""
    import optuna

    _quiet_optuna()
    name = name or ss.name
    if n_trials < 1:
        raise InputError("--trials must be >= 1")
    fp = ss.fingerprint()
    try:
        study = optuna.create_study(study_name=name, storage=storage, directions=ss.directions)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        created = False
    if created:
        study.set_user_attr("kq_fingerprint", fp)
        study.set_user_attr("kq_objectives", list(ss.objectives))
        study.set_user_attr("kq_spec", _jsonable(ss.table))
        _enqueue(study, n_trials)
        study.set_user_attr("kq_n_trials", n_trials)
        return study
    t_end = time.monotonic() + wait_s
    while "kq_n_trials" not in study.user_attrs:  # the creator is still queueing tickets
        if time.monotonic() > t_end:
            raise InputError(f"study {name!r} exists but was never completed by its creator (delete it)")
        time.sleep(0.5)
    if study.user_attrs.get("kq_fingerprint") != fp:
        raise InputError(
            f"study {name!r} in this storage was made from another config, space or span; "
            "use another --study-name (or the same config)"
        )
    n0 = int(study.user_attrs["kq_n_trials"])
    if n_trials < n0:
        raise InputError(f"study {name!r} already asks for {n0} trials; --trials {n_trials} cannot shrink it")
    if n_trials > n0:
        _enqueue(study, n_trials - n0)
        study.set_user_attr("kq_n_trials", n_trials)
    return study


def _enqueue(study, n: int) -> None:
    from optuna.trial import TrialState, create_trial

    for _ in range(n):  # a ticket: WAITING, no fixed parameter (the sampler picks them at start)
        study.add_trial(create_trial(state=TrialState.WAITING, system_attrs={"fixed_params": {}}))


def _sampler(ss: StudySpec, worker: int, n_trials: int):
    import optuna

    seed = ss.seed + worker
    if ss.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if ss.sampler == "nsga2":
        pop = ss.population_size or max(4, min(50, n_trials // 5))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=pop)
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=min(10, max(2, n_trials // 5)), constant_liar=True, multivariate=True
    )


def _pruner(ss: StudySpec):
    import optuna

    if not ss.pruning or len(ss.objectives) > 1:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=ss.pruner_startup_trials, n_warmup_steps=0)


HOST = socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_orphans(study, ss: StudySpec) -> list[int]:
    """Fail stale trials: heartbeat older than the grace period (RDB storages), or RUNNING on THIS
    host under a process that is gone (any storage, the journal file included). Each failed trial
    is queued again (up to ``max_retry``) with its parameters. Returns the failed trial numbers."""
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    fail_stale_trials(study)
    st = study._storage
    retry = _Retry(ss.max_retry)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get("kq_worker") or {}
        if w.get("host") == HOST and isinstance(w.get("pid"), int) and not _pid_alive(w["pid"]):
            try:
                st.set_trial_user_attr(t._trial_id, "error", f"worker process {w['pid']} on {HOST} is gone")
                if st.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    retry(study, st.get_trial(t._trial_id))
            except Exception:  # another worker finished it meanwhile
                continue
    after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    return sorted(after - before)


def _pop_ticket(study) -> int | None:
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    st = study._storage
    for t in st.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if st.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                return t._trial_id
        except UpdateFinishedTrialError:
            continue
    return None


@dataclass
class WorkerArgs:
    """Everything a worker process needs (picklable: spawn start method)."""

    config: str
    study_file: str | None
    overrides: dict
    data: DataSelection
    storage: str
    study_name: str
    worker: int
    signals_path: str | None = None
    track: bool = True
    evaluate: Callable | None = None  # tests: replace the objective (module-level callable)


def worker_main(a: WorkerArgs) -> int:
    """Entry point of a worker process: load the spec and the study, run trials until none is left."""
    ss = load_study_spec(a.config, a.study_file, a.overrides, a.data)
    return run_worker(
        ss, a.storage, a.study_name, a.worker, signals_path=a.signals_path, track=a.track, evaluate=a.evaluate
    )


def run_worker(
    ss: StudySpec,
    storage_url: str,
    study_name: str,
    worker: int = 0,
    *,
    signals_path: str | Path | None = None,
    track: bool = True,
    evaluate: Callable | None = None,
    poll_s: float = 0.5,
    stop_after: int | None = None,
    idle_timeout_s: float | None = None,
) -> int:
    """Run queued trials of the (already created) study until no ticket is WAITING and no trial is
    RUNNING anywhere; returns the number of trials this worker ran. ``evaluate(ss, study, trial,
    n_requested) -> values`` replaces the built-in objective (tests). ``stop_after``: return after
    that many trials (tests: a study stopped midway). ``idle_timeout_s``: raise when waiting longer
    than that for other workers' RUNNING trials (None: wait; the stale-trial rule ends them)."""
    import optuna
    from optuna.storages._heartbeat import get_heartbeat_thread
    from optuna.trial import TrialState

    _quiet_optuna()
    storage = make_storage(storage_url, ss)
    study = optuna.load_study(study_name=study_name, storage=storage)
    n_req = int(study.user_attrs.get("kq_n_trials", 0))
    study.sampler = _sampler(ss, worker, n_req)
    study.pruner = _pruner(ss)
    ev = Evaluator(ss, signals_path) if ss.mode == "sweep" and evaluate is None else None
    logger = _TrialLogger(ss, study_name) if track and ss.base.research.tracking.enabled else None
    ran = 0
    idle_since: float | None = None
    last_check = 0.0
    while stop_after is None or ran < stop_after:
        if time.monotonic() - last_check >= min(ss.heartbeat_interval, 10) or idle_since is not None:
            fail_orphans(study, ss)  # not every trial: it reads every trial of the study
            last_check = time.monotonic()
        if hasattr(study, "_thread_local"):
            study._thread_local.cached_all_trials = None
        tid = _pop_ticket(study)
        if tid is None:
            if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
                break
            idle_since = idle_since or time.monotonic()
            if idle_timeout_s is not None and time.monotonic() - idle_since > idle_timeout_s:
                raise InputError(f"waited over {idle_timeout_s:.0f} s for other workers' RUNNING trials")
            time.sleep(poll_s)  # others' trials still running: wait (they may go stale)
            continue
        idle_since = None
        storage.set_trial_user_attr(tid, "kq_worker", {"host": HOST, "pid": os.getpid(), "worker": worker})
        trial = optuna.Trial(study, tid)
        run_id = logger.start(trial) if logger is not None else None
        values, state, err = None, TrialState.COMPLETE, None
        t0 = time.perf_counter()
        with get_heartbeat_thread(tid, storage):
            try:
                if evaluate is not None:
                    values = evaluate(ss, study, trial, n_req)
                elif ss.mode == "sweep":
                    assert ev is not None
                    values = sweep_objective(ss, ev, study, trial, n_req)
                else:
                    values = walkforward_objective(ss, study, trial, n_req)
                if any(not math.isfinite(v) for v in values):
                    raise InputError(f"objective values not finite: {values}")
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except Exception as e:  # catch: recorded as FAIL with its error, the study goes on
                state, err = TrialState.FAIL, f"{type(e).__name__}: {one_line(str(e))[:500]}"
                trial.set_user_attr("error", err)
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 4))
        if state == TrialState.COMPLETE:
            ft = study.tell(trial, values)
        else:
            ft = study.tell(trial, state=state)
        ran += 1
        if logger is not None and run_id is not None:
            logger.finish(run_id, ft)
    return ran


# ------------------------------------------------------------------------------------------------
# MLflow: one run per trial


class _TrialLogger:
    """Every trial is an MLflow run (experiment ``<tracking experiment>.study.<name>``): started when
    the trial starts (its id in the trial's ``mlflow_run_id`` attribute), ended with its state."""

    def __init__(self, ss: StudySpec, study_name: str) -> None:
        from research.tracking import _client, _experiment_id

        tr = ss.base.research.tracking
        self.tracking = tr.model_copy(update={"experiment": f"{tr.experiment}.study.{study_name}"[:200]})
        self.client, uri, root = _client(self.tracking)
        self.exp = _experiment_id(self.client, self.tracking, uri, root)
        self.study_name = study_name

    def start(self, trial) -> str:
        r = self.client.create_run(
            self.exp,
            run_name=f"{self.study_name}#{trial.number}",
            tags={"kq.study": self.study_name, "kq.trial": str(trial.number), "kq.host": HOST},
        )
        trial.set_user_attr("mlflow_run_id", r.info.run_id)
        return r.info.run_id

    def finish(self, run_id: str, ft) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        params = [Param(k, str(v)[:6000]) for k, v in ft.params.items()]
        metrics = [Metric(f"objective.{i}", float(v), now, 0) for i, v in enumerate(ft.values or [])]
        for k in ("n_trades", "daily_sharpe", "seconds"):
            v = ft.user_attrs.get(k)
            if isinstance(v, (int, float)) and math.isfinite(v):
                metrics.append(Metric(k, float(v), now, 0))
        for step, v in ft.intermediate_values.items():
            if math.isfinite(v):
                metrics.append(Metric("fold_value", float(v), now, int(step)))
        tags = [RunTag("kq.state", ft.state.name)]
        if ft.user_attrs.get("error"):
            tags.append(RunTag("kq.error", str(ft.user_attrs["error"])[:5000]))
        if ft.user_attrs.get("pruned_reason"):
            tags.append(RunTag("kq.pruned_reason", str(ft.user_attrs["pruned_reason"])))
        if "failed_trial" in ft.system_attrs:
            tags.append(RunTag("kq.retry_of", str(ft.system_attrs["failed_trial"])))
        self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(ft.state.name, "FAILED")
        self.client.set_terminated(run_id, status)

    def close_stale(self, trials) -> int:
        """Runs of trials that died with their worker (FAIL without a finished run): FAILED."""
        n = 0
        for t in trials:
            rid = t.user_attrs.get("mlflow_run_id")
            if rid and t.state.name == "FAIL":
                try:
                    if self.client.get_run(rid).info.status == "RUNNING":
                        self.finish(rid, t)
                        n += 1
                except Exception:
                    continue
        return n


# ------------------------------------------------------------------------------------------------
# report


def count_configurations(trials) -> dict:
    """Trials by state; ``configurations`` = every configuration tried (finished; a stale trial
    that was queued again counts once, through its retry)."""
    from optuna.trial import TrialState

    by = {s.name: 0 for s in TrialState}
    for t in trials:
        by[t.state.name] += 1
    fin = [t for t in trials if t.state.is_finished()]
    # a retry carries the ORIGINAL trial's number in failed_trial (also a retry of a retry)
    chains = {int(t.system_attrs.get("failed_trial", t.number)) for t in fin}
    return {
        "by_state": by,
        "finished": len(fin),
        "configurations": len(chains),
        "retries": sum(1 for t in trials if "failed_trial" in t.system_attrs),
    }


def overfitting_figures(
    best_returns: np.ndarray, trial_sharpes: list[float], n_tried: int, returns_matrix=None
) -> dict:
    """DSR of the best trial with EVERY configuration tried counted, and PBO (CSCV) over the
    complete trials' daily returns (columns), when there are at least two."""
    from research.stats import deflated_sharpe_ratio, expected_max_sharpe, probability_of_backtest_overfitting

    var = float(np.var(trial_sharpes, ddof=1)) if len(trial_sharpes) > 1 else 0.0
    out: dict[str, Any] = {"n_trials": int(n_tried), "sr_variance": var}
    try:
        d = deflated_sharpe_ratio(best_returns, n_trials=max(1, n_tried), sr_variance=var)
        out["dsr"] = d.dsr
        out["psr0"] = d.psr0
        out["sr_daily"] = d.sr
        out["sr0_expected_max"] = float(expected_max_sharpe(max(1, n_tried), var))
    except InputError as e:
        out["dsr_error"] = str(e)
    if returns_matrix is not None and returns_matrix.shape[1] >= 2:
        t = returns_matrix.shape[0]
        nb = next((b for b in (16, 8, 6, 4, 2) if t >= 4 * b), None)
        if nb is None:
            out["pbo_error"] = f"{t} daily returns: too few for CSCV"
        else:
            try:
                p = probability_of_backtest_overfitting(returns_matrix, n_blocks=nb)
                out["pbo"] = p.pbo
                out["pbo_blocks"] = nb
                out["pbo_configurations"] = int(returns_matrix.shape[1])
                out["pbo_slope"] = p.slope
            except InputError as e:
                out["pbo_error"] = str(e)
    else:
        out["pbo_error"] = "fewer than 2 complete trials"
    return out


def _best(study, ss: StudySpec):
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return None, 0
    if len(ss.objectives) == 1:
        return study.best_trial, 1
    front = study.best_trials
    sign = 1.0 if ss.directions[0] == "maximize" else -1.0
    return max(front, key=lambda t: (sign * t.values[0], -t.number)), len(front)


def holdout_run(ss: StudySpec, params: Mapping[str, Any], signals_path=None, ev: Evaluator | None = None) -> dict:
    """The trial's parameters over the untouched hold-out span and, for comparison, the whole study
    span in one backtest (sweep mode); walk-forward mode runs the walk-forward to the hold-out's end
    and backtests its signals inside the hold-out only."""
    cfg_over = config_overrides({k: v for k, v in params.items() if not k.startswith("signal.")})
    sig = {k[7:]: v for k, v in params.items() if k.startswith("signal.")}
    spec = ss.base.with_overrides(cfg_over) if cfg_over else ss.base
    init = float(spec.config.backtest.init_cash)
    out: dict[str, Any] = {"span": [parse_ts(ss.holdout_start), parse_ts(ss.holdout_end)]}
    if ss.mode == "sweep":
        ev = ev or Evaluator(ss, signals_path)
        sigarr = ev.signal(sig)
        spans = {"study_span": (ev.i0, ev.i1), "holdout": (ev.i1, ev.i2)}
        for key, (lo, hi) in spans.items():
            res = ev.backtest(spec.config, sigarr, lo, hi)
            m = res.metrics_dict()
            r = daily_returns(res.ts, res.equity["equity"], init)
            out[key] = _strategy_summary(m) | {"daily_sharpe": _sharpe(r)}
            if key == "holdout":
                out["holdout_daily_returns"] = r
        return out
    from engine.backtest.io import signals_to_arrays
    from engine.backtest.runner import (
        default_atr,
        default_clusters,
        default_spread,
        history_before,
        make_inputs,
        run_backtest,
    )
    from engine.risk.params import params_from_config
    from research.pipeline import run
    from research.walkforward import oos_raw_regime, strategy_history_bars

    o = run(spec.with_overrides({}).with_data(start=ss.start, end=ss.holdout_end), None, track=False)
    panel, cfg = o.panel, spec.config
    sigdf = o.result.signals
    sigdf = sigdf[sigdf["ts"] >= ss.holdout_start]
    lo = int(np.searchsorted(panel.ts, ss.holdout_start))
    hi = int(np.searchsorted(panel.ts, ss.holdout_end, side="right"))
    sub = panel.slice(int(panel.ts[lo]), int(panel.ts[hi - 1]))
    p_up, er = signals_to_arrays(sigdf, sub.ts, sub.pairs)
    rules = o.result.regime_rules
    history = history_before(panel, lo, strategy_history_bars(cfg, rules))
    raw = oos_raw_regime(panel, cfg, rules, hi)  # "model": the folds' fitted rules, as the trials had
    inp = make_inputs(
        sub,
        p_up,
        er,
        cfg,
        atr=default_atr(panel.high, panel.low, panel.close, cfg.features.atr_window)[lo:hi],
        spread=np.asarray(default_spread(panel.high, panel.low, panel.close, panel.valid, cfg.backtest.spread_window))[
            lo:hi
        ],
        cluster=default_clusters(panel.ts, panel.close, panel.valid, cfg.features)[lo:hi],
        raw_regime=None if raw is None else raw[lo - (0 if history is None else history.n_bars) :],
        history=history,
    )
    res = run_backtest(inp, params_from_config(cfg))
    r = daily_returns(res.ts, res.equity["equity"], init)
    out["holdout"] = _strategy_summary(res.metrics_dict()) | {"daily_sharpe": _sharpe(r)}
    out["holdout_daily_returns"] = r
    return out


def _strategy_summary(m: dict) -> dict:
    return {k: m.get(k) for k in ("total_return", "sharpe", "calmar", "max_drawdown", "n_trades", "final_equity")}


def write_report(
    ss: StudySpec, study, out: str | Path, *, signals_path=None, track: bool = True, storage_label: str = ""
) -> dict:
    """trials.parquet, study.json and report.html (with plotly.min.js beside it) in ``out``; the
    best trial re-run on the hold-out with its DSR, PBO and the number of configurations tried."""
    import pandas as pd

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    counts = count_configurations(trials)
    rows = []
    for t in trials:
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name,
            "retry_of": t.system_attrs.get("failed_trial"),
            "seconds": t.user_attrs.get("seconds"),
            "n_trades": t.user_attrs.get("n_trades"),
            "daily_sharpe": t.user_attrs.get("daily_sharpe"),
            "error": t.user_attrs.get("error"),
            "pruned_reason": t.user_attrs.get("pruned_reason"),
            "folds_run": t.user_attrs.get("folds_run"),  # walk-forward mode: folds trained
            "worker": json.dumps(t.user_attrs.get("kq_worker")) if t.user_attrs.get("kq_worker") else None,
            "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
            "datetime_start": t.datetime_start,
            "datetime_complete": t.datetime_complete,
        }
        for i, o in enumerate(ss.objectives):
            row[o] = t.values[i] if t.values is not None else None
        for p in ss.space:
            v = t.params.get(p.name)
            row[f"param.{p.name}"] = None if v is None else str(v) if p.kind == "cat" else float(v)
        rows.append(row)
    df = pd.DataFrame(rows)
    _atomic_parquet(df, out / "trials.parquet")
    if track and ss.base.research.tracking.enabled:
        _TrialLogger(ss, study.study_name).close_stale(trials)
    best, front = _best(study, ss)
    doc: dict[str, Any] = {
        "study": study.study_name,
        "storage": storage_label,
        "mode": ss.mode,
        "signal": ss.signal if ss.mode == "sweep" else None,
        "objectives": dict(zip(ss.objectives, ss.directions, strict=True)),
        "sampler": ss.sampler,
        "seed": ss.seed,
        "trials_requested": int(study.user_attrs.get("kq_n_trials", 0)),
        "counts": counts,
        "study_span": [parse_ts(ss.start), parse_ts(ss.study_end)],
        "holdout_span": [parse_ts(ss.holdout_start), parse_ts(ss.holdout_end)],
        "space": {p.name: p.to_json() for p in ss.space},
        "fingerprint": ss.fingerprint(),
        "best": None,
    }
    if best is not None:
        from optuna.trial import TrialState

        complete = [t for t in trials if t.state == TrialState.COMPLETE and "daily_returns" in t.user_attrs]
        srs = _trial_sharpes(t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
        mat = None
        lens = {len(t.user_attrs["daily_returns"]) for t in complete}
        if len(complete) >= 2 and len(lens) == 1:
            mat = np.column_stack([np.asarray(t.user_attrs["daily_returns"], dtype=np.float64) for t in complete])
        br = np.asarray(best.user_attrs.get("daily_returns", []), dtype=np.float64)
        ovf = overfitting_figures(br, srs, counts["configurations"], mat)
        ho = holdout_run(ss, best.params, signals_path)
        if "study_span" not in ho:  # walk-forward mode: the trial's own run over the study span
            ho["study_span"] = best.user_attrs.get("summary")
        hr = ho.pop("holdout_daily_returns")
        ho_ovf = overfitting_figures(hr, srs, counts["configurations"])
        ho_ovf.pop("pbo_error", None)
        doc["best"] = {
            "number": best.number,
            "values": dict(zip(ss.objectives, best.values, strict=True)),
            "params": best.params,
            "pareto_front_size": front if len(ss.objectives) > 1 else None,
            "in_study": ho.get("study_span"),
            "in_study_overfitting": ovf,
            "holdout": ho.get("holdout"),
            "holdout_overfitting": {
                k: ho_ovf.get(k) for k in ("dsr", "psr0", "sr_daily", "sr0_expected_max", "n_trials")
            },
            "note": (
                f"best of {counts['configurations']} configurations tried; DSR counts every one of them; "
                "the hold-out span was never seen by the study"
            ),
        }
    _atomic_text(out / "study.json", json.dumps(_clean(doc), indent=2, default=str))
    _write_html(ss, study, doc, out)
    return doc


def _clean(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def _atomic_parquet(df, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_html(ss: StudySpec, study, doc: dict, out: Path) -> None:
    import html

    from optuna.trial import TrialState
    from optuna.visualization import plot_optimization_history, plot_parallel_coordinate, plot_pareto_front

    figs = []
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if done:
        multi = len(ss.objectives) > 1
        tgt = (lambda t: t.values[0]) if multi else None
        name = ss.objectives[0]
        figs.append(plot_optimization_history(study, target=tgt, target_name=name))
        if len(ss.space) >= 1:
            figs.append(plot_parallel_coordinate(study, target=tgt, target_name=name))
        if multi and len(ss.objectives) == 2:
            figs.append(plot_pareto_front(study, target_names=list(ss.objectives)))
    from engine.report_html import plotly_script

    script = plotly_script(out)  # the one copy beside the report, shared with every other report
    parts = [f.to_html(full_html=False, include_plotlyjs=False) for f in figs]
    best = doc.get("best")
    c = doc["counts"]

    def fmt(v):
        return "n/a" if v is None else (f"{v:.4g}" if isinstance(v, float) else html.escape(str(v)))

    rows = ""
    if best:
        ins, ho = best.get("in_study") or {}, best.get("holdout") or {}
        io, hoo = best["in_study_overfitting"], best["holdout_overfitting"]
        for k in ("total_return", "sharpe", "max_drawdown", "n_trades"):
            rows += f"<tr><td>{k}</td><td>{fmt(ins.get(k))}</td><td>{fmt(ho.get(k))}</td></tr>"
        rows += (
            f"<tr><td>deflated Sharpe (n = {c['configurations']})</td>"
            f"<td>{fmt(io.get('dsr'))}</td><td>{fmt(hoo.get('dsr'))}</td></tr>"
        )
        rows += (
            f"<tr><td>PBO (CSCV, {fmt(io.get('pbo_configurations'))} configurations)</td>"
            f"<td>{fmt(io.get('pbo'))}</td><td></td></tr>"
        )
    head = (
        f"<h1>Study {html.escape(study.study_name)}</h1><p>{html.escape(ss.mode)} mode; objectives "
        f"{html.escape(', '.join(f'{k} ({v})' for k, v in doc['objectives'].items()))}; "
        f"{c['configurations']} configurations tried ({fmt(c['by_state'])}); study span "
        f"{' .. '.join(doc['study_span'])}, hold-out {' .. '.join(doc['holdout_span'])}.</p>"
    )
    if best:
        head += (
            f"<h2>Best trial #{best['number']}</h2><p>{html.escape(json.dumps(best['params']))}</p>"
            f"<p>{html.escape(best['note'])}</p><table border=1><tr><th></th><th>study span</th>"
            f"<th>hold-out (untouched)</th></tr>{rows}</table>"
        )
    else:
        head += "<p>No complete trial.</p>"
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>kq study</title>"
        + script
        + "</head><body>"
        + head
        + "".join(parts)
        + "</body></html>"
    )
    _atomic_text(out / "report.html", page)
