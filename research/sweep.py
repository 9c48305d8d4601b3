"""Parameter sweeps of the backtester: a grid file -> parameter sets -> :func:`run_sweep` -> results.

``kq sweep`` (``kq/sweep.py``) is the command; this module is the library.

Grid file (TOML)
----------------
::

    mode = "grid"                 # or "random" (then n = 500 and seed = 7; seed defaults to the config's)
    objective = "sharpe"          # any metrics_dt field; direction = "max" (default) or "min"
    heatmap = ["risk.base_risk", "risk.max_positions"]   # optional: the two axes of the heat map
    invalid = "error"             # or "skip": a combination the config model refuses is left out
    [params]
    "risk.base_risk" = [0.01, 0.02]
    "risk.max_positions" = [5, 10]
    "risk.p_up_entry" = {low = 0.5, high = 0.7, step = 0.05}   # inclusive range on a step grid
    "risk.vol_target" = {low = 0.005, high = 0.05, log = true} # random mode only: continuous draw

Keys are dotted engine-config keys that the backtest's parameter record reads (:data:`PARAM_KEYS`:
``risk.*``, ``fees.*``, ``execution.*`` and three ``backtest.*`` keys); a key that only changes the
inputs (ATR window, spread window, training window) is refused, because the inputs are built once.
The exception is the strategy layer (:data:`STRATEGY_KEYS`, config with ``[strategy] enabled =
true``): ``strategy.<field>`` (``trend_bars``, ``mr_z``, ``hysteresis_bars``, ``defensive_margin``,
... ``enabled``), ``strategy.exits.<profile>.stop_atr_mult`` / ``take_profit_atr_mult`` /
``size_scale`` and ``strategy.selector.<regime>`` (a list of selector rows as strings,
``"trend:0.7,breakout:0.3"``; one profile alone weighs 1). They change the inputs the risk step
reads (the selector's gated P(up) and the per-bar exits), so the sets are grouped by their
``[strategy]`` table and each group's inputs are rebuilt from the same bars and signal
(:func:`strategy_inputs`: ``make_inputs`` with the group's config, as :func:`inputs_from_panel`);
sets that differ only in parameter-record keys share them. A strategy key with the layer off
(it would change nothing), and with it on ``risk.p_up_entry`` / ``risk.p_up_exit`` (the selector
gates the inputs at the config's thresholds) and ``risk.take_profit_atr_mult`` (each bar's profile
multiple replaces it for entries, R26) are refused with one line, and so is a set whose profile stop
is wider than its ``risk.stop_atr_mult`` (a profile stop applies only when tighter: a duplicate);
preservation's take-profit and size scale (it never enters), ``strategy.enabled`` and modes are not
keys, and more than :data:`MAX_STRATEGY_GROUPS` distinct strategy tables are refused.
Every parameter set is validated by the engine config model (:func:`engine.config.config_from_dict`
on the config file's tables with the set's values merged in), so the model's bounds on every
capital rule (``risk.base_risk <= 0.05``, ``risk.dd_halt < 1``, ``risk.max_positions <= 50``,
``p_up_exit < p_up_entry``, the drawdown-tier order, ...) hold for every set exactly as they hold
for a config file: a sweep can never run a set that ``kq config check`` would refuse. A bad value is
one :class:`~engine.errors.ConfigError` line naming the key and the value (exit 2).

Grid mode: the Cartesian product in file order (the last key varies fastest). Random mode: ``n``
sets drawn with ``numpy.random.default_rng(seed)``, key by key in file order, set by set; a list is
drawn uniformly, a range with ``step`` uniformly on its grid, a range without one uniformly (or
log-uniformly with ``log = true``) on [low, high]; integer bounds draw integers. Same file, config
and seed -> the same sets.

Run
---
The sets run in chunks of ``chunk_size`` through :func:`engine.backtest.runner.run_sweep` (bounded
memory: one chunk's parameter rows and metrics at a time besides the inputs), serially or fanned out
by :func:`research.fanout.run_tasks` (``workers``, ``scheduler``). Each set's metrics do not depend on
the chunking or the workers (each set runs alone inside the kernel), and they equal a single
:func:`~engine.backtest.runner.run_backtest` of the same parameters (``tests/test_sweep.py``).
With strategy keys a chunk holds sets of one strategy group: serially the groups run one after the
other (one group's inputs alive at a time), fanned out a task carries the group's [strategy] table and the
worker rebuilds its inputs from the shared base inputs; the results come back in set order and
equal a backtest of inputs built from scratch with the set's config (``tests/test_sweep_strategy.py``).
Every set counts in the deflated Sharpe ratio's number of trials, strategy sets included; the best
set is re-run on its own group's inputs (:func:`set_inputs`).

Outputs (:func:`write_sweep`, atomic): ``results.parquet`` (one row per set: ``set_id``, every swept
key, every ``metrics_dt`` field, ``refusals.<REASON>`` per refusal reason), ``sweep.json`` (grid,
number of sets and of strategy configurations, data span, config and signals digests (of the
base inputs), the best set by the objective and its
deflated Sharpe ratio given the number of sets tried) and ``report.html`` + ``plotly.min.js``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import ConfigError, InputError

__all__ = [
    "PARAM_KEYS",
    "STRATEGY_KEYS",
    "GridSpec",
    "SweepInputs",
    "SweepResult",
    "config_overrides",
    "expand",
    "inputs_from_panel",
    "load_grid",
    "parse_grid",
    "results_frame",
    "run_grid",
    "set_inputs",
    "strategy_inputs",
    "write_sweep",
]

# dotted config key -> the params_dt fields it sets (engine.risk.params.params_from_config)
PARAM_KEYS: Mapping[str, tuple[str, ...]] = {
    "risk.p_up_entry": ("p_up_entry",),
    "risk.p_up_exit": ("p_up_exit",),
    "risk.sizing": ("sizing",),
    "risk.base_risk": ("base_risk",),
    "risk.fixed_fraction": ("fixed_fraction",),
    "risk.position_size": ("position_size",),
    "risk.vol_target": ("vol_target",),
    "risk.vol_adj_min": ("vol_adj_min",),
    "risk.vol_adj_max": ("vol_adj_max",),
    "risk.stop_atr_mult": ("stop_atr_mult",),
    "risk.take_profit_atr_mult": ("tp_atr_mult",),
    "risk.max_hold_bars": ("max_hold_bars",),
    "risk.max_positions": ("max_positions",),
    "risk.max_exposure": ("max_exposure",),
    "risk.max_cluster_exposure": ("max_cluster_exposure",),
    "risk.capital_ceiling": ("capital_ceiling",),
    "risk.dd_reduce_risk": ("dd_tier1",),
    "risk.dd_reduce_exposure": ("dd_tier2",),
    "risk.dd_halt": ("dd_halt",),
    "risk.tier1_risk_mult": ("tier1_risk_mult",),
    "risk.tier2_exposure_mult": ("tier2_exposure_mult",),
    "risk.tier2_max_positions": ("tier2_max_positions",),
    "risk.spread_max": ("spread_max",),
    "risk.spread_anomaly_mult": ("spread_anomaly_mult",),
    "risk.spread_baseline_bars": ("spread_alpha", "spread_min_obs"),
    "risk.vol_spike_mult": ("vol_spike_mult",),
    "fees.fee_rate": ("fee_rate", "min_edge"),
    "fees.slippage_bps": ("min_edge",),
    "execution.entry_order": ("entry_kind",),
    "execution.exit_order": ("exit_kind",),
    "execution.limit_offset_bps": ("limit_offset",),
    "execution.impact_coef": ("impact_coef",),
    "execution.spread_in_slippage": ("spread_slip",),
    "execution.min_slippage_bps": ("min_slip",),
    "execution.slip_buffer_bps": ("slip_buffer",),
    "execution.enforce_precision": ("enforce_precision",),
    "backtest.init_cash": ("init_cash",),
    "backtest.kill_reset_bars": ("kill_reset_bars",),
    "backtest.halt_reset_bars": ("halt_reset_bars",),
}


def _strategy_keys() -> tuple[str, ...]:
    from engine.strategy.config import ProfileExit, StrategyConfig
    from engine.strategy.enums import PROFILE_NAMES, REGIME_NAMES

    # an explicit exclusion, not every field: a switch or a mode (enabled, regime_thresholds) is not a
    # number to tune, and preservation never enters, so its take-profit and size scale change nothing
    skip = {"exits", "selector", "enabled", "regime_thresholds"}
    scalar = [f"strategy.{n}" for n in StrategyConfig.model_fields if n not in skip]
    exits = [
        f"strategy.exits.{q}.{f}"
        for q in PROFILE_NAMES
        for f in ProfileExit.model_fields
        if not (q == "preservation" and f != "stop_atr_mult")
    ]
    return (*scalar, *exits, *(f"strategy.selector.{r}" for r in (*REGIME_NAMES, "unknown")))


#: dotted [strategy] keys a sweep may vary (``[strategy] enabled = true`` in the config): they change
#: the INPUTS (the selector's gated P(up) and per-bar exits), so the sets are grouped by their
#: strategy values and each group's inputs are rebuilt from the same bars and signal
#: (:func:`strategy_inputs`). ``strategy.selector.<regime>`` takes selector rows as strings:
#: ``"trend:0.7,breakout:0.3"`` (profile:weight, comma-separated; one profile alone weighs 1)
STRATEGY_KEYS: tuple[str, ...] = _strategy_keys()
SELECTOR_PREFIX = "strategy.selector."
#: with [strategy] enabled each bar's profile take-profit multiple replaces [risk]'s for entries (R26),
#: so a sweep of it would be silently ignored (``risk.stop_atr_mult`` stays sweepable: it caps the
#: profile stops, which apply only when tighter, and sets risk sizing's stop distance)
STRATEGY_EXIT_KEYS = ("risk.take_profit_atr_mult",)
#: at most this many distinct [strategy] tables in one sweep: each rebuilds its inputs (seconds on a
#: full panel), so a continuous random draw of a strategy key would make one per set
MAX_STRATEGY_GROUPS = 500


def _selector_row(key: str, text: str) -> list[dict]:
    """``"trend:0.7,breakout:0.3"`` -> the [strategy.selector] row (a list of {profile, weight})."""
    out = []
    for part in text.split(","):
        name, sep, w = part.strip().partition(":")
        try:
            weight = float(w) if sep else 1.0
        except ValueError:
            raise ConfigError(
                f'{key} = {text!r}: weight {w!r} is not a number (e.g. "trend:0.7,breakout:0.3")'
            ) from None
        out.append({"profile": name.strip(), "weight": weight})
    return out


def config_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """Swept values as config overrides (:func:`research.pipeline.apply_overrides`): a
    ``strategy.selector.<regime>`` string becomes its selector row; everything else as given."""
    return {
        k: _selector_row(k, v) if k.startswith(SELECTOR_PREFIX) and isinstance(v, str) else v for k, v in values.items()
    }


MAX_SETS = 1_000_000  # a grid larger than this is refused before anything is built
GRID_KEYS = ("mode", "n", "seed", "objective", "direction", "heatmap", "invalid", "params")
DEFAULT_CHUNK = 256


@dataclass(frozen=True)
class Dim:
    """One swept key: ``values`` (a list, or a stepped range expanded) or a continuous range."""

    key: str
    values: tuple | None  # None: continuous range (random mode only)
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False


@dataclass(frozen=True)
class GridSpec:
    mode: str
    dims: tuple[Dim, ...]
    n: int | None = None
    seed: int = 7
    objective: str = "sharpe"
    direction: str = "max"
    heatmap: tuple[str, str] | None = None
    invalid: str = "error"
    raw: dict = field(default_factory=dict)  # the file's tables, as read (recorded in sweep.json)
    source: str = "<dict>"

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(d.key for d in self.dims)


def _err(source: str, msg: str) -> ConfigError:
    from engine.errors import one_line

    return ConfigError(one_line(f"grid {source}: {msg}"))


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _range_dim(key: str, spec: dict, mode: str, source: str) -> Dim:
    extra = sorted(set(spec) - {"low", "high", "step", "log"})
    if extra:
        raise _err(source, f"params.{key}: unknown range key(s) {', '.join(extra)} (low, high, step, log)")
    lo: Any = spec.get("low")
    hi: Any = spec.get("high")
    step: Any = spec.get("step")
    log: Any = spec.get("log", False)
    if not (_is_num(lo) and _is_num(hi)) or not (math.isfinite(lo) and math.isfinite(hi)):
        raise _err(source, f"params.{key}: a range needs finite numbers low and high")
    if hi < lo:
        raise _err(source, f"params.{key}: high {hi} is below low {lo}")
    if not isinstance(log, bool):
        raise _err(source, f"params.{key}: log must be true or false")
    integer = isinstance(lo, int) and isinstance(hi, int) and (step is None or isinstance(step, int))
    if step is not None:
        if log:
            raise _err(source, f"params.{key}: give step or log = true, not both")
        if not _is_num(step) or not math.isfinite(step) or step <= 0:
            raise _err(source, f"params.{key}: step must be a positive number")
        k = math.floor((hi - lo) / step + 1e-9)
        if k + 1 > MAX_SETS:
            raise _err(source, f"params.{key}: more than {MAX_SETS:,} values")
        if integer:
            vals: tuple = tuple(int(lo + i * step) for i in range(k + 1))
        else:  # rounded so 0.1 + 2 * 0.05 is 0.2, not 0.20000000000000004
            vals = tuple(float(round(lo + i * step, 12)) for i in range(k + 1))
        return Dim(key, vals)
    if log and lo <= 0:
        raise _err(source, f"params.{key}: log = true needs low > 0")
    if mode == "grid":
        raise _err(source, f"params.{key}: a range in grid mode needs a step")
    return Dim(key, None, float(lo), float(hi), log, integer)


def parse_grid(raw: Mapping, source: str = "<dict>") -> GridSpec:
    """Validate a grid table (the TOML file's content); errors are one ConfigError line."""
    if not isinstance(raw, Mapping):
        raise _err(source, "not a table")
    extra = sorted(set(raw) - set(GRID_KEYS))
    if extra:
        raise _err(source, f"unknown key(s) {', '.join(extra)} (known: {', '.join(GRID_KEYS)})")
    mode = raw.get("mode", "grid")
    if mode not in ("grid", "random"):
        raise _err(source, f"mode = {mode!r}: must be 'grid' or 'random'")
    n = raw.get("n")
    if mode == "random":
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SETS:
            raise _err(source, f"n = {n!r}: random mode needs n, a whole number 1..{MAX_SETS:,}")
    elif n is not None:
        raise _err(source, "n is for random mode only")
    seed = raw.get("seed", 7)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise _err(source, f"seed = {seed!r}: must be a whole number 0..2**32-1")
    from engine.risk.enums import metrics_dt

    objective = raw.get("objective", "sharpe")
    if objective not in (metrics_dt.names or ()) or objective == "records_overflow":
        raise _err(source, f"objective = {objective!r}: not a backtest metric (e.g. sharpe, total_return, calmar)")
    direction = raw.get("direction", "max")
    if direction not in ("max", "min"):
        raise _err(source, f"direction = {direction!r}: must be 'max' or 'min'")
    invalid = raw.get("invalid", "error")
    if invalid not in ("error", "skip"):
        raise _err(source, f"invalid = {invalid!r}: must be 'error' or 'skip'")
    params = raw.get("params")
    if not isinstance(params, Mapping) or not params:
        raise _err(source, "needs a [params] table with at least one key")
    dims = []
    for key, spec in params.items():
        if key not in PARAM_KEYS and key not in STRATEGY_KEYS:
            raise _err(
                source,
                f"params.{key}: not a backtest parameter key (sweepable: risk.*, fees.*, execution.*, "
                "backtest.init_cash/kill_reset_bars/halt_reset_bars and strategy.*; see "
                "research.sweep.PARAM_KEYS and STRATEGY_KEYS)",
            )
        if key.startswith(SELECTOR_PREFIX) and not (isinstance(spec, list) and all(isinstance(v, str) for v in spec)):
            raise _err(source, f'params.{key}: a list of selector rows such as "trend:0.7,breakout:0.3"')
        if isinstance(spec, list):
            if not spec:
                raise _err(source, f"params.{key}: an empty list")
            if len(spec) > MAX_SETS:
                raise _err(source, f"params.{key}: more than {MAX_SETS:,} values")
            if len({json.dumps(v) for v in spec}) != len(spec):
                raise _err(source, f"params.{key}: a value is listed twice")
            if any(isinstance(v, list | dict) for v in spec):
                raise _err(source, f"params.{key}: values must be numbers, strings or booleans")
            dims.append(Dim(key, tuple(spec)))
        elif isinstance(spec, Mapping):
            dims.append(_range_dim(key, dict(spec), mode, source))
        else:
            raise _err(source, f"params.{key}: a list of values or a range table {{low, high, step}}")
    keys = [d.key for d in dims]
    heat = raw.get("heatmap")
    if heat is not None:
        if not (isinstance(heat, list) and len(heat) == 2 and all(h in keys for h in heat) and heat[0] != heat[1]):
            raise _err(source, f"heatmap = {heat!r}: two different swept keys")
        heat = (heat[0], heat[1])
    if mode == "grid":
        total = math.prod(len(d.values or ()) for d in dims)
        if total > MAX_SETS:
            raise _err(source, f"the grid has {total:,} sets, more than {MAX_SETS:,}")
    return GridSpec(
        mode=mode,
        dims=tuple(dims),
        n=n,
        seed=seed,
        objective=objective,
        direction=direction,
        heatmap=heat,
        invalid=invalid,
        raw=json.loads(json.dumps(dict(raw))),
        source=source,
    )


def load_grid(path: str | Path) -> GridSpec:
    """A :class:`GridSpec` from a TOML grid file."""
    from engine.config import read_toml

    return parse_grid(read_toml(path), str(path))


def _combinations(spec: GridSpec) -> list[tuple]:
    if spec.mode == "grid":
        return list(itertools.product(*(d.values or () for d in spec.dims)))
    rng = np.random.default_rng(spec.seed)
    out = []
    for _ in range(int(spec.n or 0)):
        row = []
        for d in spec.dims:
            if d.values is not None:
                row.append(d.values[int(rng.integers(len(d.values)))])
            else:
                lo, hi = float(d.low or 0.0), float(d.high or 0.0)
                if d.log:
                    # clamped: exp(log(hi)) may round past hi, and hi may be a config bound
                    x = min(max(float(np.exp(rng.uniform(np.log(lo), np.log(hi)))), lo), hi)
                    row.append(min(max(round(x), int(lo)), int(hi)) if d.integer else x)
                elif d.integer:
                    row.append(int(rng.integers(int(lo), int(hi) + 1)))
                else:
                    row.append(float(rng.uniform(lo, hi)))
        out.append(tuple(row))
    return out


@dataclass(frozen=True)
class Expansion:
    """The parameter sets of a grid: ``values`` (one tuple per set, in ``keys`` order), their
    ``params`` rows (params_dt (S,)) and the combinations the config model refused (skip mode)."""

    keys: tuple[str, ...]
    values: list[tuple]
    params: np.ndarray
    skipped: int = 0
    # strategy keys swept: ``group`` (S,) int64, each set's index into ``strategies``, the [strategy]
    # tables (canonical JSON, small) its inputs are built with, in order of first appearance, and
    # ``config`` the config file's engine config (a group's inputs: it with the group's [strategy],
    # :meth:`group_config`); no strategy key: None, () and None (every set shares the inputs)
    group: np.ndarray | None = None
    strategies: tuple[str, ...] = ()
    config: Any = None

    def group_config(self, g: int):
        """The engine config group ``g``'s inputs are built with."""
        return _with_strategy(self.config, self.strategies[g])


def _with_strategy(cfg, table: str):
    """``cfg`` with the [strategy] table ``table`` (canonical JSON, validated by StrategyConfig)."""
    from engine.strategy.config import StrategyConfig

    return cfg.model_copy(update={"strategy": StrategyConfig.model_validate(json.loads(table))})


#: keys the strategy selector's input gating reads (engine.strategy: refused entries are parked at
#: the config's p_up_exit), so a sweep cannot vary them while [strategy] is enabled
STRATEGY_GATED_KEYS = ("risk.p_up_entry", "risk.p_up_exit")


def expand(spec: GridSpec, base_raw: Mapping, source: str = "config") -> Expansion:
    """Every set of ``spec`` validated against the config tables ``base_raw`` (the file's, as
    :func:`engine.config.read_toml` returns them) and turned into a params_dt row.

    Each distinct value of a key is checked alone first, so a value out of the model's bounds is
    named as such (``params.risk.base_risk = 0.1: risk.base_risk: Input should be less than or equal
    to 0.05``); then each combination (cross-key rules such as ``p_up_exit < p_up_entry``): an error,
    or left out with ``invalid = "skip"``."""
    from engine.config import config_from_dict
    from engine.risk.enums import params_dt
    from engine.risk.params import params_from_config
    from research.pipeline import apply_overrides

    base = {k: v for k, v in base_raw.items() if k != "research"}
    cfg0 = config_from_dict(base, source)  # the config itself must be valid first
    if cfg0.strategy.enabled and cfg0.strategy.regime_thresholds == "model":
        raise ConfigError(
            f'{source}: [strategy] regime_thresholds = "model" needs a walk-forward\'s fitted regime rules, '
            'which a sweep over a stored signal has none of; use regime_thresholds = "config" '
            "(or kq study in walk-forward mode)"
        )
    strat = [k for k in spec.keys if k in STRATEGY_KEYS]
    if strat and not cfg0.strategy.enabled:
        raise _err(
            spec.source,
            f"params {', '.join(strat)}: strategy keys need [strategy] enabled = true in the config "
            "(with the layer off they change nothing)",
        )
    gated = sorted(set(spec.keys) & set(STRATEGY_GATED_KEYS))
    if cfg0.strategy.enabled and gated:
        # the selector parks refused entries at the config's p_up_exit inside the shared inputs: a set
        # with another threshold would read parked bars as entries or signal exits
        raise _err(
            spec.source,
            f"params {', '.join(gated)}: not sweepable with [strategy] enabled (the selector gates the "
            "inputs at the config's thresholds); sweep them with [strategy] off, or set them in the config",
        )
    exits = [k for k in STRATEGY_EXIT_KEYS if k in spec.keys]
    if cfg0.strategy.enabled and exits:
        raise _err(
            spec.source,
            f"params {', '.join(exits)}: not sweepable with [strategy] enabled (each bar's profile "
            "take-profit multiple replaces it, R26); sweep strategy.exits.<profile>.take_profit_atr_mult instead",
        )
    for d in spec.dims:
        for v in d.values or (d.low, d.high):
            try:
                config_from_dict(apply_overrides(base, config_overrides({d.key: v})), source)
            except ConfigError as e:
                msg = str(e).removeprefix(f"{source}: ")
                # a cross-key rule may fail for one value alone while a combination is fine
                if "Value error" not in msg:
                    raise _err(spec.source, f"params.{d.key} = {v!r}: {msg}") from None
    combos = _combinations(spec)
    rows, kept, skipped = [], [], 0
    cache: dict[tuple, tuple[np.ndarray, str]] = {}
    strat_on = any(k in STRATEGY_KEYS for k in spec.keys)
    groups: list[int] = []
    by_strategy: dict[str, int] = {}  # a [strategy] table (canonical JSON) -> group (2 and 2.0 are one)
    for combo in combos:
        ck = tuple(json.dumps(v) for v in combo)
        hit = cache.get(ck)
        if hit is None:
            try:
                over = config_overrides(dict(zip(spec.keys, combo, strict=True)))
                cfg = config_from_dict(apply_overrides(base, over), source)
            except ConfigError as e:
                if spec.invalid == "skip":
                    skipped += 1
                    continue
                what = ", ".join(f"{k} = {v!r}" for k, v in zip(spec.keys, combo, strict=True))
                msg = str(e).removeprefix(f"{source}: ")
                raise _err(spec.source, f"the set {what}: {msg} (invalid = 'skip' leaves such sets out)") from None
            wide = [
                f"{k} = {v!r}"
                for k, v in zip(spec.keys, combo, strict=True)
                if k.startswith("strategy.exits.")
                and k.endswith(".stop_atr_mult")
                and cfg.risk.stop_atr_mult > 0.0
                and float(v) > cfg.risk.stop_atr_mult
            ]
            if wide:  # R26: a profile stop applies only when tighter than [risk]'s: the set is a duplicate
                if spec.invalid == "skip":
                    skipped += 1
                    continue
                raise _err(
                    spec.source,
                    f"the set {', '.join(wide)}: wider than risk.stop_atr_mult = {cfg.risk.stop_atr_mult}, so it "
                    "changes nothing (a profile stop applies only when tighter, R26; invalid = 'skip' leaves such "
                    "sets out)",
                )
            # the set's [strategy] table: only its strategy keys reach it, so the config file's
            # tables with only those values give the same table (the group's inputs, set_inputs)
            sj = json.dumps(cfg.strategy.model_dump(mode="json"), sort_keys=True) if strat_on else ""
            hit = (params_from_config(cfg), sj)
            if len(cache) < 100_000:
                cache[ck] = hit
        p, sj = hit
        if strat_on:
            groups.append(by_strategy.setdefault(sj, len(by_strategy)))
            if len(by_strategy) > MAX_STRATEGY_GROUPS:
                raise _err(
                    spec.source,
                    f"more than {MAX_STRATEGY_GROUPS} distinct [strategy] tables: each rebuilds the inputs; "
                    "give strategy keys a list or a range with a step",
                )
        rows.append(p)
        kept.append(combo)
    if not rows:
        raise _err(spec.source, "every parameter set was refused by the config model")
    params = np.concatenate(rows) if rows else np.zeros(0, dtype=params_dt)
    if not strat_on:
        return Expansion(spec.keys, kept, params, skipped)
    return Expansion(spec.keys, kept, params, skipped, np.asarray(groups, dtype=np.int64), tuple(by_strategy), cfg0)


# ------------------------------------------------------------------------------------------------
# inputs


@dataclass(frozen=True, eq=False)
class SweepInputs:
    inp: Any  # engine.backtest.runner.BacktestInputs
    venue: str
    signals: str  # what the signal is (recorded)
    signals_sha256: str  # of the (n, m) p_up and exp_return arrays the sets read
    warmup_bars: int


def _arrays_sha256(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def inputs_from_panel(
    panel,
    cfg,
    start: int | None = None,
    end: int | None = None,
    signals: pd.DataFrame | None = None,
    source: str | None = None,
) -> SweepInputs:
    """Backtest inputs over ``start..end`` of ``panel``; the bars before ``start`` are warm-up: the
    ATR, spread estimate, correlation clusters, universe mask and demo signal are computed on the
    whole panel (causal: bar t reads bars <= t) and cut to the span, as the walk-forward's backtest
    does. ``signals`` (ts, pair, p_up, exp_return; e.g. a walk-forward's signals.parquet): the sets'
    signal; None: the built-in SMA 12/48 demo signal (as ``kq backtest`` without ``--signals``)."""
    from engine.backtest.demo import ma_signal
    from engine.backtest.io import signals_to_arrays
    from engine.backtest.runner import default_atr, default_clusters, default_spread, history_before, make_inputs

    lo = 0 if start is None else int(np.searchsorted(panel.ts, start, side="left"))
    hi = panel.n_bars if end is None else int(np.searchsorted(panel.ts, end, side="right"))
    if hi - lo < 2:
        raise InputError("fewer than 2 bars in the selected range")
    atr = default_atr(panel.high, panel.low, panel.close, cfg.features.atr_window)[lo:hi]
    spread = np.asarray(default_spread(panel.high, panel.low, panel.close, panel.valid, cfg.backtest.spread_window))
    cluster = default_clusters(panel.ts, panel.close, panel.valid, cfg.features)[lo:hi]
    tradable = None
    if cfg.backtest.apply_universe:
        from engine.universe import universe_mask

        tradable = np.asarray(universe_mask(panel))[lo:hi]
    sub = panel.slice(int(panel.ts[lo]), int(panel.ts[hi - 1]))
    if signals is not None:
        p_up, er = signals_to_arrays(signals, sub.ts, sub.pairs)
        what = source or "signals"
    else:
        p_up, er = ma_signal(panel.close, 12, 48, 50.0)
        p_up, er = p_up[lo:hi], er[lo:hi]
        what = "built-in demo signal (SMA 12/48 crossover; not a model)"
    inp = make_inputs(
        sub,
        p_up,
        er,
        cfg,
        atr=atr,
        spread=spread[lo:hi],
        cluster=cluster,
        tradable=tradable,
        history=history_before(panel, lo),
    )
    return SweepInputs(inp, sub.venue, what, _arrays_sha256(inp.p_up, inp.exp_ret), lo)


def strategy_inputs(inp, cfg):
    """The inputs of ``inp``'s bars and signal under ``cfg``'s [strategy] table:
    :func:`engine.backtest.runner.make_inputs` with ``cfg`` on the same arrays (bars, the P(up)
    before the selector's gate, expected returns, ATR, spread estimate, clusters, universe mask,
    entry block), as :func:`inputs_from_panel` builds them. The sets of one strategy group share
    them; ``inp`` must be the inputs of a config whose risk, features and backtest tables equal
    ``cfg``'s (a sweep never varies those that shape the inputs)."""
    from engine.backtest.runner import make_inputs
    from engine.store.panel import Panel

    nan = np.broadcast_to(np.float64(np.nan), inp.close.shape)  # trades/vwap: make_inputs reads neither
    bars = Panel("", inp.pairs, inp.ts, inp.open, inp.high, inp.low, inp.close, inp.volume, nan, nan, inp.valid)
    raw = inp.strategy.p_up if inp.strategy is not None else inp.p_up  # before the selector's gate
    return make_inputs(
        bars,
        raw,
        inp.exp_ret,
        cfg,
        atr=inp.atr,
        spread=inp.spread,
        cluster=inp.cluster,
        api_fault=inp.api_fault,
        operator=inp.operator,
        tradable=inp.tradable,
        entry_block=inp.entry_block,
        history=inp.strategy_history,
    )


def set_inputs(inp, expansion: Expansion, i: int):
    """The inputs set ``i`` of ``expansion`` runs on: ``inp`` itself, or its strategy group's."""
    if expansion.group is None:
        return inp
    return strategy_inputs(inp, expansion.group_config(int(expansion.group[i])))


# ------------------------------------------------------------------------------------------------
# run


@dataclass(frozen=True, eq=False)
class SweepResult:
    spec: GridSpec
    expansion: Expansion
    metrics: np.ndarray  # metrics_dt (S,)
    refusals: np.ndarray  # int64 (S, N_REASONS)
    chunk_size: int


def _run_chunk(inp, params: np.ndarray):
    """One chunk of sets (a top-level function: fan-out workers import it by name)."""
    from engine.backtest.runner import run_sweep

    return run_sweep(inp, params)


# a fan-out worker's last strategy group: (shared (base inputs, config), [strategy] JSON, the
# group's inputs); the shared object is held, so an identity match is never a reused id
_GROUP_MEMO: list = []


def _run_group_chunk(shared, task):
    """One chunk of one strategy group's sets (fan-out): the group's inputs are rebuilt in the
    worker from the shared base inputs and config (kept for the worker's next chunk of the same
    group)."""
    from engine.backtest.runner import run_sweep

    inp, cfg = shared
    table, params = task
    if not (_GROUP_MEMO and _GROUP_MEMO[0] is shared and _GROUP_MEMO[1] == table):
        _GROUP_MEMO[:] = []  # the last group's inputs are freed before the next group's are built
        _GROUP_MEMO[:] = [shared, table, strategy_inputs(inp, _with_strategy(cfg, table))]
    return run_sweep(_GROUP_MEMO[2], params)


def run_grid(
    inp,
    spec: GridSpec,
    expansion: Expansion,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    workers: int = 1,
    scheduler: str | None = None,
    progress: bool = False,
    on_chunk: Callable[[int], None] | None = None,
) -> SweepResult:
    """Run every set of ``expansion`` over ``inp`` in chunks of ``chunk_size`` sets; with
    ``workers > 1`` or a ``scheduler``, the chunks fan out through :func:`research.fanout.run_tasks`
    (the inputs are sent to each worker once). ``progress``: a tqdm bar over the chunks."""
    from engine.risk.enums import N_REASONS, metrics_dt

    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"--chunk-size must be a whole number >= 1, got {chunk_size!r}")
    P = expansion.params
    if expansion.group is not None:
        return _run_groups(inp, spec, expansion, chunk_size, workers, scheduler, progress, on_chunk)
    chunks = [P[i : i + chunk_size] for i in range(0, len(P), chunk_size)]
    if workers == 1 and scheduler is None:
        from tqdm import tqdm

        outs = []
        with tqdm(total=len(chunks), desc="sweep chunks", unit="chunk", disable=not progress, leave=False) as bar:
            for c in chunks:
                outs.append(_run_chunk(inp, c))
                bar.update(1)
                if on_chunk is not None:
                    on_chunk(len(c))
    else:
        from research.fanout import run_tasks

        outs = run_tasks(
            _run_chunk, chunks, workers=workers, scheduler=scheduler, desc="sweep chunks", progress=progress, shared=inp
        )
    metrics = np.concatenate([o[0] for o in outs]) if outs else np.zeros(0, dtype=metrics_dt)
    refusals = np.concatenate([o[1] for o in outs]) if outs else np.zeros((0, N_REASONS), dtype=np.int64)
    return SweepResult(spec, expansion, metrics, refusals, chunk_size)


def _run_groups(inp, spec, expansion, chunk_size, workers, scheduler, progress, on_chunk) -> SweepResult:
    """:func:`run_grid` with strategy keys: the sets of each strategy group (first appearance order)
    in chunks of ``chunk_size`` on that group's inputs (:func:`strategy_inputs`; serially one
    group's inputs at a time), the results put back in set order."""
    from engine.risk.enums import N_REASONS, metrics_dt

    assert expansion.group is not None
    P, grp = expansion.params, expansion.group
    order = np.argsort(grp, kind="stable")  # group by group, set order inside a group
    n_groups = len(expansion.strategies)
    cuts = np.searchsorted(grp[order], np.arange(n_groups + 1))
    chunks: list[tuple[int, np.ndarray]] = []  # (group, set indices)
    for g in range(n_groups):
        idx = order[cuts[g] : cuts[g + 1]]
        chunks += [(g, idx[i : i + chunk_size]) for i in range(0, len(idx), chunk_size)]
    metrics = np.zeros(len(P), dtype=metrics_dt)
    refusals = np.zeros((len(P), N_REASONS), dtype=np.int64)
    if workers == 1 and scheduler is None:
        from tqdm import tqdm

        cur, ginp = -1, None
        with tqdm(total=len(chunks), desc="sweep chunks", unit="chunk", disable=not progress, leave=False) as bar:
            for g, idx in chunks:
                if g != cur:
                    ginp = None  # the last group's inputs are freed before the next group's are built
                    cur, ginp = g, strategy_inputs(inp, expansion.group_config(g))
                o = _run_chunk(ginp, P[idx])
                metrics[idx], refusals[idx] = o[0], o[1]
                bar.update(1)
                if on_chunk is not None:
                    on_chunk(len(idx))
    else:
        from research.fanout import run_tasks

        tasks = [(expansion.strategies[g], P[idx]) for g, idx in chunks]
        outs = run_tasks(
            _run_group_chunk,
            tasks,
            workers=workers,
            scheduler=scheduler,
            desc="sweep chunks",
            progress=progress,
            shared=(inp, expansion.config),
        )
        for (_, idx), o in zip(chunks, outs, strict=True):
            metrics[idx], refusals[idx] = o[0], o[1]
    return SweepResult(spec, expansion, metrics, refusals, chunk_size)


def results_frame(res: SweepResult) -> pd.DataFrame:
    """One row per set: ``set_id``, the swept keys (dotted names), every metrics_dt field and
    ``refusals.<REASON>`` for every refusal reason."""
    from engine.risk.enums import Reason, metrics_dt

    ex = res.expansion
    cols: dict[str, Any] = {"set_id": np.arange(len(ex.values), dtype=np.int64)}
    for j, k in enumerate(ex.keys):
        cols[k] = pd.Series([v[j] for v in ex.values]).to_numpy()
    for f in metrics_dt.names or ():
        cols[f] = res.metrics[f]
    for r in Reason:
        if r.name.startswith("REFUSE_"):
            cols[f"refusals.{r.name}"] = res.refusals[:, int(r)]
    return pd.DataFrame(cols)


def best_set(df: pd.DataFrame, objective: str, direction: str) -> int | None:
    """Row index of the best set by ``objective`` (NaN rows never win; ties: the lowest set_id)."""
    v = df[objective].to_numpy(dtype=np.float64)
    ok = np.isfinite(v)
    if not ok.any():
        return None
    w = np.where(ok, v if direction == "max" else -v, -np.inf)
    return int(np.argmax(w))


def deflated_sharpe_of_best(inp, params_row: np.ndarray, trial_sharpes: np.ndarray, n_sets: int) -> dict:
    """The deflated Sharpe ratio (per-hour returns) of the set ``params_row`` (re-run with records)
    given ``n_sets`` sets tried and the variance of their per-hour Sharpe ratios (a set whose Sharpe
    is undefined, a flat equity curve, counts as 0)."""
    from engine.backtest.nb import BARS_PER_YEAR
    from engine.backtest.runner import run_backtest
    from research.stats import deflated_sharpe_ratio

    eq = run_backtest(inp, params_row).equity["equity"].astype(np.float64)
    r = np.diff(eq) / eq[:-1]
    sr = np.nan_to_num(np.asarray(trial_sharpes, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    sr = sr / math.sqrt(BARS_PER_YEAR)
    v = float(np.var(sr, ddof=1)) if sr.size > 1 else 0.0
    try:
        d = deflated_sharpe_ratio(r, n_trials=float(n_sets), sr_variance=v).to_dict()
    except InputError as e:
        return {"error": str(e), "n_trials": n_sets}
    return d | {"note": f"{n_sets} parameter sets tried; per-hour Sharpe ratios; DSR >= 0.95 is the usual bar"}


# ------------------------------------------------------------------------------------------------
# outputs


def _utc(ts: int) -> str:
    return pd.Timestamp(int(ts), unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M")


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def sweep_document(res: SweepResult, df: pd.DataFrame, si: SweepInputs, meta: Mapping, dsr: dict | None) -> dict:
    spec = res.spec
    b = best_set(df, spec.objective, spec.direction)
    inp = si.inp
    best = None
    if b is not None:
        row = df.iloc[b]
        best = {
            "set_id": int(row["set_id"]),
            "params": {k: _jsonable(row[k]) for k in spec.keys},
            "metrics": {k: _jsonable(row[k]) for k in df.columns if k not in spec.keys and k != "set_id"},
            "deflated_sharpe": dsr,
        }
    return _jsonable(
        {
            "grid": spec.raw,
            "grid_file": spec.source,
            "mode": spec.mode,
            "n_sets": len(df),
            "n_skipped": res.expansion.skipped,
            "n_strategy_configs": len(res.expansion.strategies),
            "objective": spec.objective,
            "direction": spec.direction,
            "data": {
                "venue": si.venue,
                "pairs": list(inp.pairs),
                "start": int(inp.ts[0]),
                "end": int(inp.ts[-1]),
                "start_utc": _utc(inp.ts[0]),
                "end_utc": _utc(inp.ts[-1]),
                "bars": int(inp.ts.shape[0]),
                "warmup_bars": si.warmup_bars,
            },
            "signals": si.signals,
            "signals_sha256": si.signals_sha256,
            **dict(meta),
            "best": best,
        }
    )


def write_sweep(out: str | Path, res: SweepResult, si: SweepInputs, meta: Mapping, *, dsr: dict | None = None) -> dict:
    """Write results.parquet, sweep.json, report.html and plotly.min.js into ``out`` atomically
    (a temporary sibling renamed into place). Returns the sweep.json document."""
    from engine.paths import atomic_folder

    df = results_frame(res)
    doc = sweep_document(res, df, si, meta, dsr)
    with atomic_folder(out) as tmp:
        df.to_parquet(tmp / "results.parquet", index=False)
        (tmp / "sweep.json").write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
        write_report(df, res.spec, doc, tmp)
    return doc


_PCT = {"total_return", "annual_return", "max_drawdown", "worst_month_drawdown", "mean_exposure", "win_rate"}


def _heat_axes(spec: GridSpec, df: pd.DataFrame) -> tuple[str, str] | None:
    if spec.heatmap is not None:
        return spec.heatmap
    varied = [k for k in spec.keys if df[k].nunique() > 1]
    return (varied[0], varied[1]) if len(varied) >= 2 else None


def _binned(s: pd.Series, max_bins: int = 12) -> pd.Series:
    if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        return s.astype(str)
    if s.nunique() <= max_bins:
        return s
    return pd.cut(s, max_bins).map(lambda iv: round(float(iv.mid), 6)).astype(float)


def write_report(df: pd.DataFrame, spec: GridSpec, doc: dict, folder: Path) -> None:
    """report.html (heat map of the mean objective over two swept keys, parallel coordinates of every
    swept key against the objective, the best sets) with plotly.js written once beside it."""
    import html

    import plotly.graph_objects as go

    from engine.report_html import plotly_script

    script = plotly_script(folder)  # the one copy beside the report, shared with every other report
    obj = spec.objective
    pct = obj in _PCT
    scale = 100.0 if pct else 1.0
    unit = " (%)" if pct else ""
    parts = []
    axes = _heat_axes(spec, df)
    if axes is not None:
        x, y = axes
        g = pd.DataFrame({x: _binned(df[x]), y: _binned(df[y]), obj: df[obj] * scale})
        piv = g.groupby([y, x], observed=True)[obj].mean().unstack(x)
        fig = go.Figure(
            go.Heatmap(
                z=piv.to_numpy(),
                x=[str(c) for c in piv.columns],
                y=[str(i) for i in piv.index],
                colorscale="Viridis",
                colorbar={"title": obj + unit},
                hovertemplate=f"{x}=%{{x}}<br>{y}=%{{y}}<br>mean {obj}=%{{z:.3f}}{unit}<extra></extra>",
            )
        )
        fig.update_layout(
            title=f"mean {obj}{unit} over the other swept keys",
            xaxis_title=x,
            yaxis_title=y,
            xaxis_type="category",
            yaxis_type="category",
            height=480,
        )
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False))
    dims = []
    for k in spec.keys:
        s = df[k]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            dims.append({"label": k, "values": s.astype(float).to_numpy()})
        else:
            cats = sorted(s.astype(str).unique())
            codes = s.astype(str).map({c: i for i, c in enumerate(cats)}).to_numpy()
            dims.append({"label": k, "values": codes, "tickvals": list(range(len(cats))), "ticktext": cats})
    ov = np.nan_to_num(df[obj].to_numpy(dtype=np.float64) * scale, nan=0.0, posinf=0.0, neginf=0.0)
    dims.append({"label": obj + unit, "values": ov})
    fig = go.Figure(go.Parcoords(line={"color": ov, "colorscale": "Viridis", "showscale": True}, dimensions=dims))
    fig.update_layout(title=f"swept keys against {obj}{unit} (one line per set)", height=520)
    parts.append(fig.to_html(full_html=False, include_plotlyjs=False))

    show = [
        "set_id",
        *spec.keys,
        obj,
        *[c for c in ("total_return", "max_drawdown", "sharpe", "n_trades", "n_refusals") if c != obj],
    ]
    asc = spec.direction == "min"
    top = df.sort_values([obj, "set_id"], ascending=[asc, True], na_position="last").head(20)

    def fmt(c: str, v: Any) -> str:
        if isinstance(v, float | np.floating):
            if not math.isfinite(v):
                return "n/a"
            return f"{100 * v:.2f}%" if c in _PCT else f"{v:.4g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in show)
    body = "".join("<tr>" + "".join(f"<td>{fmt(c, r[c])}</td>" for c in show) + "</tr>" for _, r in top.iterrows())
    best = doc.get("best") or {}
    d = best.get("deflated_sharpe") or {}
    dsr_line = f"deflated Sharpe ratio of the best set given {doc['n_sets']:,} sets tried: " + (
        f"{d['dsr']:.3f} (per-hour SR {d['sr']:.4f}, expected best of N by luck {d['sr0']:.4f})"
        if "dsr" in d
        else html.escape(str(d.get("error", "n/a")))
    )
    data = doc["data"]
    summary = (
        f"<p>{doc['n_sets']:,} parameter sets tried ({html.escape(doc['mode'])} mode"
        + (f", {doc['n_skipped']:,} combinations refused by the config model left out" if doc["n_skipped"] else "")
        + f"); {html.escape(data['venue'])} {html.escape(', '.join(data['pairs']))}, {data['start_utc']} to "
        f"{data['end_utc']} ({data['bars']:,} bars); signal: {html.escape(doc['signals'])}.</p>"
        f"<p><b>{html.escape(dsr_line)}</b>. The best of many sets is biased upwards: judge it by this "
        "figure, not by its raw Sharpe.</p>"
    )
    (folder / "report.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>kq sweep</title>"
        + script
        + "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style></head><body>"
        f"<h2>kq sweep: {html.escape(obj)} ({html.escape(spec.direction)})</h2>{summary}"
        + "".join(parts)
        + f"<h3>best 20 sets by {html.escape(obj)}</h3><table><tr>{head}</tr>{body}</table>"
        "<p>Returns, drawdowns, exposure and win rate in percent.</p></body></html>\n"
    )
