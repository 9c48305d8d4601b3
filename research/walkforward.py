"""The walk-forward research loop: folds -> fit -> out-of-sample predictions -> stack -> signals -> backtest.

Data
----
One :class:`~engine.store.panel.Panel` (hourly grid, several pairs) and its causal
:class:`~engine.features.featureset.FeatureSet`. A row is a (bar, pair). A row is **eligible** when its
features are all finite, the pair is a universe member at that bar (``engine.universe``, unless
``use_universe = false``) and its bar is at or after the research ``start``. Labels (the only future
reads) come from :func:`engine.features.labels.future_labels`: the up label and the forward log return
of each horizon h read bars t .. t+h.

Folds
-----
A :class:`research.folds.PurgedWalkForward` over the bars that hold at least one eligible row
(``[research.folds]``: train/test/purge/embargo bars, rolling or expanding). ``purge_bars`` must be
>= the longest horizon (checked by the config loader), so no training label reads a test bar. The
same folds serve every horizon. ``folds.json`` is the splitter's own ``folds_table``.

Per fold (every horizon at once)
--------------------------------
* Training matrix: for every pair with a training target of ANY horizon, the CONTIGUOUS block of its
  rows from the first to the last training bar (sorted by pair, then time; ``segments`` = pair), so
  the sequence models see an unbroken history. Column c of the label matrix ``Y`` (one column per
  horizon) is a training target only if the row is eligible, its bar is a training bar of the fold
  (the purge and embargoed bars are not) and its label of that horizon exists; other entries are
  NaN (history only). ``returns`` (same shape) is the simple forward return
  ``exp(fwd_log_return) - 1`` of the target rows (the expected-return heads are in simple returns,
  the unit the backtester compares with the round-trip cost).
* ONE :class:`research.models.meta.StackingMetaLearner` per fold with the configured base models,
  regime classifier and ``inner_folds`` purged inner folds, fitted on ``Y``: the sequence nets (one
  head per horizon) and the RandomForest (multi-output) are fitted once for every horizon
  (``share_horizons``), XGBoost/LightGBM per horizon, one stacker and return head per horizon; it
  fits the bases on the inner folds for out-of-fold stacking inputs, then refits them on the whole
  window. Independent fits run on ``n_jobs`` threads (results do not depend on it).
* Prediction: per pair the rows from ``warm`` bars before the test block to its end (``warm`` =
  the longest sequence length / regime window + 2) so sequence models and the regime labels have
  their history; the output is sliced to the eligible test rows. Every eligible test row gets one
  prediction per model and horizon (a sequence model without a full valid window gives NaN P(up)
  there, and the meta-learner reads it as 0.5 = no view).
* Folds are independent (every input of a fold is the shared data and its own bars; the seed is the
  config's, the permutation test's is (seed, fold, horizon)). With ``[research.fanout]`` ``workers``
  > 1 or a ``scheduler`` they run on worker processes or a Dask cluster (research/fanout.py) and the
  results are bit-identical to the serial run; the ``step``/``fit`` progress events are then not
  sent (``fold_done`` and ``fold_oos`` come when all folds are back).

Outputs
-------
``predictions`` (ts, pair, horizon, model, fold, p_up, exp_return; models ``xgboost``, ``lightgbm``,
``random_forest``, ``lstm``, ``transformer``, ``meta``; ``exp_return`` is a simple return over the
horizon), ``regime`` (ts, pair, fold, regime, regime_code) from the regime classifier fitted inside
the fold's meta-learner, per-(model, fold, horizon) quality (AUC, log loss,
Brier, hit rate) and the pooled out-of-sample quality per (model, horizon). A pooled out-of-sample
AUC above ``leak_auc`` (0.60; published crypto direction work reports 0.52-0.56) is flagged as a
suspected leak (``leak_flags``, ``suspected_leak``, red in the report). The rule applies to every
horizon whose labelled rows give at least ``leak_min_effective_n`` (500) effective outcomes, counted
as ``n / h`` because h-bar labels overlap: hourly direction is always judged (the issue's rule), a
24 h AUC only on enough data (on a 10-day test block of two pairs the 24 h AUC swings between 0.3
and 0.7 by chance, measured).

Strategy
--------
Only the meta-learner's ``trade_horizon`` output becomes signals (ts, pair, p_up, exp_return): a
signal at ts is computed from bars <= ts and acts in the next bar (the backtester's convention). The
backtest runs over the out-of-sample span (first to last test bar) with the config's risk, execution
and backtest rules; ATR, spread and correlation clusters are computed on the full loaded panel
(causal) and then sliced, so they are warm at the first test bar. For the overfitting statistics
every model's own trade-horizon output is also backtested (diagnostics only): PBO (CSCV) over those
hourly return series, and the deflated Sharpe ratio of the meta strategy given ``n_trials``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from engine.config import Config, LabelsConfig
from engine.errors import ConfigError, InputError
from engine.timeutil import HOUR
from research.config import ResearchConfig
from research.models.base import make_model, model_class
from research.models.meta import StackingMetaLearner

__all__ = [
    "PREDICTION_COLUMNS",
    "WalkForwardResult",
    "eligible_rows",
    "fold_raw_regime",
    "make_meta",
    "make_splitter",
    "oos_backtest",
    "panel_features",
    "quality",
    "row_block",
    "run_walkforward",
    "strategy_signals",
    "warm_bars",
    "window_matrix",
]

PREDICTION_COLUMNS = ("ts", "pair", "horizon", "model", "fold", "p_up", "exp_return")

# ------------------------------------------------------------------------------------------------
# result


@dataclass(eq=False)
class WalkForwardResult:
    folds: list[dict]
    predictions: pd.DataFrame
    regime: pd.DataFrame
    model_metrics: list[dict]  # per model, fold, horizon (and fold = "all")
    leak_flags: list[dict]
    signals: pd.DataFrame
    backtest: Any  # engine.backtest.runner.BacktestResult of the meta signals
    strategy_stats: dict
    timings: list[dict]
    labels: dict[int, np.ndarray] = field(repr=False, default_factory=dict)  # up labels (n, m) per horizon
    ts: np.ndarray | None = None
    pairs: tuple[str, ...] = ()
    fitted: dict = field(repr=False, default_factory=dict)  # (fold, horizon) -> fitted meta (keep_models)
    stage_seconds: dict = field(default_factory=dict)
    # fold -> (engine.strategy.RegimeRule fitted on its training window, first and last test bar ts)
    regime_rules: dict = field(default_factory=dict)

    @property
    def suspected_leak(self) -> bool:
        return bool(self.leak_flags)


# ------------------------------------------------------------------------------------------------
# pieces


def eligible_rows(fs, member: np.ndarray | None, start_ts: int | None = None) -> np.ndarray:
    """(n, m) bool: features all finite, universe member, bar at or after ``start_ts``."""
    finite = fs.valid & np.isfinite(fs.values).all(axis=2)
    out = finite if member is None else finite & np.asarray(member, dtype=bool)
    if start_ts is not None:
        out = out & (fs.ts >= int(start_ts))[:, None]
    return out


def make_splitter(rc: ResearchConfig):
    from research.folds import PurgedWalkForward

    f = rc.folds
    return PurgedWalkForward(
        train_bars=f.train_bars,
        test_bars=f.test_bars,
        purge_bars=f.purge_bars,
        embargo_bars=f.embargo_bars,
        expanding=f.expanding,
    )


def _base_models(rc: ResearchConfig, seed: int) -> list[tuple[str, Any]]:
    return [(n, make_model(n, tiny=rc.tiny, config=getattr(rc.models, n), seed=seed)) for n in rc.base_models]


def make_meta(rc: ResearchConfig, seed: int) -> StackingMetaLearner:
    """A new (unfitted) stacking meta-learner of the research config: the walk-forward's per fold,
    the final model's (research.bundle.fit_final)."""
    mc = rc.models.meta
    return StackingMetaLearner(
        models=_base_models(rc, seed),
        regime=make_model("regime", tiny=rc.tiny, config=rc.models.regime),
        use_regime=mc.use_regime,
        inner_folds=rc.folds.inner_folds,
        purge_bars=rc.folds.purge_bars,
        C=mc.C,
        ridge_alpha=mc.ridge_alpha,
        model_size="tiny" if rc.tiny else "research",
        seed=seed,
        share_horizons=mc.share_horizons,
        n_jobs=mc.n_jobs,
        inner_stride=mc.inner_stride,
    )


def warm_bars(meta: StackingMetaLearner) -> int:
    """History rows a prediction needs before its bar (sequence length / regime windows + 2)."""
    w = 1
    assert meta.models is not None  # make_meta always passes the base models
    for _, m in meta.models:
        w = max(w, int(getattr(m, "seq_len", 1)))
    if meta.use_regime and meta.regime is not None:
        w = max(w, int(meta.regime.trend_bars), int(meta.regime.vol_bars))
    return w + 2


def row_block(X3: np.ndarray, close: np.ndarray, lo: int, hi: int, cols: list[int]):
    """Rows lo..hi (inclusive) of every pair in ``cols``, pair-major: X (r, k), close, segments, bar."""
    nb = hi - lo + 1
    X = np.concatenate([X3[lo : hi + 1, j, :] for j in cols], axis=0)
    c = np.concatenate([close[lo : hi + 1, j] for j in cols])
    seg = np.repeat(np.asarray(cols, dtype=np.int64), nb)
    bar = np.tile(np.arange(lo, hi + 1, dtype=np.int64), len(cols))
    return X, c, seg, bar


def window_matrix(X3: np.ndarray, close: np.ndarray, targets: list, ups: list, fwds: list, lo: int, hi: int):
    """One training window (every horizon), built as a walk-forward fold builds it.

    ``targets[c]`` (n, m) bool marks horizon c's training targets (eligible, a training bar, label
    exists); ``ups[c]``/``fwds[c]`` are its labels and forward simple returns. Returns ``None`` when
    no pair has a target in bars ``lo..hi``, else ``(X, close, segments, bar, Y, R)``: every pair
    with a target of any horizon contributes its CONTIGUOUS rows ``lo..hi`` (pair-major); ``Y``/``R``
    are (rows, H), NaN outside each horizon's targets (history rows). Used by the final model
    (research.bundle.fit_final) so it trains on the same rows a fold would."""
    anyt = np.logical_or.reduce(targets)
    cols = [j for j in range(anyt.shape[1]) if anyt[lo : hi + 1, j].any()]
    if not cols:
        return None
    X, c, seg, bar = row_block(X3, close, lo, hi, cols)
    Y = np.full((X.shape[0], len(targets)), np.nan)
    R = np.full((X.shape[0], len(targets)), np.nan)
    for ci, (t, u, f) in enumerate(zip(targets, ups, fwds)):
        tmask = np.concatenate([t[lo : hi + 1, j] for j in cols])
        Y[:, ci] = np.where(tmask, np.concatenate([u[lo : hi + 1, j] for j in cols]), np.nan)
        R[:, ci] = np.where(tmask, np.concatenate([f[lo : hi + 1, j] for j in cols]), np.nan)
    return X, c, seg, bar, Y, R


def quality(y: np.ndarray, p: np.ndarray) -> dict:
    """AUC, log loss, Brier score and hit rate of P(up) against 0/1 labels (rows with both finite)."""
    from sklearn.metrics import roc_auc_score

    ok = np.isfinite(y) & np.isfinite(p)
    y, p = y[ok], p[ok]
    out: dict[str, Any] = {"n": int(y.size)}
    if y.size == 0:
        return out | {"auc": None, "log_loss": None, "brier": None, "hit_rate": None, "base_rate": None}
    pc = np.clip(p, 1e-15, 1 - 1e-15)
    out["auc"] = float(roc_auc_score(y, p)) if 0 < y.sum() < y.size else None
    out["log_loss"] = float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc)))
    out["brier"] = float(np.mean((p - y) ** 2))
    out["hit_rate"] = float(np.mean((p >= 0.5) == (y == 1)))
    out["base_rate"] = float(np.mean(y))
    return out


# ------------------------------------------------------------------------------------------------
# the loop


def panel_features(panel, cfg: Config, rc: ResearchConfig, features=None, member: np.ndarray | None = None):
    """(universe mask, feature set) of ``panel``: the given ones or the defaults (``universe_mask``
    when ``rc.use_universe``, features built with ``cfg.features``); a feature set of other bars or
    pairs is an InputError. Shared by the walk-forward and the final fit (research.bundle)."""
    from engine.features.featureset import build_features

    if member is None and rc.use_universe:
        from engine.universe import universe_mask

        member = universe_mask(panel)
    if features is None:
        features = build_features(panel, cfg.features, member)
    if features.values.shape[:2] != panel.close.shape or not np.array_equal(features.ts, panel.ts):
        raise InputError("features do not match the panel (bars or pairs)")
    return member, features


@dataclass(eq=False)
class _FoldContext:
    """What every fold reads (sent to each worker once when folds fan out)."""

    X3: np.ndarray
    close: np.ndarray
    elig: np.ndarray
    up: dict
    fwd: dict
    horizons: tuple[int, ...]
    ts: np.ndarray
    pair_arr: np.ndarray
    cfg: Config
    rc: ResearchConfig
    shuffle_seed: int | None
    keep_models: bool


@dataclass(eq=False)
class _FoldOutput:
    fold: int
    preds: list[pd.DataFrame]
    regime: pd.DataFrame | None
    timing: dict
    meta: Any  # the fitted meta-learner when keep_models, else None
    # (RegimeRule fitted on the training window, first test bar ts, last test bar ts); None without a regime
    regime_rule: tuple | None = None


def _fold_task(ctx: _FoldContext, task: tuple) -> _FoldOutput | None:
    """One fold on a worker (research.fanout): no progress callback crosses processes."""
    return _run_fold(ctx, task, None)


def _run_fold(ctx: _FoldContext, task: tuple, progress: Callable[..., None] | None) -> _FoldOutput | None:
    """Fit fold ``k`` (training bars ``tr_b``) and predict its test bars ``te_b``; ``None`` when the
    fold has no training target or no test row. Everything it reads comes from ``ctx`` and the task
    (the seed is the config's, the label permutation's is (seed, fold, horizon)), so a fold gives the
    same result in any process."""
    k, tr_b, te_b = task
    X3, close, elig, up, fwd, horizons = ctx.X3, ctx.close, ctx.elig, ctx.up, ctx.fwd, ctx.horizons
    rc, cfg = ctx.rc, ctx.cfg
    n, m = elig.shape
    is_train_bar = np.zeros(n, dtype=bool)
    is_train_bar[tr_b] = True
    lo, hi = int(tr_b.min()), int(tr_b.max())
    te_set = np.zeros(n, dtype=bool)
    te_set[te_b] = True
    test_rows = elig & te_set[:, None]
    test_cols = [j for j in range(m) if test_rows[:, j].any()]
    targets = [elig & is_train_bar[:, None] & np.isfinite(up[h]) for h in horizons]
    # ONE training block for every horizon: a pair enters with its contiguous rows lo..hi when it
    # has a target of any horizon; Y[:, c] is NaN outside horizon c's targets (history rows)
    wm = window_matrix(X3, close, targets, [up[h] for h in horizons], [fwd[h] for h in horizons], lo, hi)
    if wm is None or not test_cols:
        return None
    X, c, seg, bar, Y, Rt = wm
    if ctx.shuffle_seed is not None:
        for ci, h in enumerate(horizons):
            idx = np.flatnonzero(np.isfinite(Y[:, ci]))
            perm = np.random.default_rng([int(ctx.shuffle_seed), k, int(h)]).permutation(idx)
            Y[idx, ci], Rt[idx, ci] = Y[perm, ci], Rt[perm, ci]
    n_train = {int(h): int(np.isfinite(Y[:, ci]).sum()) for ci, h in enumerate(horizons)}
    times = ctx.ts[bar]
    meta = make_meta(rc, cfg.seed)
    fit_times: dict[str, float] = {}
    hs_label = "/".join(str(h) for h in horizons)

    def on_fit(ev, name, arg):
        if ev == "done":
            fit_times[name] = fit_times.get(name, 0.0) + float(arg)
        if progress:
            progress("fit", fold=k, horizon=hs_label, model=name, stage=ev, final=arg if ev == "start" else None)

    if progress:
        progress("step", fold=k, horizon=hs_label, n_train=int(np.isfinite(Y).any(axis=1).sum()))
    t0 = time.perf_counter()
    meta.fit(
        X,
        Y if len(horizons) > 1 else Y[:, 0],
        close=c,
        returns=Rt if len(horizons) > 1 else Rt[:, 0],
        times=times,
        segments=seg,
        on_fit=on_fit,
    )
    t_fit = time.perf_counter() - t0

    # predict the test block with warm-up rows before it (every horizon in one pass)
    t0 = time.perf_counter()
    plo = max(int(te_b.min()) - warm_bars(meta), 0)
    phi = int(te_b.max())
    Xp, cp, sp, bp = row_block(X3, close, plo, phi, test_cols)
    keep = np.concatenate([test_rows[plo : phi + 1, j] for j in test_cols])
    out = meta.predict_all(Xp, close=cp, segments=sp)
    t_pred = time.perf_counter() - t0
    ts_k = ctx.ts[bp[keep]]
    pr_k = ctx.pair_arr[sp[keep]]
    preds: list[pd.DataFrame] = []
    for ci, h in enumerate(horizons):
        for j, (name, est) in enumerate(meta.base_models_):
            p = out["base"][keep, j, ci]
            mu_u = np.atleast_1d(est.mu_up_)[ci]
            mu_d = np.atleast_1d(est.mu_down_)[ci]
            er = p * mu_u + (1.0 - p) * mu_d
            preds.append(
                pd.DataFrame(
                    {
                        "ts": ts_k,
                        "pair": pr_k,
                        "horizon": np.int64(h),
                        "model": name,
                        "fold": np.int64(k),
                        "p_up": p,
                        "exp_return": er,
                    }
                )
            )
        preds.append(
            pd.DataFrame(
                {
                    "ts": ts_k,
                    "pair": pr_k,
                    "horizon": np.int64(h),
                    "model": "meta",
                    "fold": np.int64(k),
                    "p_up": out["p_up"][keep, ci],
                    "exp_return": out["exp_return"][keep, ci],
                }
            )
        )
    regime = None
    rule = None
    if meta.regime_ is not None:
        from engine.strategy import regime_rule_of
        from research.models.regime import REGIME_NAMES

        rule = (regime_rule_of(meta.regime_), int(ctx.ts[int(te_b.min())]), int(ctx.ts[int(te_b.max())]))

        codes = meta.regime_.predict(cp, segments=sp)[keep].astype(np.int64)
        names = np.array(REGIME_NAMES + ("unknown",), dtype=object)[np.where(codes < 0, 4, codes)]
        regime = pd.DataFrame({"ts": ts_k, "pair": pr_k, "fold": np.int64(k), "regime": names, "regime_code": codes})
    timing = {
        "fold": k,
        "horizon": hs_label,
        "horizons": [int(h) for h in horizons],
        "fit_s": t_fit,
        "predict_s": t_pred,
        "n_train_rows": max(n_train.values()),
        "n_train_rows_by_horizon": n_train,
        "n_test_rows": int(keep.sum()),
        "base_fit_s": {kk: round(v, 4) for kk, v in fit_times.items()},
    }
    return _FoldOutput(k, preds, regime, timing, meta if ctx.keep_models else None, rule)


def run_walkforward(
    panel,
    cfg: Config,
    rc: ResearchConfig,
    *,
    features=None,
    member: np.ndarray | None = None,
    start_ts: int | None = None,
    progress: Callable[..., None] | None = None,
    shuffle_train_labels: int | None = None,
    keep_models: bool = False,
    backtest: bool = True,
    max_folds: int | None = None,
) -> WalkForwardResult:
    """Run the whole loop on ``panel`` (see the module doc).

    ``features``: a prebuilt FeatureSet of ``panel`` (default: built with ``cfg.features``).
    ``member``: (n, m) universe mask (default: ``engine.universe.universe_mask`` when
    ``rc.use_universe``). ``start_ts``: first bar that may be trained on or predicted (history
    before it only warms features). ``progress(event, **info)`` receives ``plan``, ``step``,
    ``fit``, ``fold_done`` events, then per fold (in fold order) ``fold_oos`` with ``fold``,
    ``n_folds`` and ``backtest()``: the meta strategy's backtest over the test blocks of the folds
    back so far (:func:`oos_backtest`; the last fold's equals ``result.backtest``); an exception
    raised by ``progress`` stops the loop, so no later fold is trained (serial folds; with fan-out
    every fold is already done). ``shuffle_train_labels`` (a seed): permute the labels (and
    forward returns) among each fold's training targets - a permutation test; out-of-sample skill
    must then vanish. ``keep_models``: keep every fitted meta-learner in ``result.fitted``.
    ``max_folds``: run only the first N folds (benchmarks, debugging).
    """
    from engine.features.labels import future_labels

    if cfg.strategy.enabled and cfg.strategy.regime_thresholds == "model" and not rc.models.meta.use_regime:
        raise ConfigError(
            '[strategy] regime_thresholds = "model" needs the fitted regime classifier: '
            "[research.models.meta] use_regime = true"
        )
    horizons = rc.horizons_for(cfg)
    n, m = panel.close.shape
    stage: dict[str, float] = {}
    t_stage = time.perf_counter()
    member, features = panel_features(panel, cfg, rc, features, member)
    elig = eligible_rows(features, member, start_ts)
    if not elig.any():
        raise InputError(
            "no eligible rows: no bar has complete features for a universe member in the range "
            "(span too short for the feature warm-up, or no pair in the universe)"
        )
    X3 = np.where(np.isfinite(features.values), features.values, np.nan)
    close = np.where(panel.valid, panel.close, np.nan)
    lab = future_labels(panel, LabelsConfig(horizons=horizons), cfg.fees, with_cost=rc.label_with_cost)
    up = {h: lab[f"future_up_{h}h"] for h in horizons}
    fwd = {h: np.expm1(lab[f"fwd_ret_{h}h"]) for h in horizons}

    stage["features_labels_s"] = time.perf_counter() - t_stage
    t_stage = time.perf_counter()
    bars = np.flatnonzero(elig.any(axis=1))
    btimes = panel.ts[bars]
    splitter = make_splitter(rc)
    table = splitter.folds_table(btimes)
    splits = [(bars[tr], bars[te]) for tr, te in splitter.split(None, times=btimes)]
    n_folds_total = len(splits)
    if max_folds is not None:
        splits, table = splits[: int(max_folds)], table[: int(max_folds)]
    if progress:
        shared = [
            bool(
                rc.models.meta.share_horizons
                and len(horizons) > 1
                and getattr(model_class(nm), "supports_multi_output", False)
            )
            for nm in rc.base_models
        ]
        progress(
            "plan",
            n_folds=len(splits),
            horizons=horizons,
            models=rc.base_models,
            inner_folds=rc.folds.inner_folds,
            fits_per_fold=(rc.folds.inner_folds + 1) * sum(1 if s else len(horizons) for s in shared),
        )

    ctx = _FoldContext(
        X3=X3,
        close=close,
        elig=elig,
        up=up,
        fwd=fwd,
        horizons=tuple(int(h) for h in horizons),
        ts=panel.ts,
        pair_arr=np.asarray(panel.pairs, dtype=object),
        cfg=cfg,
        rc=rc,
        shuffle_seed=shuffle_train_labels,
        keep_models=keep_models,
    )
    pred_parts: list[pd.DataFrame] = []
    reg_parts: list[pd.DataFrame] = []
    timings: list[dict] = []
    fitted: dict = {}
    rules: dict = {}
    tasks = [(k, tr_b, te_b) for k, (tr_b, te_b) in enumerate(splits)]
    fo = rc.fanout
    outs: Iterable[_FoldOutput | None]
    if fo.workers > 1 or fo.scheduler is not None:
        # independent folds on worker processes (research/fanout.py); every input of a fold comes
        # from ctx and its task, so the result does not depend on the worker that ran it
        from research.fanout import run_tasks

        outs = run_tasks(_fold_task, tasks, workers=fo.workers, scheduler=fo.scheduler, shared=ctx, desc="folds")
    else:
        outs = (_run_fold(ctx, t, progress) for t in tasks)
    for fo_out in outs:
        if fo_out is None:
            continue
        pred_parts.extend(fo_out.preds)
        if fo_out.regime is not None:
            reg_parts.append(fo_out.regime)
        if fo_out.regime_rule is not None:
            rules[fo_out.fold] = fo_out.regime_rule
        timings.append(fo_out.timing)
        for h in horizons:
            if keep_models:
                fitted[(fo_out.fold, int(h))] = fo_out.meta
            if progress:
                progress("fold_done", fold=fo_out.fold, horizon=h)
        if progress:
            # the out-of-sample backtest of the folds back so far, computed only when asked for
            # (studies prune a weak trial on it: research/study.py); raising here stops the run
            parts, rules_now = list(pred_parts), dict(rules)
            progress(
                "fold_oos",
                fold=fo_out.fold,
                n_folds=len(tasks),
                backtest=lambda parts=parts, rules_now=rules_now: oos_backtest(panel, cfg, rc, parts, rules_now),
            )

    if not pred_parts:
        raise InputError("no fold had training and test rows")
    preds = pd.concat(pred_parts, ignore_index=True)
    preds["ts"] = preds["ts"].astype(np.int64)
    preds["pair"] = preds["pair"].astype(str)
    preds = preds.sort_values(["horizon", "model", "fold", "ts", "pair"], kind="mergesort").reset_index(drop=True)
    preds = preds[list(PREDICTION_COLUMNS)]
    regime = (
        pd.concat(reg_parts, ignore_index=True)
        if reg_parts
        else pd.DataFrame({"ts": [], "pair": [], "fold": [], "regime": [], "regime_code": []})
    )
    if len(regime):
        regime["ts"] = regime["ts"].astype(np.int64)
        regime["pair"] = regime["pair"].astype(str)
        regime = regime.sort_values(["fold", "ts", "pair"], kind="mergesort").reset_index(drop=True)

    stage["folds_s"] = time.perf_counter() - t_stage
    t_stage = time.perf_counter()
    model_metrics, leak = _model_metrics(preds, up, panel, rc)
    signals = strategy_signals(preds, rc.trade_horizon)
    res = WalkForwardResult(
        folds=table,
        predictions=preds,
        regime=regime,
        model_metrics=model_metrics,
        leak_flags=leak,
        signals=signals,
        backtest=None,
        strategy_stats={},
        timings=timings,
        labels=up,
        ts=panel.ts,
        pairs=tuple(panel.pairs),
        fitted=fitted,
        regime_rules=rules,
    )
    stage["metrics_s"] = time.perf_counter() - t_stage
    if backtest:
        t_stage = time.perf_counter()
        res.backtest, res.strategy_stats = _backtest(panel, cfg, rc, preds, rules)
        stage["backtests_s"] = time.perf_counter() - t_stage
    res.stage_seconds = {k: round(v, 3) for k, v in stage.items()} | {"n_folds_total": n_folds_total}
    return res


def fold_raw_regime(panel, regime_rules: dict | None, lo: int, hi: int) -> np.ndarray:
    """``[strategy] regime_thresholds = "model"``: the raw regime codes (before hysteresis) of panel
    rows ``lo .. hi - 1``, (hi - lo, m) int8: each fold's test bars labelled by the rule fitted on
    THAT fold's training window (``regime_rules``: fold -> (RegimeRule, first, last test bar ts);
    the purge and embargo keep every training bar before the test block), with the features computed
    on the panel's history before the row (warm at the first test bar); -1 on rows of no test block.
    Causal: a row reads closes at rows <= it and thresholds fitted before it."""
    from engine.strategy import regime_raw

    if not regime_rules:
        raise InputError('[strategy] regime_thresholds = "model": no fold has a fitted regime classifier')
    out = np.full((hi - lo, panel.close.shape[1]), -1, dtype=np.int8)
    for _, (rule, t_first, t_last) in sorted(regime_rules.items()):
        a = max(int(np.searchsorted(panel.ts, int(t_first))), lo)
        b = min(int(np.searchsorted(panel.ts, int(t_last), side="right")), hi)
        if a >= b:
            continue
        # the windows' own history before row a (the kernel sums each window directly, so a value
        # does not depend on where the array starts beyond its window)
        w0 = max(a - max(int(rule.trend_bars), int(rule.vol_bars)) - 1, 0)
        raw = regime_raw(panel.close[w0:b], panel.valid[w0:b], rule)
        out[a - lo : b - lo] = raw[a - w0 :]
    return out


def _raw_regime(panel, cfg: Config, regime_rules: dict | None, lo: int, hi: int) -> np.ndarray | None:
    if cfg.strategy.enabled and cfg.strategy.regime_thresholds == "model":
        return fold_raw_regime(panel, regime_rules, lo, hi)
    return None


def oos_backtest(panel, cfg: Config, rc: ResearchConfig, parts: list[pd.DataFrame], regime_rules: dict | None = None):
    """The meta strategy's backtest over the out-of-sample span of the prediction frames ``parts``
    (some folds' predictions): the same inputs and rules as the walk-forward's own backtest, so
    with every fold's predictions it equals ``WalkForwardResult.backtest``. ``regime_rules``: the
    folds' fitted regime rules (``WalkForwardResult.regime_rules``; ``regime_thresholds = "model"``)."""
    from engine.backtest.runner import run_backtest
    from engine.risk.params import params_from_config

    preds = pd.concat(parts, ignore_index=True)
    preds["ts"] = preds["ts"].astype(np.int64)
    preds["pair"] = preds["pair"].astype(str)
    sig = strategy_signals(preds, rc.trade_horizon)
    return run_backtest(_oos_window(panel, cfg, sig, regime_rules).inputs(sig, cfg), params_from_config(cfg))


@dataclass(frozen=True, eq=False)
class _OosWindow:
    """The out-of-sample span of a signal frame cut out of the panel, with what the backtest reads
    from before it: ATR, spread estimate and clusters computed over the whole panel, the fitted raw
    regime codes (``regime_thresholds = "model"``), and the bars before the span (``history``) on
    which the strategy layer's windows warm up, as the daemon's always do."""

    sub: Any
    t0: int
    t1: int
    atr: np.ndarray
    spread: np.ndarray
    cluster: np.ndarray
    raw: np.ndarray | None
    history: Any

    def inputs(self, sig: pd.DataFrame, cfg: Config):
        from engine.backtest.io import signals_to_arrays
        from engine.backtest.runner import make_inputs

        p_up, er = signals_to_arrays(sig, self.sub.ts, self.sub.pairs)
        raw = self.raw if cfg.strategy.enabled else None
        return make_inputs(
            self.sub,
            p_up,
            er,
            cfg,
            atr=self.atr,
            spread=self.spread,
            cluster=self.cluster,
            raw_regime=raw,
            history=self.history,
        )


def _oos_window(panel, cfg: Config, sig: pd.DataFrame, regime_rules: dict | None) -> _OosWindow:
    from engine.backtest.runner import default_atr, default_clusters, default_spread, history_before

    t0, t1 = int(sig["ts"].min()), int(sig["ts"].max())
    lo = int(np.searchsorted(panel.ts, t0))
    hi = int(np.searchsorted(panel.ts, t1, side="right"))
    atr = default_atr(panel.high, panel.low, panel.close, cfg.features.atr_window)[lo:hi]
    spread = np.asarray(default_spread(panel.high, panel.low, panel.close, panel.valid, cfg.backtest.spread_window))
    cluster = default_clusters(panel.ts, panel.close, panel.valid, cfg.features)[lo:hi]
    keep = strategy_history_bars(cfg, regime_rules)
    history = history_before(panel, lo, keep)
    raw = oos_raw_regime(panel, cfg, regime_rules, hi)
    if raw is not None:
        raw = raw[lo - (0 if history is None else history.n_bars) :]
    return _OosWindow(panel.slice(t0, t1), t0, t1, atr, spread[lo:hi], cluster, raw, history)


def strategy_history_bars(cfg: Config, regime_rules: dict | None) -> int:
    """Rows of history the selector's windows need before a span (``[strategy] lookback_bars``;
    with ``regime_thresholds = "model"``, the longest of the folds' fitted windows)."""
    s = cfg.strategy
    if s.enabled and s.regime_thresholds == "model" and regime_rules:
        return max(int(s.lookback_for(r.trend_bars, r.vol_bars)) for r, _, _ in regime_rules.values())
    return int(s.lookback_bars)


def oos_raw_regime(panel, cfg: Config, regime_rules: dict | None, hi: int) -> np.ndarray | None:
    """``regime_thresholds = "model"``: the raw regime codes of panel rows 0..hi-1 (``fold_raw_regime``:
    each test block by its own fold's rule), the rows before the first test block by the first
    fold's rule (fitted on its training window, which ends before that block), so the hysteresis
    of a span cut at any row is warm; None in "config" mode."""
    if not (cfg.strategy.enabled and cfg.strategy.regime_thresholds == "model"):
        return None
    from engine.strategy import regime_raw

    out = fold_raw_regime(panel, regime_rules, 0, hi)  # raises without a fitted rule
    assert regime_rules
    rule0, t_first, _ = min(regime_rules.values(), key=lambda v: int(v[1]))
    first = min(int(np.searchsorted(panel.ts, int(t_first))), hi)
    if first > 0:
        out[:first] = regime_raw(panel.close[:first], panel.valid[:first], rule0)
    return out


def _label_of(preds: pd.DataFrame, up: dict, panel) -> np.ndarray:
    col = {p: j for j, p in enumerate(panel.pairs)}
    t = ((preds["ts"].to_numpy() - int(panel.ts[0])) // HOUR).astype(np.int64)
    j = np.array([col[p] for p in preds["pair"]], dtype=np.int64)
    y = np.full(len(preds), np.nan)
    for h in np.unique(preds["horizon"]):
        s = (preds["horizon"] == h).to_numpy()
        y[s] = up[int(h)][t[s], j[s]]
    return y


def _model_metrics(preds: pd.DataFrame, up: dict, panel, rc: ResearchConfig) -> tuple[list[dict], list[dict]]:
    y = _label_of(preds, up, panel)
    p = preds["p_up"].to_numpy()
    out, leak = [], []
    keys = preds[["model", "horizon", "fold"]].to_numpy()
    groups: dict[tuple, list[int]] = {}
    for i, (mo, h, f) in enumerate(map(tuple, keys)):
        groups.setdefault((mo, int(h), int(f)), []).append(i)
        groups.setdefault((mo, int(h), "all"), []).append(i)
    order = sorted(groups, key=lambda g: (g[0] != "meta", g[0], g[1], str(g[2])))
    for g in order:
        ix = np.asarray(groups[g])
        q = quality(y[ix], p[ix])
        q["n_predicted"] = int(np.isfinite(p[ix]).sum())
        row = {"model": g[0], "horizon": g[1], "fold": g[2], **q}
        n_eff = q["n"] / max(int(g[1]), 1)  # overlapping h-bar labels: about n / h independent outcomes
        row["effective_n"] = float(n_eff)
        row["suspected_leak"] = bool(
            g[2] == "all" and q.get("auc") is not None and q["auc"] > rc.leak_auc and n_eff >= rc.leak_min_effective_n
        )
        out.append(row)
        if row["suspected_leak"]:
            leak.append(
                {
                    "model": g[0],
                    "horizon": g[1],
                    "auc": q["auc"],
                    "threshold": rc.leak_auc,
                    "effective_n": float(n_eff),
                    "note": "out-of-sample AUC above the sanity bound: a leak to investigate, not a result",
                }
            )
    return out, leak


def strategy_signals(preds: pd.DataFrame, horizon: int, model: str = "meta") -> pd.DataFrame:
    """Signals (ts, pair, p_up, exp_return) from ONE model's predictions at ``horizon`` (trading: meta)."""
    s = preds[(preds["model"] == model) & (preds["horizon"] == int(horizon))]
    if s.empty:
        raise InputError(f"no {model} predictions at horizon {horizon}h")
    out = s[["ts", "pair", "p_up", "exp_return"]].reset_index(drop=True)
    if out.duplicated(["ts", "pair"]).any():
        raise InputError("a bar was predicted twice (overlapping test blocks)")
    return out


def _backtest(panel, cfg: Config, rc: ResearchConfig, preds: pd.DataFrame, regime_rules: dict | None = None):
    from engine.backtest.runner import run_backtest
    from engine.risk.params import params_from_config
    from research.stats import deflated_sharpe_ratio, probability_of_backtest_overfitting, sharpe_ratio

    w = _oos_window(panel, cfg, strategy_signals(preds, rc.trade_horizon), regime_rules)
    params = params_from_config(cfg)

    def run(model: str):
        return run_backtest(w.inputs(strategy_signals(preds, rc.trade_horizon, model), cfg), params)

    res = run("meta")
    stats: dict[str, Any] = {"span": [w.t0, w.t1], "n_bars": int(w.sub.n_bars), "trade_horizon": int(rc.trade_horizon)}
    if cfg.strategy.enabled:  # issue 18: the regime selector against the single default rule set
        stats["strategy"] = _strategy_compare(w, cfg, preds, rc, res, params)
    eq = res.equity["equity"].astype(np.float64)
    r = np.diff(eq) / eq[:-1]
    # every model's own strategy (diagnostics for PBO; trades still come from the meta only)
    rets = {"meta": r}
    per_model = {}
    for name in rc.base_models:
        e = run(name).equity["equity"].astype(np.float64)
        rets[name] = np.diff(e) / e[:-1]
        per_model[name] = {"total_return": float(e[-1] / e[0] - 1.0)}
    per_model["meta"] = {"total_return": float(eq[-1] / eq[0] - 1.0)}
    sharpes = {}
    for name, rr in rets.items():
        try:
            sharpes[name] = float(sharpe_ratio(rr))
        except InputError:
            sharpes[name] = 0.0
        per_model[name]["sharpe_hourly"] = sharpes[name]
    stats["per_model_strategy"] = per_model
    try:
        if rc.n_trials > 1:
            v = float(np.var(list(sharpes.values()), ddof=1)) if len(sharpes) > 1 else 0.0
            d = deflated_sharpe_ratio(r, n_trials=rc.n_trials, sr_variance=v)
        else:
            d = deflated_sharpe_ratio(r, n_trials=1, sr_variance=0.0)
        stats["deflated_sharpe"] = d.to_dict() | {
            "note": f"{rc.n_trials} configuration(s) tried; per-hour Sharpe ratios"
        }
    except InputError as e:
        stats["deflated_sharpe"] = {"error": str(e)}
    names = list(rets)
    M = np.column_stack([rets[k] for k in names])
    nb = 16 if M.shape[0] >= 16 * 40 else 8
    try:
        pbo = probability_of_backtest_overfitting(M, n_blocks=nb)
        pbo_d = pbo.to_dict()
        pbo_d.pop("logits", None)
        stats["pbo"] = pbo_d | {
            "configurations": names,
            "note": "CSCV over the hourly returns of each model's own strategy",
        }
    except InputError as e:
        stats["pbo"] = {"error": str(e), "configurations": names}
    return res, stats


def _strategy_compare(w: _OosWindow, cfg: Config, preds: pd.DataFrame, rc: ResearchConfig, res, params):
    """Out of sample, on the meta-learner's signals: the selector run (``res``) against the same
    signals with ``[strategy]`` off (the single default rule set); per regime and per profile (pair
    hours, round trips, hit rate, PnL after fees) and which did better (hourly Sharpe). ``w.raw``:
    the folds' fitted raw regime codes (``regime_thresholds = "model"``)."""
    from engine.backtest.runner import run_backtest
    from engine.strategy.report import breakdown, summary

    s = strategy_signals(preds, rc.trade_horizon)
    sel = w.inputs(s, cfg).strategy
    assert sel is not None  # cfg.strategy.enabled
    raw = w.raw
    off_cfg = cfg.model_copy(update={"strategy": cfg.strategy.model_copy(update={"enabled": False})})
    off = run_backtest(w.inputs(s, off_cfg), params)
    a = summary(res) | breakdown(res.trades, sel.regime, sel.profile)
    b = summary(off) | breakdown(off.trades, sel.regime)
    note = (
        "regime labels: each fold's regime classifier (thresholds fitted on its training window, "
        "features warm from the panel's history) on its test bars, then hysteresis"
        if raw is not None
        else "regime labels: the rule-based form with [strategy] thresholds and hysteresis, warm on "
        "the panel's bars before the test span"
    )
    out = {
        "selector": a,
        "default": b,
        "better_out_of_sample": "selector" if a["sharpe_hourly"] > b["sharpe_hourly"] else "default",
        "note": note,
    }
    if raw is not None:
        out["regime_thresholds"] = "model"
    return out


def auc_of(result: WalkForwardResult, model: str, horizon: int, fold: Any = "all") -> float | None:
    for r in result.model_metrics:
        if r["model"] == model and r["horizon"] == int(horizon) and r["fold"] == fold:
            return r["auc"]
    return None
